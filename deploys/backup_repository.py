"""The backup repository host (the off-site droplet): one restic repository per backed-up host, reachable only through an append-only forced command, with retention and integrity checks run here and never from the backed-up hosts.

Each backed-up host's key (its public half derived from the vault) may run exactly one
thing as the repository user: `rclone serve restic --stdio --append-only <its directory>`
(`restrict` also refuses forwarding, a terminal and agent use). rclone's append-only mode
accepts new files and refuses every delete and overwrite, so a compromised Pi can add
snapshots but cannot forget, prune or rewrite its history. Retention
(`restic forget --prune`, hourly/daily/weekly/monthly from data) and a weekly
`restic check --read-data-subset` run here, as the repository user, with each repository's
password from the vault: pruning needs memory a Pi should not spend.
"""

from __future__ import annotations

import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from fleet.converge import component as registry
from fleet.converge import accounts
from fleet.converge.accounts import account
from fleet.converge.component import Component, Problem, matches
from fleet.converge.daemons import enabled_and_running, unit_loaded
from fleet.converge.keys import public_host_key, secret
from fleet.converge.ops import secret_file
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # This host keeps the fleet's backup repositories (set in the off-site host's group file).
    "backup_repository_enabled": False,
    # The account that serves the repositories; its only login is the forced command.
    "backup_repository_user": "backup",
    # Where the repositories live, one directory per backed-up host.
    "backup_repository_dir": "/srv/backup",
    # What retention keeps of each host's snapshots (restic forget --keep-<period> N).
    "backup_repository_keep": {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12},
    # When retention (forget --prune) runs (OnCalendar).
    "backup_repository_prune_schedule": "daily",
    # When `restic check --read-data-subset` runs (OnCalendar).
    "backup_repository_check_schedule": "weekly",
    # How much of each repository's data that check reads and verifies ("10%", "1/5").
    "backup_repository_check_subset": "10%",
}

ETC = "/etc/fleet/backup-repository"
SCRIPT = "/usr/local/sbin/fleet-backup-repository"
UNITS = ("fleet-backup-prune.service", "fleet-backup-prune.timer",
         "fleet-backup-check.service", "fleet-backup-check.timer")
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")


def backed_up_hosts(services: ServiceMap) -> list[str]:
    backup = registry.component("backup")
    return sorted(h.name for h in services.hosts.values() if backup.applies(h.groups, h.data))


def authorized_keys(data, clients: list[str], key_of) -> str:
    """One line per backed-up host: its key may only run rclone's append-only restic server
    on its own directory."""
    from deploys.backup import ssh_key_name

    lines = []
    for client in clients:
        path = f"{data.get('backup_repository_dir')}/{client}"
        command = f"rclone serve restic --stdio --append-only --config /dev/null {path}"
        key = public_host_key(key_of(ssh_key_name(client)), f"backup@{client}")
        lines.append(f'restrict,command="{command}" {key}\n')
    return "".join(lines)


@deploy("Backup repository", data_defaults=DEFAULTS)
def backup_repository():
    from deploys.backup import password_key

    data = host.data
    user, home = data.backup_repository_user, data.backup_repository_dir
    clients = backed_up_hosts(ServiceMap.of_pyinfra(host))
    apt.packages(name="Install restic and rclone", packages=["restic", "rclone"], no_recommends=True)
    # A shell is needed for sshd to run the forced command; the account has no password.
    account(name=f"Create the {user} account", user=user, home=home, shell="/bin/sh", system=True,
                ensure_home=True)
    files.directory(name=f"Restrict {home}", path=home, user=user, group=user, mode="750")
    files.directory(name=f"Create {home}/.ssh", path=f"{home}/.ssh", user=user, group=user, mode="700")
    files.put(name="Install the backed-up hosts' forced-command keys",
              src=StringIO(authorized_keys(data, clients, secret)), dest=f"{home}/.ssh/authorized_keys",
              user=user, group=user, mode="600")
    files.directory(name=f"Create {ETC}", path=ETC, user="root", group=user, mode="750")
    for client in clients:
        secret_file(name=f"Install {client}'s repository password", key=password_key(client),
                    dest=f"{ETC}/{client}.password", user=user, group=user)
    files.put(name="Install the retention and check script", src=source("backup_repository", "usr/local/sbin/fleet-backup-repository"),
              dest=SCRIPT, user="root", group="root", mode="755")
    keep = " ".join(f"--keep-{period} {count}" for period, count in sorted(data.backup_repository_keep.items()))
    for unit in UNITS:
        files.put(name=f"Install {unit}", src=StringIO(render(
            f"etc/systemd/system/{unit}.j2", "backup_repository", data=data, keep=keep, script=SCRIPT,
            etc=ETC)), dest=f"/etc/systemd/system/{unit}", user="root", group="root", mode="644")
    for unit in UNITS:
        unit_loaded(name=f"Load the current {unit} definition into systemd", unit=unit)
    for timer in ("fleet-backup-prune.timer", "fleet-backup-check.timer"):
        enabled_and_running(name=f"Enable {timer}", unit=timer)


def check_keep(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        keep = h.data.get("backup_repository_keep")
        if not isinstance(keep, dict) or not keep or any(
                p not in PERIODS or not isinstance(n, int) or isinstance(n, bool) or n < 1 for p, n in keep.items()):
            problems.append(Problem(h.name, "backup_repository_keep", f"{keep!r} is not a retention policy.",
                                    f"use periods of {', '.join(PERIODS)} with a count of 1 or more, "
                                    'like {"hourly": 24, "daily": 7}.'))
    return problems


# restic check --read-data-subset: a fraction n/t, a percentage, or a size (restic's forms)
SUBSET = re.compile(r"[1-9][0-9]*/[1-9][0-9]*|[0-9]+(\.[0-9]+)?%|[1-9][0-9]*[KMGT]?")
# A schedule goes into a timer's OnCalendar=: one line, not empty
SCHEDULE = re.compile(r"[^\x00-\x1f]*[^\x00-\x20][^\x00-\x1f]*")
SCHEDULE_FIX = 'use one line, e.g. "daily" or "Sun *-*-* 03:00:00" (systemd.time).'


COMPONENT = Component(
    name="backup_repository",
    deploy=backup_repository,
    defaults=DEFAULTS,
    when=lambda data: bool(data.get("backup_repository_enabled")),
    rules=(check_keep,
           matches("backup_repository_check_subset", SUBSET, "a restic data subset",
                   "use a percentage ('10%'), a fraction ('1/5') or a size ('500M')."),
           matches("backup_repository_prune_schedule", SCHEDULE, "one line of a schedule", SCHEDULE_FIX),
           matches("backup_repository_check_schedule", SCHEDULE, "one line of a schedule", SCHEDULE_FIX),
           accounts.account_name("backup_repository_user"),
           accounts.own_directory("backup_repository_dir")),
    after=("tailscale",),
)
