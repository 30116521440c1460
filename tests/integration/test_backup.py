"""PostgreSQL and its backups on the test fleet, end to end: a restore after losing the
whole data directory, a failing pg_dump that makes no snapshot, a repository that refuses
deletion from the database host, a bad pg_hba candidate that leaves the server serving, and
the backup's peak memory for a 100 MB database. Figures go to .state/backup-report.txt
(molecule's verify step prints them)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from deploys.postgres import paths
from fleet.converge.paths import state_root
from harness import testfleet
from deploys.backup import LOCK
from integration.conftest import UNCHECKED, docker_exec, main_pid, redis, settle, wait_until

HOST = "pi5-gamma"
REPO_HOST = "droplet-failover"
UNIT = paths(15)["unit"]
REPORT = state_root(testfleet.REPO) / "backup-report.txt"


def report(line: str) -> None:
    print(line)
    with REPORT.open("a") as out:
        out.write(line + "\n")


def fleet(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """python -m fleet ... against the test fleet, as `make backup` etc. run it."""
    return subprocess.run([sys.executable, "-m", "fleet", *args], cwd=testfleet.REPO, text=True,
                          capture_output=True, timeout=timeout, env=dict(os.environ, FLEET_TARGET="test"))


def sql(statement: str, db: str = "postgres") -> str:
    return docker_exec(HOST, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
                       "-d", db, "-c", statement).stdout.strip()


def snapshot_ids() -> list[str]:
    out = docker_exec(HOST, "/usr/local/sbin/fleet-restic", "snapshots", "--json", "--host", HOST).stdout
    return sorted(s["id"] for s in json.loads(out))


@contextmanager
def timers_held():
    """The host's backup and drill timers stopped, and a run they started finished, while a
    test counts snapshots: the hourly timer's run (at hh:00 to hh:05) would add one the test
    did not make. Started again after, as the converge keeps them (settle outside this)."""
    timers = ("fleet-backup.timer", "fleet-restore-drill.timer")
    docker_exec(HOST, "systemctl", "stop", *timers)
    try:
        wait_until(lambda: "activating" not in docker_exec(
            HOST, "systemctl", "show", "-p", "ActiveState", "--value", "fleet-backup.service",
            "fleet-restore-drill.service").stdout.split(), "the timers' running backup or drill to finish", timeout=180)
        yield
    finally:
        docker_exec(HOST, "systemctl", "start", *timers)


@pytest.fixture(scope="module", autouse=True)
def _report_header():
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("")
    yield


def test_restore_after_losing_the_data_directory():
    sql("drop table if exists notes; create table notes (id serial primary key, body text);"
        " insert into notes (body) select md5(g::text) from generate_series(1, 5000) g;"
        " alter table notes owner to api", db="blackroad")
    assert redis(HOST, ["SET", "fleet:test:kept", "from-the-snapshot"], ["DEL", "fleet:test:later"]) == ["+OK", ":0"]
    made = fleet("backup", HOST)
    assert made.returncode == 0, made.stdout + made.stderr
    snapshot = re.findall(r"snapshot (\w{8}) saved", made.stdout)
    assert snapshot, made.stdout
    # Redis's data after the snapshot: the restore puts the snapshot's back
    assert redis(HOST, ["DEL", "fleet:test:kept"], ["SET", "fleet:test:later", "after"]) == [":1", "+OK"]

    sql("drop database blackroad with (force)")
    docker_exec(HOST, "systemctl", "stop", UNIT)
    docker_exec(HOST, "rm", "-rf", paths(15)["data"])
    # this backup's snapshot by its ID: the hourly timer may have made a later one since
    restored = fleet("restore", HOST, "--snapshot", snapshot[-1], "--confirm")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert sql("select count(*) from notes", db="blackroad") == "5000"
    serving = re.search(r"serving restored data ([\d.]+) s after the restore started", restored.stdout)
    assert serving, restored.stdout
    assert re.search(r"redis: live: serving the snapshot's data [\d.]+ s after", restored.stdout), restored.stdout
    assert redis(HOST, ["GET", "fleet:test:kept"], ["EXISTS", "fleet:test:later"]) == ["from-the-snapshot", ":0"]
    report(f"restore --confirm after losing the data directory: 5000 rows back; "
           f"serving {serving.group(1)} s after the restore started; Redis back to the snapshot's keys")
    settle("converge-after-restore")


def test_drill_loads_redis_from_the_snapshot():
    """The daily drill restores the latest snapshot and has a throwaway redis-server (a unix
    socket, no TCP port) load Redis's copy: a snapshot Redis could not load fails it."""
    drill = docker_exec(HOST, "/usr/local/sbin/fleet-restore", "--drill", check=False)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    loaded = re.search(r"redis: drill: the snapshot's data loads \((\d+) keys\)", drill.stdout)
    assert loaded and int(loaded.group(1)) >= 1, drill.stdout  # fleet:test:kept at least
    assert docker_exec(HOST, "sh", "-c", "ls -d /var/tmp/fleet-redis-drill.* 2>/dev/null", check=False).stdout == ""
    # a snapshot whose append-only files Redis refuses: the drill fails and says so
    broken = docker_exec(HOST, "bash", "-c", "set -e; d=$(mktemp -d); trap 'rm -rf $d' EXIT;"
                         " mkdir -p $d/var/lib/redis/appendonlydir;"
                         " printf 'file appendonly.aof.1.incr.aof seq 1 type i\\n' > $d/var/lib/redis/appendonlydir/appendonly.aof.manifest;"
                         " printf '*3\\r\\n$3\\r\\nSET\\r\\nnot resp' > $d/var/lib/redis/appendonlydir/appendonly.aof.1.incr.aof;"
                         " /etc/fleet/backup.d/redis drill $d", check=False)
    assert broken.returncode != 0, broken.stdout
    assert "redis-server would not load the snapshot's data" in broken.stderr, broken.stderr
    report(f"drill: Redis loaded the latest snapshot's copy ({loaded.group(1)} keys); a damaged copy fails it")


def running(pattern: str) -> bool:
    return docker_exec(HOST, "pgrep", "-f", pattern, check=False).returncode == 0


@contextmanager
def lock_held():
    """The host's backup lock held, as a long backup or restore holds it, until the block ends."""
    holder = "fleet-test-lock-holder"
    docker_exec(HOST, "systemd-run", "--quiet", "--unit", holder, "flock", LOCK, "sleep", "300")
    try:
        wait_until(lambda: running(f"flock {LOCK} sleep 300"), "the lock's holder to start")
        yield
    finally:
        docker_exec(HOST, "systemctl", "stop", holder, check=False)


def in_background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleet", *args], cwd=testfleet.REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, FLEET_TARGET="test"))


def test_backups_and_restores_of_a_host_take_turns():
    """A `make backup` that finds a run going (the timer's) waits for it, then makes a
    snapshot of its own: the running one began before the request and may miss what was
    just written. A restore waits for a running backup: it never moves data in under a
    snapshot, and "the latest" it takes includes that backup. The side cluster a restore
    leaves running does not keep the lock (the next backup does not wait)."""
    side = "/var/lib/fleet-postgres-side"
    with timers_held():
        with lock_held():
            docker_exec(HOST, "systemctl", "start", "--no-block", "fleet-backup.service")  # as the timer starts it
            wait_until(lambda: running("fleet-backup-lock fleet-backup"), "the timer's run to wait for the lock")
            asked = in_background("backup", HOST)
            wait_until(lambda: running("systemctl start fleet-backup.service"), "`make backup` to reach the host",
                       timeout=60)
        out, _ = asked.communicate(timeout=600)
        assert asked.returncode == 0, out
        assert "backup: a run is going already (the timer's, or another request's)" in out, out
        made = re.findall(r"fleet-backup: snapshot (\w{8}) saved", out)
        assert len(made) == 2 and made[0] != made[1], out  # the timer's, then the request's own
        assert made[1] in {i[:8] for i in snapshot_ids()}

        with lock_held():
            restore = in_background("restore", HOST)
            wait_until(lambda: running("fleet-backup-lock fleet-restore"), "the restore to wait for the lock",
                       timeout=60)
            assert not running("restic restore"), "nothing is restored while the lock is held"
        out, _ = restore.communicate(timeout=600)
        try:
            assert restore.returncode == 0, out
            assert out.index("fleet-restore: waiting for the backup or restore running on this host to finish") \
                < out.index(f"fleet-restore: restoring snapshot {made[1]}"), out
            port = re.search(r"side cluster on 127\.0\.0\.1:(\d+) ", out)
            assert port, out
            assert docker_exec(HOST, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-h", side, "-p", port.group(1),
                               "-d", "blackroad", "-c", "select count(*) from notes").stdout.strip() == "5000"
            free = docker_exec(HOST, "flock", "--nonblock", LOCK, "true", check=False)
            assert free.returncode == 0, "the side cluster the restore started holds the backup lock"
            after = fleet("backup", HOST)
            assert after.returncode == 0, after.stdout + after.stderr
            assert "waiting" not in after.stdout, after.stdout  # the side cluster holds no lock
        finally:
            docker_exec(HOST, "bash", "-c", f"if [ -e {side}/data/postmaster.pid ]; then runuser -u postgres --"
                        f" {paths(15)['bin']}/pg_ctl -D {side}/data -m fast stop; fi;"
                        f" rm -rf {side} /var/lib/fleet-redis-side")
    report("backups and restores take turns: `make backup` during the timer's run made its own snapshot after it; "
           "a restore waited for the lock; the side cluster it left holds none")


def test_failing_dump_makes_no_snapshot():
    with timers_held():
        before = snapshot_ids()
        sql("alter database blackroad allow_connections false")
        try:
            failed = fleet("backup", HOST)
        finally:
            sql("alter database blackroad allow_connections true")
        assert failed.returncode != 0
        assert "no snapshot was made" in failed.stderr
        assert docker_exec(HOST, "systemctl", "is-failed", "fleet-backup.service", check=False).stdout.strip() == "failed"
        journal = docker_exec(HOST, "journalctl", "-u", "fleet-backup.service", "-n", "40", "--no-pager", "-o", "cat").stdout
        assert 'database "blackroad" is not currently accepting connections' in journal
        assert "pg_dump of database blackroad failed" in journal
        assert snapshot_ids() == before, "a failed dump must not become a snapshot"
    report("failing pg_dump (a database refusing connections): unit failed, journal names it, "
           f"snapshots unchanged ({len(before)})")
    again = fleet("backup", HOST)  # leave a good last backup and a non-failed unit behind
    assert again.returncode == 0, again.stdout + again.stderr


def test_repository_refuses_forget_prune_and_delete_from_the_host():
    with timers_held():
        before = snapshot_ids()
        files_before = docker_exec(REPO_HOST, "find", f"/srv/backup/{HOST}", "-type", "f", "-not", "-path", "*/locks/*").stdout
        victim = before[0]
        attempts = {
            "forget": f"fleet-restic forget {victim}",
            "forget --prune": "fleet-restic forget --keep-last 1 --prune",
            # the key's forced command runs rclone's server whatever is asked: rm never runs
            "ssh rm -rf": ". /etc/fleet/backup/env; $FLEET_RESTIC_PROGRAM rm -rf /srv/backup < /dev/null",
        }
        for what, command in attempts.items():
            # restic retries a refused delete for about a minute: the first refusal is enough
            run = docker_exec(HOST, "bash", "-c", f"set -o pipefail; timeout -s KILL 15 bash -c {shlex.quote(command)} 2>&1"
                              " | LC_ALL=C tr -c '[:print:]\\n' .", check=False)
            # the killed restic's lock is stale (its process is gone): remove it for the next attempt
            docker_exec(HOST, "/usr/local/sbin/fleet-restic", "unlock")
            assert run.returncode != 0 or what == "ssh rm -rf", (what, run.stdout[-500:])
            if what.startswith("forget"):
                assert "403 Forbidden" in run.stdout, (what, run.stdout[-500:])
        assert snapshot_ids() == before
        files_after = docker_exec(REPO_HOST, "find", f"/srv/backup/{HOST}", "-type", "f", "-not", "-path", "*/locks/*").stdout
        assert files_after == files_before
        report(f"forget, forget --prune and ssh rm from {HOST}: refused (403); {len(before)} snapshots and "
               f"{len(files_before.split())} repository files unchanged")


def test_hba_candidate_postgres_refuses_keeps_the_server_serving():
    hba = paths(15)["hba"]
    live = docker_exec(HOST, "cat", hba).stdout
    pid = main_pid(HOST, UNIT)
    roles = {"api": {"databases": ["blackroad"], "clients": ["gateway"]},
             "bad role": {"databases": ["blackroad"], "clients": ["gateway"]}}
    bad = testfleet.converge(["--limit", HOST, "--data", f"postgres_roles={json.dumps(roles)}"],
                             log_name="converge-bad-hba",
                             inventory=UNCHECKED)
    assert bad["returncode"] != 0
    assert "pg_hba.conf candidate refused by PostgreSQL" in bad["output"]
    assert docker_exec(HOST, "cat", hba).stdout == live
    assert not docker_exec(HOST, "ls", f"{hba}.fleet-previous", check=False).returncode == 0
    assert main_pid(HOST, UNIT) == pid, "PostgreSQL must not restart"
    assert sql("select 1") == "1"
    settle("converge-after-bad-hba")


def test_backup_peak_memory_for_a_100mb_database():
    sql("drop database if exists bulk")
    sql("create database bulk")
    try:
        sql("create table filler as select g as id, repeat(md5(g::text), 3) as body"
            " from generate_series(1, 900000) g", db="bulk")
        size = int(sql("select pg_database_size('bulk')"))
        made = fleet("backup", HOST, timeout=900)
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr
        peak = re.search(r"peak memory (\d+) bytes", made.stdout)
        assert peak, made.stdout[-2000:]
        report(f"backup of a {size / 2**20:.0f} MB database: peak memory of fleet-backup.service "
               f"{int(peak.group(1)) / 2**20:.0f} MiB (cgroup high-water mark, page cache included)")
        assert size >= 100 * 2**20
    finally:
        sql("drop database if exists bulk")
        fleet("backup", HOST)  # the latest snapshot no longer carries the scratch database


def test_a_host_without_its_record_takes_no_snapshot_over_its_repository():
    """A rebuilt host (no record of ever making a snapshot, a repository that holds its
    snapshots) must not make its empty state the latest snapshot, at converge or later from
    its backup timer: a plain `make restore` takes the latest. The converge marks the host
    (RESTORE_PENDING), and fleet-backup refuses while the mark is there."""
    from deploys.backup import RESTORE_PENDING
    from deploys.node_exporter import DEFAULTS

    # held until its converge, which starts the timers again (a run they start now is refused)
    with timers_held():
        prom = f"{DEFAULTS['node_exporter_textfile_dir']}/fleet_backup.prom"
        saved = docker_exec(HOST, "cat", prom).stdout
        before = snapshot_ids()
        assert before
        docker_exec(HOST, "rm", "-f", prom)
        try:
            run = testfleet.converge(["--limit", HOST], log_name="converge-rebuilt-backup",
                                     env={"FLEET_COMPONENTS": "backup"})
            assert run["returncode"] == 0, run["output"][-3000:]
            assert "whose data has not been restored since (rebuilt?): no snapshot is taken until it is" in run["output"]
            assert docker_exec(HOST, "test", "-e", RESTORE_PENDING, check=False).returncode == 0
            # what the hourly timer starts, and `make backup`: refused, and the unit says why
            refused = fleet("backup", HOST)
            assert refused.returncode != 0
            journal = docker_exec(HOST, "journalctl", "-u", "fleet-backup.service", "-n", "20", "--no-pager", "-o", "cat").stdout
            assert "data has not been restored since it was rebuilt" in journal, journal
            assert snapshot_ids() == before
            again = testfleet.converge(["--limit", HOST], log_name="converge-rebuilt-backup-again",
                                       env={"FLEET_COMPONENTS": "backup"})
            assert again["returncode"] == 0 and again["changed"] == 0, again["output"][-3000:]
            report(f"a host with no record of its {len(before)} snapshots: marked at converge, fleet-backup refused, "
                   "snapshots unchanged")
        finally:
            subprocess.run(["docker", "exec", "-i", HOST, "sh", "-c", f"cat > {prom}"], input=saved, text=True, check=True)
            docker_exec(HOST, "rm", "-f", RESTORE_PENDING)  # the documented "start afresh" (the data never went)
            docker_exec(HOST, "systemctl", "reset-failed", "fleet-backup.service", check=False)
    settle("converge-after-rebuilt-backup")


def test_a_killed_runs_lock_is_removed_by_the_next_backup():
    """A restic run on the host SIGKILLed mid-way (a power cut) leaves its lock in the
    repository; restic 0.14 keeps it, and the repository host's prune and check, which need
    the repository to themselves, would be refused for as long as it stays. The next backup
    removes it (restic unlock: stale locks only), and the prune runs."""
    with timers_held():  # its pkill of restic must not hit a run the timer started
        held = "sleep 60 | /usr/local/sbin/fleet-restic backup --stdin --stdin-filename held > /dev/null 2>&1"
        docker_exec(HOST, "bash", "-c", f"setsid bash -c {shlex.quote(held)} < /dev/null > /dev/null 2>&1 &")

        def locks() -> list[str]:
            return docker_exec(HOST, "/usr/local/sbin/fleet-restic", "--no-lock", "list", "locks").stdout.split()

        for _ in range(40):  # bounded: 40 tries, a quarter second apart
            if locks():
                break
            time.sleep(0.25)
        assert locks(), "the held backup never took its lock"
        docker_exec(HOST, "pkill", "-KILL", "-x", "restic")
        docker_exec(HOST, "pkill", "-x", "sleep", check=False)
        stale = locks()
        assert stale, "the killed run's lock should still be there"
        made = fleet("backup", HOST)
        assert made.returncode == 0, made.stdout + made.stderr
        assert not set(stale) & set(locks())
        pruned = docker_exec(REPO_HOST, "systemctl", "start", "fleet-backup-prune.service", check=False)
        assert pruned.returncode == 0, docker_exec(REPO_HOST, "journalctl", "-u", "fleet-backup-prune.service", "-n", "20",
                                                   "--no-pager", "-o", "cat").stdout
        report(f"a restic run killed mid-way: its lock ({len(stale)}) removed by the next backup; the prune ran")

