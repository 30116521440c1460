"""Monitoring on the test fleet, end to end: a stopped service is reported by the prober and
its alert fires in Prometheus, then both clear after a converge; an invalid rule from data
fails the run before the live rules change, with Prometheus still running the old ones; and
the prober's peak memory and round time. Figures go to .state/monitoring-report.txt (shown
by molecule's verify step). The test fleet's data shortens the intervals (inventory.py
TEST_FLEET); every wait is bounded."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from deploys.healthcheck import STATUS
from deploys.prometheus import RULES
from fleet.preflight.inventory import read_inventory_data
from fleet.preflight.model import build_fleet, load_group_data
from harness import testfleet
from integration.conftest import docker_exec, main_pid, settle, wait_until

MONITOR = "pi400-delta"
PROBER = "pi0-epsilon"
VICTIM, SERVICE, UNIT = "pi5-gamma", "redis", "redis-server.service"
REPORT = testfleet.REPO / ".state" / "monitoring-report.txt"


@pytest.fixture(scope="module", autouse=True)
def _fresh_report():
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("")
    yield


def report(line: str) -> None:
    print(line)
    with REPORT.open("a") as out:
        out.write(line + "\n")


def services():
    hosts, _ = read_inventory_data(testfleet.REPO / "inventory.py")
    return build_fleet(hosts, *load_group_data(testfleet.REPO / "group_data")).services


def prometheus(path: str):
    """Prometheus's API, from the test runner over the test tailnet (as the operator reads it)."""
    with urllib.request.urlopen(f"http://{services().bind('prometheus', MONITOR, 'tailnet')}{path}", timeout=10) as answer:
        return json.load(answer)["data"]


def probe_result(service: str, target: str) -> dict | None:
    status = json.loads(docker_exec(PROBER, "cat", STATUS).stdout)
    return next((r for r in status["results"] if r["service"] == service and r["host"] == target), None)


def alert_state(name: str, **labels) -> str | None:
    for alert in prometheus("/api/v1/alerts")["alerts"]:
        if alert["labels"].get("alertname") == name and all(alert["labels"].get(k) == v for k, v in labels.items()):
            return alert["state"]
    return None


def test_a_stopped_service_is_reported_and_alerted_then_clears_after_a_converge():
    assert probe_result(SERVICE, VICTIM)["ok"], "the fleet must start healthy"
    started = time.monotonic()
    docker_exec(VICTIM, "systemctl", "stop", UNIT)
    try:
        wait_until(lambda: not probe_result(SERVICE, VICTIM)["ok"], f"the prober to report {SERVICE} down", timeout=120,
                   interval=2)
        probed = time.monotonic() - started
        wait_until(lambda: alert_state("ProbeFailing", service=SERVICE, target=VICTIM) == "firing",
                   "ProbeFailing to fire in Prometheus", timeout=240, interval=3)
        fired = time.monotonic() - started
        report(f"{SERVICE} stopped on {VICTIM}: the prober reported it after {probed:.0f} s, "
               f"ProbeFailing fired after {fired:.0f} s")
    finally:
        again = testfleet.converge(["--limit", VICTIM], log_name="converge-after-stopped-service")
    assert again["returncode"] == 0, again["output"][-3000:]
    healed = time.monotonic()
    wait_until(lambda: probe_result(SERVICE, VICTIM)["ok"], "the probe to pass again", timeout=120, interval=2)
    wait_until(lambda: alert_state("ProbeFailing", service=SERVICE, target=VICTIM) is None,
               "ProbeFailing to clear", timeout=240, interval=3)
    report(f"after the converge restarted it, the probe and the alert cleared in {time.monotonic() - healed:.0f} s")
    settle("converge-after-monitoring-alert")


def test_an_invalid_rule_fails_the_run_and_prometheus_keeps_the_old_rules():
    live = docker_exec(MONITOR, "cat", RULES).stdout
    pid = main_pid(MONITOR, "prometheus.service")
    bad = [{"alert": "BrokenRule", "expr": "up ==== 0"}]
    run = testfleet.converge(["--limit", MONITOR, "--data", f"prometheus_extra_rules={json.dumps(bad)}"],
                             log_name="converge-bad-rule")
    assert run["returncode"] != 0
    assert f"validation failed: {RULES} left unchanged" in run["output"]
    assert docker_exec(MONITOR, "cat", RULES).stdout == live
    assert main_pid(MONITOR, "prometheus.service") == pid, "Prometheus must not restart"
    names = {r["name"] for g in prometheus("/api/v1/rules")["groups"] for r in g["rules"]}
    assert "TargetDown" in names and "BrokenRule" not in names
    report("an invalid rule from data: the run failed, the live rules and Prometheus (same PID) unchanged")
    settle("converge-after-bad-rule")


def test_the_prober_s_peak_memory_and_round_time():
    prom = docker_exec(PROBER, "sh", "-c", "cat /var/lib/prometheus/node-exporter/fleet_probe.prom").stdout
    values = {line.split()[0]: float(line.split()[1]) for line in prom.splitlines()
              if line and not line.startswith("#") and "{" not in line.split()[0]}
    peak, duration = values["fleet_probe_memory_peak_bytes"], values["fleet_probe_run_duration_seconds"]
    targets = len(json.loads(docker_exec(PROBER, "cat", STATUS).stdout)["results"])
    report(f"the prober: {targets} probes in {duration:.2f} s per round, peak memory {peak / 2**20:.1f} MiB "
           "(the unit's cgroup)")
    assert peak < 64 * 2**20
