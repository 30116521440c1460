"""Daemons the deploys own: enabled, running, and restarted (or reloaded) when, and only
when, one of their inputs changed after the running process read it.

The decision is made from state on the host, never from what happened earlier in the same
run: a daemon is owed a restart when the newest change time (ctime) of its inputs (config
files, credentials, unit files, the release it runs) is later than the moment its main
process started, or, for a daemon that is reloaded instead, than our last successful reload
of it (a stamp under /var/lib/fleet/applied/). A converge killed between replacing a config
and restarting its daemon therefore leaves the restart owed, and the next plain run does it;
a run that changed nothing restarts nothing. ctime is used because nothing but a real change
sets it (`touch -d` cannot move it back). The same goes for systemd's own view: a unit whose
file changed since systemd loaded it (NeedDaemonReload) is reloaded into systemd first.

pyinfra offers `_if=config.did_change` for this, which is decided within one run and is lost
when that run dies before the restart; hence this module.
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime, timezone

from pyinfra import host, logger
from pyinfra import state as pyinfra_state
from pyinfra.api import FactBase, StringCommand, operation

APPLIED_DIR = "/var/lib/fleet/applied"


def stamp_path(unit: str) -> str:
    return f"{APPLIED_DIR}/{unit}"


def parse_timestamp(text: str) -> float | None:
    """systemd's `--timestamp=us+utc` form ("Wed 2026-12-02 13:05:01.730071 UTC") as epoch seconds."""
    text = text.strip()
    if not text or text == "n/a":
        return None
    try:
        return datetime.strptime(text, "%a %Y-%m-%d %H:%M:%S.%f %Z").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# pyinfra's SystemdStatus and SystemdEnabled facts count these as running and enabled.
RUNNING_SUBSTATES = ("running", "waiting", "exited", "listening", "mounted")
ENABLED_FILE_STATES = ("enabled", "static")


class DaemonState(FactBase):
    """A unit's load state, whether systemd needs a daemon-reload for it, when its main process
    started, our last reload of it, and the newest ctime among `inputs` (epoch seconds)."""

    @staticmethod
    def default():
        # what an unreadable answer means: nothing known, so nothing is owed
        return {"loaded": True, "active": False, "running": False, "enabled": False,
                "needs_daemon_reload": False, "applied": None, "inputs_changed": None}

    # The command's parts, which the converge's prefetch also puts together for many units at
    # once (fleet/converge/connector.py): written here only.
    SHOW = ("systemctl show --timestamp=us+utc -p LoadState -p ActiveState -p SubState -p UnitFileState"
            " -p NeedDaemonReload -p ExecMainStartTimestamp -p DropInPaths")
    TIMES = " -maxdepth 0 -printf 'Times=%T@ %C@ %p\\n' 2>/dev/null"

    @staticmethod
    def dropins_on_disk(unit: str) -> str:
        # systemd 252 does not flag a drop-in added to a directory it did not know as needing a
        # daemon-reload: the drop-ins on disk are listed to compare with the loaded ones.
        return (f"printf 'DropInsOnDisk='; for f in /etc/systemd/system/{shlex.quote(unit)}.d/*.conf;"
                f" do [ -e \"$f\" ] && printf '%s ' \"$f\"; done; echo;")

    def command(self, unit: str, inputs: tuple[str, ...] = ()) -> str:
        q = shlex.quote
        stamp = q(stamp_path(unit))
        # Two processes per unit (systemctl, find); the rest is shell builtins. The stamp's
        # mtime and the inputs' ctimes come from one find, each line naming its path.
        return (f"{self.SHOW} {q(unit)} 2>/dev/null; {self.dropins_on_disk(unit)}"
                f" printf 'StampPath=%s\\n' {stamp};"
                f" find {stamp} {' '.join(q(p) for p in inputs)}{self.TIMES};"
                f" true")

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line and not line.startswith("Times="))
        stamp_file = values.get("StampPath")
        times = [line[len("Times="):].split(" ", 2) for line in output if line.startswith("Times=")]
        times = [t for t in times if len(t) == 3]
        started = parse_timestamp(values.get("ExecMainStartTimestamp", ""))
        stamp = next((_float(mtime) for mtime, _, path in times if path == stamp_file), None)
        changes = [c for c in (_float(ctime) for _, ctime, path in times if path != stamp_file) if c is not None]
        applied = max([t for t in (started, stamp) if t is not None], default=None)
        unloaded_dropins = set(values.get("DropInsOnDisk", "").split()) - set(values.get("DropInPaths", "").split())
        return {
            "loaded": values.get("LoadState") == "loaded",
            "active": values.get("ActiveState") == "active",
            # failed, possibly at its start limit ("Start request repeated too quickly")
            "failed": values.get("ActiveState") == "failed",
            # the states pyinfra's systemd facts count as running and as enabled
            "running": values.get("SubState") in RUNNING_SUBSTATES,
            "enabled": values.get("UnitFileState") in ENABLED_FILE_STATES,
            # `systemctl mask` by hand: the unit is linked to /dev/null and cannot start
            "masked": values.get("UnitFileState") in ("masked", "masked-runtime"),
            "needs_daemon_reload": values.get("NeedDaemonReload") == "yes" or bool(unloaded_dropins),
            "applied": applied,
            "inputs_changed": max(changes, default=None),
        }


class NewestChange(FactBase):
    """The newest ctime (epoch seconds) among `paths`, or None when none exists."""

    def command(self, paths: tuple[str, ...]) -> str:
        listed = " ".join(shlex.quote(p) for p in paths)
        return f"find {listed} -maxdepth 0 -printf '%C@\\n' 2>/dev/null; true"

    def process(self, output):
        return max((t for t in (_float(line.strip()) for line in output) if t is not None), default=None)


class PortHolders(FactBase):
    """The TCP listeners on `ports`, each (address, port, process name, pid or None, cgroup).
    `ss -e` reads each socket's cgroup from the kernel, so a listener is placed even where
    its process is not visible to `ss -p` (root without CAP_SYS_PTRACE, as in a container,
    sees no other user's file descriptors): "/system.slice/<unit>" for a system service."""

    default = list

    def command(self, ports: tuple[int, ...]) -> str:
        wanted = " or ".join(f"sport = :{int(p)}" for p in ports)
        return f"ss -Htlnpe '( {wanted} )' 2>/dev/null || true"

    def process(self, output):
        found = []
        for line in output:
            fields = line.split()
            if len(fields) < 5:
                continue
            address, _, port = fields[3].rpartition(":")
            extra = fields[5:]
            users = re.match(r'users:\(\("(.*?)",pid=(\d+)', next((f for f in extra if f.startswith("users:")), ""))
            uid = next((f[len("uid:"):] for f in extra if f.startswith("uid:")), "0")
            cgroup = next((f[len("cgroup:"):] for f in extra if f.startswith("cgroup:")), "")
            if port.isdigit():
                name, pid = (users[1], int(users[2])) if users else (f"a process of uid {uid}", None)
                found.append((address.strip("[]").split("%")[0], int(port), name, pid, cgroup))
        return found


WILDCARDS = ("0.0.0.0", "::", "*")


def service_of(cgroup: str) -> str | None:
    """The system service a socket's process runs in, from its cgroup (".../system.slice/
    x.service", nested slices and a container's prefix allowed), or "systemd" for PID 1's own
    sockets (socket activation); None for anything else: a login session, `docker exec`, a
    container."""
    if cgroup == "/init.scope" or cgroup.endswith("/init.scope"):
        return "systemd"
    found = re.search(r"(?:^|/)system\.slice/(?:[^/]+\.slice/)*([^/]+\.service)(?:/|$)", cgroup)
    return found[1] if found else None


def port_blockers(unit: str, listens: tuple[str, ...], holders: list) -> tuple[list[str], list[str]]:
    """(what stops `unit` binding `listens` that no service of the host started: the run stops,
    what another service holds: a warning, as that may move in this run, e.g. two daemons
    swapping ports). A listener on the same port blocks an address when either is a wildcard."""
    stop, warn = [], []
    for wanted in listens:
        address, _, port = wanted.rpartition(":")
        for held, held_port, name, pid, cgroup in holders:
            if held_port != int(port) or not (held == address or held in WILDCARDS or address in WILDCARDS):
                continue
            service = service_of(cgroup)
            if service == unit:
                continue
            who = f"{name}, pid {pid}" if pid is not None else name
            where = f"{held}:{held_port}"
            if service is None or service == "ssh.service":  # started by hand, over SSH or docker exec
                stop.append(f"{wanted} is held by {who} (on {where}, in no service: cgroup {cgroup or 'unknown'})")
            else:
                warn.append(f"{wanted} is held by {service} ({who}, on {where})")
    return stop, warn


def listens_of(service: str) -> tuple[str, ...]:
    """address:port of everything the port map's `service` binds on this host."""
    from fleet.converge.services import ServiceMap

    return tuple(str(e) for e in ServiceMap.of_pyinfra(host).binds(service, host.name))


def _free_to_start(unit: str, service: str | None):
    """The commands that stop this host's run, before `unit` is (re)started, when a process
    nothing of the host's services started holds an address:port the port map's `service`
    binds: the daemon would only fail to start, over and over, while the run reported it
    started. A port another service holds is a warning line (it may move later in the run).
    Empty when free. The port map is read here, only when something is started."""
    if service is None:
        return []
    listens = listens_of(service)
    holders = host.get_fact(PortHolders, ports=tuple(sorted({int(w.rpartition(":")[2]) for w in listens})))
    stop, warn = port_blockers(unit, listens, holders)
    for line in warn:
        host.log(f"{unit} may not start: {line}", logger.warning)
    if not stop:
        return []
    message = (f"{host.name}: {unit} cannot listen: {'; '.join(stop)}. It was not (re)started. Fix: stop that "
               "process (or move it to another port), then rerun; the port map (fleet_services in "
               "group_data/all.py) gives this port to the fleet.")
    return [StringCommand(f"echo {shlex.quote(message)} >&2; exit 1")]


def owed(state: dict) -> bool:
    """Whether the running daemon predates a change of its inputs."""
    if not state["active"] or state["applied"] is None or state["inputs_changed"] is None:
        return False  # not running: starting it (the enable step) reads the current inputs
    return state["inputs_changed"] > state["applied"]


@operation()
def unit_loaded(unit: str, inputs: tuple[str, ...] = ()):
    """systemd has loaded the current unit file (and drop-ins) of `unit`.

    + unit: the systemd unit
    + inputs: as for `applied` (the same fact answers both: one command on the host)
    """
    state = host.get_fact(DaemonState, unit=unit, inputs=tuple(inputs))
    if state["loaded"] and not state["needs_daemon_reload"]:
        host.noop(f"systemd has the current definition of {unit}")
        return
    yield StringCommand("systemctl daemon-reload")


@operation()
def enabled_and_running(unit: str, inputs: tuple[str, ...] = (), service: str | None = None):
    """`unit` is enabled and running: what pyinfra's systemd.service(running=True,
    enabled=True) does, read from the same fact as `unit_loaded` and `applied`, so a
    daemon's three checks are one command on the host, not four.

    + unit: the systemd unit
    + inputs: as for `applied`
    + service: the port map's name for what it serves; a process started by hand holding one
      of its address:ports stops the run before the start
    """
    state = host.get_fact(DaemonState, unit=unit, inputs=tuple(inputs))
    if state["running"] and state["enabled"]:
        host.noop(f"{unit} is enabled and running")
        return
    if not state["running"] and (blocked := _free_to_start(unit, service)):
        yield from blocked
        return
    q = shlex.quote(unit)
    if state.get("masked"):
        # masked by hand: the deploys own this daemon (to stop it for good, turn its component
        # off in the data), so it is unmasked, with a line in the output saying so
        host.log(f"{unit} was masked; unmasking it", logger.warning)
        yield StringCommand(f"systemctl unmask {q}")
    if not state["running"]:
        if state.get("failed"):
            # a daemon that failed its way to systemd's start limit (its port was taken, say)
            # would refuse this start for a while after the cause is gone: its count is reset
            yield StringCommand(f"systemctl reset-failed {q}")
        yield StringCommand(f"systemctl start {q}")
    if not state["enabled"]:
        yield StringCommand(f"systemctl enable {q}")


@operation()
def applied(unit: str, inputs: list[str], reload: bool = False, changed: tuple = (), service: str | None = None):
    """Restart (or reload) `unit` if one of `inputs` changed after its process started (or
    after our last reload of it). Crash-safe: decided from the host's state.

    + unit: the systemd unit
    + inputs: the files and directories the daemon reads at start
    + reload: reload instead of restart, and record when (sshd re-reads its config on SIGHUP)
    + changed: operations that replace inputs in this run (only so a dry run shows the restart)
    + service: as for `enabled_and_running` (a restart may move the daemon to a new port)
    """
    state = host.get_fact(DaemonState, unit=unit, inputs=tuple(inputs))
    # While pyinfra plans (the diff before execution), inputs this run will replace have not
    # changed on the host yet: count them, so a dry run shows the restart. When it executes,
    # the host's state alone decides.
    planned = not pyinfra_state.is_executing and any(op.changed for op in changed)
    if not owed(state) and not planned:
        host.noop(f"{unit} runs with its current inputs")
        return
    q = shlex.quote
    if reload:
        yield StringCommand(f"systemctl reload {q(unit)} && install -d -m 755 {q(APPLIED_DIR)}"
                            f" && touch {q(stamp_path(unit))}")
    elif blocked := _free_to_start(unit, service):
        yield from blocked
    else:
        yield StringCommand(f"systemctl restart {q(unit)}")


def keep_running(label: str, unit: str, *, inputs: list[str], why: str, changed=(), reload: bool = False,
                 unit_files: bool = False, service: str | None = None):
    """A daemon the deploys own: enabled and running, and restarted (or reloaded) only when
    its inputs changed after it read them; never otherwise (see the module docstring).

    + label: how operation names call the daemon ("docker" -> "Enable docker")
    + unit: the systemd unit
    + inputs: paths of everything it reads at start (configs, credentials, unit files, release)
    + why: the end of the restart operation's name ("for its new daemon.json")
    + changed: the operations that install those inputs in this run (for dry runs)
    + reload: reload instead of restart
    + unit_files: the deploy installs the unit's file or drop-ins (systemd reloads them first)
    + service: the port map's name for what it serves: before a start or restart, the run
      stops if a process started by hand holds an address:port it binds (never asked when
      nothing is started)
    """
    if unit_files:
        unit_loaded(name=f"Load the current {unit} definition into systemd", unit=unit, inputs=tuple(inputs))
    enabled_and_running(name=f"Enable {label}", unit=unit, inputs=tuple(inputs), service=service)
    verb = "Reload" if reload else "Restart"
    return applied(name=f"{verb} {label} {why}".strip(), unit=unit, inputs=list(inputs), reload=reload,
                   changed=tuple(changed), service=None if reload else service)
