"""Each host's firewall (every host): the rules loaded are the ones generated from the
service graph, every declared flow from the host connects, and a sample of undeclared flows
(one per other host that serves one) is dropped: the connection times out, where without
the firewall it would be answered."""

import json
from functools import lru_cache

from fleet.converge.render import render
from fleet.policy.firewall import ruleset
from fleet.policy.graph import ServiceGraph
from harness.probe import PROBE
from specs.conftest import fleet_model

RULES = "/etc/fleet/firewall.nft"



@lru_cache(maxsize=1)
def graph() -> ServiceGraph:
    return ServiceGraph(fleet_model())


def connect(fh, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    if not targets:
        return {}
    out = fh.host.check_output(f"python3 -c {shquote(PROBE)} {shquote(json.dumps(targets))}")
    return dict(zip(targets, json.loads(out)))


def shquote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_fw01_the_loaded_rules_are_the_generated_ones(fh):
    """fw-01: /etc/fleet/firewall.nft is what the graph generates for this host (with this
    run's SSH source as the guarded one), and the kernel holds its table with as many rules
    in each chain as the file has."""
    source = fh.user_host.check_output('echo "${SSH_CONNECTION%% *}"')
    expected = render("etc/fleet/firewall.nft.j2", "firewall", **ruleset(fh.name, graph(), [source], data=fh.data))
    assert fh.host.file(RULES).content_string == expected
    for chain in ("input", "forward"):
        live = fh.host.check_output(f"nft list chain inet fleet_firewall {chain}")
        count = lambda text: len([line for line in text.split(f"chain {chain} {{", 1)[1].split("}\n", 1)[0].splitlines()
                                  if line.strip() and not line.strip().startswith(("#", "type "))])
        file_chain = expected.split(f"chain {chain} {{", 1)[1].split("\n\t}", 1)[0] + "\n}\n"
        assert count(live) == count(f"chain {chain} {{" + file_chain), chain
    assert fh.host.service("fleet-firewall").is_enabled


def test_fw02_every_declared_flow_connects(fh):
    """fw-02: from this host, every service of another host the graph lets it reach over the
    tailnet accepts the connection."""
    fleet = fleet_model()
    flows = [f for f in graph().tailnet_flows() if f.client == fh.name and f.server != fh.name]
    targets = sorted({(fleet.hosts[f.server].tailnet_address, fleet.services.port(f.service)) for f in flows})
    results = connect(fh, targets)
    assert {t: r for t, r in results.items() if r != "open"} == {}


def test_fw03_undeclared_flows_are_dropped(fh):
    """fw-03: for each other host that serves something on the tailnet this host is not a
    client of, one such port (the lowest) does not connect: the SYN is dropped (a timeout,
    not a refusal). The port is one the host listens on, so only the firewall stops it."""
    fleet = fleet_model()
    allowed = {(f.server, f.service) for f in graph().tailnet_flows() if f.client == fh.name}
    targets, names = [], {}
    for other in fleet.hosts:
        if other == fh.name:
            continue
        ports = sorted(fleet.services.port(s) for s in fleet.services.on(other)
                       if "tailnet" in fleet.services.scopes(s) and (other, s) not in allowed)
        if ports:
            target = (fleet.hosts[other].tailnet_address, ports[0])
            targets.append(target)
            names[target] = other
    results = connect(fh, targets)
    assert {f"{names[t]}:{t[1]}": r for t, r in results.items() if r != "timeout"} == {}
    assert targets, "no undeclared flow from this host to sample"
