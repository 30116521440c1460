"""Inventory validation: every rule runs before any host is touched.

Each problem is reported as `host: key: what is wrong. Fix: what to change.` All problems
are collected, so one run shows everything to fix. The rules here are about the fleet as a
whole (hosts, groups, addresses, the port and domain maps); each component adds its own
(`COMPONENT.rules` in deploys/), run on the hosts it applies to.
"""

from __future__ import annotations

import re

import ipaddress

from fleet.converge.component import ACCOUNT_NAME, HOSTNAME, ComponentError, Problem, Problems, components
from fleet.converge.services import SCOPES, TAILNET_RANGE
from fleet.policy.graph import check_service_graph
from fleet.preflight.model import Fleet

REQUIRED_HOST_KEYS = ("lan_address", "tailnet_address", "ssh_user", "arch")
KNOWN_ARCHS = ("arm64", "amd64")
# The edge's WAF and rate-limiting rules (fleet.commands.edge writes them to Cloudflare): data key ->
# (the ruleset phase its rules go to, what the plan calls them). A rule's ref starts with
# MANAGED_REF (rules without it were made by hand and are kept).
EDGE_RULESETS = {"edge_waf_rules": ("http_request_firewall_custom", "waf rules"),
                 "edge_rate_limits": ("http_ratelimit", "rate limits")}
MANAGED_REF = "fleet-"
# What `make edge-apply --delete-unlisted` keeps: the Workers scripts and the KV namespaces.
EDGE_KEEP_KEYS = ("edge_workers_keep", "edge_kv_keep")
ACCOUNT_ID = re.compile(r"[0-9a-fA-F]{32}")
RULE_ACTIONS = ("block", "challenge", "managed_challenge", "js_challenge", "log", "skip")
RATELIMIT_KEYS = ("characteristics", "period", "requests_per_period", "mitigation_timeout")

__all__ = ["Problem", "InventoryError", "problems", "validate"]


class InventoryError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = [f"inventory is invalid ({len(problems)} problem(s)); no host was touched:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def check_hosts(fleet: Fleet) -> list[Problem]:
    if not fleet.hosts:
        return [Problem("inventory.py", "HOSTS", "is empty: there is no host to converge.",
                        "add your hosts to HOSTS in inventory.py (name -> groups, addresses, ssh_user, arch).")]
    return [Problem(str(name), "HOSTS", f"{h.entry_error}.",
                    "write it like the other entries in inventory.py, e.g. 'groups': ['pis', 'gateway'].")
            for name, h in fleet.hosts.items() if h.entry_error]


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _type_names(types: tuple) -> str:
    names = ["None" if t is type(None) else t.__name__ for t in types]
    first = names[0]
    article = "" if first == "None" else ("an " if first[0] in "aeiou" else "a ")
    return article + " or ".join(names)


def _has_type(value, types: tuple) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, never to a setting
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def check_setting_types(fleet: Fleet) -> list[Problem]:
    """Every component setting has the type of its default (or one its component allows);
    one line for a value group_data/all.py gives every host."""
    problems = Problems(fleet)
    for component in components():
        for key, default in component.defaults.items():
            types = component.types.get(key) or (type(default),)
            if type(None) in (type(default),):
                continue  # a None default takes anything
            for host in fleet.hosts.values():
                value = host.data.get(key)
                if not _has_type(value, tuple(types)):
                    problems.add(host, key, f"{value!r} is {_a(type(value).__name__)}, but it must be "
                                 f"{_type_names(tuple(types))} (default: {default!r}).",
                                 f"correct it in {fleet.where_set(host, key)}.")
    return problems


def check_shapes(fleet: Fleet) -> list[Problem]:
    """The fleet-wide maps have the shape every other rule and deploy reads."""
    problems = []
    services = fleet.all_data.get("fleet_services")
    if not isinstance(services, dict) or not all(isinstance(s, dict) for s in services.values()):
        problems.append(Problem("all", "fleet_services", "must map each service name to a dict.",
                                "write it like {'ssh': {'port': 22, 'bind': ['lan', 'tailnet'], 'groups': ['all']}}."))
    else:
        known = [c.name for c in components()]
        for name, svc in services.items():
            if "component" in svc and svc["component"] not in known:
                problems.append(Problem("all", f"fleet_services[{name!r}].component",
                                        f"{svc['component']!r} is not a component.", f"use one of {', '.join(known)}."))
            for key in ("bind", "groups"):
                if key in svc and (not isinstance(svc[key], list) or not all(isinstance(v, str) for v in svc[key])):
                    problems.append(Problem("all", f"fleet_services[{name!r}].{key}", f"{svc[key]!r} is not a list of names.",
                                            f"write it as a list, e.g. {['tailnet'] if key == 'bind' else ['all']}."))
    domains = fleet.all_data.get("fleet_domains")
    if not isinstance(domains, dict) or not all(isinstance(r, dict) for r in domains.values()):
        problems.append(Problem("all", "fleet_domains", "must map each hostname to a dict.",
                                "write it like {'blackroad.io': {'host': 'pi5-alpha', 'service': 'web', 'tunnel': 'pi5-alpha'}}."))
    else:
        for domain, route in domains.items():
            if "port" in route:
                problems.append(Problem(str(route.get("host")), f"fleet_domains[{domain!r}].port",
                                        "names a port; domains name a service.",
                                        f"write 'service': one of {', '.join(services or {})}."))
                continue
            for key in ("host", "service", "tunnel"):
                if not isinstance(route.get(key), str):
                    problems.append(Problem("all", f"fleet_domains[{domain!r}].{key}",
                                            f"{route.get(key)!r} is not a name.",
                                            f"set '{key}' to a {'service of the port map' if key == 'service' else 'host of inventory.py'}."))
    for host in fleet.hosts.values():
        for key in REQUIRED_HOST_KEYS:
            value = host.data.get(key)
            if value is not None and not isinstance(value, str):
                problems.append(Problem(host.name, key, f"{value!r} is {_a(type(value).__name__)}, not text.",
                                        f"quote it in the host's entry in inventory.py, e.g. {key}: '{value}'."))
    return problems


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
        user = host.data.get("ssh_user")
        if isinstance(user, str) and user and not ACCOUNT_NAME.fullmatch(user):
            problems.append(Problem(host.name, "ssh_user", f"{user!r} is not an account name.",
                                    "use the admin user's login, e.g. 'pi' (lower-case letters, digits, '_', '-')."))
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


PROBES = re.compile(r"^(tcp|ssh|postgres|llm|http:/[A-Za-z0-9._~/-]*)\Z")


def _monitoring_keys(name: str, svc) -> list[Problem]:
    """A service's "probe" and "metrics" (read by monitoring and the health prober)."""
    problems = []
    probe = svc.get("probe")
    if probe is not None and not (isinstance(probe, str) and PROBES.match(probe)):
        problems.append(Problem("all", f"fleet_services[{name!r}].probe", f"{probe!r} is not a probe.",
                                "use 'tcp', 'ssh', 'postgres', 'llm' or 'http:/<path>'."))
    metrics = svc.get("metrics")
    path = metrics.get("path") if isinstance(metrics, dict) else metrics
    when = metrics.get("when", {}) if isinstance(metrics, dict) else {}
    if metrics is not None and not (isinstance(path, str) and path.startswith("/") and isinstance(when, dict)
                                    and set(metrics if isinstance(metrics, dict) else ()) <= {"path", "when"}):
        problems.append(Problem("all", f"fleet_services[{name!r}].metrics", f"{metrics!r} is not a metrics path.",
                                "write '/metrics', or {'path': '/metrics', 'when': {'llm_engine': 'vllm'}}."))
    if (probe or metrics) and "tailnet" not in svc.get("bind", ()):
        problems.append(Problem("all", f"fleet_services[{name!r}]", "has a probe or metrics but does not bind "
                                "the tailnet, so neither the prober nor Prometheus can reach it.",
                                "bind it on the tailnet or drop 'probe'/'metrics'."))
    return problems


def check_ports(fleet: Fleet) -> list[Problem]:
    problems = []
    services = fleet.all_data.get("fleet_services", {})
    names = [c.name for c in components()]
    for name, svc in services.items():
        port = svc.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            problems.append(Problem("all", f"fleet_services[{name!r}].port",
                                    f"{port!r} is not a TCP port.", "use an integer 1-65535."))
        for bind in svc.get("bind", ()):
            if bind not in SCOPES:
                problems.append(Problem("all", f"fleet_services[{name!r}].bind",
                                        f"{bind!r} is not a bind scope.",
                                        f"use {', '.join(SCOPES)} (never a wildcard)."))
        if ("groups" in svc) == ("component" in svc):
            problems.append(Problem("all", f"fleet_services[{name!r}]",
                                    "needs exactly one of 'groups' or 'component'.",
                                    "name the groups that run it, or the component that serves it."))
        if "component" in svc and svc["component"] not in names:
            problems.append(Problem("all", f"fleet_services[{name!r}].component",
                                    f"{svc['component']!r} is not a component.",
                                    f"use one of {', '.join(names)}."))
        problems += _monitoring_keys(name, svc)
        for group in svc.get("groups", ()):
            if group != "all" and group not in fleet.known_groups:
                problems.append(Problem("all", f"fleet_services[{name!r}].groups",
                                        f"unknown group {group!r}.",
                                        f"use one of {', '.join(fleet.known_groups)} or 'all'."))
    if problems:
        return problems  # the per-host check below needs a sound port map
    for host in fleet.hosts.values():
        by_port: dict[int, str] = {}
        for name in fleet.services.on(host.name):
            port = services[name]["port"]
            if port in by_port:
                problems.append(Problem(
                    host.name, f"fleet_services[{name!r}].port",
                    f"port {port} is used by both {by_port[port]!r} and {name!r} on this host.",
                    "give one of them another port in group_data/all.py fleet_services."))
            else:
                by_port[port] = name
    return problems


def check_domains(fleet: Fleet) -> list[Problem]:
    """Each domain names a host and a service (by name) that the host runs."""
    problems = []
    services = fleet.services
    for domain, route in fleet.domains.items():
        key = f"fleet_domains[{domain!r}]"
        target, service = route.get("host"), route.get("service")
        if not (isinstance(domain, str) and HOSTNAME.fullmatch(domain)):
            problems.append(Problem("all", key, "is not a hostname.",
                                    "write it like 'api.blackroad.io' (letters, digits, dots and hyphens)."))
            continue
        if "port" in route:
            problems.append(Problem(str(target), f"{key}.port", "names a port; domains name a service.",
                                    f"write 'service': one of {', '.join(services.services)}."))
            continue
        if target not in fleet.hosts:
            problems.append(Problem(str(target), key, f"routes to unknown host {target!r}.",
                                    f"use one of {', '.join(fleet.hosts)}."))
            continue
        if service not in services.services:
            problems.append(Problem(target, f"{key}.service", f"{service!r} is not a service of the port map.",
                                    f"use one of {', '.join(services.services)}."))
            continue
        if not services.runs(service, target):
            offered = ", ".join(services.on(target))
            problems.append(Problem(
                target, key, f"routes to {service!r}, but {target} does not run it "
                f"(its services: {offered}).",
                "route the domain to a host that runs the service, or add one of the host's "
                "groups to the service in fleet_services."))
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


def edge_rule_problems(all_data: dict) -> list[Problem]:
    """What is wrong with edge_waf_rules and edge_rate_limits (`make edge-plan` refuses the same)."""
    problems = []
    zones = all_data.get("edge_zones") or []
    if not isinstance(zones, list) or not all(isinstance(z, str) and z for z in zones):
        return [Problem("all", "edge_zones", f"{zones!r} is not a list of zone names.",
                        "write it like ['blackroad.io'] in group_data/all.py.")]
    for key in EDGE_RULESETS:
        per_zone = all_data.get(key) or {}
        if not isinstance(per_zone, dict):
            problems.append(Problem("all", key, "must be a dict of zone -> list of rules.",
                                    "write it like the examples in group_data/all.py."))
            continue
        for zone, rules in sorted(per_zone.items(), key=lambda item: str(item[0])):
            if not isinstance(zone, str) or zone.lower() not in [z.lower() for z in zones]:
                problems.append(Problem("all", f"{key}[{zone!r}]", f"not one of edge_zones ({', '.join(zones)}).",
                                        "add the zone to edge_zones or correct the name in group_data/all.py."))
                continue
            refs = set()
            for n, rule in enumerate(rules if isinstance(rules, list) else [None]):
                where = f"{key}[{zone!r}][{n}]"
                if not isinstance(rule, dict):
                    problems.append(Problem("all", where, "a rule is a dict (ref, description, expression, action).",
                                            "write it like the examples in group_data/all.py."))
                    continue
                ref = str(rule.get("ref") or "")
                missing = [f for f in ("ref", "description", "expression", "action") if not rule.get(f)]
                if missing:
                    problems.append(Problem("all", where, f"missing {', '.join(missing)}.", "set them in group_data/all.py."))
                elif not all(isinstance(rule[f], str) for f in ("ref", "description", "expression", "action")):
                    problems.append(Problem("all", where, "ref, description, expression and action must be text.",
                                            "quote them in group_data/all.py."))
                elif not ref.startswith(MANAGED_REF) or ref in refs:
                    problems.append(Problem("all", where, f"ref {ref!r} must start with {MANAGED_REF!r} and be unique in "
                                            "the zone (it is how this tool tells its rules from hand-made ones).",
                                            "rename it in group_data/all.py."))
                elif rule["action"] not in RULE_ACTIONS:
                    problems.append(Problem("all", where, f"action {rule['action']!r} is not one of "
                                            f"{', '.join(RULE_ACTIONS)}.", "pick one in group_data/all.py."))
                elif key == "edge_rate_limits" and not (isinstance(rule.get("ratelimit"), dict)
                                                        and all(k in rule["ratelimit"] for k in RATELIMIT_KEYS)):
                    problems.append(Problem("all", where, f"a rate limit needs ratelimit with {', '.join(RATELIMIT_KEYS)}.",
                                            "add them (see the example in group_data/all.py)."))
                else:
                    refs.add(ref)
    return problems


def edge_list_problems(all_data: dict) -> list[Problem]:
    """The account ID and the keep lists. `make edge-apply --delete-unlisted` deletes every
    Worker and KV namespace not in a keep list, so a list written as bare text (read letter by
    letter, it keeps nothing) must stop the command, not reach it."""
    problems = []
    account = all_data.get("edge_account_id", "")
    if not (isinstance(account, str) and (not account or ACCOUNT_ID.fullmatch(account))):
        problems.append(Problem("all", "edge_account_id", f"{account!r} is not a Cloudflare account ID (32 hex digits).",
                                "copy it into group_data/all.py from the dashboard (Account Home), or leave it ''."))
    for key in EDGE_KEEP_KEYS:
        value = all_data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            problems.append(Problem("all", key, f"{value!r} is not a list of names.",
                                    "write it like ['blackroad-auth'] in group_data/all.py; [] keeps none."))
    return problems


def check_edge_data(fleet: Fleet) -> list[Problem]:
    """The edge keys of group_data/all.py that `make edge-apply`, `make apikey` and the checklist
    read: the WAF and rate-limiting rules, the account, the keep lists, the API keys' KV namespace."""
    problems = edge_rule_problems(fleet.all_data) + edge_list_problems(fleet.all_data)
    title = fleet.all_data.get("edge_api_keys_namespace")
    if title is not None and not isinstance(title, str):
        problems.append(Problem("all", "edge_api_keys_namespace", f"{title!r} is {_a(type(title).__name__)}, not text.",
                                "set it in group_data/all.py to the title of the KV namespace the API keys live in "
                                "(e.g. 'AUTH')."))
    return problems


def check_udp_allowlist(fleet: Fleet) -> list[Problem]:
    """net_udp_wildcard_allowlist, which the specs hold every host's UDP listeners to: each
    port allowed on a wildcard address, with the reason it cannot bind one address."""
    value = fleet.all_data.get("net_udp_wildcard_allowlist")
    if isinstance(value, dict) and all(isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
                                       and isinstance(why, str) and why.strip() for port, why in value.items()):
        return []
    return [Problem("all", "net_udp_wildcard_allowlist", f"{value!r} is not a map of UDP port -> reason.",
                    "write it like {41641: 'tailscaled WireGuard (tailscale_port)'} in group_data/all.py.")]


def check_checklist(fleet: Fleet) -> list[Problem]:
    """checklist_public_https turns the checklist's public HTTPS check on or off; off, its reason
    is what the item prints instead."""
    problems = []
    for host in fleet.hosts.values():
        on = host.data.get("checklist_public_https", True)
        reason = host.data.get("checklist_public_https_reason")
        where = fleet.where_set(host, "checklist_public_https")
        if not isinstance(on, bool):
            problems.append(Problem(host.name, "checklist_public_https", f"{on!r} is {_a(type(on).__name__)}, "
                                    "not True or False.", f"set it to True or False in {where}."))
        elif not on and not (isinstance(reason, str) and reason.strip()):
            problems.append(Problem(host.name, "checklist_public_https_reason",
                                    f"is {reason!r}, but checklist_public_https is False: the checklist item "
                                    "would not say why it skips the check.",
                                    f"set it to the reason (a non-empty str) next to checklist_public_https in {where}."))
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


# Rules about the fleet as a whole; each component adds its own (COMPONENT.rules).
RULES = (
    check_shapes,
    check_setting_types,
    check_groups,
    check_required,
    check_tailnet,
    check_ports,
    check_domains,
    check_group_conflicts,
    check_udp_allowlist,
    check_service_graph,  # fleet.policy.graph: who reaches which service, the tailnet policy's data
    check_edge_data,
    check_checklist,
)


def component_problems(fleet: Fleet, shape_ok: bool = True) -> list[Problem]:
    """Every component's rules, each given the hosts the component applies to. A rule that
    trips over data the fleet-wide rules already refused (shape_ok False) adds nothing more."""
    found: list[Problem] = []
    for component in components():
        try:
            hosts = [h for h in fleet.hosts.values() if component.applies(h.groups, h.data)]
            for rule in component.rules:
                found.extend(rule(fleet, hosts))
        except (KeyError, TypeError, ValueError, AttributeError, ComponentError) as exc:
            if shape_ok:
                found.append(Problem("all", component.name, f"its data cannot be read ({type(exc).__name__}: {exc}).",
                                     f"check the types of the {component.name}_* keys against docs/settings.md."))
    return found


def problems(fleet: Fleet, offered: dict[str, set[str]] | None = None) -> list[Problem]:
    found = check_hosts(fleet)
    if found:
        return found  # nothing else can be judged without hosts
    for rule in RULES:
        if rule in (check_ports, check_domains, check_service_graph) and any(p.key.startswith(("fleet_services", "fleet_domains"))
                                                         for p in found):
            continue  # the maps' shape is wrong: one message about it is enough
        found.extend(rule(fleet))
    # a setting of the wrong type is one problem, not one more per rule that reads it
    mistyped = {(p.host, p.key) for p in found}
    found.extend(p for p in component_problems(fleet, shape_ok=not found) if (p.host, p.key) not in mistyped)
    found.extend(check_operator_access(fleet, offered or {}))
    return found


def validate(fleet: Fleet, offered: dict[str, set[str]] | None = None) -> None:
    found = problems(fleet, offered)
    if found:
        raise InventoryError(found)
