"""A bad sshd setting fed through data never reaches the live sshd: the run fails before
the reload, sshd keeps running with its old config, and a new SSH session still works."""

import json
import subprocess

from deploys.base import DEFAULTS
from harness import testfleet
from integration.conftest import docker_exec

HOST = "pi5-gamma"


def sshd_state():
    pid = docker_exec(HOST, "systemctl", "show", "-p", "MainPID", "--value", "ssh.service").stdout.strip()
    active = docker_exec(HOST, "systemctl", "is-active", "ssh.service", check=False).stdout.strip()
    digest = docker_exec(HOST, "sha256sum", "/etc/ssh/sshd_config").stdout.split()[0]
    return pid, active, digest


def new_ssh_session_works(name: str = HOST) -> subprocess.CompletedProcess:
    """A brand-new SSH login as the admin user, with sudo, like an operator's."""
    hosts, _ = testfleet.load_inventory()
    entry = hosts[name]
    return subprocess.run(
        ["ssh", "-i", str(testfleet.test_ssh_key(testfleet.REPO)), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={testfleet.STATE / 'known_hosts'}",
         "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
         f"{entry['ssh_user']}@{entry['tailnet_address']}", "sudo", "-n", "true"],
        text=True, capture_output=True, timeout=30,
    )


def test_invalid_sshd_setting_fails_before_reload_and_keeps_access():
    before = sshd_state()
    assert before[1] == "active"
    bad = dict(DEFAULTS["base_sshd_settings"], MaxAuthTries="many")
    result = testfleet.converge(
        ["--limit", HOST, "--data", f"base_sshd_settings={json.dumps(bad)}"],
        log_name="converge-bad-sshd",
    )
    out = result["output"]
    assert result["returncode"] != 0, "the run must fail on an invalid sshd setting"
    assert "validation failed: /etc/ssh/sshd_config left unchanged" in out
    assert "Reload sshd" not in out.split("Harden sshd", 1)[1], "sshd must not be reloaded"
    assert sshd_state() == before, "sshd must keep its PID, state and live config"
    assert docker_exec(HOST, "test", "!", "-e", "/etc/ssh/sshd_config.fleet-candidate",
                       check=False).returncode == 0, "the rejected candidate is removed"
    ssh = new_ssh_session_works()
    assert ssh.returncode == 0, ssh.stderr

    # The fleet is left as found: a normal converge of the host changes nothing.
    again = testfleet.converge(["--limit", HOST], log_name="converge-after-bad-sshd")
    assert again["returncode"] == 0 and again["changed"] == 0, again["output"][-3000:]
