"""The tailnet policy file, generated from the service graph (fleet.policy.graph).

    policy = generate(fleet)        # .content: tagOwners, groups, hosts, grants, ssh, tests
    text = render(policy)           # HuJSON: what the admin console and the API take

What goes in:
  tagOwners  every tag of tailscale_tags_by_group -> tailnet_policy_tag_owners
  groups     group:admins -> tailnet_policy_admins
  hosts      every inventory host -> its tailnet address (used where no tag fits)
  grants     one per service and client set: src (tags, host aliases, group:admins) ->
             dst (tags or host aliases) with ip ["tcp:<port>"]. A set of hosts is written
             as the tags whose every carrier is in it (largest first), then host aliases
             for the rest, so a grant never reaches a host the graph does not name.
  ssh        with tailnet_policy_ssh = "tailscale": group:admins may log in as each host's
             ssh_user through Tailscale SSH
  tests      per source: an accept for every declared flow (in the grants' own words) and
             a deny for every (tag, service port) pair no carrier of the tag is a client of;
             the admins' first login stands for group:admins (a test's src cannot be a group
             or an autogroup)

The first lines are comments: a header saying the file is generated, and the SHA-256 of the
policy's content (canonical JSON, comments left out). `fingerprint_matches` reads it back, so
`apply` can tell the policy it wrote from one edited in the admin console since.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fleet.policy.graph import ADMINS, ServiceGraph
from fleet.preflight.model import Fleet

ADMIN_GROUP = "group:admins"
HEADER = ("// The fleet's tailnet policy, generated from inventory.py and group_data/ by "
          "`python -m fleet tailnet` (docs/tailnet-policy.md).\n"
          "// Edit the data, not this file: an edit made in the admin console is refused by the "
          "next apply unless forced.\n")
FINGERPRINT = re.compile(r"^// fleet-policy-sha256: ([0-9a-f]{64})$", re.M)


def host_tags(fleet: Fleet) -> dict[str, list[str]]:
    """The tags each host advertises (the tailscale deploy's own rule)."""
    from deploys.tailscale import wanted_tags

    by_group = fleet.all_data.get("tailscale_tags_by_group") or {}
    return {name: wanted_tags(h.groups, by_group) for name, h in fleet.hosts.items()}


@dataclass(frozen=True)
class Selectors:
    tags: dict[str, list[str]]  # host -> tags

    def carriers(self, tag: str) -> set[str]:
        return {h for h, tags in self.tags.items() if tag in tags}

    def cover(self, hosts: set[str]) -> list[str]:
        """Tags (each carried only by hosts of `hosts`), then aliases of the hosts left."""
        left, chosen = set(hosts), []
        fitting = sorted({t for ts in self.tags.values() for t in ts if self.carriers(t) <= hosts})
        while left:
            best = max(fitting, key=lambda t: (len(self.carriers(t) & left), -fitting.index(t)), default=None)
            if best is None or not self.carriers(best) & left:
                break
            chosen.append(best)
            left -= self.carriers(best)
        return chosen + sorted(left)


def _grants(fleet: Fleet, graph: ServiceGraph, sel: Selectors) -> list[tuple[dict, str]]:
    """(grant, comment) for each service and client set."""
    clients: dict[tuple[str, str], set[str]] = {}
    for flow in graph.tailnet_flows():
        clients.setdefault((flow.service, flow.server), set()).add(flow.client)
    servers: dict[tuple[str, frozenset], set[str]] = {}
    for (service, server), who in clients.items():
        servers.setdefault((service, frozenset(who)), set()).add(server)
    out = []
    order = list(fleet.services.services)
    for (service, who), on in sorted(servers.items(), key=lambda kv: (order.index(kv[0][0]), sorted(kv[1]))):
        src = ([ADMIN_GROUP] if ADMINS in who else []) + sel.cover(set(who) - {ADMINS})
        grant = {"src": src, "dst": sel.cover(on), "ip": [f"tcp:{fleet.services.port(service)}"]}
        names = ", ".join(sorted(who - {ADMINS}) + (["admins"] if ADMINS in who else []))
        out.append((grant, f"{service} on {', '.join(sorted(on))} <- {names}"))
    return out


def _ssh_rules(fleet: Fleet, graph: ServiceGraph, sel: Selectors) -> list[dict]:
    if fleet.all_data.get("tailnet_policy_ssh", "plain") != "tailscale":
        return []
    hosts = {f.server for f in graph.tailnet_flows() if f.service == "ssh" and f.client == ADMINS}
    if not hosts:
        return []
    users = sorted({str(fleet.hosts[h].data.get("ssh_user")) for h in hosts})
    return [{"action": "accept", "src": [ADMIN_GROUP], "dst": sel.cover(hosts), "users": users}]


def _tests(fleet: Fleet, graph: ServiceGraph, sel: Selectors, grants: list[dict]) -> list[dict]:
    admins = list(fleet.all_data.get("tailnet_policy_admins") or [])
    accept: dict[str, list[str]] = {}
    for grant in grants:
        for src in grant["src"]:
            if src == ADMIN_GROUP and not admins:
                continue
            who = admins[0] if src == ADMIN_GROUP else (src if src.startswith("tag:") else fleet.hosts[src].tailnet_address)
            for dst in grant["dst"]:
                for port in grant["ip"]:
                    accept.setdefault(who, []).append(f"{dst}:{port.split(':')[1]}")
    deny: dict[str, list[str]] = {}
    services = fleet.services
    flows = graph.tailnet_flows()
    every_tag = sorted({t for ts in sel.tags.values() for t in ts})
    sources = [(t, sel.carriers(t)) for t in every_tag] + ([(admins[0], {ADMINS})] if admins else [])
    for name in services.services:
        running = services.hosts_running(name)
        if "tailnet" not in services.scopes(name) or not running:
            continue
        for dst in sel.cover(set(running)):
            on = sel.carriers(dst) if dst.startswith("tag:") else {dst}
            for src, carriers in sources:
                if not any(f.service == name and f.server in on and f.client in carriers for f in flows):
                    deny.setdefault(src, []).append(f"{dst}:{services.port(name)}")
    tests = []
    for src in sorted(set(accept) | set(deny), key=lambda s: (s not in admins, s)):
        test: dict[str, Any] = {"src": src, "proto": "tcp"}
        if accept.get(src):
            test["accept"] = sorted(set(accept[src]))
        if deny.get(src):
            test["deny"] = sorted(set(deny[src]))
        tests.append(test)
    return tests


@dataclass(frozen=True)
class Policy:
    content: dict  # what the API takes
    notes: tuple[str, ...]  # one comment per grant: the service, its hosts and clients

    @property
    def grants(self) -> list[dict]:
        return self.content["grants"]

    @property
    def tests(self) -> list[dict]:
        return self.content["tests"]


def generate(fleet: Fleet, graph: ServiceGraph | None = None) -> Policy:
    graph = graph or ServiceGraph(fleet)
    sel = Selectors(host_tags(fleet))
    tags = sorted({t for ts in sel.tags.values() for t in ts}
                  | {t for ts in (fleet.all_data.get("tailscale_tags_by_group") or {}).values() for t in ts})
    owners = list(fleet.all_data.get("tailnet_policy_tag_owners") or ["autogroup:admin"])
    pairs = _grants(fleet, graph, sel)
    grants = [g for g, _ in pairs]
    policy = {
        "tagOwners": {tag: owners for tag in tags},
        "groups": {ADMIN_GROUP: list(fleet.all_data.get("tailnet_policy_admins") or [])},
        "hosts": {name: h.tailnet_address for name, h in fleet.hosts.items()},
        "grants": grants,
        "ssh": _ssh_rules(fleet, graph, sel),
        "tests": _tests(fleet, graph, sel, grants),
    }
    if not policy["ssh"]:
        del policy["ssh"]
    return Policy(policy, tuple(c for _, c in pairs))


# --- HuJSON ---------------------------------------------------------------------------------

def fingerprint(policy: dict) -> str:
    """SHA-256 of the policy's canonical JSON: formatting and comments do not change it."""
    canonical = json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _value(value: Any, indent: int) -> str:
    pad, inner = "\t" * indent, "\t" * (indent + 1)
    if isinstance(value, dict) and value:
        return "{\n" + "".join(f"{inner}{json.dumps(k)}: {_value(v, indent + 1)},\n" for k, v in value.items()) + pad + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + "".join(f"{inner}{_value(v, indent + 1)},\n" for v in value) + pad + "]"
    return json.dumps(value)


def render(policy: Policy) -> str:
    """HuJSON: a header, the fingerprint, each grant under a comment naming its flows."""
    lines = [HEADER + f"// fleet-policy-sha256: {fingerprint(policy.content)}\n{{\n"]
    for key, value in policy.content.items():
        if key == "grants" and policy.notes:
            items = "".join(f"\t\t// {n}\n\t\t{_value(g, 2)},\n" for g, n in zip(value, policy.notes))
            lines.append(f'\t"grants": [\n{items}\t],\n')
        else:
            lines.append(f"\t{json.dumps(key)}: {_value(value, 1)},\n")
    return "".join(lines) + "}\n"


def fingerprint_matches(text: str, parsed: dict) -> bool | None:
    """Whether `text` carries a fingerprint equal to its parsed content's (None: it has none,
    so this tool did not write it)."""
    found = FINGERPRINT.search(text)
    return None if not found else found.group(1) == fingerprint(parsed)


def summary(policy: Policy) -> list[str]:
    """One line per grant, then the counts (what `python -m fleet tailnet show` prints)."""
    lines = [f"grant {', '.join(g['src'])} -> {', '.join(g['dst'])} {', '.join(g['ip'])}   # {note}"
             for g, note in zip(policy.grants, policy.notes)]
    accepts = sum(len(t.get("accept", ())) for t in policy.tests)
    denies = sum(len(t.get("deny", ())) for t in policy.tests)
    content = policy.content
    lines.append(f"policy: {len(policy.grants)} grants, {len(content['tagOwners'])} tags, {len(content['hosts'])} "
                 f"hosts, {len(content.get('ssh') or [])} ssh rules; tests: {len(policy.tests)} sources, "
                 f"{accepts} accept and {denies} deny assertions")
    return lines
