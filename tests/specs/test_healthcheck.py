"""The health prober on the healthcheck hosts: its timer runs, its probe list is the one the
data gives, every probe of its last round succeeded recently, its metrics reach node
exporter's textfile directory, it runs unprivileged and sandboxed, and the vLLM key is on
no command line."""

import json
import re
import time

import pytest

from deploys import healthcheck as hc
from deploys.vllm import API_KEY
from fleet.converge.keys import secret
from fleet.converge.vault import VaultError
from specs.conftest import fleet_services

SUCCESS = re.compile(r'^fleet_probe_success\{service="([^"]*)",target="([^"]*)",probe="([^"]*)"\} ([01])$', re.M)


def probe_list(fh) -> dict:
    return json.loads(fh.host.file(hc.CONFIG).content_string)


def test_hc01_timer_enabled_and_active(fh):
    """hc-01: fleet-probe.timer is enabled and active, with the data's interval between
    rounds, and it triggers fleet-probe.service."""
    timer = fh.host.service(hc.TIMER)
    assert timer.is_enabled and timer.is_running, f"{fh.name}: {hc.TIMER} is not enabled and active"
    shown = fh.host.check_output(f"systemctl show -p Unit -p TimersMonotonic {hc.TIMER}")
    assert f"Unit={hc.SERVICE}" in shown, shown
    interval = fh.data["healthcheck_interval_seconds"]
    assert f"OnUnitInactiveSec={interval}s" in fh.host.file(f"{hc.UNIT_DIR}/{hc.TIMER}").content_string


def test_hc02_probe_list_is_the_datas(fh):
    """hc-02: the probe list on the host is the one the port map and the inventory give now
    (one probe per service with a probe, on every host running it), nothing by hand."""
    wanted = hc.targets(fh.name, fh.data, fleet_services())
    found = probe_list(fh)
    assert found["probes"] == wanted, f"{fh.name}: {hc.CONFIG} is not the data's probe list (converge)"
    assert found["deadline_seconds"] == hc.deadline_seconds(fh.data)


def test_hc03_recent_round_every_probe_ok(fh):
    """hc-03: the status file is younger than 3 x the interval, and every probe in it
    succeeded (each failure is listed with its error)."""
    status = json.loads(fh.host.file(hc.STATUS).content_string)
    now = float(fh.host.check_output("date +%s.%N"))
    limit = 3 * fh.data["healthcheck_interval_seconds"]
    assert now - status["finished"] < limit, \
        f"{fh.name}: the last probe round finished {now - status['finished']:.0f} s ago (limit {limit} s)"
    failed = [f"{p['service']} on {p['host']} ({p['probe']}): {p['error']}" for p in status["results"] if not p["ok"]]
    assert not failed, f"{fh.name}: failing probes: " + "; ".join(failed)
    assert len(status["results"]) == len(probe_list(fh)["probes"])


def test_hc04_metrics_for_every_target(fh):
    """hc-04: node exporter's textfile directory has fleet_probe.prom (a link to the
    prober's own file) with a fleet_probe_success line for every target of the probe list,
    and the round's timestamp, duration and memory peak."""
    textfile = f"{hc.textfile_dir(fh.data)}/{hc.PROM_NAME}"
    link = fh.host.file(textfile)
    assert link.is_symlink and link.linked_to == hc.PROM, f"{fh.name}: {textfile} is not a link to {hc.PROM}"
    prom = fh.host.file(textfile).content_string
    found = {(service, host, probe) for service, host, probe, _ in SUCCESS.findall(prom)}
    wanted = {(p["service"], p["host"], p["probe"]) for p in probe_list(fh)["probes"]}
    assert found == wanted, f"{fh.name}: missing {sorted(wanted - found)}, unexpected {sorted(found - wanted)}"
    for name in ("fleet_probe_last_run_timestamp_seconds", "fleet_probe_run_duration_seconds",
                 "fleet_probe_memory_peak_bytes"):
        assert re.search(rf"^{name} \S+$", prom, re.M), f"{fh.name}: no {name}"
    peak = re.search(r"^fleet_probe_memory_peak_bytes (\S+)$", prom, re.M).group(1)
    if peak != "NaN":
        assert float(peak) < 64 * 1024 * 1024, f"{fh.name}: the prober peaked at {float(peak) / 1048576:.1f} MiB"


def test_hc05_runs_unprivileged_and_sandboxed(fh):
    """hc-05: fleet-probe.service runs as the fleet-probe system user (not root), without new
    privileges, on a read-only system but its own output directory, and no process of that
    user listens on a port."""
    shown = dict(line.split("=", 1) for line in fh.host.check_output(
        f"systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p ReadWritePaths -p Type {hc.SERVICE}"
    ).splitlines() if "=" in line)
    assert shown["User"] == hc.USER and shown["Type"] == "oneshot", shown
    uid = int(fh.host.check_output(f"id -u {hc.USER}"))
    assert uid != 0, f"{fh.name}: {hc.USER} is root"
    assert shown["NoNewPrivileges"] == "yes" and shown["ProtectSystem"] == "strict", shown
    assert shown["ReadWritePaths"].split() == [hc.STATE_DIR], shown
    listeners = fh.host.check_output("ss -H -ltnue")
    assert f"uid:{uid} " not in listeners + " ", f"{fh.name}: a {hc.USER} process listens: {listeners}"


def test_hc06_vllm_key_on_no_command_line(fh):
    """hc-06: no process on the host has the vLLM API key in its command line (the llm probe
    reads it from its 0600 file). The command lines are read here and searched on the test
    runner, so the key itself never goes into a command on the host."""
    try:
        key = secret(API_KEY)
    except VaultError as exc:
        pytest.skip(f"the vault has no vLLM key to look for ({exc})")
    cmdlines = fh.host.check_output(
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done")
    assert cmdlines.strip(), f"{fh.name}: no command line could be read"
    leaked = sum(key in line for line in cmdlines.splitlines())
    assert not leaked, f"{fh.name}: {leaked} process(es) have the vLLM API key in their command line"



def test_hc07_ssh_probes_leave_no_sshd_error(fh):
    """hc-07: a probe round started now ends its SSH probe of this host's own sshd (over the
    tailnet, as it probes every other host's) as sshd expects, its identification line
    answered: sshd logged the connection, and no error for it. (A bare TCP connect made sshd
    log `error: kex_exchange_identification: Connection closed by remote host`, once per probe,
    on every host.) Runs in this host's lane, after or before its fw-02 (whose plain connects
    log that error), never beside it. This host's own journal only: every other host's would
    cost the lane a new SSH login each, for the same probe code and the same sshd."""
    probes = [p for p in probe_list(fh)["probes"] if p["service"] == "ssh" and p["host"] == fh.name]
    if not probes:
        pytest.skip(f"{fh.name} does not probe its own sshd")
    # A oneshot: `start` returns when its round has ended, but joins a round the timer began
    # before it, whose first probes may predate `since`: so it starts once no round is under
    # way (bounded wait), a whole round of its own (1 s of slack for the timer's racing it).
    for _ in range(40):
        if fh.host.check_output(f"systemctl show -p ActiveState --value {hc.SERVICE}") != "activating":
            break
        time.sleep(0.5)
    since = float(fh.host.check_output("date +%s.%N")) - 1
    started = fh.host.run(f"systemctl start {hc.SERVICE}")
    if started.rc != 0 and fh.host.check_output(f"systemctl show -p Result --value {hc.SERVICE}") == "start-limit-hit":
        time.sleep(10)  # systemd's default limit, 5 starts in 10 s: spec runs back to back reach it
        started = fh.host.run(f"systemctl start {hc.SERVICE}")
    assert started.rc == 0, f"{fh.name}: systemctl start {hc.SERVICE}: {started.stderr.strip()}"
    marker = f" {fh.tailnet_address} port "
    pids, errors = set(), []
    for _ in range(10):  # sshd logs the close just after it: up to ~5 s for the line to land
        entries = [json.loads(line) for line in fh.host.check_output(
            f"journalctl -t sshd --since @{since:.3f} -o json --output-fields=_PID,PRIORITY,MESSAGE "
            "--no-pager").splitlines() if line.startswith("{")]
        # sshd names the peer's address in one line per connection; its other lines share the PID.
        # By syslog identifier: a connection's sshd often exits before journald reads its /proc
        # entry, and its lines then have no _COMM to match.
        pids = {e.get("_PID") for e in entries if marker in str(e.get("MESSAGE"))}
        errors = [str(e.get("MESSAGE")) for e in entries if e.get("_PID") in pids and int(e.get("PRIORITY", 6)) <= 3]
        if pids:
            break
        time.sleep(0.5)
    assert pids, f"{fh.name}: sshd logged no connection from the round's probe"
    assert not errors, f"{fh.name}: sshd logged errors for the SSH probe: {errors[:2]}"
