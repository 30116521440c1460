"""The droplet's dead man's switch: its timer runs, its watch list is the one the inventory
gives, its last check is recent and found every prober fresh, its metrics reach node
exporter, it runs unprivileged and sandboxed, and the webhook URL is only in its 0600 file."""

import json
import re

import pytest

from deploys import deadman as dm
from fleet.converge.keys import secret
from fleet.converge.vault import VaultError
from specs.conftest import fleet_services


def test_dm01_timer_enabled_and_active(fh):
    """dm-01: fleet-deadman.timer is enabled and active with the data's interval and
    triggers fleet-deadman.service."""
    timer = fh.host.service(dm.TIMER)
    assert timer.is_enabled and timer.is_running, f"{fh.name}: {dm.TIMER} is not enabled and active"
    assert f"Unit={dm.SERVICE}" in fh.host.check_output(f"systemctl show -p Unit {dm.TIMER}")
    interval = fh.data["deadman_interval_seconds"]
    assert f"OnUnitInactiveSec={interval}s" in fh.host.file(f"{dm.UNIT_DIR}/{dm.TIMER}").content_string


def test_dm02_watch_list_is_the_inventorys(fh):
    """dm-02: the watch list on the host is every prober's node exporter, as the inventory
    and the port map give it now."""
    found = json.loads(fh.host.file(dm.CONFIG).content_string)
    assert found["watch"] == dm.watch(fh.name, fleet_services()), f"{fh.name}: {dm.CONFIG} is not the data's"
    assert found["stale_seconds"] == fh.data["deadman_stale_seconds"]


def test_dm03_recent_check_every_prober_fresh(fh):
    """dm-03: the last check is younger than 3 x the interval and found every watched prober
    fresh (each stale one is named with the reason)."""
    state = json.loads(fh.host.file(dm.STATE).content_string)
    now = float(fh.host.check_output("date +%s.%N"))
    limit = 3 * fh.data["deadman_interval_seconds"]
    assert now - state["checked"] < limit, f"{fh.name}: the last check was {now - state['checked']:.0f} s ago"
    stale = [entry["reason"] for entry in state["probers"].values() if entry["stale"]]
    assert not stale, f"{fh.name}: " + "; ".join(stale)
    assert set(state["probers"]) == {w["prober"] for w in dm.watch(fh.name, fleet_services())}


def test_dm04_metrics_in_the_textfile_directory(fh):
    """dm-04: node exporter's textfile directory links to the switch's metrics, with a
    fleet_deadman_prober_fresh line per prober."""
    path = f"{dm.textfile_dir(fh.data)}/{dm.PROM_NAME}"
    link = fh.host.file(path)
    assert link.is_symlink and link.linked_to == dm.PROM, f"{fh.name}: {path} is not a link to {dm.PROM}"
    found = set(re.findall(r'^fleet_deadman_prober_fresh\{prober="([^"]+)"\} [01]$', link.content_string, re.M))
    assert found == {w["prober"] for w in dm.watch(fh.name, fleet_services())}


def test_dm05_runs_unprivileged_and_sandboxed(fh):
    """dm-05: fleet-deadman.service runs as its own system user, without new privileges, on a
    read-only system but its output directory; no process of that user listens."""
    shown = dict(line.split("=", 1) for line in fh.host.check_output(
        f"systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p ReadWritePaths {dm.SERVICE}"
    ).splitlines() if "=" in line)
    assert shown["User"] == dm.USER and shown["NoNewPrivileges"] == "yes", shown
    assert shown["ProtectSystem"] == "strict" and shown["ReadWritePaths"].split() == [dm.STATE_DIR], shown
    uid = int(fh.host.check_output(f"id -u {dm.USER}"))
    assert uid != 0 and f"uid:{uid} " not in fh.host.check_output("ss -H -ltnue") + " "


def test_dm06_webhook_url_only_in_its_file(fh):
    """dm-06: with a webhook in data, its URL is a 0600 file of the switch's user and in no
    unit file, watch list or command line (read here, searched on the test runner)."""
    key = fh.data.get("deadman_webhook_url_key")
    if not key:
        pytest.skip("no deadman_webhook_url_key in this fleet's data: nothing to look for")
    try:
        url = secret(key)
    except VaultError as exc:
        pytest.skip(f"the vault has no {key} ({exc})")
    f = fh.host.file(dm.WEBHOOK_FILE)
    assert f.user == dm.USER and f.mode == 0o600, f"{fh.name}: {dm.WEBHOOK_FILE} is {f.user} {oct(f.mode)}"
    for path in (dm.CONFIG, f"{dm.UNIT_DIR}/{dm.SERVICE}", f"{dm.UNIT_DIR}/{dm.TIMER}"):
        assert url not in fh.host.file(path).content_string, f"{fh.name}: the webhook URL is in {path}"
    cmdlines = fh.host.check_output(
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\" 2>/dev/null; echo; done")
    assert url not in cmdlines, f"{fh.name}: a process has the webhook URL in its command line"
