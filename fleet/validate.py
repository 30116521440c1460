"""Inventory validation: every rule runs before any host is touched.

Each problem is reported as `host: key: what is wrong. Fix: what to change.` All problems
are collected, so one run shows everything to fix.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from fleet.model import Fleet

TAILNET_RANGE = ipaddress.ip_network("100.64.0.0/10")
REQUIRED_HOST_KEYS = ("lan_address", "tailnet_address", "ssh_user", "arch")
KNOWN_ARCHS = ("arm64", "amd64")
KNOWN_BINDS = ("loopback", "tailnet", "lan")


@dataclass(frozen=True)
class Problem:
    host: str
    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.host}: {self.key}: {self.message} Fix: {self.fix}"


class InventoryError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [f"inventory is invalid ({len(problems)} problem(s)); no host was touched:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def check_groups(fleet: Fleet) -> list[Problem]:
    problems = []
    known = fleet.known_groups
    for host in fleet.hosts.values():
        if not host.groups:
            problems.append(Problem(host.name, "groups", "the host is in no group.",
                                    f"list its groups in inventory.py (known: {', '.join(known)})."))
        for group in host.groups:
            if group not in known:
                problems.append(Problem(
                    host.name, "groups", f"unknown group {group!r}.",
                    f"use one of {', '.join(known)}, or add group_data/{group}.py for a new group."))
    return problems


def check_required(fleet: Fleet) -> list[Problem]:
    problems = []
    for host in fleet.hosts.values():
        for key in REQUIRED_HOST_KEYS:
            if not host.data.get(key):
                problems.append(Problem(host.name, key, "is missing.",
                                        f"set {key!r} in the host's entry in inventory.py."))
        arch = host.data.get("arch")
        if arch and arch not in KNOWN_ARCHS:
            problems.append(Problem(host.name, "arch", f"{arch!r} is not a known architecture.",
                                    f"use one of {', '.join(KNOWN_ARCHS)} (Debian's names)."))
        lan = host.data.get("lan_address")
        if lan:
            try:
                iface = ipaddress.ip_interface(lan)
                if iface.network.prefixlen == iface.max_prefixlen:
                    raise ValueError
            except ValueError:
                problems.append(Problem(host.name, "lan_address",
                                        f"{lan!r} is not an address/prefix.",
                                        "write it like '192.168.1.11/24'."))
        if host.data.get("ssh_user") == "root":
            problems.append(Problem(host.name, "ssh_user",
                                    "is root, but sshd is hardened to refuse root logins.",
                                    "connect as the admin user (e.g. 'pi'); create it at first boot."))
    return problems


def check_tailnet(fleet: Fleet) -> list[Problem]:
    problems = []
    seen: dict[str, str] = {}
    for host in fleet.hosts.values():
        raw = host.data.get("tailnet_address")
        if not raw:
            continue
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            problems.append(Problem(host.name, "tailnet_address", f"{raw!r} is not an IP address.",
                                    "use the node's Tailscale IPv4, e.g. 100.100.0.1."))
            continue
        if address not in TAILNET_RANGE:
            problems.append(Problem(
                host.name, "tailnet_address", f"{raw} is outside Tailscale's {TAILNET_RANGE}.",
                "use the address Tailscale assigned to the node (100.64.0.0/10)."))
        if raw in seen:
            problems.append(Problem(
                host.name, "tailnet_address", f"{raw} is also the tailnet address of {seen[raw]}.",
                "give each host its own tailnet address."))
        else:
            seen[raw] = host.name
    return problems


def check_ports(fleet: Fleet) -> list[Problem]:
    problems = []
    services = fleet.all_data.get("fleet_services", {})
    for name, svc in services.items():
        port = svc.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            problems.append(Problem("all", f"fleet_services[{name!r}].port",
                                    f"{port!r} is not a TCP port.", "use an integer 1-65535."))
        for bind in svc.get("bind", ()):
            if bind not in KNOWN_BINDS:
                problems.append(Problem("all", f"fleet_services[{name!r}].bind",
                                        f"{bind!r} is not a bind scope.",
                                        f"use {', '.join(KNOWN_BINDS)} (never a wildcard)."))
        for group in svc.get("groups", ()):
            if group != "all" and group not in fleet.known_groups:
                problems.append(Problem("all", f"fleet_services[{name!r}].groups",
                                        f"unknown group {group!r}.",
                                        f"use one of {', '.join(fleet.known_groups)} or 'all'."))
    for host in fleet.hosts.values():
        by_port: dict[int, str] = {}
        for name, svc in host.services(services).items():
            port = svc.get("port")
            if port in by_port:
                problems.append(Problem(
                    host.name, f"fleet_services[{name!r}].port",
                    f"port {port} is used by both {by_port[port]!r} and {name!r} on this host.",
                    f"give one of them another port in group_data/all.py fleet_services."))
            else:
                by_port[port] = name
    return problems


def check_domains(fleet: Fleet) -> list[Problem]:
    problems = []
    services = fleet.all_data.get("fleet_services", {})
    for domain, route in fleet.all_data.get("fleet_domains", {}).items():
        key = f"fleet_domains[{domain!r}]"
        target, port = route.get("host"), route.get("port")
        if target not in fleet.hosts:
            problems.append(Problem(target or "?", key, f"routes to unknown host {target!r}.",
                                    f"use one of {', '.join(fleet.hosts)}."))
            continue
        served = {svc["port"]: name for name, svc in fleet.hosts[target].services(services).items()}
        if port not in served:
            offered = ", ".join(f"{n} {p}" for p, n in sorted(served.items()))
            problems.append(Problem(
                target, key, f"routes to port {port!r}, but nothing on {target} serves it "
                f"(its services: {offered}).",
                "route the domain to a port the host serves, or add the service to "
                "fleet_services for one of the host's groups."))
    return problems


TUNNEL_GROUPS = ("gateway", "llm", "failover")


def check_tunnels(fleet: Fleet) -> list[Problem]:
    """Each domain's tunnel runs cloudflared and can reach the service: over 127.0.0.1 on
    its own host, otherwise only if the service binds the tailnet address."""
    problems = []
    services = fleet.all_data.get("fleet_services", {})
    for domain, route in fleet.all_data.get("fleet_domains", {}).items():
        key = f"fleet_domains[{domain!r}].tunnel"
        tunnel, target = route.get("tunnel"), route.get("host")
        if tunnel not in fleet.hosts or not set(fleet.hosts[tunnel].groups) & set(TUNNEL_GROUPS):
            runners = [h.name for h in fleet.hosts.values() if set(h.groups) & set(TUNNEL_GROUPS)]
            problems.append(Problem(str(tunnel), key, f"{tunnel!r} is not a host that runs cloudflared.",
                                    f"use one of {', '.join(runners)}."))
            continue
        if target not in fleet.hosts:
            continue  # check_domains reports it
        binds = next((svc.get("bind", []) for svc in fleet.hosts[target].services(services).values()
                      if svc.get("port") == route.get("port")), None)
        if binds is None:
            continue  # nothing serves that port: check_domains reports it
        if not ((tunnel == target and "loopback" in binds) or "tailnet" in binds):
            problems.append(Problem(
                tunnel, key, f"the tunnel on {tunnel} cannot reach {target}:{route.get('port')} "
                f"(it binds {', '.join(binds) or 'nothing'}).",
                f"carry the domain on {target}'s own tunnel, or bind the service to the tailnet."))
    return problems


def check_docker_pools(fleet: Fleet) -> list[Problem]:
    problems = []
    for host in fleet.hosts.values():
        for pool in host.data.get("docker_address_pools", []):
            try:
                base = ipaddress.ip_network(pool["base"])
            except (KeyError, ValueError):
                problems.append(Problem(host.name, "docker_address_pools",
                                        f"{pool!r} has no valid 'base' network.",
                                        "write pools as {'base': '172.30.0.0/16', 'size': 24}."))
                continue
            for other in fleet.hosts.values():
                try:
                    other_lan = other.lan_interface.network
                except (KeyError, ValueError):
                    continue
                if base.overlaps(other_lan):
                    problems.append(Problem(
                        host.name, "docker_address_pools",
                        f"pool {base} overlaps the LAN {other_lan} of {other.name}.",
                        "pick a pool outside every LAN in inventory.py (e.g. 172.30.0.0/16)."))
            if base.overlaps(TAILNET_RANGE):
                problems.append(Problem(host.name, "docker_address_pools",
                                        f"pool {base} overlaps the tailnet {TAILNET_RANGE}.",
                                        "pick a pool outside 100.64.0.0/10."))
    return problems


def check_group_conflicts(fleet: Fleet) -> list[Problem]:
    """A key set to different values by two groups of one host has no clear winner."""
    problems = []
    for host in fleet.hosts.values():
        for key, groups in host.group_sources.items():
            values = {repr(fleet.group_data[g][key]) for g in groups}
            if len(values) > 1:
                problems.append(Problem(
                    host.name, key, f"is set differently by groups {', '.join(groups)}.",
                    "set it in one group only, or per host in inventory.py."))
    return problems


def check_admin(fleet: Fleet) -> list[Problem]:
    problems = []
    for host in fleet.hosts.values():
        keys = host.data.get("base_admin_ssh_keys") or []
        if not keys:
            problems.append(Problem(
                host.name, "base_admin_ssh_keys",
                "is empty, but sshd is hardened to key-only logins.",
                "add your public key(s) to base_admin_ssh_keys in group_data/all.py."))
        for k in keys:
            if not isinstance(k, str) or not k.startswith(("ssh-", "ecdsa-", "sk-")):
                problems.append(Problem(host.name, "base_admin_ssh_keys",
                                        f"{str(k)[:30]!r}... is not an OpenSSH public key.",
                                        "paste the one-line contents of your ~/.ssh/*.pub."))
    return problems


def check_tailscale_tags(fleet: Fleet) -> list[Problem]:
    problems = []
    tags_by_group = fleet.all_data.get("tailscale_tags_by_group", {})
    for group, tags in tags_by_group.items():
        key = f"tailscale_tags_by_group[{group!r}]"
        if group not in fleet.known_groups:
            problems.append(Problem("all", key, f"unknown group {group!r}.",
                                    f"use one of {', '.join(fleet.known_groups)}."))
        for tag in tags:
            if not re.fullmatch(r"tag:[a-z0-9][a-z0-9-]*", str(tag)):
                problems.append(Problem("all", key, f"{tag!r} is not a Tailscale ACL tag.",
                                        "write tags like 'tag:gateway' (lowercase, digits, dashes)."))
    return problems


SHA256 = re.compile(r"[0-9a-f]{64}")
LLM_ENGINES = ("ollama", "vllm")


def check_llm(fleet: Fleet) -> list[Problem]:
    """llm hosts: a known engine, and what that engine needs to install safely."""
    problems = []
    for host in fleet.hosts.values():
        if "llm" not in host.groups:
            continue
        data = host.data
        engine = data.get("llm_engine", "ollama")
        if engine not in LLM_ENGINES:
            problems.append(Problem(host.name, "llm_engine", f"{engine!r} is not an engine.",
                                    f"set it to one of {', '.join(LLM_ENGINES)} in inventory.py."))
        elif engine == "ollama":
            asset = f"ollama-linux-{data.get('arch')}.tar.zst"
            if not SHA256.fullmatch(str((data.get("ollama_sha256") or {}).get(asset, ""))):
                problems.append(Problem(
                    host.name, "ollama_sha256",
                    f"has no SHA-256 for {asset} (ollama_version {data.get('ollama_version')}); "
                    "the release is never installed unchecked.",
                    "copy it (and the JetPack add-on's, on a Jetson) from the release's "
                    "sha256sum.txt into group_data/llm.py."))
            models = data.get("ollama_models", [])
            if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
                problems.append(Problem(host.name, "ollama_models", f"{models!r} is not a list of model names.",
                                        "write it like ['qwen2.5:7b']."))
        else:
            if data.get("vllm_image_archive_url") and not SHA256.fullmatch(str(data.get("vllm_image_archive_sha256", ""))):
                problems.append(Problem(host.name, "vllm_image_archive_sha256",
                                        "is missing or not a SHA-256, but vllm_image_archive_url is set.",
                                        "add the archive's sha256sum next to its URL."))
            max_len = data.get("vllm_max_model_len", 4096)
            if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len <= 0:
                problems.append(Problem(host.name, "vllm_max_model_len", f"{max_len!r} is not a positive integer.",
                                        "write the model's maximum context in tokens, e.g. 4096."))
    return problems


def key_id(line: str) -> str:
    """'type base64' of an OpenSSH public key line (the comment does not matter)."""
    return " ".join(line.split()[:2])


def check_operator_access(fleet: Fleet, offered: dict[str, set[str]]) -> list[Problem]:
    """The admin's authorized_keys becomes exactly base_admin_ssh_keys. If none of the keys
    this run authenticates with is in it, the converge would lock the operator out.
    `offered`: per host, the public keys pyinfra will offer (hosts where that cannot be
    known, e.g. no key file and no agent, are left out)."""
    problems = []
    for name, keys in offered.items():
        host = fleet.hosts.get(name)
        if host is None or not keys:
            continue
        listed = {key_id(k) for k in host.data.get("base_admin_ssh_keys") or [] if isinstance(k, str)}
        if listed and not listed & {key_id(k) for k in keys}:
            problems.append(Problem(
                name, "base_admin_ssh_keys",
                "lists none of the keys this run logs in with, and the converge makes it the "
                "admin's only authorized keys: you would lock yourself out.",
                "add your public key (the .pub of ssh_key, or `ssh-add -L`) to base_admin_ssh_keys."))
    return problems


RULES = (
    check_groups,
    check_required,
    check_tailnet,
    check_ports,
    check_domains,
    check_tunnels,
    check_docker_pools,
    check_group_conflicts,
    check_admin,
    check_tailscale_tags,
    check_llm,
)


def problems(fleet: Fleet, offered: dict[str, set[str]] | None = None) -> list[Problem]:
    found: list[Problem] = []
    for rule in RULES:
        found.extend(rule(fleet))
    found.extend(check_operator_access(fleet, offered or {}))
    return found


def validate(fleet: Fleet, offered: dict[str, set[str]] | None = None) -> None:
    found = problems(fleet, offered)
    if found:
        raise InventoryError(found)
