"""The host firewall on the test fleet: rules from data that would cut the operator off
(everything from the operator's address dropped, every SSH connection dropped) still leave
the converge's own SSH working, because the guard and the graph's accepts come first; the
run completes, a new SSH connection works, the specs pass, and the next run changes nothing.
A listener on a wildcard address, and a container published on one, are reached from no
other host. Then the fleet is put back and settles."""

from __future__ import annotations

import json
import subprocess

from fleet.preflight.inventory import prepare, read_inventory_data, ssh_options
from harness import testfleet
from harness.probe import PROBE
from integration.conftest import REPO, docker_exec, run_specs, settle, wait_until

HOST = "pi5-beta"
WRONG = ["ip saddr 100.100.255.254 drop", "tcp dport 22 drop"]


def new_ssh_connection() -> subprocess.CompletedProcess:
    """A fresh SSH connection (no shared master) from the operator's machine, as pyinfra makes."""
    hosts, test_fleet = read_inventory_data(REPO / "inventory.py")
    entries, _ = prepare(hosts, test_fleet, str(REPO / "inventory.py"), target="test")
    entry = entries[HOST]
    return subprocess.run(["ssh", *ssh_options(entry), "-i", entry["ssh_key"], "-o", "IdentitiesOnly=yes",
                           "-o", "ControlPath=none", f"{entry['ssh_user']}@{entry['ssh_hostname']}", "true"],
                          capture_output=True, text=True, timeout=30)


def test_a_wrong_rule_in_data_cannot_cut_the_converges_ssh():
    data = ["--data", f"firewall_extra_rules={json.dumps(WRONG)}"]
    run = testfleet.converge(["--limit", HOST, *data], log_name="converge-firewall-wrong-rule")
    assert run["returncode"] == 0, run["output"][-3000:]
    live = docker_exec(HOST, "nft", "list", "chain", "inet", "fleet_firewall", "input").stdout
    assert all(rule in live for rule in WRONG), live
    ssh = new_ssh_connection()
    assert ssh.returncode == 0, ssh.stderr
    again = testfleet.converge(["--limit", HOST, *data], log_name="converge-firewall-wrong-rule-again")
    assert again["returncode"] == 0 and again["changed"] == 0, again["output"][-3000:]
    specs = run_specs("fw0 or ssh", HOST, {"firewall_extra_rules": WRONG})
    assert specs.returncode == 0, specs.stdout[-3000:]


# A listener on every address of the host, IPv4 and IPv6 (what the specs refuse, net-01), for
# at most LISTEN_FOR seconds; harness.probe's PROBE tries each address once, for at most 1 s.
ROGUE_PORT = 7777
LISTEN_FOR = 90
LISTENER = ("import socket, time\n"
            "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
            f"s.bind(('::', {ROGUE_PORT})); s.listen(); time.sleep({LISTEN_FOR})\n")


def probe(host: str, *targets: tuple[str, int]) -> list[str]:
    """harness.probe's answer for each (address, port), from `host`: open, refused or timeout."""
    return json.loads(docker_exec(host, "python3", "-c", PROBE, json.dumps(targets)).stdout)


def test_a_wildcard_listener_is_reached_from_no_other_host():
    """A process listening on 0.0.0.0 and :: on pi5-beta (net-01 reports it) is reached over
    loopback only. From pi5-alpha, its port on pi5-beta's tailnet and LAN addresses is dropped
    (a timeout, not the refusal a host without a firewall answers), while SSH on the LAN
    address still connects."""
    hosts, test_fleet = testfleet.load_inventory()
    tailnet, lan = hosts[HOST]["tailnet_address"], test_fleet["lan_addresses"][HOST].split("/")[0]
    docker_exec(HOST, "python3", "-c", LISTENER, detach=True)
    try:
        wait_until(lambda: f":{ROGUE_PORT} " in docker_exec(HOST, "ss", "-Htln").stdout, "the listener")
        seen = probe("pi5-alpha", (tailnet, ROGUE_PORT), (lan, ROGUE_PORT), (lan, 22))
        assert seen == ["timeout", "timeout", "open"], seen  # dropped, dropped, LAN SSH answers
        assert probe(HOST, ("127.0.0.1", ROGUE_PORT)) == ["open"]
    finally:
        docker_exec(HOST, "pkill", "-f", f"s.bind\\(\\('::', {ROGUE_PORT}\\)", check=False)


def test_a_container_published_on_every_address_is_reached_from_no_other_host():
    """A container published by hand on 0.0.0.0 (`docker run -p 0.0.0.0:PORT:8080`; the
    engine's own default is loopback) is reached through Docker's DNAT and the forward hook:
    from pi5-alpha, dropped on pi5-beta's LAN and tailnet addresses; on pi5-beta, its port on
    loopback answers, and the app pi5-beta runs still answers its client over the tailnet."""
    hosts, test_fleet = testfleet.load_inventory()
    tailnet, lan = hosts[HOST]["tailnet_address"], test_fleet["lan_addresses"][HOST].split("/")[0]
    image = docker_exec(HOST, "docker", "ps", "--filter", "label=fleet.app=agents", "--format", "{{.Image}}").stdout.split()
    assert image, "no agents app container on " + HOST
    port = ROGUE_PORT + 1
    docker_exec(HOST, "docker", "run", "-d", "--rm", "--name", "fleet-test-rogue", "-p", f"0.0.0.0:{port}:8080",
                "-e", "APP_NAME=rogue", image[0])
    try:
        wait_until(lambda: probe(HOST, ("127.0.0.1", port)) == ["open"], "the published container on loopback")
        seen = probe("pi5-alpha", (tailnet, port), (lan, port), (tailnet, 8001))
        # 8001: the agents service, whose client pi5-alpha is (the gateway's tunnel)
        assert seen == ["timeout", "timeout", "open"], seen
    finally:
        docker_exec(HOST, "docker", "rm", "-f", "fleet-test-rogue", check=False)


def test_fleet_settles():
    back = testfleet.converge(["--limit", HOST], log_name="converge-firewall-back")
    assert back["returncode"] == 0, back["output"][-3000:]
    assert "ip saddr 100.100.255.254 drop" not in docker_exec(HOST, "nft", "list", "table", "inet",
                                                              "fleet_firewall").stdout
    settle("converge-firewall-settle")
