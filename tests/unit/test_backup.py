"""Backups: which hosts are backed up (the ones whose components declare state), the one
repository host, its forced-command keys, and the rules."""

import os
import subprocess
import time
from pathlib import Path

from deploys.backup import LAST_BACKUP, RESTORE_PENDING, RESTORED, BackupStatus, repository_hosts, restic_program
from deploys.backup_repository import authorized_keys, backed_up_hosts
from fleet.converge import component as registry
from fleet.converge.keys import new_host_key
from fleet.preflight.validate import problems

SBIN = Path(__file__).resolve().parents[2] / "templates/backup/usr/local/sbin"


def test_state_decides_who_is_backed_up(data):
    fleet = data.fleet()
    assert backed_up_hosts(fleet.services) == ["pi5-gamma"]
    assert [h.name for h in fleet.hosts_with("backup")] == ["pi5-gamma"]
    assert repository_hosts(fleet.services) == ["droplet-failover"]
    gamma = fleet.hosts["pi5-gamma"]
    assert "/var/backups/fleet/postgres" in registry.state_paths("pi5-gamma", gamma.groups, gamma.data)


def test_restic_reaches_the_repository_over_the_tailnet(data):
    fleet = data.fleet()
    program = restic_program("pi5-gamma", fleet.hosts["pi5-gamma"].data, fleet.services)
    assert program.endswith("backup@100.100.0.100")
    assert "StrictHostKeyChecking=yes" in program and "IdentitiesOnly=yes" in program


def test_each_key_may_only_serve_its_own_directory_append_only(data):
    fleet = data.fleet()
    keys = {"backup_ssh_key/pi5-gamma": new_host_key()}
    text = authorized_keys(fleet.hosts["droplet-failover"].data, ["pi5-gamma"], keys.__getitem__)
    [line] = text.splitlines()
    assert line.startswith('restrict,command="rclone serve restic --stdio --append-only --config /dev/null '
                           '/srv/backup/pi5-gamma" ssh-ed25519 ')
    assert line.endswith(" backup@pi5-gamma")
    assert "PRIVATE" not in text


def test_one_repository_host_is_required(data):
    data.group_data["cloud"]["backup_repository_enabled"] = False
    [p] = [p for p in problems(data.fleet()) if p.key == "backup_repository_enabled"]
    assert p.host == "pi5-gamma" and "0 hosts" in p.message and "group_data/cloud.py" in p.fix


def test_schedules_are_one_line_and_retention_is_a_policy(data):
    data.group_data["database"]["backup_schedule"] = "hourly\nExecStart=/bin/sh"
    data.group_data["cloud"]["backup_repository_keep"] = {"hourly": 0}
    found = [str(p) for p in problems(data.fleet())]
    assert any(p.startswith("pi5-gamma: backup_schedule:") and "control character" in p for p in found), found
    assert any(p.startswith("droplet-failover: backup_repository_keep:") for p in found), found


def test_the_status_counts_the_repositorys_snapshots_only_without_a_local_record():
    command = BackupStatus().command("/t")
    # the probe runs only when the host has no record of a snapshot (or a restore is pending)
    # and the repository opens
    assert (f"if {{ {{ ! grep -qs '^{LAST_BACKUP} ' /t/fleet_backup.prom && [ ! -e {RESTORED} ]; }}"
            f" || [ -e {RESTORE_PENDING} ]; }} && " in command)
    assert BackupStatus().process(["repository=yes", "snapshots=3"])["snapshots"] == 3
    assert BackupStatus().process(["repository=yes", f"{LAST_BACKUP} 1700000000"])["snapshots"] == 0


def test_the_status_reads_the_rebuilds_mark_and_the_restores_record():
    command = BackupStatus().command("/t")
    assert f"if [ -e {RESTORE_PENDING} ]; then echo restore=pending; fi" in command
    assert f"if [ -e {RESTORED} ]; then echo restore=done; fi" in command
    found = BackupStatus().process(["repository=yes", "restore=pending", "snapshots=2"])
    assert (found["restore_pending"], found["restored"], found["snapshots"]) == (True, False, 2)
    found = BackupStatus().process(["repository=yes", "restore=done"])
    assert (found["restore_pending"], found["restored"]) == (False, True)
    assert BackupStatus().process(["repository=yes", f"{LAST_BACKUP} 1700000000"])["restore_pending"] is False


def test_the_backup_script_refuses_while_a_restore_is_pending(tmp_path):
    """fleet-backup, run with an env whose mark exists, stops before any hook or restic runs
    (the timer's run as well as `make backup`), naming the fix; without the mark it goes on."""
    script = (SBIN / "fleet-backup").read_text()
    env = tmp_path / "env"
    mark, hooks = tmp_path / "restore-pending", tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "probe").write_text(f"#!/bin/sh\ntouch {tmp_path}/hook-ran\nexit 1\n")
    (hooks / "probe").chmod(0o755)
    env.write_text(f"FLEET_BACKUP_HOST=pi5-gamma\nFLEET_RESTORE_PENDING={mark}\nFLEET_BACKUP_HOOKS={hooks}\n"
                   f"FLEET_TEXTFILE_DIR={tmp_path}\nFLEET_BACKUP_PATHS={tmp_path}/paths\n"
                   f"FLEET_BACKUP_LOCK={tmp_path}/lock\n")
    runnable = tmp_path / "fleet-backup"
    runnable.write_text(script.replace("/etc/fleet/backup/env", str(env)))
    path = f"{SBIN}:{os.environ['PATH']}"  # fleet-backup-lock
    mark.touch()
    run = subprocess.run(["bash", str(runnable)], capture_output=True, text=True, timeout=30, env=dict(os.environ, PATH=path))
    assert run.returncode == 1
    assert "pi5-gamma's data has not been restored since it was rebuilt" in run.stderr
    assert "Fix: make rebuild HOST=pi5-gamma" in run.stderr and str(mark) in run.stderr
    assert not (tmp_path / "hook-ran").exists()
    assert (tmp_path / "lock").stat().st_mode & 0o777 == 0o600  # no other user may open (and hold) it
    mark.unlink()
    run = subprocess.run(["bash", str(runnable)], capture_output=True, text=True, timeout=30, env=dict(os.environ, PATH=path))
    assert (tmp_path / "hook-ran").exists()  # past the mark's check: the first hook's dump ran


def test_the_backup_lock_waits_for_the_holder_and_says_so(tmp_path):
    """fleet-backup-lock, on the caller's fd 9: free, it returns at once; held (by another
    backup or restore), it says it waits and returns as soon as the holder lets go; the
    lock stays the caller's after it exits (flock on the open file)."""
    import fcntl

    lock = tmp_path / "lock"
    env = dict(os.environ, PATH=f"{SBIN}:{os.environ['PATH']}", FLEET_BACKUP_LOCK=str(lock))
    take = ('exec 9>> "$FLEET_BACKUP_LOCK"; fleet-backup-lock fleet-test; echo taken;'
            ' flock -n "$FLEET_BACKUP_LOCK" true || echo still-held-after-the-helper-exited')
    free = subprocess.run(["bash", "-c", take], env=env, capture_output=True, text=True, timeout=10)
    assert free.returncode == 0 and free.stdout.split() == ["taken", "still-held-after-the-helper-exited"], free
    with lock.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        waiting = subprocess.Popen(["bash", "-c", take], env=env, stdout=subprocess.PIPE, text=True)
        first = waiting.stdout.readline()  # bounded: the helper says it waits before it blocks
        assert first.startswith("fleet-test: waiting for the backup or restore running on this host to finish"), first
        time.sleep(0.5)
        assert waiting.poll() is None, "it must wait while the lock is held"
        released = time.monotonic()
        fcntl.flock(holder, fcntl.LOCK_UN)
    out, _ = waiting.communicate(timeout=10)
    assert waiting.returncode == 0 and out.split()[0] == "taken", out
    assert time.monotonic() - released < 5, "it takes the lock as soon as it is free, not at the next minute"
