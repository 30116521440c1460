"""The converge's fact prefetch (fleet/converge/connector.py) answers facts of one kind with
one command for all of them; on each real host, that answer, split back, is what each fact's
own command prints. The unit tests check the splitting against a stand-in systemctl; only a
real systemd shows that its blocks for several units are its answers for each unit alone."""

from __future__ import annotations

import functools

from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from fleet.converge.connector import KINDS, _SystemdKind, fact_kind
from fleet.converge.daemons import DaemonState
from specs.conftest import fleet_host

INPUTS = ("/etc/hostname", "/etc/fleet-no-such-input", "/etc/ssh/sshd_config")
# running services per host in the grouped specs, beside a socket, a timer and a missing unit
RUNNING = 4


def run(fh, command: str) -> tuple[int, list[str], list[str]]:
    done = fh.host.run(command)
    return done.rc, done.stdout.splitlines(), done.stderr.splitlines()


def grouped(fh, commands: list[str]) -> list[tuple[int, list[str], list[str]]]:
    kinds = {fact_kind(c)[0] for c in commands}
    assert len(kinds) == 1, "one kind per group"
    kind = KINDS[kinds.pop()]
    answers = kind.split(run(fh, kind.command([fact_kind(c)[1] for c in commands])), [fact_kind(c)[1] for c in commands])
    assert answers is not None, "the grouped answer did not have the expected shape"
    return answers


# The single answers pf-01, pf-03 and pf-04 compare with: each unit's DaemonState command and
# its SystemdStatus and SystemdEnabled commands, each run alone. The three specs name the same
# units, so a host's singles are read once, by the first spec that needs them, and the others
# compare with those. Each single starts a systemctl, the costliest process a spec starts (its
# start, its connection to systemd, systemd's answer: 6-9 ms of a test host's CPU). Read once
# per spec, with each spec's own list of units, they were 58 systemctl runs per host and a
# fifth of the hosts' CPU in a specs run; now 25. A difference is read again, grouped and
# singles both fresh, before it fails.
_SINGLES: dict[tuple[str, str], tuple[int, list[str], list[str]]] = {}


def singles(fh, commands: list[str], fresh: bool) -> list[tuple[int, list[str], list[str]]]:
    for command in commands:
        if fresh or (fh.name, command) not in _SINGLES:
            _SINGLES[fh.name, command] = run(fh, command)
    return [_SINGLES[fh.name, command] for command in commands]


@functools.cache
def units(name: str) -> tuple[str, ...]:
    """The units the three specs group on this host: running services, a socket, a timer and
    a unit that does not exist."""
    listed = fleet_host(name).host.check_output(
        "systemctl list-units --type=service --state=running --no-legend --plain")
    running = [line.split()[0] for line in listed.splitlines() if line.strip()][:RUNNING]
    return (*running, "ssh.socket", "apt-daily-upgrade.timer", "fleet-no-such.service")


def daemon_commands(fh) -> list[str]:
    return [DaemonState().command(unit, INPUTS[: i % 4]) for i, unit in enumerate(units(fh.name))]


def systemd_commands(fh) -> list[str]:
    return [_SystemdKind.guarded(fact().command(services=unit)) for unit in units(fh.name)
            for fact in (SystemdStatus, SystemdEnabled)]


def assert_grouped_as_each_alone(fh, commands: list[str]) -> None:
    """The grouped answers are each command's own. A live host: a unit may start or stop
    between the two readings (or since another spec read the singles), so a difference is
    read once more, both fresh; a difference in both readings is the grouping's, not the
    host's."""
    for attempt in range(2):
        alone = singles(fh, commands, fresh=attempt > 0)
        together = grouped(fh, commands)
        if together == alone:
            break
    assert together == alone


def test_pf01_daemon_states_grouped_are_each_units_own(fh):
    """pf-01: one `systemctl show` for several units, split per unit, is each unit's own
    DaemonState answer (running services, a socket, a timer, a unit that does not exist)."""
    assert_grouped_as_each_alone(fh, daemon_commands(fh))


def test_pf02_file_facts_grouped_are_each_paths_own(fh):
    """pf-02: one `stat` (and one `sha256sum`) for several paths, split per path, is each
    path's own File (Sha256File) answer: files, a directory, a link, a missing path."""
    paths = ["/etc/hostname", "/etc/ssh", "/etc/fleet-no-such-file", "/etc/ssh/sshd_config", "/etc/localtime"]
    for fact in (File, Sha256File):
        commands = [fact().command(p).get_raw_value() for p in paths if not (fact is Sha256File and p == "/etc/ssh")]
        assert grouped(fh, commands) == [run(fh, c) for c in commands]


def test_pf03_systemd_facts_grouped_are_each_units_own(fh):
    """pf-03: pyinfra's SystemdStatus and SystemdEnabled for one unit each, answered by one
    `systemctl show` of both properties for every unit, are each fact's own answer (running
    services, a socket, a timer, a unit that does not exist)."""
    assert_grouped_as_each_alone(fh, systemd_commands(fh))


def test_pf04_daemon_and_systemd_facts_grouped_are_each_units_own(fh):
    """pf-04: DaemonState and pyinfra's SystemdStatus/SystemdEnabled together, for the same
    units, answered by one `systemctl show` of every property either asks (each unit shown
    once, `--all` and `--timestamp` for all), are each fact's own answer: services, a socket,
    a timer, a unit that does not exist."""
    daemon, systemd = daemon_commands(fh), systemd_commands(fh)
    assert_grouped_as_each_alone(fh, [c for i, d in enumerate(daemon) for c in (d, *systemd[2 * i:2 * i + 2])])
