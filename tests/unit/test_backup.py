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


def backup_run(tmp_path, restic: str) -> tuple[subprocess.CompletedProcess, Path]:
    """fleet-backup, with its env in tmp_path and a `fleet-restic` whose `backup` runs `restic`
    (shell); `sleep` only records its argument. Returns the run and the directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("fleet-restic", f'case $1 in\nbackup) {restic} ;;\n'
                                        "snapshots) echo '[{\"short_id\": \"1234abcd\"}]' ;;\nesac\n"),
                       ("sleep", f'echo "$1" >> {tmp_path}/slept\n')):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "paths").write_text(f"{tmp_path}\n")
    (tmp_path / "hooks").mkdir()
    env = tmp_path / "env"
    env.write_text(f"FLEET_BACKUP_HOST=pi5-gamma\nFLEET_RESTORE_PENDING={tmp_path}/pending\nFLEET_BACKUP_HOOKS={tmp_path}/hooks\n"
                   f"FLEET_TEXTFILE_DIR={tmp_path}\nFLEET_BACKUP_PATHS={tmp_path}/paths\nFLEET_BACKUP_LOCK={tmp_path}/lock\n"
                   f"FLEET_BACKUP_LAST_PATHS={tmp_path}/records/last-paths\nFLEET_RESTORED={tmp_path}/records/restored\n")
    runnable = tmp_path / "fleet-backup"
    runnable.write_text((SBIN / "fleet-backup").read_text().replace("/etc/fleet/backup/env", str(env)))
    run = subprocess.run(["bash", str(runnable)], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, PATH=f"{bin_dir}:{SBIN}:{os.environ['PATH']}"))
    return run, tmp_path


LOCKED = ('echo "unable to create lock in backend: repository is already locked exclusively by PID 7'
          ' on droplet-failover by backup (UID 999, GID 999)" >&2; exit 1')


def test_a_snapshot_the_repository_hosts_prune_holds_off_is_tried_again(tmp_path):
    """restic 0.14 has no --retry-lock: while the droplet's prune or check has the repository
    to itself, fleet-backup tries again, 30 s apart, and says so; 20 tries at most."""
    tries = tmp_path / "tries"
    refused_twice = (f'n=$(( $(cat {tries} 2>/dev/null || echo 0) + 1 )); echo $n > {tries};'
                     f' if [ $n -le 2 ]; then {LOCKED}; fi; echo "snapshot 1234abcd saved"')
    run, d = backup_run(tmp_path, refused_twice)
    assert run.returncode == 0, run.stdout + run.stderr
    assert tries.read_text().strip() == "3" and (d / "slept").read_text().split() == ["30", "30"]
    assert "try 2 of 20 refused, again in 30 s" in run.stdout
    assert "fleet-backup: snapshot 1234abcd saved" in run.stdout
    assert "fleet_backup_last_success_timestamp_seconds" in (d / "fleet_backup.prom").read_text()


def test_a_snapshot_that_fails_otherwise_or_stays_locked_fails_the_run(tmp_path):
    (tmp_path / "a").mkdir()
    run, d = backup_run(tmp_path / "a", 'echo "Fatal: wrong password or no key found" >&2; exit 1')
    assert run.returncode == 1 and not (d / "slept").exists()  # at once: only the lock is waited for
    assert "wrong password" in run.stderr and "no snapshot was made" in run.stderr
    assert not (d / "fleet_backup.prom").exists()
    (tmp_path / "b").mkdir()
    run, d = backup_run(tmp_path / "b", LOCKED)
    assert run.returncode == 1 and len((d / "slept").read_text().split()) == 19  # 20 tries
    assert "no snapshot was made" in run.stderr and not (d / "fleet_backup.prom").exists()
