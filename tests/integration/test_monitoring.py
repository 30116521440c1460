"""Monitoring on the test fleet, end to end: a stopped service is reported by the prober and
its alert fires in Prometheus, then both clear after a converge; an invalid rule from data
fails the run before the live rules change, with Prometheus still running the old ones; and
the prober's peak memory and round time. Figures go to .state/monitoring-report.txt (shown
by molecule's verify step). The test fleet's data shortens the intervals (inventory.py
TEST_FLEET); every wait is bounded."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from deploys import deadman
from deploys.healthcheck import STATUS, TIMER
from deploys.prometheus import RULES
from fleet.converge.keys import secret
from fleet.converge.paths import state_root
from fleet.preflight.inventory import read_inventory_data, select_vault
from fleet.preflight.model import build_fleet, load_group_data
from harness import testfleet
from integration.conftest import docker_exec, main_pid, settle, wait_until

MONITOR = "pi400-delta"
PROBER = "pi0-epsilon"
VICTIM, SERVICE, UNIT = "pi5-gamma", "redis", "redis-server.service"
DROPLET = "droplet-failover"
REPORT = state_root(testfleet.REPO) / "monitoring-report.txt"


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


# A webhook receiver on the droplet's loopback, where the test fleet's vault URL points: it
# appends each POST body as one line and exits by itself (bounded).
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[2], "ab") as f:
            f.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
HOOK_LOG = "/root/deadman-hook.jsonl"


def deadman_state() -> dict:
    return json.loads(docker_exec(DROPLET, "cat", deadman.STATE).stdout)["probers"][PROBER]


def hook_posts() -> list[dict]:
    out = docker_exec(DROPLET, "sh", "-c", f"cat {HOOK_LOG} 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_the_droplet_alerts_when_the_prober_goes_stale_and_clears_after_a_converge():
    select_vault(testfleet.REPO, testfleet.load_inventory()[1], "test")
    url = secret(TEST_DATA()["deadman_webhook_url_key"])
    port = urllib.parse.urlsplit(url).port
    assert urllib.parse.urlsplit(url).hostname == "127.0.0.1", "the test webhook must stay on the droplet's loopback"
    assert not deadman_state()["stale"], "the fleet must start with a fresh prober"
    docker_exec(DROPLET, "rm", "-f", HOOK_LOG)
    docker_exec(DROPLET, "timeout", "400", "python3", "-c", RECEIVER, str(port), HOOK_LOG, detach=True)
    started = time.monotonic()
    docker_exec(PROBER, "systemctl", "stop", TIMER)
    try:
        wait_until(lambda: deadman_state()["stale"], "the droplet to find the prober stale", timeout=180, interval=3)
        stale = time.monotonic() - started
        wait_until(lambda: any(p["status"] == "firing" for p in hook_posts()), "a firing POST on the webhook",
                   timeout=60, interval=2)
        told = time.monotonic() - started
        journal = docker_exec(DROPLET, "journalctl", "-q", "-o", "cat", "-p", "err", "-u", deadman.SERVICE,
                              "--since", "-10min").stdout
        assert f"the health prober on {PROBER} is stale" in journal, journal[-2000:]
        report(f"prober timer stopped on {PROBER}: the droplet found it stale after {stale:.0f} s "
               f"(limit {TEST_DATA()['deadman_stale_seconds']} s) and the webhook had a firing ProberStale "
               f"after {told:.0f} s")
    finally:
        again = testfleet.converge(["--limit", PROBER], log_name="converge-after-stopped-prober")
    assert again["returncode"] == 0, again["output"][-3000:]
    healed = time.monotonic()
    try:
        wait_until(lambda: not deadman_state()["stale"], "the droplet to find the prober fresh", timeout=120,
                   interval=3)
        wait_until(lambda: hook_posts()[-1]["status"] == "resolved", "a resolved POST", timeout=60, interval=2)
        report(f"after the converge restarted the timer, the droplet cleared it and sent the all-clear in "
               f"{time.monotonic() - healed:.0f} s")
        journal = docker_exec(DROPLET, "journalctl", "-q", "-o", "cat", "-u", deadman.SERVICE).stdout
        assert url not in journal and urllib.parse.urlsplit(url).query not in journal, \
            "the webhook URL (its token) is in the journal"
    finally:
        docker_exec(DROPLET, "pkill", "-f", "deadman-hook", check=False)
    settle("converge-after-deadman")


def TEST_DATA() -> dict:
    return testfleet.load_inventory()[1]["data"]
