"""Timer jobs: a script the fleet installs and a systemd timer runs as a oneshot, as its own
unprivileged system user, writing its outputs (a metrics file for node exporter's textfile
collector among them) into its own state directory.

The health prober and the droplet's dead man's switch are such jobs; this is what they
share, so a third one is a few lines. The job's config file (and any secret) is the
component's own, installed between `prepare` and `finish`. Nothing is ever restarted for a
changed script, config or unit: each run of the oneshot reads the current ones; only the
timer is restarted when its own file changed (fleet.converge.daemons decides that from the
host's state).
"""

from __future__ import annotations

from dataclasses import dataclass
from io import StringIO
from typing import Iterable

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.facts.files import File
from pyinfra.operations import files

from fleet.converge.accounts import account
from fleet.converge.component import Problem
from fleet.converge.daemons import keep_running, unit_loaded
from fleet.converge.render import render, source

UNIT_DIR = "/etc/systemd/system"
# Where node exporter's textfile collector reads *.prom files when data does not say
# (Debian's default; the node_exporter component's `node_exporter_textfile_dir`).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def textfile_dir(data) -> str:
    """The textfile directory a job links its metrics into."""
    return data.get("node_exporter_textfile_dir") or TEXTFILE_DIR


@operation()
def first_run(unit: str, output: str):
    """A host where the job has not written `output` yet gets its first run now, from the
    converge: a unit that cannot run (a sandbox setting the host refuses, outputs it cannot
    write) fails this run instead of failing quietly at every tick of its timer.

    + unit: the job's oneshot service
    + output: a file every successful run writes
    """
    if host.get_fact(File, path=output):
        host.noop(f"{unit} has run before")
        return
    yield StringCommand(f"systemctl start {unit}")


@dataclass(frozen=True)
class TimerJob:
    component: str    # templates/<component>/ holds the script and the two unit templates
    label: str        # how operation names call it ("the health prober")
    user: str         # its system user
    etc: str          # root-owned, readable by the user's group: its config and secrets
    state_dir: str    # the only directory it writes
    script: str       # where the script is installed (its template path mirrors it)
    service: str      # the oneshot unit
    timer: str        # the timer unit
    prom: str         # its metrics file, in state_dir
    prom_name: str    # the link's name in node exporter's textfile directory

    @property
    def lib(self) -> str:
        return self.script.rsplit("/", 1)[0]

    def prepare(self) -> None:
        """Its user, directories and script."""
        account(name=f"Create the {self.user} system user", user=self.user, system=True,
                    shell="/usr/sbin/nologin", home=self.state_dir, create_home=False)
        files.directory(name=f"Create {self.etc}", path=self.etc, user="root", group=self.user, mode="750")
        files.directory(name=f"Create the output directory of {self.label}", path=self.state_dir,
                        user=self.user, group=self.user, mode="755")
        files.directory(name=f"Create {self.lib}", path=self.lib, user="root", group="root", mode="755")
        files.put(name=f"Install {self.label}", src=source(self.component, self.script.lstrip("/")),
                  dest=self.script, user="root", group="root", mode="755")

    def finish(self, *, textfile_dir: str, interval: int, output: str, **unit_context) -> None:
        """The metrics link, the two units, the running timer and the first run.

        node exporter reads *.prom files in its textfile directory and follows links, so the
        metrics file stays in the job's own directory (written and renamed there) and the
        shared directory keeps the owner and mode its package or component gives it."""
        files.directory(name="Create node exporter's textfile directory (if missing)", path=textfile_dir)
        files.link(name=f"Link the metrics of {self.label} into node exporter's textfile directory",
                   path=f"{textfile_dir}/{self.prom_name}", target=self.prom)
        files.put(name=f"Install {self.service}", src=StringIO(render(
            f"etc/systemd/system/{self.service}.j2", self.component, user=self.user, script=self.script,
            state_dir=self.state_dir, prom=self.prom, **unit_context)),
            dest=f"{UNIT_DIR}/{self.service}", user="root", group="root", mode="644")
        timer = files.put(name=f"Install {self.timer}", src=StringIO(render(
            f"etc/systemd/system/{self.timer}.j2", self.component, interval=interval)),
            dest=f"{UNIT_DIR}/{self.timer}", user="root", group="root", mode="644")
        unit_loaded(name=f"Load the current {self.service} definition into systemd", unit=self.service)
        keep_running(f"the timer of {self.label}", self.timer, inputs=[f"{UNIT_DIR}/{self.timer}"],
                     why="for its new interval", changed=(timer,), unit_files=True)
        first_run(name=f"Run {self.label} once", unit=self.service, output=output)


def whole_numbers(hosts: Iterable, bounds: dict[str, tuple[int, int]], defaults: dict,
                  where: str) -> tuple[list[Problem], set[str]]:
    """One problem per setting that is not a whole number in its (lowest, highest) range,
    and the names of the hosts that had one (so rules comparing settings can skip them)."""
    problems, wrong = [], set()
    for h in hosts:
        for key, (low, high) in bounds.items():
            value = h.data.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
                continue
            wrong.add(h.name)
            problems.append(Problem(h.name, key, f"{value!r} is not a whole number from {low} to {high}.",
                                    f"set it to a whole number from {low} to {high} (the default is "
                                    f"{defaults[key]}) in {where}."))
    return problems, wrong
