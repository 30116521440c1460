"""The offline evaluator: what a tailnet policy allows between the fleet's hosts, and whether
the policy's own `tests` hold. No credentials, no network.

    policy = parse(text)                       # HuJSON -> dict (comments, trailing commas)
    result = evaluate(policy, devices(fleet))  # the fleet's hosts as Tailscale sees them
    result.flows                               # {(src host, dst host, port), ...}
    result.failures                            # tests that do not hold, one line each
    result.problems                            # names used but never defined, bad test sources

It reads the parts of the policy file the generator writes: `grants` (src, dst, ip),
`groups`, `hosts`, `tagOwners`, `tests`. Two ways of matching, as the policy engine has:
  - traffic between devices: a device is every selector that names it: its tags, its
    address, the `hosts` aliases of that address, "*" (and its user and their groups for a
    person's device);
  - a test: its `src` is that identity alone (a tag test is a device with only that tag; a
    login is that person's device), and a destination `tag:x:port` is a device with only
    tag:x, while `alias:port` or `address:port` is the device at that address.
Names that are used but not defined are errors: Tailscale treats an unknown host alias in a
rule as nothing, so the rule silently stops working.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from fleet.policy.tailnet import host_tags
from fleet.preflight.model import Fleet

ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+\Z")


class PolicyError(ValueError):
    """The text is not a policy file this evaluator can read."""


def standardize(text: str) -> str:
    """HuJSON -> JSON: drop // and /* */ comments and trailing commas, outside strings."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise PolicyError("a /* comment is never closed")
            i = end + 2
        elif c in "]}":
            k = len(out) - 1
            while k >= 0 and out[k].isspace():
                k -= 1
            if k >= 0 and out[k] == ",":
                out[k] = ""
            out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(text: str) -> dict:
    try:
        value = json.loads(standardize(text))
    except ValueError as exc:
        raise PolicyError(f"not HuJSON ({exc})") from None
    if not isinstance(value, dict):
        raise PolicyError("the policy is not an object")
    return value


@dataclass(frozen=True)
class Device:
    name: str
    address: str
    tags: tuple[str, ...]


def devices(fleet: Fleet) -> list[Device]:
    tags = host_tags(fleet)
    return [Device(name, h.tailnet_address, tuple(tags[name])) for name, h in fleet.hosts.items()]


@dataclass
class Result:
    flows: set[tuple[str, str, int]] = field(default_factory=set)  # between devices
    person_flows: set[tuple[str, str, int]] = field(default_factory=set)  # (login, device, port)
    assertions: int = 0
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.problems


def _ports(ip: list) -> set[int] | None:
    """The TCP ports of a grant's `ip` ("tcp:22", "22", "*"); None for every port."""
    ports: set[int] = set()
    for item in ip:
        proto, _, port = str(item).rpartition(":")
        if proto not in ("", "tcp"):
            continue
        if port == "*":
            return None
        low, _, high = port.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


class Engine:
    def __init__(self, policy: dict, fleet_devices: list[Device]):
        self.policy = policy
        self.devices = fleet_devices
        self.groups = {k: list(v) for k, v in (policy.get("groups") or {}).items()}
        self.hosts = dict(policy.get("hosts") or {})
        self.tags = set(policy.get("tagOwners") or {})
        self.grants = [(set(g.get("src", ())), set(g.get("dst", ())), _ports(g.get("ip", ())))
                       for g in policy.get("grants") or [] if g.get("ip")]

    # --- names --------------------------------------------------------------------------------

    def undefined(self) -> list[str]:
        problems = []
        for n, grant in enumerate(self.policy.get("grants") or []):
            for side in ("src", "dst"):
                for name in grant.get(side, ()):
                    why = self._unknown(name)
                    if why:
                        problems.append(f"grants[{n}].{side}: {name!r} {why}")
        for n, rule in enumerate(self.policy.get("ssh") or []):
            for name in [*rule.get("src", ()), *rule.get("dst", ())]:
                why = self._unknown(name)
                if why:
                    problems.append(f"ssh[{n}]: {name!r} {why}")
        for tag in {t for d in self.devices for t in d.tags} - self.tags:
            problems.append(f"tagOwners: {tag} is advertised by a host but has no owner")
        return sorted(problems)

    def _unknown(self, name: str) -> str:
        if name == "*" or name.startswith("autogroup:") or "@" in name or ADDRESS.match(name.split("/")[0]):
            return ""
        if name.startswith("tag:"):
            return "" if name in self.tags else "is not in tagOwners"
        if name.startswith("group:"):
            return "" if name in self.groups else "is not in groups"
        return "" if name in self.hosts else "is not in hosts (an undefined alias matches nothing)"

    # --- identities ---------------------------------------------------------------------------

    def _address_names(self, address: str) -> set[str]:
        return {address, *(alias for alias, a in self.hosts.items() if a.split("/")[0] == address)}

    def device_names(self, device: Device) -> set[str]:
        return {"*", *device.tags, *self._address_names(device.address)}

    def person_names(self, login: str) -> set[str]:
        return {"*", login, "autogroup:member", *(g for g, members in self.groups.items() if login in members)}

    def allows(self, src: set[str], dst: set[str], port: int) -> bool:
        return any(s & src and d & dst and (ports is None or port in ports) for s, d, ports in self.grants)

    # --- tests --------------------------------------------------------------------------------

    def test_source(self, src: str) -> set[str] | str:
        if src.startswith("autogroup:") or src.startswith("group:") or src == "*":
            return f"{src!r} cannot be a test's src (use a login, a tag or an address)"
        if src.startswith("tag:"):
            return {"*", src} if src in self.tags else f"{src!r} is not in tagOwners"
        if "@" in src:
            return self.person_names(src)
        address = self.hosts.get(src, src)
        if not ADDRESS.match(address):
            return f"{src!r} is not a login, a tag, an alias or an address"
        device = next((d for d in self.devices if d.address == address), None)
        return self.device_names(device) if device else {"*", *self._address_names(address)}

    def test_destination(self, target: str) -> tuple[set[str], int] | str:
        name, _, port = target.rpartition(":")
        if not name or not port.isdigit():
            return f"{target!r} is not name:port"
        if name.startswith("tag:"):
            return ({"*", name}, int(port)) if name in self.tags else f"{name!r} is not in tagOwners"
        address = self.hosts.get(name, name)
        if not ADDRESS.match(address):
            return f"{name!r} is not in hosts (an undefined alias matches nothing)"
        device = next((d for d in self.devices if d.address == address), None)
        return (self.device_names(device) if device else {"*", *self._address_names(address)}), int(port)

    def run_tests(self, result: Result) -> None:
        for test in self.policy.get("tests") or []:
            src = test.get("src") or test.get("user") or ""
            names = self.test_source(src)
            if isinstance(names, str):
                result.problems.append(f"tests: {names}")
                continue
            for expect, targets in (("accept", test.get("accept") or test.get("allow") or []),
                                    ("deny", test.get("deny") or [])):
                for target in targets:
                    dst = self.test_destination(target)
                    if isinstance(dst, str):
                        result.problems.append(f"tests[{src}]: {dst}")
                        continue
                    result.assertions += 1
                    if self.allows(names, *dst) != (expect == "accept"):
                        result.failures.append(f"test {src} -> {target}: expected {expect}, "
                                               f"the grants {'allow' if expect == 'deny' else 'deny'} it")


def evaluate(policy: dict, fleet_devices: list[Device], ports: set[int] | None = None) -> Result:
    """The flows `policy` allows between `fleet_devices` (on `ports`: every port a grant
    names when None), the admins' flows, and its tests' results."""
    engine = Engine(policy, fleet_devices)
    result = Result(problems=engine.undefined())
    if ports is None:
        ports = {p for _, _, grant_ports in engine.grants for p in (grant_ports or ())}
    for src in fleet_devices:
        for dst in fleet_devices:
            for port in ports:
                if engine.allows(engine.device_names(src), engine.device_names(dst), port):
                    result.flows.add((src.name, dst.name, port))
    logins = sorted({m for members in engine.groups.values() for m in members})
    for login in logins:
        for dst in fleet_devices:
            for port in ports:
                if engine.allows(engine.person_names(login), engine.device_names(dst), port):
                    result.person_flows.add((login, dst.name, port))
    engine.run_tests(result)
    return result


@dataclass(frozen=True)
class Report:
    result: Result
    missing: list[tuple[str, str, int]]  # declared by the graph, not allowed by the policy
    undeclared: list[tuple[str, str, int]]  # allowed by the policy, declared by nobody

    @property
    def ok(self) -> bool:
        return self.result.ok and not self.missing and not self.undeclared

    def lines(self) -> list[str]:
        r = self.result
        out = [f"evaluate: {len(r.flows)} host-to-host flows allowed ({len(self.missing)} declared but denied, "
               f"{len(self.undeclared)} allowed but undeclared); {len(r.person_flows)} admin flows",
               f"evaluate: the policy's tests: {r.assertions} assertions, {len(r.failures)} failed"]
        out += [f"  - missing: {s} -> {d}:{p}" for s, d, p in self.missing]
        out += [f"  - undeclared: {s} -> {d}:{p}" for s, d, p in self.undeclared]
        out += [f"  - {line}" for line in r.failures + r.problems]
        out.append("evaluate: ok" if self.ok else "evaluate: FAILED")
        return out


def check(fleet: Fleet, policy: dict, graph=None) -> Report:
    """Evaluate `policy` over the fleet's hosts and compare with the service graph's flows:
    every declared tailnet flow allowed, nothing else between the hosts or for the admins."""
    from fleet.policy.graph import ADMINS, ServiceGraph

    graph = graph or ServiceGraph(fleet)
    port = fleet.services.port
    flows = graph.tailnet_flows()
    ports = {port(f.service) for f in flows} | {port(s) for s in fleet.services.services
                                                 if "tailnet" in fleet.services.scopes(s)}
    result = evaluate(policy, devices(fleet), ports)
    declared = {(f.client, f.server, port(f.service)) for f in flows if f.client != ADMINS}
    logins = sorted({m for members in (policy.get("groups") or {}).values() for m in members})
    declared |= {(login, f.server, port(f.service)) for f in flows if f.client == ADMINS for login in logins}
    allowed = result.flows | result.person_flows
    return Report(result, sorted(declared - allowed), sorted(allowed - declared))
