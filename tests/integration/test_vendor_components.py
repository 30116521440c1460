"""Vendor components on the test fleet: change scope, validation before restart, tag changes
without a new auth key, stale apt sources, Raspberry Pi cmdline. Each test puts the fleet
back and shows the converge settles to no changes."""

from __future__ import annotations

import json
import runpy

from harness import testfleet
from integration.conftest import docker_exec, main_pid, settle

AGENTS = ("pi5-alpha", "pi5-beta")


def pids(units=("docker.service", "tailscaled.service", "ssh.service")) -> dict:
    hosts, _ = testfleet.load_inventory()
    out = {}
    for host in hosts:
        for unit in units:
            if docker_exec(host, "systemctl", "is-active", unit, check=False).stdout.strip() == "active":
                out[(host, unit)] = main_pid(host, unit)
    return out


def ts_status(host: str) -> dict:
    return json.loads(docker_exec(host, "tailscale", "status", "--json").stdout)


def test_group_data_change_restarts_docker_once_on_that_group_only(tmp_path):
    extra = tmp_path / "group_data"
    extra.mkdir()
    (extra / "agents.py").write_text('docker_log_max_size = "20m"\n')
    before = pids()
    changed = testfleet.converge(["--group-data", str(extra)], log_name="converge-docker-agents")
    assert changed["returncode"] == 0, changed["output"][-3000:]
    after = pids()
    moved = sorted(key for key in before if before[key] != after.get(key))
    assert moved == [(h, "docker.service") for h in AGENTS], f"restarted: {moved}"
    restarts = [line for line in changed["output"].split("Restart docker for its new daemon.json", 1)[1]
                .split("--> Starting operation", 1)[0].splitlines() if "Success" in line]
    assert len(restarts) == len(AGENTS)
    for host in AGENTS:
        live = json.loads(docker_exec(host, "cat", "/etc/docker/daemon.json").stdout)
        assert live["log-opts"]["max-size"] == "20m"
    third = testfleet.converge(["--group-data", str(extra)], log_name="converge-docker-agents-again")
    assert third["returncode"] == 0 and third["changed"] == 0, third["output"][-3000:]
    # back to the committed data
    back = testfleet.converge([], log_name="converge-docker-agents-back")
    assert back["returncode"] == 0
    settle("converge-docker-agents-settled")


def test_invalid_daemon_json_fails_before_any_restart():
    host = "pi5-gamma"
    before_pid = main_pid(host, "docker.service")
    before_json = docker_exec(host, "cat", "/etc/docker/daemon.json").stdout
    # a key docker_daemon_extra may set (the fleet's own, live-restore among them, are refused
    # before any host is touched), with a value dockerd would refuse at its next start
    bad = testfleet.converge(["--limit", host, "--data", 'docker_daemon_extra={"debug": "maybe"}'],
                             log_name="converge-bad-daemon-json")
    assert bad["returncode"] != 0
    assert "debug: must be true or false" in bad["output"]
    assert "validation failed: /etc/docker/daemon.json left unchanged" in bad["output"]
    assert "Restart docker for its new daemon.json" not in bad["output"].split("Render daemon.json", 1)[1]
    assert main_pid(host, "docker.service") == before_pid, "docker must not restart"
    assert docker_exec(host, "systemctl", "is-active", "docker").stdout.strip() == "active"
    assert docker_exec(host, "cat", "/etc/docker/daemon.json").stdout == before_json
    settle("converge-after-bad-daemon-json")


def test_changing_a_groups_tags_needs_no_new_auth_key():
    tags = runpy.run_path(str(testfleet.REPO / "group_data" / "all.py"))["tailscale_tags_by_group"]
    tags = dict(tags, agents=["tag:agents", "tag:workers"])
    before = {h: ts_status(h) for h in (*AGENTS, "pi5-gamma")}
    keys = {h: docker_exec(h, "sha256sum", "/etc/tailscale/authkey").stdout for h in AGENTS}
    run = testfleet.converge(["--data", f"tailscale_tags_by_group={json.dumps(tags)}"],
                             log_name="converge-tags")
    assert run["returncode"] == 0, run["output"][-3000:]
    for host in AGENTS:
        now = ts_status(host)
        assert "tag:workers" in now["Self"]["Tags"] and now["BackendState"] == "Running"
        assert now["StandIn"]["Logins"] == before[host]["StandIn"]["Logins"], "no new login"
        assert docker_exec(host, "sha256sum", "/etc/tailscale/authkey").stdout == keys[host]
    assert ts_status("pi5-gamma")["Self"].get("Tags") == before["pi5-gamma"]["Self"].get("Tags")
    back = testfleet.converge([], log_name="converge-tags-back")
    assert back["returncode"] == 0
    assert all("tag:workers" not in (ts_status(h)["Self"].get("Tags") or []) for h in AGENTS)
    settle("converge-tags-settled")


def test_stale_apt_source_for_the_same_uri_is_removed():
    host = "pi5-gamma"
    stale = "/etc/apt/sources.list.d/tailscale.list"
    _, test_fleet = testfleet.load_inventory()
    uri = test_fleet["data"]["tailscale_apt"]["uris"]
    # what Tailscale's install script leaves: a one-line source with another Signed-By path
    docker_exec(host, "sh", "-c", f"echo 'deb [signed-by=/usr/share/keyrings/tailscale-archive-keyring.gpg]"
                                  f" {uri} bookworm main' > {stale}")
    conflict = docker_exec(host, "apt-get", "update", check=False)
    assert "Conflicting values set for option Signed-By" in conflict.stderr + conflict.stdout
    fixed = testfleet.converge(["--limit", host], log_name="converge-stale-source")
    assert fixed["returncode"] == 0, fixed["output"][-3000:]
    assert docker_exec(host, "test", "-e", stale, check=False).returncode == 1
    clean = docker_exec(host, "apt-get", "update", check=False)
    assert clean.returncode == 0 and "Conflicting" not in clean.stderr + clean.stdout
    settle("converge-after-stale-source")


def test_raspberry_pi_cmdline_gets_memory_cgroups_once():
    host = "pi5-beta"
    path = "/boot/firmware/cmdline.txt"
    line = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait"
    docker_exec(host, "sh", "-c", f"mkdir -p /boot/firmware && printf '%s\\n' '{line}' > {path}"
                                  " && rm -f /var/run/reboot-required")
    try:
        run = testfleet.converge(["--limit", host], log_name="converge-cmdline")
        assert run["returncode"] == 0, run["output"][-3000:]
        lines = docker_exec(host, "cat", path).stdout.splitlines()
        assert lines == [f"{line} cgroup_memory=1 cgroup_enable=memory"], "one line, tokens appended once"
        assert docker_exec(host, "test", "-e", "/var/run/reboot-required", check=False).returncode == 0
        assert docker_exec(host, "systemctl", "is-system-running", check=False).stdout.strip() in ("running", "degraded")
        again = testfleet.converge(["--limit", host], log_name="converge-cmdline-again")
        assert again["returncode"] == 0 and again["changed"] == 0
    finally:
        docker_exec(host, "rm", "-rf", "/boot/firmware", "/var/run/reboot-required", "/var/run/reboot-required.pkgs")
