"""Backups of the hosts that declare state: timers, a recent snapshot, a recent successful
drill, and a repository that refuses deletion from the host."""

import json
import re
import shlex
import time

from deploys.backup import KEY, LAST_DRILL, repository_hosts
from fleet.converge import component as registry
from specs.conftest import fleet_services


def restic(fh, args: str):
    return fh.host.run(f"/usr/local/sbin/fleet-restic {args}")


def snapshots(fh) -> list[dict]:
    # --no-lock: a listing needs none, and the repository host's retention run may hold it
    return json.loads(restic(fh, f"snapshots --no-lock --json --host {fh.name}").stdout)


_FIRST: dict[str, list[dict]] = {}


def first_snapshots(fh) -> list[dict]:
    """The host's snapshots as first listed in this run: bk-02 and bk-03 both start from it
    (each listing is ~1 s of restic's key derivation on the host); bk-03's check after its
    refused forget lists them again."""
    if fh.name not in _FIRST:
        _FIRST[fh.name] = snapshots(fh)
    return _FIRST[fh.name]


def interval_seconds(fh, schedule: str) -> float:
    """Seconds between two elapses of an OnCalendar expression, as systemd computes them."""
    out = fh.host.check_output(f"systemd-analyze calendar --iterations 2 '{schedule}'")
    stamps = re.findall(r"(?:Next elapse|Iter\. #2): \w+ (\S+ \S+)", out)
    t0, t1 = (time.mktime(time.strptime(s, "%Y-%m-%d %H:%M:%S")) for s in stamps[:2])
    return t1 - t0


def test_bk01_timers_enabled(fh):
    """bk-01: the backup and drill timers are enabled and waiting, Persistent (a missed run
    happens at boot), with the data's schedules."""
    for timer, schedule in (("fleet-backup.timer", fh.data["backup_schedule"]),
                            ("fleet-restore-drill.timer", fh.data["backup_drill_schedule"])):
        unit = fh.host.service(timer)
        assert unit.is_enabled and unit.is_running, timer
        shown = fh.host.check_output(f"systemctl show -p Persistent -p TimersCalendar {timer}")
        normalized = fh.host.check_output(f"systemd-analyze calendar '{schedule}' | sed -n 's/.*Normalized form: //p'")
        assert "Persistent=yes" in shown and f"OnCalendar={normalized} " in shown, shown


def test_bk02_recent_snapshot_of_the_declared_state(fh):
    """bk-02: the latest snapshot is younger than the backup interval plus slack (the random
    delay and 15 minutes), and holds every state path the host's components declare."""
    found = first_snapshots(fh)
    assert found, "no snapshot"
    latest = max(found, key=lambda s: s["time"])
    age = float(fh.host.check_output(f"echo $(( $(date +%s) - $(date -d {latest['time'][:19]}Z +%s) ))"))
    limit = interval_seconds(fh, fh.data["backup_schedule"]) + 15 * 60
    assert age < limit, f"latest snapshot is {age:.0f}s old (limit {limit:.0f}s)"
    assert sorted(latest["paths"]) == sorted(registry.state_paths(fh.name, fh.groups, fh.data))


def test_bk03_repository_refuses_deletion(fh):
    """bk-03: from this host, `restic forget` of a snapshot is refused by the repository
    host (403 from rclone's append-only server) and the snapshot is still there. (Only that
    one is compared: the repository host's own retention may remove older snapshots
    meanwhile, as it should (the fault suite runs the repository host's specs, which start
    a retention run, beside this host's); the integration test, where nothing else runs,
    counts every snapshot and repository file.)"""
    before = first_snapshots(fh)
    assert before
    # the newest: retention on the repository host never removes it, so it still exists
    # (restic forget of an ID that no longer matches exits 0, and proves nothing)
    victim = max(before, key=lambda s: s["time"])["id"]
    # restic retries a refused delete for about a minute; its first refusal, printed within
    # a second or two, is enough. The spec waits (bounded) for that line, then interrupts
    # restic (SIGINT, to restic alone): restic's own cleanup then removes the lock its
    # forget took, as on Ctrl-C, and exits 130. A delete that went through lets it exit 0
    # and fails the assertions below.
    forget = (f"out=$(mktemp); /usr/local/sbin/fleet-restic forget {victim} > $out 2>&1 & pid=$!; "
              "for i in $(seq 150); do grep -q -e '403 Forbidden' -e 'already locked' $out && break; "
              "kill -0 $pid 2>/dev/null || break; sleep 0.1; done; kill -INT $pid 2>/dev/null; "
              "for i in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; "
              "kill -KILL $pid 2>/dev/null; wait $pid; rc=$?; LC_ALL=C tr -c '[:print:]\\n' . < $out; "
              "rm -f $out; exit $rc")
    for _ in range(6):  # the repository host's own retention run may hold the lock a moment
        attempt = fh.host.run(f"bash -c {shlex.quote(forget)}")
        if "already locked" not in attempt.stdout:
            break
        time.sleep(5)
    assert attempt.rc != 0
    assert "403 Forbidden" in attempt.stdout
    if "error in cleanup handler" in attempt.stdout or attempt.rc == 128 + 9:
        restic(fh, "unlock")  # restic could not remove its own lock (or was killed): stale now
    assert victim in [s["id"] for s in snapshots(fh)], f"snapshot {victim} is gone after a refused forget"


def test_bk04_latest_drill_succeeded(fh):
    """bk-04: the last restore drill succeeded, recently (textfile metric and unit result)."""
    shown = fh.host.check_output("systemctl show -p Result -p ExecMainStatus fleet-restore-drill.service")
    assert "Result=success" in shown and "ExecMainStatus=0" in shown
    metrics = fh.host.check_output(f"cat {fh.data['node_exporter_textfile_dir']}/fleet_restore_drill.prom")
    stamp = float(re.search(rf"^{LAST_DRILL} (\S+)$", metrics, re.M).group(1))
    now = float(fh.host.check_output("date +%s"))
    assert now - stamp < interval_seconds(fh, fh.data["backup_drill_schedule"]) + 2 * 3600


def test_bk05_key_only_runs_the_forced_command(fh):
    """bk-05: the backup key cannot run a command of its choice on the repository host: asked
    to run `id`, it gets rclone's restic server instead (no shell, no uid= line)."""
    repo = repository_hosts(fleet_services())[0]
    ssh = fleet_services().reach("ssh", server=repo, client=fh.name)
    # rclone answers in HTTP/2 frames (binary): printable bytes only
    out = fh.host.run(f"timeout 20 ssh -i {KEY} -o IdentitiesOnly=yes -o BatchMode=yes "
                      f"-o UserKnownHostsFile=/etc/fleet/backup/known_hosts -p {ssh.port} "
                      f"{fh.data['backup_repository_user']}@{ssh.address} id < /dev/null 2>&1"
                      " | LC_ALL=C tr -c '[:print:]\\n' '.'").stdout
    assert "uid=" not in out
    assert "Permission denied" not in out, "the key must be accepted (only for rclone)"
