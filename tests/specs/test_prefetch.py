"""The converge's fact prefetch (fleet/converge/connector.py) answers facts of one kind with
one command for all of them; on each real host, that answer, split back, is what each fact's
own command prints. The unit tests check the splitting against a stand-in systemctl; only a
real systemd shows that its blocks for several units are its answers for each unit alone."""

from __future__ import annotations

from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from fleet.converge.connector import KINDS, _SystemdKind, fact_kind
from fleet.converge.daemons import DaemonState

INPUTS = ("/etc/hostname", "/etc/fleet-no-such-input", "/etc/ssh/sshd_config")


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


def assert_grouped_as_each_alone(fh, commands: list[str]) -> None:
    """The grouped answers are each command's own. A live host: a unit may start or stop
    between the two readings, so a difference is read once more; a difference in both
    readings is the grouping's, not the host's."""
    for _ in range(2):
        singles = [run(fh, c) for c in commands]
        together = grouped(fh, commands)
        if together == singles:
            break
    assert together == singles


def test_pf01_daemon_states_grouped_are_each_units_own(fh):
    """pf-01: one `systemctl show` for several units, split per unit, is each unit's own
    DaemonState answer (running services, a timer, a unit that does not exist)."""
    listed = fh.host.check_output("systemctl list-units --type=service --state=running --no-legend --plain")
    units = [line.split()[0] for line in listed.splitlines() if line.strip()][:8]
    units += ["apt-daily-upgrade.timer", "fleet-no-such.service"]
    commands = [DaemonState().command(unit, INPUTS[: i % 4]) for i, unit in enumerate(units)]
    assert_grouped_as_each_alone(fh, commands)


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
    and stopped services, a socket, a timer, a unit that does not exist)."""
    listed = fh.host.check_output("systemctl list-units --type=service --state=running --no-legend --plain")
    units = [line.split()[0] for line in listed.splitlines() if line.strip()][:6]
    units += ["ssh.socket", "apt-daily-upgrade.timer", "fleet-no-such.service"]
    commands = [_SystemdKind.guarded(fact().command(services=unit)) for unit in units
                for fact in (SystemdStatus, SystemdEnabled)]
    assert_grouped_as_each_alone(fh, commands)


def test_pf04_daemon_and_systemd_facts_grouped_are_each_units_own(fh):
    """pf-04: DaemonState and pyinfra's SystemdStatus/SystemdEnabled together, for the same
    units, answered by one `systemctl show` of every property either asks (each unit shown
    once, `--all` and `--timestamp` for all), are each fact's own answer: services, a socket,
    a timer, a unit that does not exist."""
    listed = fh.host.check_output("systemctl list-units --type=service --state=running --no-legend --plain")
    units = [line.split()[0] for line in listed.splitlines() if line.strip()][:5]
    units += ["ssh.socket", "apt-daily-upgrade.timer", "fleet-no-such.service"]
    commands = []
    for i, unit in enumerate(units):
        commands.append(DaemonState().command(unit, INPUTS[: i % 4]))
        commands += [_SystemdKind.guarded(fact().command(services=unit)) for fact in (SystemdStatus, SystemdEnabled)]
    assert_grouped_as_each_alone(fh, commands)
