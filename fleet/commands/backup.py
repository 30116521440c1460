"""Backups from the operator's machine: one now, a restore, and what the repositories hold.

    python -m fleet backup HOST                                  one backup now; prints the snapshot
    python -m fleet restore HOST [--snapshot ID] [--database NAME] [--confirm]
    python -m fleet backups                                      snapshots per host: count, latest, age, size

Each runs the host's own scripts (deploys/backup.py) over SSH, with the connection pyinfra
uses (user, key, known_hosts from the vault), streaming their output as it comes. `restore`
without --confirm brings the snapshot up in a side cluster beside the live one and prints
how to switch; with --confirm it replaces the live databases. Nothing here sees a secret:
restic on the host reads its password file.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from deploys.postgres import NAME as DATABASE_NAME
from fleet.commands import cli
from fleet.commands.llm_check import ssh_command
from fleet.preflight.inventory import FleetConfigError, prepare, read_inventory_data

REPO = Path(__file__).resolve().parents[2]
# what restic prints as a snapshot's ID (its 8-character short form, or the whole 64), or latest
SNAPSHOT = re.compile(r"^(latest|[0-9a-f]{8,64})\Z")


class BackupCommandError(Exception):
    """One line: what failed, where, and what to do."""


def load():
    hosts, test_fleet = read_inventory_data(REPO / "inventory.py")
    return prepare(hosts, test_fleet, str(REPO / "inventory.py"))


def backed_up(fleet) -> list[str]:
    return [h.name for h in fleet.hosts_with("backup")]


def pick(fleet, name: str | None) -> str:
    hosts = backed_up(fleet)
    if name not in hosts:
        raise FleetConfigError(f"HOST={name or '(none)'} is not a host with backups. "
                               f"Fix: name one of {', '.join(hosts) or '(none: no host declares state)'}.")
    return name


def remote(entry: dict, script: str, capture: bool = False) -> subprocess.CompletedProcess:
    """Run `script` as root on the host (sudo bash -c), streaming or capturing its output."""
    cmd = ssh_command(entry) + [f"sudo bash -c {shlex.quote(script)}"]
    return subprocess.run(cmd, text=True, stdin=subprocess.DEVNULL,
                          capture_output=capture, check=False)


# The unit's journal is followed while systemctl waits for the oneshot to finish, so the
# backup's progress (each dump, restic's summary) shows as it happens. A run that is going
# already (the timer's) is only waited for by `systemctl start`: its snapshot began before
# this request and may miss what was just written, so a run of this request's own follows.
# When a run began is systemd's ExecMainStartTimestampMonotonic (CLOCK_MONOTONIC, in µs).
BACKUP = """
asked=$(python3 -c 'import time; print(int(time.monotonic() * 1e6))')
journalctl -u fleet-backup.service -f -n 0 -o cat & follower=$!
if [ "$(systemctl show -p ActiveState --value fleet-backup.service)" = activating ]; then
    echo "backup: a run is going already (the timer's, or another request's): it finishes first, then this request's own"
fi
for attempt in 1 2; do
    systemctl start fleet-backup.service; rc=$?
    began=$(systemctl show -p ExecMainStartTimestampMonotonic --value fleet-backup.service)
    if [ "${began:-0}" -ge "$asked" ]; then break; fi
    [ $attempt = 1 ] && echo "backup: the run that ended began before this request; starting this request's own"
done
sleep 1; kill $follower 2>/dev/null
if [ $rc -ne 0 ]; then
    echo "backup failed: journalctl -u fleet-backup.service on $(hostname) has the cause" >&2; exit $rc
fi
fleet-restic snapshots --host "$(. /etc/fleet/backup/env; echo $FLEET_BACKUP_HOST)" --latest 1
"""


def cmd_backup(args) -> int:
    entries, fleet = load()
    name = pick(fleet, args.host)
    print(f"backup: {name}: starting fleet-backup.service", flush=True)
    started = time.monotonic()
    result = remote(entries[name], BACKUP)
    if result.returncode != 0:
        raise BackupCommandError(f"{name}: the backup failed (exit {result.returncode}); no snapshot was made. "
                                 f"Fix: read the lines above (or journalctl -u fleet-backup.service on {name}).")
    print(f"backup: {name}: done in {time.monotonic() - started:.1f}s")
    return 0


def restore_arguments(args) -> None:
    """--snapshot and --database checked before any host is touched (the host's fleet-restore
    checks them against the snapshot itself)."""
    if args.snapshot is not None and not SNAPSHOT.match(args.snapshot):
        raise FleetConfigError(f"SNAPSHOT={args.snapshot!r} is not a snapshot ID. Fix: use an ID from "
                               "`make backups` or restic (8 to 64 hex digits), or leave it out for the latest.")
    if args.database is not None and not DATABASE_NAME.match(args.database):
        raise FleetConfigError(f"DATABASE={args.database!r} is not a PostgreSQL database name. Fix: name one of "
                               "the host's databases (postgres_databases in group_data), or leave it out for all.")


def cmd_restore(args) -> int:
    restore_arguments(args)
    entries, fleet = load()
    name = pick(fleet, args.host)
    argv = ["fleet-restore"]
    if args.snapshot:
        argv += ["--snapshot", args.snapshot]
    if args.database:
        argv += ["--database", args.database]
    if args.confirm:
        argv.append("--live")
    where = "the LIVE databases (confirmed)" if args.confirm else "a side cluster (nothing live changes)"
    print(f"restore: {name}: snapshot {args.snapshot or 'latest'} into {where}", flush=True)
    started = time.monotonic()
    result = remote(entries[name], shlex.join(argv))
    if result.returncode != 0:
        raise BackupCommandError(f"{name}: the restore failed (exit {result.returncode}). "
                                 "Fix: read the lines above; the live cluster was only touched with --confirm.")
    print(f"restore: {name}: done in {time.monotonic() - started:.1f}s")
    return 0


# --no-lock: reading needs no lock, and the repository host's retention run may hold one
SNAPSHOTS = ('fleet-restic --no-lock snapshots --json --host "$(. /etc/fleet/backup/env; echo $FLEET_BACKUP_HOST)"'
             ' && echo && fleet-restic --no-lock stats --json latest')


def parse_time(text: str) -> datetime:
    """restic's RFC 3339 time with nanoseconds ("2026-12-02T19:04:45.903143332Z" or +00:00)."""
    main, _, rest = text.partition(".")
    zone = "+00:00"
    for sign in ("+", "-", "Z"):
        if sign in rest:
            digits, _, tail = rest.partition(sign)
            zone = "+00:00" if sign == "Z" else sign + tail
            break
    return datetime.fromisoformat(main + zone)


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def cmd_backups(args) -> int:
    entries, fleet = load()
    now = datetime.now(timezone.utc)
    print(f"{'host':<18} {'snapshots':>9}  {'latest':<9} {'age':>7}  {'size (latest)':>13}")
    failed = []
    for name in backed_up(fleet):
        result = remote(entries[name], SNAPSHOTS, capture=True)
        try:
            snapshots_text, _, stats_text = result.stdout.partition("\n\n")
            snapshots = json.loads(snapshots_text)
            stats = json.loads(stats_text) if stats_text.strip() else {}
        except json.JSONDecodeError:
            snapshots = None
        if result.returncode != 0 or snapshots is None:
            reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
            print(f"{name:<18} {'?':>9}  {'-':<9} {'-':>7}  {'-':>13}   ({reason})")
            failed.append(name)
            continue
        if not snapshots:
            print(f"{name:<18} {0:>9}  {'-':<9} {'-':>7}  {'-':>13}")
            continue
        latest = max(snapshots, key=lambda s: s["time"])
        seconds = (now - parse_time(latest["time"])).total_seconds()
        print(f"{name:<18} {len(snapshots):>9}  {latest['short_id']:<9} {duration(seconds):>7}  "
              f"{human(stats.get('total_size', 0)):>13}")
    if failed:
        raise BackupCommandError(f"{', '.join(failed)}: the repository did not answer. "
                                 "Fix: check the host is up and converged (make converge), then rerun.")
    return 0


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def main(argv: list[str]) -> int:
    """argv: the command (backup, restore, backups), then its arguments."""
    parser = cli.Parser(prog="python -m fleet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("backup", help="one backup now")
    one.add_argument("host")
    restore = sub.add_parser("restore", help="restore a snapshot (a side cluster unless --confirm)")
    restore.add_argument("host")
    restore.add_argument("--snapshot", help="snapshot ID (default: the latest)")
    restore.add_argument("--database", help="only this database")
    restore.add_argument("--confirm", action="store_true", help="replace the LIVE databases")
    sub.add_parser("backups", help="snapshots per host")
    args = cli.parse(parser, argv)  # an int: argparse's exit code (--help 0, bad usage 2)
    if isinstance(args, int):
        return args
    run = {"backup": cmd_backup, "restore": cmd_restore, "backups": cmd_backups}[args.command]
    return cli.report(args.command, run, args, {BackupCommandError: 1}, every_line=False,
                      interrupted=INTERRUPTED[args.command])


# What Ctrl-C leaves, said in one line. The host's side of `backup` is a systemd unit, which
# goes on; `restore` runs in the SSH session, which stops at its next line of output.
INTERRUPTED = {
    "backup": "interrupted here; the backup goes on on the host (journalctl -u fleet-backup.service there)",
    "restore": "interrupted; the restore on the host stops at its next line of output. Fix: run the same "
               "restore again, which finishes it",
    "backups": "interrupted; nothing was changed",
}


def main_backup(argv: list[str]) -> int:
    return main(["backup", *argv])


def main_restore(argv: list[str]) -> int:
    return main(["restore", *argv])


def main_backups(argv: list[str]) -> int:
    return main(["backups", *argv])
