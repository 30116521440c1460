"""The host firewall on the test fleet: rules from data that would cut the operator off
(everything from the operator's address dropped, every SSH connection dropped) still leave
the converge's own SSH working, because the guard and the graph's accepts come first; the
run completes, a new SSH connection works, the specs pass, and the next run changes nothing.
Then the fleet is put back and settles."""

from __future__ import annotations

import json
import subprocess

from fleet.preflight.inventory import prepare, read_inventory_data, ssh_options
from harness import testfleet
from integration.conftest import REPO, docker_exec, run_specs, settle

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


def test_fleet_settles():
    back = testfleet.converge(["--limit", HOST], log_name="converge-firewall-back")
    assert back["returncode"] == 0, back["output"][-3000:]
    assert "ip saddr 100.100.255.254 drop" not in docker_exec(HOST, "nft", "list", "table", "inet",
                                                              "fleet_firewall").stdout
    settle("converge-firewall-settle")
