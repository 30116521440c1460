"""Backups (every host that declares state): an hourly restic snapshot of its state into its own encrypted, append-only repository on the backup repository host, and a daily restore drill.

What goes in: the state directories the host's components declare (`state=` in their
COMPONENT), after each hook in /etc/fleet/backup.d/ has run `dump` (PostgreSQL's writes
verified pg_dump archives there). A failed or empty dump fails the unit before restic
runs, so it never becomes a snapshot. restic reaches the repository through
`rclone serve restic --stdio --append-only`, the forced command of this host's key on the
repository host (deploys/backup_repository.py): this host can add snapshots, never delete
or rewrite one; retention runs over there. The drill restores the latest snapshot into a
scratch directory and runs each hook's `drill` (PostgreSQL: a throwaway cluster on a
loopback port, sanity queries from data). Both write their last success time for node
exporter's textfile collector. The restic password and the SSH key come from the vault.
A host with no snapshot yet gets its first backup and drill from the converge itself.
"""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host, logger
from pyinfra.api import FactBase, OperationError, StringCommand, deploy, operation
from pyinfra.operations import apt, files

from fleet.converge import component as registry
from fleet.converge.component import Component, Problem, SecretFile
from fleet.converge.daemons import enabled_and_running, unit_loaded
from fleet.converge.keys import host_key_name, public_host_key, secret
from fleet.converge.ops import secret_file
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap, Unreachable

DEFAULTS = {
    # When snapshots are taken (a systemd OnCalendar expression): hourly keeps the
    # recovery point objective at one hour. Missed runs happen at boot (Persistent=true).
    "backup_schedule": "hourly",
    # A random delay before each run, so hosts do not all start at the same second.
    "backup_randomized_delay": "5min",
    # When the restore drill runs (OnCalendar).
    "backup_drill_schedule": "daily",
    # The drill's random delay.
    "backup_drill_randomized_delay": "30min",
}

ETC = "/etc/fleet/backup"
ENV = f"{ETC}/env"
PASSWORD = f"{ETC}/restic.password"
KEY = f"{ETC}/id_ed25519"
KNOWN_HOSTS = f"{ETC}/known_hosts"
PATHS = f"{ETC}/paths"
RECORDS = "/var/lib/fleet/backup"
LAST_PATHS = f"{RECORDS}/last-paths"  # what the last successful snapshot covered
# "This host's data has not been restored since it was rebuilt (or found wiped)": written by
# the rebuild before its converge, and by a converge that finds the repository holding
# snapshots this host has no record of making; removed by a full live restore (fleet-restore).
# While it exists fleet-backup takes no snapshot, whether the timer or a person starts it: a
# snapshot of the empty state would become the latest, the one a plain restore takes.
RESTORE_PENDING = f"{RECORDS}/restore-pending"
# "The data was restored and has not been snapshotted since": written by a full live restore,
# removed by the next snapshot, which also writes the host's record of a backup. A host with it
# and no record is not taken for a rebuilt one: its data is back, and the timer snapshots it.
RESTORED = f"{RECORDS}/restored"
# the shell that puts the mark on a host (the rebuild's join and a converge both do)
MARK_RESTORE_PENDING = f"install -d -m 755 {RECORDS} && touch {RESTORE_PENDING}"
# One backup or restore of a host at a time: fleet-backup and fleet-restore hold it (flock)
# for their whole run (templates/backup/usr/local/sbin/fleet-backup-lock says why).
# In /run, where only root creates files: /run/lock is writable by every user, who could
# make the file first (or a link in its place) and hold it.
LOCK = "/run/fleet-backup.lock"
HOOKS = "/etc/fleet/backup.d"
BIN = "/usr/local/sbin"
SCRIPTS = ("fleet-restic", "fleet-backup-lock", "fleet-backup", "fleet-restore")
UNITS = ("fleet-backup.service", "fleet-backup.timer", "fleet-restore-drill.service", "fleet-restore-drill.timer")
LAST_BACKUP = "fleet_backup_last_success_timestamp_seconds"
LAST_DRILL = "fleet_restore_drill_last_success_timestamp_seconds"


def password_key(name: str) -> str:
    """The vault key of a host's restic repository password."""
    return f"backup_restic_password/{name}"


def ssh_key_name(name: str) -> str:
    """The vault key of the SSH key a host's backups log in to the repository host with."""
    return f"backup_ssh_key/{name}"


def has_state(groups, data) -> bool:
    return bool(registry.state_paths("", groups, data))


def repository_hosts(services: ServiceMap) -> list[str]:
    return sorted(h.name for h in services.hosts.values() if h.data.get("backup_repository_enabled"))


def repository_path(data, name: str) -> str:
    return f"{data.get('backup_repository_dir')}/{name}"


def restic_program(name: str, data, services: ServiceMap) -> str:
    """What restic runs to reach the repository: ssh to the repository host's forced command
    (whatever restic asks to run there, the key only ever runs rclone serve restic)."""
    repo_host = repository_hosts(services)[0]
    ssh = services.reach("ssh", server=repo_host, client=name)
    return " ".join([
        "ssh", "-i", KEY, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ServerAliveInterval=15", "-p", str(ssh.port), f"{data.get('backup_repository_user')}@{ssh.address}",
    ])


class BackupStatus(FactBase):
    """Whether the repository answers with this host's config, and the last successes."""

    def command(self, textfile_dir: str) -> str:
        q = shlex.quote
        # "missing" only when restic says there is no repository; any other failure (a wrong
        # password, an unreachable repository host) is reported, never answered with init.
        # --no-lock: reading the config needs no lock, and a shared one is refused while the
        # repository host's retention (forget/prune) holds its exclusive lock.
        return (f"out=$({BIN}/fleet-restic --no-lock cat config 2>&1 >/dev/null); if [ $? -eq 0 ]; then echo repository=yes;"
                f" elif printf '%s' \"$out\" | grep -q 'Is there a repository at the following location'; then"
                f" echo repository=missing; else echo \"repository=error: $(printf '%s' \"$out\" | grep -v '^$' | tail -n 1)\"; fi;"
                f" cmp -s {PATHS} {LAST_PATHS} || echo paths=changed;"
                f" if [ -e {RESTORE_PENDING} ]; then echo restore=pending; fi;"
                f" if [ -e {RESTORED} ]; then echo restore=done; fi;"
                f" for m in {LAST_BACKUP} {LAST_DRILL}; do"
                f" grep -h \"^$m \" {q(textfile_dir)}/fleet_backup.prom {q(textfile_dir)}/fleet_restore_drill.prom 2>/dev/null; done;"
                # no record here of a snapshot or a restore (or a restore pending), but a
                # repository: does it hold this host's snapshots already (a rebuilt or wiped host)?
                f" if {{ {{ ! grep -qs '^{LAST_BACKUP} ' {q(textfile_dir)}/fleet_backup.prom && [ ! -e {RESTORED} ]; }}"
                f" || [ -e {RESTORE_PENDING} ]; }}"
                f" && {BIN}/fleet-restic --no-lock cat config >/dev/null 2>&1; then"
                f" echo \"snapshots=$({BIN}/fleet-restic --no-lock snapshots --json --host \"$(. {ETC}/env; echo $FLEET_BACKUP_HOST)\""
                f" 2>/dev/null | grep -o '\"short_id\"' | wc -l)\"; fi; true")

    def process(self, output):
        found = {"repository": "error: no answer", LAST_BACKUP: None, LAST_DRILL: None, "paths_changed": False,
                 "snapshots": 0, "restore_pending": False, "restored": False}
        for line in output:
            if line == "paths=changed":
                found["paths_changed"] = True
            elif line == "restore=pending":
                found["restore_pending"] = True
            elif line == "restore=done":
                found["restored"] = True
            elif line.startswith("snapshots="):
                found["snapshots"] = int(line.split("=", 1)[1] or 0)
            elif line.startswith("repository="):
                found["repository"] = line.split("=", 1)[1]
            else:
                key, _, value = line.partition(" ")
                if key in found:
                    found[key] = float(value)
        return found


@operation()
def repository_ready(textfile_dir: str):
    """This host's repository exists (restic init through the append-only forced command),
    and a host that has never been backed up gets its first snapshot and drill now.

    + textfile_dir: where the last-success metrics are
    """
    status = host.get_fact(BackupStatus, textfile_dir=textfile_dir)
    if status["repository"].startswith("error"):
        raise OperationError(f"the backup repository cannot be opened ({status['repository'][7:]}). "
                             "Fix: check the repository host is converged and reachable, and that "
                             f"{password_key(host.name)} in the vault is the password the repository was made with.")
    commands = []
    done = "the repository answers; a backup of the declared state and a drill have succeeded"
    if status["repository"] == "missing":
        commands.append(f"{BIN}/fleet-restic init")
    rebuilt = status[LAST_BACKUP] is None and status["snapshots"] > 0
    if status["restore_pending"] and not status["snapshots"]:
        # a rebuild's mark, but the repository holds nothing of this host (it went with the
        # repository host): there is nothing to wait for, and the first snapshot is due
        commands += [f"rm -f {RESTORE_PENDING}", "systemctl start fleet-backup.service"]
    elif status["restore_pending"] or rebuilt:
        # The repository holds this host's snapshots but the host has no record of making
        # one: it was rebuilt (or wiped). A snapshot now would make its empty state the
        # latest, the one a plain restore takes; so none is taken until the data is back,
        # by this run or by the backup timer (the mark is on the host, fleet-backup reads it).
        logger.warning(f"{host.name}: the backup repository holds {status['snapshots']} snapshot(s) of this host, "
                       "whose data has not been restored since (rebuilt?): no snapshot is taken until it is. "
                       f"Fix: make rebuild HOST={host.name} (or make restore HOST={host.name} CONFIRM=yes); to "
                       f"start afresh without that data instead, remove {RESTORE_PENDING} on the host")
        if not status["restore_pending"]:
            commands.append(MARK_RESTORE_PENDING)
    elif status[LAST_BACKUP] is None and status["restored"]:
        # restored since the card was new: the data is back, and the timer's next run snapshots it
        done = "the repository answers; the data was restored from a snapshot, and the backup timer takes the next"
    elif status[LAST_BACKUP] is None or status["paths_changed"]:
        # never backed up, or the last snapshot predates state a component now declares
        commands.append("systemctl start fleet-backup.service")
    if status[LAST_DRILL] is None:
        commands.append("systemctl start fleet-restore-drill.service")
    if not commands:
        host.noop(done)
        return
    for command in commands:
        yield StringCommand(command)


@deploy("Backups", data_defaults=DEFAULTS)
def backup():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    repo_host = repository_hosts(services)[0]
    apt.packages(name="Install restic", packages=["restic", "openssh-client"], no_recommends=True)
    for path in (ETC, HOOKS):
        files.directory(name=f"Create {path}", path=path,
                        user="root", group="root", mode="700" if path == ETC else "755")
    secret_file(name="Install the restic password", key=password_key(name), dest=PASSWORD, user="root", group="root")
    secret_file(name="Install the backup SSH key", key=ssh_key_name(name), dest=KEY, user="root", group="root")
    repo_ssh = services.reach("ssh", server=repo_host, client=name)
    host_key = public_host_key(secret(host_key_name(repo_host)))
    address = repo_ssh.address if repo_ssh.port == 22 else f"[{repo_ssh.address}]:{repo_ssh.port}"
    files.put(name="Install the repository host's SSH identity", src=StringIO(f"{address} {host_key}\n"),
              dest=KNOWN_HOSTS, user="root", group="root", mode="644")
    files.put(name="Install the backup environment", src=StringIO(render(
        "etc/fleet/backup/env.j2", "backup", repository=f"rclone:{repo_host}:",
        program=restic_program(name, data, services), password_file=PASSWORD, host=name,
        textfile_dir=data.node_exporter_textfile_dir, hooks=HOOKS, paths=PATHS, last_paths=LAST_PATHS,
        restore_pending=RESTORE_PENDING, restored=RESTORED, lock=LOCK)), dest=ENV,
        user="root", group="root", mode="600")
    state = registry.state_paths(name, host.groups, data)
    files.put(name="Install the list of state to back up", src=StringIO("".join(f"{p}\n" for p in state)),
              dest=PATHS, user="root", group="root", mode="644")
    for script in SCRIPTS:
        files.put(name=f"Install {script}", src=source("backup", f"usr/local/sbin/{script}"),
                  dest=f"{BIN}/{script}", user="root", group="root", mode="755")
    for unit in UNITS:
        files.put(name=f"Install {unit}", src=StringIO(render(
            f"etc/systemd/system/{unit}.j2", "backup", data=data)), dest=f"/etc/systemd/system/{unit}",
            user="root", group="root", mode="644")
    for unit in UNITS:
        unit_loaded(name=f"Load the current {unit} definition into systemd", unit=unit)
    for timer in ("fleet-backup.timer", "fleet-restore-drill.timer"):
        enabled_and_running(name=f"Enable {timer}", unit=timer)
    repository_ready(name="Initialise the repository; first backup and drill", textfile_dir=data.node_exporter_textfile_dir)


def secret_files(name: str, data) -> list[SecretFile]:
    return [SecretFile(password_key(name), PASSWORD, "root", "root"),
            SecretFile(ssh_key_name(name), KEY, "root", "root")]


def check_repository(fleet, hosts) -> list[Problem]:
    """Exactly one repository host, which the backed-up hosts reach over SSH; schedules
    are one line (they go into unit files)."""
    if not hosts:
        return []
    problems = []
    for h in hosts:
        for key in ("backup_schedule", "backup_randomized_delay", "backup_drill_schedule",
                    "backup_drill_randomized_delay"):
            value = str(h.data.get(key))
            if not value or any(ord(c) < 32 for c in value):
                problems.append(Problem(h.name, key, f"{value!r} is empty or has a control character.",
                                        'use one line, e.g. "hourly" or "*-*-* *:15:00" (systemd.time).'))
    if problems:
        return problems
    repos = repository_hosts(fleet.services)
    if len(repos) != 1:
        return [Problem(h.name, "backup_repository_enabled",
                        f"{len(repos)} hosts have backup_repository_enabled = True ({', '.join(repos) or 'none'}); "
                        "a host with state needs exactly one.",
                        "set backup_repository_enabled = True in the group_data file of the off-site host (group_data/cloud.py).")
                for h in hosts[:1]]
    problems = []
    for h in hosts:
        if h.name == repos[0]:
            problems.append(Problem(h.name, "backup_repository_enabled", "this host's own backups would live on itself.",
                                    "keep state off the repository host, or choose another repository host."))
            continue
        try:
            fleet.services.reach("ssh", server=repos[0], client=h.name)
        except Unreachable as exc:
            problems.append(Problem(h.name, "fleet_services['ssh']", f"{exc}.", "bind ssh on the tailnet."))
    return problems


COMPONENT = Component(
    name="backup",
    deploy=backup,
    defaults=DEFAULTS,
    applies_to=has_state,
    secrets=secret_files,
    rules=(check_repository,),
    # the repository is ready before the first init; every component that declares state
    # has created it (and installed its hook) before the first snapshot
    after=("backup_repository", "node_exporter"),
    after_state=True,
)
