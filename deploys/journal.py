"""Logs: every host's journal forwarded over the tailnet to the monitoring host (systemd-journal-upload to systemd-journal-remote, Debian's), kept there by size.

On the monitoring hosts, journal-remote's socket listens on the port map's tailnet address
only (a drop-in replaces the package's every-address socket before the package is
installed) and writes one journal per sending host under `journal_remote_dir`; a timer
vacuums them down to `journal_remote_max_use` (systemd 252 has no MaxUse= for
journal-remote). Every other host runs journal-upload pointed at it, and has the
receiving side masked, so the package never listens there. Transport is HTTP inside
Tailscale's WireGuard tunnel (see the service drop-in for why).
"""

from __future__ import annotations

import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from fleet.converge import accounts
from fleet.converge.component import Component, Problem
from fleet.converge.daemons import keep_running
from fleet.converge.render import render
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Where the monitoring host keeps the journals it receives (one file set per host).
    "journal_remote_dir": "/var/log/journal/remote",
    # The most disk they may use (journalctl --vacuum-size form), e.g. 2G on an SSD, less on
    # an SD card.
    "journal_remote_max_use": "1G",
    # How long a sender waits before it tries the monitoring host again after a failed
    # upload; it never gives up (Debian's unit stops for good after five quick failures).
    "journal_upload_retry_seconds": 15,
}

SOCKET = "systemd-journal-remote.socket"
REMOTE = "systemd-journal-remote.service"
UPLOAD = "systemd-journal-upload.service"
SD = "/etc/systemd/system"
SOCKET_DROPIN = f"{SD}/{SOCKET}.d/fleet.conf"
REMOTE_DROPIN = f"{SD}/{REMOTE}.d/fleet.conf"
UPLOAD_CONF = "/etc/systemd/journal-upload.conf.d/fleet.conf"
UPLOAD_DROPIN = f"{SD}/{UPLOAD}.d/fleet.conf"
SIZE = re.compile(r"^[0-9]+[KMGT]?\Z")


def receivers(services: ServiceMap) -> list[str]:
    return services.hosts_running("journal-remote")


def template(path: str, **values) -> StringIO:
    return StringIO(render(path, "journal", **values))


@deploy("Journal forwarding", data_defaults=DEFAULTS)
def journal():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    if services.runs("journal-remote", name):
        # in place before the package, whose socket would otherwise listen on every address
        socket_dropin = files.put(name="Install journal-remote's socket drop-in", src=template(
            f"etc/systemd/system/{SOCKET}.d/fleet.conf.j2", listen=services.bind("journal-remote", name, "tailnet")),
            dest=SOCKET_DROPIN, user="root", group="root", mode="644", create_remote_dir=True)
        remote_dropin = files.put(name="Install journal-remote's service drop-in", src=template(
            f"etc/systemd/system/{REMOTE}.d/fleet.conf.j2", output=data.journal_remote_dir),
            dest=REMOTE_DROPIN, user="root", group="root", mode="644", create_remote_dir=True)
        apt.packages(name="Install systemd-journal-remote", packages=["systemd-journal-remote"], no_recommends=True)
        # what the unit's LogsDirectory= makes of it at every start (so the two agree)
        files.directory(name="Create the received journals' directory", path=data.journal_remote_dir,
                        user="systemd-journal-remote", group="systemd-journal-remote", mode="755")
        for unit in ("fleet-journal-vacuum.service", "fleet-journal-vacuum.timer"):
            files.put(name=f"Install {unit}", src=template(f"etc/systemd/system/{unit}.j2", output=data.journal_remote_dir,
                                                           max_use=data.journal_remote_max_use),
                      dest=f"{SD}/{unit}", user="root", group="root", mode="644")
        keep_running("journal-remote's socket", SOCKET, inputs=[SOCKET_DROPIN], why="for its new address",
                     changed=(socket_dropin,), unit_files=True)
        # socket-activated: started by the first upload, restarted only when it owes it
        from fleet.converge.daemons import applied, unit_loaded
        unit_loaded(name=f"Load the current {REMOTE} definition into systemd", unit=REMOTE)
        applied(name="Restart journal-remote for its new settings", unit=REMOTE, inputs=[REMOTE_DROPIN],
                changed=(remote_dropin,))
        keep_running("the journal vacuum timer", "fleet-journal-vacuum.timer",
                     inputs=[f"{SD}/fleet-journal-vacuum.timer"], why="for its new schedule", unit_files=True)
        systemd.service(name="Stop journal-upload here (its logs are already local)", service=UPLOAD,
                        running=False, enabled=False)
        return
    # a host that only sends: the receiving side can never listen here
    # (what `systemctl mask` does, done as a file so it holds before the package exists)
    for unit in (SOCKET, REMOTE):
        files.link(name=f"Mask {unit} (this host only sends)", path=f"{SD}/{unit}", target="/dev/null")
    targets = receivers(services)
    if not targets:
        host.noop("no monitoring host receives journals")
        return
    conf = files.put(name="Point journal-upload at the monitoring host", src=template(
        "etc/systemd/journal-upload.conf.d/fleet.conf.j2",
        url=services.url("journal-remote", server=targets[0], client=name)),
        dest=UPLOAD_CONF, user="root", group="root", mode="644", create_remote_dir=True)
    dropin = files.put(name="Keep journal-upload retrying while the monitoring host is away", src=template(
        f"etc/systemd/system/{UPLOAD}.d/fleet.conf.j2", restart_seconds=data.journal_upload_retry_seconds),
        dest=UPLOAD_DROPIN, user="root", group="root", mode="644", create_remote_dir=True)
    apt.packages(name="Install systemd-journal-remote", packages=["systemd-journal-remote"], no_recommends=True)
    keep_running("journal-upload", UPLOAD, inputs=[UPLOAD_CONF, UPLOAD_DROPIN], why="for its new destination",
                 changed=(conf, dropin), unit_files=True)


def check_settings(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        if not SIZE.match(str(h.data.get("journal_remote_max_use"))):
            problems.append(Problem(h.name, "journal_remote_max_use", f"{h.data.get('journal_remote_max_use')!r} is not a size.",
                                    "write it like 1G or 500M."))
        retry = h.data.get("journal_upload_retry_seconds")
        if isinstance(retry, int) and not isinstance(retry, bool) and not 1 <= retry <= 3600:  # (type: checked for all keys)
            problems.append(Problem(h.name, "journal_upload_retry_seconds", f"{retry!r} is not a whole number of "
                                    "seconds from 1 to 3600.", "write it like 15."))
    return problems


COMPONENT = Component(
    name="journal",
    deploy=journal,
    defaults=DEFAULTS,
    groups=("all",),
    rules=(check_settings, accounts.own_directory("journal_remote_dir")),
    after=("tailscale",),
)
