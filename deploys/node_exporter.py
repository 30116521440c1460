"""Node exporter (every host): Debian's prometheus-node-exporter on the port map's tailnet address only, with the textfile collector directory other components write their metrics into.

Debian's package listens on every address by default (its /etc/default ARGS are empty), and
starts the daemon as soon as it is installed. The fleet's ARGS are therefore in place before
the package is: a systemd drop-in reads /etc/fleet/node-exporter.env after Debian's file, so
the very first start binds the tailnet address (ip_nonlocal_bind lets it before tailscale0 is
up). The recommended collectors package (apt/smartmontools timers) is not installed.
"""

from __future__ import annotations

import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from fleet.converge import accounts
from fleet.converge.component import Component, Problem
from fleet.converge.daemons import keep_running
from fleet.converge.render import render
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # The directory node exporter's textfile collector reads *.prom files from (Debian's
    # default). Components write metrics here: backups, the restore drill, the health prober.
    "node_exporter_textfile_dir": "/var/lib/prometheus/node-exporter",
    # The systemd units whose state node exporter reports (node_systemd_unit_state; a
    # regular expression on unit names): what the fleet's alerts watch, e.g. the tunnel.
    "node_exporter_systemd_units": r"(cloudflared|ollama|docker|redis-server|postgresql@.+|prometheus.*|fleet-.+)\.service",
    # Collectors to turn off on top of the package's defaults (names as in --no-collector.X),
    # e.g. ["wifi"] on a host whose driver makes that collector slow.
    "node_exporter_disabled_collectors": [],
}

UNIT = "prometheus-node-exporter.service"
DROPIN = f"/etc/systemd/system/{UNIT}.d/fleet.conf"
ENV = "/etc/fleet/node-exporter.env"


def args(name: str, data, services: ServiceMap) -> list[str]:
    listen = services.bind("node-exporter", name, "tailnet")
    out = [f"--web.listen-address={listen}", f"--collector.textfile.directory={data.get('node_exporter_textfile_dir')}"]
    out += ["--collector.systemd", f"--collector.systemd.unit-include={data.get('node_exporter_systemd_units')}"]
    out += [f"--no-collector.{c}" for c in data.get("node_exporter_disabled_collectors") or ()]
    return out


@deploy("Node exporter", data_defaults=DEFAULTS)
def node_exporter():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    files.directory(name="Create /etc/fleet", path="/etc/fleet", user="root", group="root", mode="755")
    dropin = files.put(name="Install node exporter's drop-in", src=StringIO(render(
        f"etc/systemd/system/{UNIT}.d/fleet.conf.j2", "node_exporter", env=ENV)),
        dest=DROPIN, user="root", group="root", mode="644", create_remote_dir=True)
    env = files.put(name="Install node exporter's arguments", src=StringIO(render(
        "etc/fleet/node-exporter.env.j2", "node_exporter", args=args(name, data, services))), dest=ENV,
        user="root", group="root", mode="644")
    apt.packages(name="Install node exporter", packages=["prometheus-node-exporter"], no_recommends=True)
    # root's: the backups (root) write here; the prober keeps its file in its own directory
    # and links it here, so no other user needs to write
    files.directory(name="Create the textfile collector's directory", path=data.node_exporter_textfile_dir,
                    user="root", group="root", mode="755")
    keep_running("node exporter", UNIT, inputs=[DROPIN, ENV], why="for its new arguments",
                 changed=(dropin, env), unit_files=True, service="node-exporter")


def check_collectors(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        units = h.data.get("node_exporter_systemd_units")
        try:
            re.compile(units)
            ok = not any(c.isspace() or c in "\"'`$" for c in units)
        except (re.error, TypeError):
            ok = False
        if not ok:
            problems.append(Problem(h.name, "node_exporter_systemd_units", f"{units!r} is not a usable regular expression.",
                                    r"use one like '(cloudflared|docker)\.service' (no spaces or quotes)."))
        for c in h.data.get("node_exporter_disabled_collectors") or ():
            if not isinstance(c, str) or not c.replace("_", "").isalnum():
                problems.append(Problem(h.name, "node_exporter_disabled_collectors", f"{c!r} is not a collector name.",
                                        "use names like 'wifi' or 'hwmon'."))
    return problems


COMPONENT = Component(
    name="node_exporter",
    deploy=node_exporter,
    defaults=DEFAULTS,
    groups=("all",),
    rules=(check_collectors, accounts.own_directory("node_exporter_textfile_dir")),
    after=("tailscale",),
)
