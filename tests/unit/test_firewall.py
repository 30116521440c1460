"""Each host's firewall from the service graph: every host's rules pass `nft -c`, a service
accepts exactly its graph clients, the converge's own SSH source comes before any rule from
data, and bad settings are refused before any host is touched."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fleet.converge.render import render
from fleet.policy.firewall import ruleset
from fleet.policy.graph import ServiceGraph
from fleet.preflight.validate import problems

RUNNER = "100.100.255.254"


def rules_for(data, name: str, extra: list[str] | None = None) -> str:
    fleet = data.fleet()
    if extra is not None:
        fleet.hosts[name].data["firewall_extra_rules"] = extra
    context = ruleset(name, ServiceGraph(fleet), [RUNNER])
    return render("etc/fleet/firewall.nft.j2", "firewall", **context)


def chain(text: str, name: str) -> list[str]:
    body = text.split(f"chain {name} {{", 1)[1].split("\n\t}", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed here (Debian's nftables; .ci/run installs it)")
def test_every_hosts_rules_pass_nft_check(data, tmp_path):
    for name in data.fleet().hosts:
        path = tmp_path / f"{name}.nft"
        path.write_text(rules_for(data, name, extra=["drop"]))
        proc = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


def test_a_service_accepts_exactly_its_graph_clients(data):
    text = rules_for(data, "pi5-gamma")
    rules = chain(text, "input")
    # postgres: the api role's gateway host and the prober, nobody else
    assert "ip daddr 100.100.0.3 tcp dport 5432 ip saddr { 100.100.0.1, 100.100.0.5 } accept" in rules
    # node exporter: Prometheus and the prober
    assert "ip daddr 100.100.0.3 tcp dport 9100 ip saddr { 100.100.0.4, 100.100.0.5 } accept" in rules
    # loopback and answers first, the drop of the rest, to every address of the host, last
    assert rules[:3] == ['type filter hook input priority filter; policy accept;', 'iif "lo" accept',
                         "ct state established,related accept"]
    assert rules[-1] == "meta l4proto tcp drop"
    # the LAN address accepts SSH alone
    assert [r for r in rules if "192.168.1.13" in r] == ["ip daddr 192.168.1.13 tcp dport 22 accept"]
    # a published container is reached through forward: the same clients, the same drop
    forward = chain(text, "forward")
    assert ("ct original ip daddr 100.100.0.3 meta l4proto tcp ct original proto-dst 5432 "
            "ip saddr { 100.100.0.1, 100.100.0.5 } accept") in forward
    assert forward[-2:] == ["ct original ip daddr 100.100.0.3 meta l4proto tcp drop", "ct status dnat meta l4proto tcp drop"]


def test_admins_are_never_a_fleet_host(data):
    rules = chain(rules_for(data, "pi400-delta"), "input")
    assert "ip daddr 100.100.0.4 tcp dport 3000 ip saddr != @fleet_hosts ip saddr @admin_sources accept" in rules
    # a service without admins among its clients has no admin rule
    assert not any("dport 19532" in r and "admin_sources" in r for r in rules)


def test_the_converges_own_ssh_comes_before_any_rule_from_data(data):
    rules = chain(rules_for(data, "pi5-beta", extra=["drop"]), "input")
    guard = rules.index(f"ip saddr {RUNNER} tcp dport 22 accept")
    assert guard < rules.index("drop") and guard == 3
    assert rules.index("ip daddr 192.168.1.12 tcp dport 22 accept") < rules.index("drop")


def test_lan_ssh_follows_the_data(data):
    data.all_data["firewall_lan_ssh"] = False
    rules = chain(rules_for(data, "pi5-beta"), "input")
    # no accept on the LAN address: its SSH falls to the final drop (the guard still lets the run in)
    assert not [r for r in rules if "192.168.1.12" in r] and rules[-1] == "meta l4proto tcp drop"
    assert f"ip saddr {RUNNER} tcp dport 22 accept" in rules


def test_a_service_bound_to_the_lan_is_open_there(data):
    """A port-map service with a `lan` bind is accepted on the LAN address, from the LAN, as SSH
    is; its tailnet bind keeps the graph's rule."""
    data.all_data["fleet_services"]["node-exporter"]["bind"] = ["lan", "tailnet"]
    rules = chain(rules_for(data, "pi5-beta"), "input")
    assert [r for r in rules if "192.168.1.12" in r] == ["ip daddr 192.168.1.12 tcp dport 22 accept",
                                                         "ip daddr 192.168.1.12 tcp dport 9100 accept"]
    assert "ip daddr 100.100.0.2 tcp dport 9100 ip saddr { 100.100.0.4, 100.100.0.5 } accept" in rules


@pytest.mark.parametrize("key, value, message", [
    ("firewall_admin_sources", ["100.64.0.0/33"], "is not an IPv4 address or network"),
    ("firewall_operator_sources", ["laptop"], "is not an IPv4 address or network"),
    # sources outside the tailnet would reach the tailnet address only from the LAN, around Tailscale
    ("firewall_operator_sources", ["0.0.0.0/0"], "is outside the tailnet (100.64.0.0/10)"),
    ("firewall_admin_sources", ["192.168.1.0/24"], "is outside the tailnet (100.64.0.0/10)"),
    ("firewall_admin_sources", ["100.0.0.0/8"], "is outside the tailnet (100.64.0.0/10)"),
    ("firewall_extra_rules", ["accept; flush ruleset"], "is not one nftables rule"),
])
def test_bad_settings_are_refused(data, key, value, message):
    data.all_data[key] = value
    found = [str(p) for p in problems(data.fleet()) if p.key.startswith(key)]
    assert found and all(message in line and "Fix:" in line for line in found)
