"""The setup checklist's phases on the test fleet (`make phase1` ... `make phase4`), and an item
turning failing when its cause is injected, then done again after the next phase run.

Cloudflare is the fake API on 127.0.0.1 (tests/fakes/cloudflare_api.py): the account the test
fleet's data names, its two zones, the tunnels whose credentials the demo vault holds (made
before, as `make edge-apply` would have), the Workers and KV namespaces the data keeps. The
phases' own converge adds the DNS records. Each run's output goes to .state/phases-report.txt
(molecule prints it).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fleet.checklist import ITEMS, PHASES
from fleet.converge.paths import state_root
from harness import testfleet
from integration.conftest import REPO, docker_exec, edge_env, edge_fake, settle, wait_until

REPORT = state_root(REPO) / "phases-report.txt"
MANUAL = {i["id"] for i in ITEMS if i["verify"][0][0] == "manual"}
LINE = re.compile(r"^(p\d-\d\d)  (done|failing|manual|n/a)\s+(.*)$")
# The phase runner's own lines (pyinfra's and pytest's output, also printed, are left out).
OWN = re.compile(r"^(phase |converge:|verify:|blocked by:|p\d-\d\d  |         |created |changed |apply:)")


@pytest.fixture(scope="module")
def cloudflare():
    fake = edge_fake()
    yield fake
    fake.stop()


def phase(cloudflare, number: int, *args: str) -> tuple[int, str, dict[str, str]]:
    env = edge_env(cloudflare)
    run = subprocess.run([sys.executable, "-m", "fleet", "phase", str(number), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    with open(REPORT, "a") as report:
        report.write(f"$ python -m fleet phase {number}{' ' + ' '.join(args) if args else ''}   "
                     f"(exit {run.returncode})\n")
        report.write("\n".join(line for line in out.splitlines() if OWN.match(line)) + "\n\n")
    statuses = {m.group(1): m.group(2) for m in map(LINE.match, out.splitlines()) if m}
    return run.returncode, out, statuses


def test_every_phase_on_the_converged_fleet(cloudflare):
    REPORT.unlink(missing_ok=True)
    for number in PHASES:
        rc, out, statuses = phase(cloudflare, number)
        expected = {i["id"] for i in ITEMS if i["id"].startswith(f"p{number}-")}
        assert set(statuses) == expected, out[-3000:]
        wrong = {i: s for i, s in statuses.items() if s != ("manual" if i in MANUAL else "done")}
        assert not wrong and rc == 0, (wrong, out[-4000:])
        assert re.search(rf"^phase {number} \(\w+\): \d+ done, 0 failing", out, re.M), out[-1000:]
        report = json.loads((testfleet.STATE / "phases" / f"phase{number}.json").read_text())
        assert report["counts"]["failing"] == 0 and not report["blocked_by"]
    # the phase 1 converge made the DNS records; nothing was deleted
    assert not [w for w in cloudflare.writes if w[0] == "DELETE"]
    assert len([r for r in cloudflare.records.values() if r["type"] == "CNAME" and r["proxied"]]) == 7


def test_an_unreachable_peer_fails_the_ping_item_until_the_next_phase_run(cloudflare):
    docker_exec("pi5-beta", "systemctl", "stop", "tailscaled")
    try:
        rc, out, statuses = phase(cloudflare, 1, "--check-only")
        assert rc == 1 and statuses["p1-02"] == "failing", out[-3000:]
        assert "pi5-alpha -> pi5-beta (100.100.0.2): no reply to tailscale ping" in out
        assert re.search(r"^pi5-beta\s+(XX ?)+", out, re.M) or "pi5-beta -> " in out
        assert statuses["p1-01"] == "failing"  # ts01: the daemon is not running
        # phase 2 now says which earlier item blocks it
        rc2, out2, _ = phase(cloudflare, 2, "--check-only")
        assert rc2 == 1 and "blocked by: p1-02 Verify all devices can ping each other via Tailscale" in out2
    finally:
        # the next phase run converges the tailnet again: tailscaled is started, the item is done
        rc, out, statuses = phase(cloudflare, 1)
    assert rc == 0 and statuses["p1-02"] == "done", out[-3000:]
    wait_until(lambda: docker_exec("pi5-beta", "systemctl", "is-active", "tailscaled", check=False).stdout.strip()
               == "active", "tailscaled active on pi5-beta", timeout=10)
    settle("converge-after-phases.log")
