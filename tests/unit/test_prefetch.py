"""The fact prefetch batch (fleet.converge.connector): each command's answer, as pyinfra's
own run of it would give, and nothing taken from output the script did not print."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleet.converge.connector import BatchReader, BrokenBatch, batch_script, ungroup_one


def parse_batch(lines: list[str], token: str, count: int) -> dict:
    """{index: (exit status, stdout lines, stderr lines)} from a whole batch output, read as
    the connector reads it (BatchReader); {} when any line is not what the script prints, or
    the output is cut short."""
    reader, found = BatchReader(token, count), {}
    try:
        for line in lines:
            got = reader.feed(line)
            if got is not None:
                found[got[0]] = got[1]
    except BrokenBatch:
        return {}
    return found if reader.current is None else {}


def ungroup_facts(results: dict, plan: list) -> dict:
    """The results of the run commands, back to the original commands' indexes, as the
    connector files them (ungroup_one)."""
    out = {}
    for position, entry in plan:
        if position in results:
            out.update(ungroup_one(results[position], entry))
    return out

COMMANDS = [
    "echo one; echo two",
    "printf 'no newline at the end'",
    "echo out; echo err >&2; exit 3",
    "true",
    "echo \"quotes ' and \\\" and $HOME-less $((1+2))\"",
    "cat",  # reads stdin: gets /dev/null, not the rest of the script
    "printf 'o-prefixed\\ne-prefixed\\n\\n'",
    "printf '\\n'",
    "echo a; printf 'b' >&2; exit 1",
    "echo \"args: $# $1\"",  # no arguments, as under sh -c
    "set -e; false; echo not reached",
    "printf 'before\\0after\\n'; printf 'e\\0rr' >&2",  # NUL bytes: copied by cat, not by bash's read
    "printf 'x%.0s' $(seq 3000); printf '\\n\\n\\n'",  # long, trailing empty lines
]


def run_live(command: str) -> tuple[int, list[str], list[str]]:
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout.splitlines(), done.stderr.splitlines()


def run_batch(commands: list[str], token: str = "tok-123") -> dict:
    done = subprocess.run(["sh", "-s"], input=batch_script(commands, token), capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return parse_batch(done.stdout.splitlines(), token, len(commands))


def test_each_answer_is_what_a_live_run_gives():
    results = run_batch(COMMANDS)
    assert sorted(results) == list(range(len(COMMANDS)))
    for index, command in enumerate(COMMANDS):
        assert results[index] == run_live(command), command


def test_bash_options_exported_to_the_batch_change_no_section():
    """An SSH user's environment may export SHELLOPTS or BASHOPTS, which bash applies at its
    start: errexit must not end the printing loop at the first file read to its end."""
    done = subprocess.run(["sh", "-s"], input=batch_script(COMMANDS, "tok-123"), capture_output=True, text=True,
                          env={**os.environ, "SHELLOPTS": "errexit:nounset:pipefail", "BASHOPTS": "failglob:nullglob"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert parse_batch(done.stdout.splitlines(), "tok-123", len(COMMANDS)) == run_batch(COMMANDS)


def test_without_bash_the_sections_are_the_same(tmp_path):
    """A host with no bash: the main shell copies each command's output with cat, as it did."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cat", "mktemp", "mkfifo", "rm", "seq"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(["sh", "-s"], input=batch_script(COMMANDS, "tok-123"), capture_output=True, text=True,
                          env={**os.environ, "PATH": str(bin_dir)})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert parse_batch(done.stdout.splitlines(), "tok-123", len(COMMANDS)) == run_batch(COMMANDS)


def test_a_line_the_script_did_not_print_voids_the_batch():
    whole = ["tok 0", "a", "", "tok-err 0", "b", "tok-end 0 0"]
    assert parse_batch(whole, "tok", 1) == {0: (0, ["a"], ["b"])}
    assert parse_batch([*whole, "stray"], "tok", 1) == {}
    assert parse_batch(["stray", *whole], "tok", 1) == {}
    assert parse_batch(whole[:4], "tok", 1) == {}  # cut short
    assert parse_batch([*whole, *whole], "tok", 1) == {}  # the same index twice


def test_sections_arrive_as_their_commands_finish():
    """A slow command does not hold up the answers of the other lane, nor the earlier ones of its own."""
    commands = ["sleep 0.5; echo slow", "echo fast", "echo faster", "echo fastest"]
    done = subprocess.run(["sh", "-s"], input=batch_script(commands, "tok", lanes=2), capture_output=True, text=True)
    headers = [line for line in done.stdout.splitlines() if line.startswith("tok ")]
    assert headers == ["tok 1", "tok 3", "tok 0", "tok 2"]  # lanes: [0, 2] and [1, 3]


def test_a_command_printing_a_header_lookalike_cannot_forge_an_answer():
    results = run_batch(["echo 'tok-123 1 0'", "echo real"])
    assert results[0] == (0, ["tok-123 1 0"], [])
    assert results[1] == (0, ["real"], [])


def test_indexes_beyond_the_batch_are_refused():
    assert parse_batch(["tok 5", "x", "tok-err 5", "tok-end 5 0"], "tok", 2) == {}


def test_a_user_script_that_hangs_is_cut_off_and_roots_answers_still_come():
    """The channel's command line as the connector builds it, less sudo: the user's fact
    sleeps past the timeout; root's facts are answered, the user's is not (asked live)."""
    import shlex
    import time

    user, root = ["sleep 30; echo late"], COMMANDS[:3]
    line = f"timeout 1 sh -c {shlex.quote(batch_script(user, 'tok-123'))} </dev/null; sh -s"
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", line], input=batch_script(root, "tok-123", start=1),
                          capture_output=True, text=True, timeout=20)
    assert time.monotonic() - started < 10
    reader, found = BatchReader("tok-123", 4), {}
    for got in map(reader.feed, done.stdout.splitlines()):
        if got is not None:
            found[got[0]] = got[1]
    assert found == {i + 1: run_live(command) for i, command in enumerate(root)}


def test_roots_script_that_hangs_is_killed_with_its_lanes_when_its_time_is_up():
    """Root's script runs under timeout as the connector sends it (less sudo): a fact that
    does not end in time is killed with its lane and the script; nothing is left running."""
    hang = f"sleep 8.{os.getpid()}{time.monotonic_ns() % 1000:03d}"  # a name no other process has
    root = [hang, "echo quick"]
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", "timeout 1 sh -s"], input=batch_script(root, "tok-5"), capture_output=True,
                          text=True, timeout=20)
    assert time.monotonic() - started < 5
    assert done.returncode == 124
    left = subprocess.run(["pgrep", "-f", hang], capture_output=True, text=True)
    assert left.stdout == "", f"still running: {left.stdout}"
    reader = BatchReader("tok-5", 2)
    assert [got for got in map(reader.feed, done.stdout.splitlines()) if got is not None] == [(1, run_live(root[1]))]


def test_a_user_section_cut_off_mid_print_leaves_roots_unanswered_never_wrong():
    """The user's script killed while its printer was halfway through a section: root's
    sections after it are read as that section's body, which never ends; nothing is used."""
    root = ["tok 1", "r", "", "tok-err 1", "", "tok-end 1 0"]
    for cut in (["tok 0", "partial"], ["tok 0", "out", "", "tok-err 0", "partial err"]):
        reader = BatchReader("tok", 2)
        assert [got for got in map(reader.feed, cut + root) if got is not None] == []
        assert reader.seen == set()


def test_two_scripts_share_one_stream_numbered_on():
    """The connector's one channel: the SSH user's script on the command line (stdin from
    /dev/null), then root's from stdin (here without sudo); one reader reads both."""
    import shlex

    user, root = COMMANDS[:4], COMMANDS[4:]
    line = f"sh -c {shlex.quote(batch_script(user, 'tok-123'))} </dev/null; sh -s"
    done = subprocess.run(["sh", "-c", line], input=batch_script(root, "tok-123", start=len(user)),
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert parse_batch(done.stdout.splitlines(), "tok-123", len(COMMANDS)) == run_batch(COMMANDS)
    assert parse_batch(done.stdout.splitlines(), "tok-123", len(COMMANDS) - 1) == {}  # 12 is beyond


# --- the connector: which answers come from the batch, and when they stop ----------------

import json  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
from pyinfra.api import StringCommand  # noqa: E402
from pyinfra.connectors.ssh import SSHConnector  # noqa: E402

from fleet.converge import connector as mod  # noqa: E402


class FakeChannel:
    """A channel's reading side: its lines fed by a greenlet as they come off the network;
    close() (by the reader, at the run's end, or the remote's when the lines end) is
    end-of-file for stdout and stderr."""

    def __init__(self, lines):
        import gevent.event
        import gevent.queue

        self.queue, self.ended, self.closed = gevent.queue.Queue(), gevent.event.Event(), False
        self.feeder = gevent.spawn(self._feed, lines)

    def _feed(self, lines):
        for line in lines:
            if self.closed:
                return
            self.queue.put(line)
            gevent.sleep(0)  # a network read: other greenlets run meanwhile
        self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            self.queue.put(None)
            self.ended.set()

    def files(self):
        """(stdout, stderr) as exec_command gives them."""
        return FakeChannelFile(self, err=False), FakeChannelFile(self, err=True)


class FakeChannelFile:
    def __init__(self, channel, err):
        self.channel, self.err = channel, err

    def __iter__(self):
        if self.err:  # the batch prints nothing on stderr
            self.channel.ended.wait()
            return
        while (line := self.channel.queue.get()) is not None:
            yield line


class FakeClient:
    """Answers the batch (the SSH user's script on the command line, root's `sh -s` with the
    script on stdin) the way its stream looks: every command's section, command i printing
    `prefetched i` with exit status i, in the order `order` gives (default: as dealt)."""

    def __init__(self, order=None, stray_after=None, hang_after=None):
        import gevent.event

        self.order, self.stray_after, self.batches, self.commands = order, stray_after, [], []
        self.hang_after, self.hung = hang_after, gevent.event.Event()  # a script that stops printing
        self.channels = []

    def exec_command(self, command):
        import re
        import shlex

        self.commands.append(command)
        words = shlex.split(command)
        user = (words[4] if words[:4] == ["timeout", str(mod.USER_SCRIPT_TIMEOUT), "sh", "-c"]
                and words[5].startswith("</dev/null") else None)
        root = command.endswith(f"sudo -H -n sh -c 'timeout {mod.BATCH_TIMEOUT} sh -s'")
        assert user is not None or root, command
        client = self

        class Stdin:
            closed = False

            def write(self, data):
                assert root, "stdin written for a batch with no root script"
                client.batches.append(data.decode())

            def close(self):
                self.closed = True

        out = []

        def stream():
            scripts = ([user] if user is not None else []) + ([client.batches[-1]] if root else [])
            token = scripts[0].split("\nT=", 1)[1].split("\n", 1)[0]
            dealt = [int(i) for script in scripts for i in re.findall(r"^run (\d+) ", script, re.M)]
            for n, i in enumerate([dealt[k] for k in client.order] if client.order else dealt):
                if client.hang_after == n:
                    client.hung.wait()
                if client.stray_after == n:
                    yield "stray"
                yield from [f"{token} {i}", f"prefetched {i}", "", f"{token}-err {i}", "", f"{token}-end {i} {i}"]

        def lines():  # read once the feeder starts: root's script is on stdin by then
            return (line + "\n" for line in stream())

        client.stdin = Stdin()
        channel = FakeChannel(lines())
        client.channels.append(channel)
        return (client.stdin, *channel.files())


@pytest.fixture
def conn(monkeypatch, tmp_path):
    """A FleetSSHConnector with no SSH under it: pyinfra's connector answers every command
    it is given with ('live', command) and counts the calls; the batch goes to a FakeClient."""
    live = []

    def fake_run(self, command, print_output=False, print_input=False, **arguments):
        live.append(str(command))
        from pyinfra.connectors.util import CommandOutput, OutputLine
        return True, CommandOutput([OutputLine("stdout", "live")])

    monkeypatch.setattr(SSHConnector, "run_shell_command", fake_run)
    monkeypatch.setattr(SSHConnector, "put_file", lambda self, *a, **k: True)
    monkeypatch.setattr(mod, "_state", {"changed": False})
    record = tmp_path / "facts" / "h.json"
    c = object.__new__(mod.FleetSSHConnector)
    from pyinfra.api import Config, Inventory, State

    c.state = State(Inventory(([], {})), Config())
    c.host = SimpleNamespace(name="h", print_prefix="[h] ", connector_data={},
                             data={"fleet_prefetch_file": str(record)})
    c.client = FakeClient()
    c.live, c.record = live, record
    return c


def key(c, text):
    return c._cache_key(StringCommand(text), {"_sudo": True})


def ask(c, monkeypatch, text, fact=True, cls=None, **arguments):
    """Run `text` as pyinfra would for a fact (of class `cls`, read from _get_fact's frame), or
    for an operation when fact=False."""
    caller = SimpleNamespace(f_locals={"cls": cls}) if fact else None
    monkeypatch.setattr(mod, "_fact_caller", lambda: caller)
    return c.run_shell_command(StringCommand(text), **{"_sudo": True, **arguments})


def bounded(text: str) -> str:
    """What pyinfra's connector is given for a fact asked live (mod.bounded)."""
    return str(mod.bounded(StringCommand(text)))


def test_recorded_facts_are_answered_from_the_batch_until_something_changes(conn, monkeypatch):
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0, key(conn, "cat /b"): 0}}))
    conn._prefetch()
    status, out = ask(conn, monkeypatch, "cat /a")
    assert (status, out.stdout_lines) == (True, ["prefetched 0"]) and conn.live == []
    status, out = ask(conn, monkeypatch, "cat /b")  # exit status 1 in the fake batch
    assert (status, out.stdout_lines) == (False, ["prefetched 1"])
    assert ask(conn, monkeypatch, "cat /b", _success_exit_codes=[0, 1])[0] is True
    ask(conn, monkeypatch, "touch /a", fact=False)  # an operation's command
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["live"]
    assert conn.live == ["touch /a", bounded("cat /a")]


def test_an_upload_voids_the_batch_too(conn, monkeypatch):
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0}}))
    conn._prefetch()
    conn.put_file("x", "/a")
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["live"]


def test_the_ssh_users_facts_and_roots_share_one_channel(conn, monkeypatch):
    """The user's script runs first, from the command line, and its sections come first."""
    user = conn._cache_key(StringCommand("echo \"$SSH_CONNECTION\""), {"_sudo": False})
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0, user: 0, key(conn, "cat /b"): 0}}))
    conn._prefetch()
    [command] = conn.client.commands
    assert command.startswith("timeout 20 sh -c "), command
    assert command.endswith(" </dev/null; sudo -H -n sh -c 'timeout 120 sh -s'"), command
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["prefetched 1"]
    assert ask(conn, monkeypatch, "cat /b")[1].stdout_lines == ["prefetched 2"]
    assert ask(conn, monkeypatch, "echo \"$SSH_CONNECTION\"", _sudo=False)[1].stdout_lines == ["prefetched 0"]
    assert conn.live == []


def test_a_record_of_the_users_facts_alone_runs_no_sudo(conn, monkeypatch):
    user = conn._cache_key(StringCommand("id -u"), {"_sudo": False})
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {user: 0}}))
    conn._prefetch()
    [command] = conn.client.commands
    import shlex

    assert shlex.split(command)[:4] == ["timeout", "20", "sh", "-c"] and shlex.split(command)[5:] == ["</dev/null"]
    assert conn.client.stdin.closed
    assert conn.client.batches == []  # nothing written to stdin
    assert ask(conn, monkeypatch, "id -u", _sudo=False)[1].stdout_lines == ["prefetched 0"]
    assert ask(conn, monkeypatch, "id -u")[1].stdout_lines == ["live"]  # as root: not what was batched


def test_facts_not_run_as_root_or_with_stdin_are_never_batched(conn, monkeypatch):
    assert conn._cache_key(StringCommand("id"), {"_sudo": False}) == "sh -c id"
    assert conn._cache_key(StringCommand("id"), {"_sudo": True, "_sudo_user": "bob"}) is None
    assert conn._cache_key(StringCommand("cat"), {"_sudo": True, "_stdin": "x"}) is None
    assert mod.FleetSSHConnector._inner(key(conn, "cat '/a b'")) == (True, "cat '/a b'")


def test_the_record_keeps_what_was_asked_and_forgets_what_was_not_for_three_runs(conn, monkeypatch):
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "old"): 0, key(conn, "older"): 2}}))
    conn._prefetch()
    ask(conn, monkeypatch, "new")
    conn._write_record()
    assert json.loads(conn.record.read_text())["commands"] == {key(conn, "new"): 0, key(conn, "old"): 1}


def _fact_key(c, fact, path):
    return c._cache_key(fact().command(path), {"_sudo": True})


def _run_answering_nothing_for(monkeypatch, c, paths):
    """pyinfra's connector under `c`: File facts of `paths` print nothing (no such path)."""
    from pyinfra.connectors.util import CommandOutput, OutputLine

    def fake_run(self, command, print_output=False, print_input=False, **arguments):
        c.live.append(str(command))
        empty = any(f"test -e {path} " in str(command) for path in paths)
        return True, CommandOutput([] if empty else [OutputLine("stdout", "user=root group=root")])

    monkeypatch.setattr(SSHConnector, "run_shell_command", fake_run)


def test_a_run_that_created_files_guesses_their_checksums_for_the_next(conn, monkeypatch):
    """Only pyinfra's File fact (not Directory or Link, the same command) found missing."""
    from pyinfra.facts.files import Directory, File, Link, Sha1File, Sha256File

    _run_answering_nothing_for(monkeypatch, conn, ["/etc/new", "/etc/newdir", "/etc/newlink"])
    conn._prefetch()
    ask(conn, monkeypatch, File().command("/etc/new").get_raw_value(), cls=File)
    ask(conn, monkeypatch, Directory().command("/etc/newdir").get_raw_value(), cls=Directory)
    ask(conn, monkeypatch, Link().command("/etc/newlink").get_raw_value(), cls=Link)
    ask(conn, monkeypatch, File().command("/etc/old").get_raw_value(), cls=File)  # exists
    ask(conn, monkeypatch, Sha1File().command("/etc/old").get_raw_value(), cls=Sha1File)
    ask(conn, monkeypatch, "install -m 600 /dev/null /etc/new", fact=False)  # the operation's change
    conn._write_record()
    record = json.loads(conn.record.read_text())
    assert record["guesses"] == [_fact_key(conn, Sha1File, "/etc/new"), _fact_key(conn, Sha256File, "/etc/new")]
    assert len(record["commands"]) == 5


def test_the_fact_class_is_read_from_pyinfras_own_get_fact(monkeypatch):
    """_asked_class reads `cls` from pyinfra's _get_fact frame: if pyinfra renames it, no guess
    is made (never a wrong one), and this test says so."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.connectors.local import LocalConnector
    from pyinfra.connectors.util import CommandOutput
    from pyinfra.facts.files import Directory, File

    seen = []

    def fake_run(self, command, print_output=False, print_input=False, **arguments):
        seen.append(mod._asked_class(mod._fact_caller()))
        return True, CommandOutput([])

    monkeypatch.setattr(LocalConnector, "run_shell_command", fake_run)
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    host = state.inventory.get_host("@local")
    assert host.get_fact(File, path="/nowhere") is None
    host.get_fact(Directory, path="/nowhere")
    assert seen == [File, Directory]


def test_a_run_that_changed_nothing_guesses_nothing(conn, monkeypatch):
    from pyinfra.facts.files import File

    _run_answering_nothing_for(monkeypatch, conn, ["/etc/new"])
    conn._prefetch()
    ask(conn, monkeypatch, File().command("/etc/new").get_raw_value(), cls=File)
    conn._write_record()
    assert "guesses" not in json.loads(conn.record.read_text())


def test_a_missing_file_answered_from_the_batch_is_guessed_too(conn, monkeypatch):
    from pyinfra.facts.files import File, Sha256File

    command = File().command("/etc/new").get_raw_value()
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, command): 0}}))
    conn._prefetch()
    conn._prefetched[key(conn, command)] = (0, [], [])  # what the batch gives for a missing path
    conn._waiting.clear()
    assert ask(conn, monkeypatch, command, cls=File)[1].stdout_lines == []
    ask(conn, monkeypatch, "touch /etc/new", fact=False)
    conn._write_record()
    assert _fact_key(conn, Sha256File, "/etc/new") in json.loads(conn.record.read_text())["guesses"]


def test_guesses_are_batched_in_groups_of_their_own_and_kept_only_when_asked(conn, monkeypatch):
    from pyinfra.facts.files import Sha1File, Sha256File

    asked_before = _fact_key(conn, Sha1File, "/etc/old")
    guesses = [_fact_key(conn, Sha1File, "/etc/new"), _fact_key(conn, Sha256File, "/etc/new"), asked_before]
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {asked_before: 0}, "guesses": guesses}))
    conn._prefetch()
    script = conn.client.batches[-1]
    assert script.count('sha1sum "$@"') == 2 and script.count('sha256sum "$@"') == 1, script
    assert script.count("/etc/old") == 1  # a guess already in the record is not run twice
    ask(conn, monkeypatch, Sha1File().command("/etc/new").get_raw_value(), cls=Sha1File)
    conn._write_record()
    assert json.loads(conn.record.read_text()) == {"commands": {guesses[0]: 0, asked_before: 1}}


def on_path(tmp_path, monkeypatch, tool: str, script: str) -> None:
    """`script` as the command `tool`, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / tool).write_text(script)
    (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def failing_tool(tmp_path, monkeypatch, tool: str, bad: str) -> None:
    """`tool` on PATH failing (exit 1, as on a read error) when one of its paths ends in `bad`."""
    on_path(tmp_path, monkeypatch, tool, f'#!/bin/sh\n# test double: {tool} that cannot read one file\n'
            f'for p in "$@"; do case "$p" in *{bad}) exit 1 ;; esac; done\nexec /usr/bin/{tool} "$@"\n')


def test_a_guess_that_breaks_its_group_costs_the_recorded_facts_nothing(tmp_path, monkeypatch):
    """A guessed checksum whose file sha1sum cannot read makes its group's sha1sum fail: the
    guesses are asked live, the recorded checksums still come from the batch."""
    from pyinfra.facts.files import Sha1File

    from fleet.converge.connector import group_facts

    for name in ("plain", "unreadable", "other"):
        (tmp_path / name).write_text(name)
    failing_tool(tmp_path, monkeypatch, "sha1sum", "unreadable")
    commands = [Sha1File().command(str(tmp_path / n)).get_raw_value() for n in ("plain", "unreadable", "other")]
    run, plan = group_facts(commands, apart=frozenset({1, 2}))
    assert len(run) == 2
    results = ungroup_facts(run_batch(run), plan)
    assert results == {0: run_live(commands[0])}
    run, plan = group_facts(commands)  # the same three in one group: none answered
    assert ungroup_facts(run_batch(run), plan) == {}


def test_a_fact_waits_for_its_own_answer_only(conn, monkeypatch):
    conn.client = FakeClient(order=[1, 0])
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0, key(conn, "cat /b"): 0}}))
    conn._prefetch()
    assert conn._prefetched == {}  # nothing read yet: connect returned at once
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["prefetched 0"]  # came second
    assert ask(conn, monkeypatch, "cat /b")[1].stdout_lines == ["prefetched 1"]
    assert conn.live == []


def test_a_group_of_the_wrong_shape_is_asked_live_without_waiting_for_the_rest(conn, monkeypatch):
    """The fake answers the File group with `prefetched 0`, not stat's shape: its facts are
    released to live runs as soon as that section is read, not when the batch ends."""
    from pyinfra.facts.files import File

    files = [File().command(p).get_raw_value() for p in ("/a", "/b")]
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, c): 0 for c in (*files, "cat /c")}}))
    seen_before_last = {}
    stream = FakeClient.exec_command

    def exec_command(self, command):
        stdin, lines, stderr = stream(self, command)

        class Watched:
            channel = lines.channel

            def __iter__(self):
                for line in lines:
                    if line.endswith("-end 1 1\n"):  # the last section is about to be read
                        seen_before_last.update({k: e.is_set() for k, e in conn._waiting.items()})
                    yield line
        return stdin, Watched(), stderr

    monkeypatch.setattr(FakeClient, "exec_command", exec_command)
    conn._prefetch()
    assert ask(conn, monkeypatch, files[0])[1].stdout_lines == ["live"]
    gevent.joinall([reader for _, reader in conn._readers], timeout=5)  # the snapshot is taken
    assert seen_before_last == {key(conn, files[0]): True, key(conn, files[1]): True, key(conn, "cat /c"): False}
    assert ask(conn, monkeypatch, "cat /c")[1].stdout_lines == ["prefetched 1"]


def test_a_stray_line_leaves_the_answers_after_it_to_live_runs(conn, monkeypatch):
    conn.client = FakeClient(stray_after=1)
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0, key(conn, "cat /b"): 0}}))
    conn._prefetch()
    assert ask(conn, monkeypatch, "cat /b")[1].stdout_lines == ["live"]
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["prefetched 0"]  # whole before the stray line
    assert conn.live == [bounded("cat /b")]


def test_a_batch_with_no_end_is_closed_at_its_time_limit(conn, monkeypatch):
    """The limit closes the channel (see _read_batch: nothing is thrown into paramiko's read);
    what came before it is used, the rest is asked live, and the run says so."""
    monkeypatch.setattr(mod, "BATCH_TIMEOUT", 0.3)
    warnings = []
    monkeypatch.setattr(mod.logger, "warning", warnings.append)
    conn.client = FakeClient(hang_after=1)
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0, key(conn, "cat /b"): 0}}))
    conn._prefetch()
    started = time.monotonic()
    assert ask(conn, monkeypatch, "cat /b")[1].stdout_lines == ["live"]
    assert 0.3 <= time.monotonic() - started < 3
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["prefetched 0"]
    assert conn.client.channels[0].closed
    assert warnings == [f"[h] {mod.GAVE_UP} after 1 (BrokenBatch: no end after 0.3 s); the rest are asked one by one"]
    conn.client.hung.set()


def test_a_change_while_a_fact_waits_sends_it_live(conn, monkeypatch):
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0}}))
    conn._prefetch()
    mod._state["changed"] = True  # another host's operation ran a command meanwhile
    assert ask(conn, monkeypatch, "cat /a")[1].stdout_lines == ["live"]


def test_disconnect_stops_a_batch_still_running(conn, monkeypatch):
    conn.record.parent.mkdir()
    conn.record.write_text(json.dumps({"commands": {key(conn, "cat /a"): 0}}))
    conn._prefetch()
    monkeypatch.setattr(SSHConnector, "disconnect", lambda self: None)
    conn.disconnect()
    assert all(reader.dead for _, reader in conn._readers)
    assert all(channel.closed for channel in conn.client.channels)


def test_an_unreadable_record_means_no_batch(conn):
    conn.record.parent.mkdir()
    conn.record.write_text("{not json")
    conn._prefetch()
    assert conn._prefetched == {}


def test_a_transfer_to_a_host_that_went_away_fails_that_host_only(conn, monkeypatch):
    """pyinfra ends the whole run on a ConnectError from a transfer (the SFTP channel opened
    after the host stopped answering); the connector reports pyinfra's per-host SSHException."""
    from paramiko import SSHException
    from pyinfra.api.exceptions import ConnectError

    def gone(self, *a, **k):
        raise ConnectError("Unable to establish SFTP connection.")

    monkeypatch.setattr(SSHConnector, "put_file", gone)
    with pytest.raises(SSHException, match=r"the connection to h was lost mid-run \(ConnectError: Unable"):
        conn.put_file("x", "/a")


@pytest.mark.parametrize("command", ["true", "cat '/a b'", "echo \"$HOME\" 'it'\"'\"'s'", "''", "'", "a\nb\t`c` $(d)",
                                     "x" * 5000 + "'", "", "sh -c 'sh -c \"x\"'"])
@pytest.mark.parametrize("prefix", ["sudo -H -n sh -c ", "sh -c ", "sudo -H -n  sh -c ", "sudo -u x sh -c ", "env sh -c "])
def test_the_fast_unquoting_gives_what_shlex_split_gives(prefix, command):
    """_inner undoes shlex.quote itself; on any line it must agree with shlex.split."""
    import shlex

    line = prefix + shlex.quote(command)
    words = shlex.split(line)
    expected = ((True, words[5]) if len(words) == 6 and tuple(words[:5]) == mod.SUDO_PREFIX else
                (False, words[2]) if len(words) == 3 and tuple(words[:2]) == mod.SUDO_PREFIX[3:] else None)
    assert mod.FleetSSHConnector._inner.__wrapped__(line) == expected
    assert mod.FleetSSHConnector._inner(prefix + "'unterminated") is None


# --- File, Sha1File and Sha256File facts answered per kind, one process each -------------
def _file_fact_commands(root):
    from pyinfra.facts.files import File, Sha1File, Sha256File

    (root / "plain").write_text("x")
    (root / "a b 'q' \\ $x").write_text("y")
    (root / "line\nbreak").write_text("z")
    (root / "dir").mkdir()
    (root / "link").symlink_to(root / "plain")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "ünï").write_text("u")
    # The batch's checksums read these files between its stat and the live one. Under the
    # usual relatime, a read moves a file's atime when it is not later than its mtime or ctime,
    # so a new file's atime could move on a second's edge (CI saw 1796529723 -> ...724). An
    # atime ahead of both, within a day, is left alone by every read.
    ahead = time.time() + 3600
    for name in ("plain", "a b 'q' \\ $x", "line\nbreak", "ünï", "dir"):
        os.utime(root / name, (ahead, ahead - 7200))
    names = ["plain", "a b 'q' \\ $x", "line\nbreak", "link", "dangling", "missing", "ünï", "dir"]
    paths = [str(root / n) for n in names] + ["", "-n"]
    files = [File().command(p).get_raw_value() for p in paths]
    sums = [fact().command(p).get_raw_value() for fact in (Sha1File, Sha256File) for p in paths if not p.endswith("dir")]
    return files, sums


def test_file_facts_grouped_answer_as_each_fact_alone(tmp_path):
    from fleet.converge.connector import fact_kind, group_facts

    files, sums = _file_fact_commands(tmp_path)
    commands = [COMMANDS[0], *files, COMMANDS[1], *sums, COMMANDS[2]]
    assert all(fact_kind(c) is not None for c in files + sums)
    run, plan = group_facts(commands)
    assert len(run) == 3 + 3  # the three others, one command per kind
    results = ungroup_facts(run_batch(run), plan)
    assert sorted(results) == list(range(len(commands)))
    for index, command in enumerate(commands):
        assert results[index] == run_live(command), command


def test_a_group_that_cannot_answer_exactly_answers_none_of_its_facts(tmp_path, monkeypatch):
    """sha1sum failing on one file: none of that kind is prefetched (asked live instead)."""
    from pyinfra.facts.files import Sha1File

    from fleet.converge.connector import group_facts

    files, _ = _file_fact_commands(tmp_path)
    failing_tool(tmp_path, monkeypatch, "sha1sum", "link")
    sums = [Sha1File().command(str(tmp_path / n)).get_raw_value() for n in ("plain", "link")]
    commands = [*files, *sums]
    run, plan = group_facts(commands)
    results = ungroup_facts(run_batch(run), plan)
    assert sorted(results) == list(range(len(files)))
    for index in results:
        assert results[index] == run_live(commands[index])


def test_a_checksum_of_what_is_not_a_regular_file_is_left_to_its_own_command(tmp_path):
    """A FIFO or a character device where a managed file was is not read by the batch (its
    reader would wait for a writer, or read without end, holding up its lane): the batch ends,
    its other checksums are answered as each fact alone, and those paths are asked live. So
    is a directory, which sha1sum cannot hash."""
    from pyinfra.facts.files import Sha1File, Sha256File

    from fleet.converge.connector import group_facts

    (tmp_path / "plain").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    (tmp_path / "to-plain").symlink_to(tmp_path / "plain")
    paths = [str(tmp_path / n) for n in ("plain", "fifo", "missing", "to-fifo", "to-plain", "dir")] + ["/dev/zero"]
    commands = [fact().command(p).get_raw_value() for fact in (Sha1File, Sha256File) for p in paths]
    run, plan = group_facts(commands)
    assert len(run) == 2
    # its own session, killed whole if it does not end: a reader left on /dev/zero would spin
    proc = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(batch_script(run, "tok-9"), timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    results = ungroup_facts(parse_batch(out.splitlines(), "tok-9", len(run)), plan)
    regular = [i for i, c in enumerate(commands) if "/plain " in c or "/missing " in c or "/to-plain " in c]
    assert sorted(results) == regular
    for index in regular:
        assert results[index] == run_live(commands[index])


@pytest.mark.parametrize("command", [
    "! (test -e /a || test -L /b ) || ( stat -c 'x' /a )",  # not the fact's text
    "test -e /a && ( sha1sum /a 2> /dev/null || shasum /a 2> /dev/null || sha1 /a 2> /dev/null ) || true; rm -rf /",
    "test -e '/a && ( sha1sum ' && ( sha1sum x",
    "echo hi",
])
def test_only_the_facts_own_commands_are_grouped(command):
    from fleet.converge.connector import fact_kind, group_facts

    assert fact_kind(command) is None
    assert group_facts([command]) == ([command], [(0, 0)])


# systemctl's shape for `show [--all] -p/--property ... UNIT...`, for the test: each unit's
# properties in one fixed order whatever the order asked (as systemd prints them), one block
# per unit, an empty line between blocks (the specs pf-01, pf-03 and pf-04 compare the grouped
# answers with each unit's own on the real hosts).
FAKE_SYSTEMCTL = """#!/bin/sh
# test double of `systemctl show` (shape only)
shift
props=""; skip=0
for a in "$@"; do
  case "$a" in -p|--property) skip=1 ;; -*) ;; *) [ $skip = 0 ] || props="$props $a"; skip=0 ;; esac
done
first=1; skip=0
for u in "$@"; do
  case "$u" in -p|--property) skip=1; continue ;; -*) continue ;; esac
  if [ $skip = 1 ]; then skip=0; continue; fi
  [ $first = 1 ] || echo
  first=0
  for p in Id LoadState ActiveState SubState UnitFileState NeedDaemonReload ExecMainStartTimestamp DropInPath; do
    case " $props " in *" Id "*) [ $p != Id ] || echo "Id=$u" ;; esac
    case " $props " in *" $p "*) [ $p = Id ] || echo "$p=$p-of-$u" ;; esac
  done
done
"""


def fake_systemctl(tmp_path, monkeypatch, script: str = FAKE_SYSTEMCTL) -> None:
    on_path(tmp_path, monkeypatch, "systemctl", script)


def test_daemon_states_grouped_answer_as_each_alone(tmp_path, monkeypatch):
    from fleet.converge.connector import fact_kind, group_facts
    from fleet.converge.daemons import DaemonState

    fake_systemctl(tmp_path, monkeypatch)
    for name in ("a.conf", "b c.conf", "shared.conf"):
        (tmp_path / name).write_text(name)
    f = lambda name: str(tmp_path / name)  # noqa: E731
    daemons = [DaemonState().command(unit, inputs) for unit, inputs in (
        ("one.service", (f("a.conf"), f("missing"), f("shared.conf"))),
        ("two@x.service", ()),
        ("three.timer", (f("shared.conf"), f("b c.conf"))),
        ("four.service", (f("missing"),)),
    )]
    files, _ = _file_fact_commands(tmp_path)
    commands = [COMMANDS[0], daemons[0], *files[:3], daemons[1], daemons[2], COMMANDS[1], daemons[3]]
    assert all(fact_kind(c) is not None for c in daemons)
    run, plan = group_facts(commands)
    assert len(run) == 2 + 2  # the two others, one for the file facts, one for the daemons
    results = ungroup_facts(run_batch(run), plan)
    assert sorted(results) == list(range(len(commands)))
    for index, command in enumerate(commands):
        assert results[index] == run_live(command), command
    assert any(line.startswith("Times=") for line in results[1][1])


def test_a_daemon_group_of_the_wrong_shape_answers_none(tmp_path, monkeypatch):
    """A systemctl that prints one block too few: none of the daemon states is prefetched."""
    from fleet.converge.connector import group_facts
    from fleet.converge.daemons import DaemonState

    fake_systemctl(tmp_path, monkeypatch, "#!/bin/sh\necho LoadState=loaded\n")
    commands = [DaemonState().command("a.service", ()), DaemonState().command("b.service", ()), COMMANDS[0]]
    run, plan = group_facts(commands)
    assert ungroup_facts(run_batch(run), plan).keys() == {2}


def test_a_fact_whose_tool_changed_is_not_grouped(monkeypatch):
    """Should pyinfra's File fact change its stat format, the group's copy of it would answer
    in the old one: such a command is not grouped."""
    from pyinfra.facts.files import File

    from fleet.converge import connector

    command = File().command("/etc/hostname").get_raw_value()
    assert connector.KINDS[0].parse(command) == "/etc/hostname"
    monkeypatch.setattr(connector.KINDS[0], "tool", "stat -c 'user=%U size=%s %N'")
    assert connector.KINDS[0].parse(command) is None


def systemd_fact_command(fact, **arguments) -> str:
    """The command pyinfra's _get_fact sends for a systemd fact (it requires systemctl)."""
    from fleet.converge.connector import _SystemdKind

    return _SystemdKind.guarded(fact().command(**arguments))


def test_systemd_facts_grouped_answer_as_each_alone(tmp_path, monkeypatch):
    """pyinfra's SystemdStatus/SystemdEnabled for one unit each (the two systemd.service
    asks per unit), among others: one systemctl for all, each answer its own command's."""
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    from fleet.converge.connector import fact_kind, group_facts
    from fleet.converge.daemons import DaemonState

    fake_systemctl(tmp_path, monkeypatch)
    units = ["ssh.socket", "systemd-timesyncd.service", "a b@x.service", "ssh.socket"]
    facts = [systemd_fact_command(fact, services=unit) for unit in units for fact in (SystemdStatus, SystemdEnabled)]
    assert all(fact_kind(c) is not None for c in facts)
    commands = [COMMANDS[0], *facts[:3], DaemonState().command("one.service", ()), *facts[3:], COMMANDS[1]]
    run, plan = group_facts(commands)
    assert len(run) == 2 + 1  # the two others, one group for the systemd facts and the daemon
    assert run[1].count("ssh.socket") == 1  # a unit asked twice is shown once
    assert run[1].count("systemctl") == 1
    results = ungroup_facts(run_batch(run), plan)
    assert sorted(results) == list(range(len(commands)))
    for index, command in enumerate(commands):
        assert results[index] == run_live(command), command
    assert SystemdEnabled().process(results[2][1]) == {"ssh.socket": False}  # pyinfra reads it


def test_a_unit_asked_by_a_daemon_and_a_systemd_fact_is_shown_once_and_answers_both(tmp_path, monkeypatch):
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    from fleet.converge.connector import group_facts
    from fleet.converge.daemons import DaemonState

    fake_systemctl(tmp_path, monkeypatch)
    (tmp_path / "x.conf").write_text("x")
    commands = [systemd_fact_command(SystemdStatus, services="ssh.service"),
                DaemonState().command("ssh.service", (str(tmp_path / "x.conf"),)),
                systemd_fact_command(SystemdEnabled, services="ssh.service"),
                DaemonState().command("ssh.service", ()),  # the same unit with other inputs
                DaemonState().command("timer.timer", (str(tmp_path / "x.conf"),))]
    run, plan = group_facts(commands)
    assert len(run) == 1 and run[0].split(" && ")[0].count("ssh.service") == 1  # shown once
    results = ungroup_facts(run_batch(run), plan)
    assert sorted(results) == list(range(len(commands)))
    for index, command in enumerate(commands):
        assert results[index] == run_live(command), command


def test_systemd_facts_pyinfra_did_not_send_as_one_unit_are_not_grouped():
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    from fleet.converge.connector import fact_kind

    for command in (
        systemd_fact_command(SystemdStatus, services=["a.service", "b.service"]),
        systemd_fact_command(SystemdStatus, user_mode=True, services="a.service"),
        systemd_fact_command(SystemdEnabled, machine="m", services="a.service"),
        systemd_fact_command(SystemdStatus),
        SystemdStatus().command(services="a.service").get_raw_value(),  # not as pyinfra sends it
        systemd_fact_command(SystemdStatus, services="a.service").replace("SubState", "ActiveState"),
    ):
        assert fact_kind(command) is None, command


def test_a_systemd_group_of_the_wrong_shape_answers_none(tmp_path, monkeypatch):
    """systemctl missing, or printing blocks other than Id, SubState, UnitFileState."""
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    from fleet.converge.connector import group_facts

    commands = [systemd_fact_command(SystemdStatus, services="a.service"),
                systemd_fact_command(SystemdEnabled, services="b.service"), COMMANDS[0]]
    run, plan = group_facts(commands)
    fake_systemctl(tmp_path, monkeypatch, "#!/bin/sh\nprintf 'Id=a\\nUnitFileState=x\\nSubState=y\\n'\n")
    assert ungroup_facts(run_batch(run), plan).keys() == {2}  # one block for two units
    script = tmp_path / "bin" / "systemctl"
    for wrong in ("printf 'SubState=y\\nId=a\\n\\nId=b\\nUnitFileState=x\\n'",  # Id after the property
                  "printf 'Id=a\\nSubState=y\\n\\nId=b\\nUnitFileState=x\\nOther=z\\n'",  # a line not asked
                  "printf 'Id=a\\nSubState=y\\n\\nId=b\\nUnitFileState=x\\n'; exit 1",  # systemctl failed
                  "printf 'Id=a\\nSubState=y\\n\\nId=b\\nUnitFileState=x\\n'; echo warning >&2"):  # stderr
        script.write_text(f"#!/bin/sh\n{wrong}\n")
        assert ungroup_facts(run_batch(run), plan).keys() == {2}, wrong
    script.write_text("#!/bin/sh\nprintf 'Id=a\\nSubState=y\\n\\nId=b\\nUnitFileState=x\\n'\n")
    assert ungroup_facts(run_batch(run), plan).keys() == {0, 1, 2}  # the right shape is used
    (tmp_path / "bin" / "systemctl").unlink()  # no systemctl: pyinfra's marker, not an answer
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/bin:/usr/bin")
    if shutil.which("systemctl") is None:
        assert ungroup_facts(run_batch(run), plan).keys() == {2}


def test_a_run_over_the_connector_ends_with_its_objects_frozen():
    """A process that loaded the connector freezes its objects when it exits, before the
    interpreter's last collections (which would walk all of them): a handler registered
    before the import runs after the connector's, and sees them frozen, and the process
    still exits with its own status."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
             "import fleet.converge.connector\n"
             "print('before exit', gc.get_freeze_count())\n"
             "sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.split("\n")[:2] == ["before exit 0", "frozen True"], proc.stdout + proc.stderr
    assert proc.returncode == 3


RACE = '''
from gevent import monkey; monkey.patch_all()  # as pyinfra's command line does
import random, re, sys
from types import SimpleNamespace
import gevent, gevent.event
from pyinfra.api import Config, Inventory, State
from paramiko.buffered_pipe import BufferedPipe
from paramiko.channel import ChannelFile, ChannelStderrFile
from fleet.converge import connector as mod


class Channel:
    """paramiko's reading side of a channel; the feeder below feeds it as its transport does."""

    def __init__(self):
        self.in_buffer, self.in_stderr_buffer, self.closed = BufferedPipe(), BufferedPipe(), False

    def recv(self, nbytes):
        return self.in_buffer.read(nbytes)

    def recv_stderr(self, nbytes):
        return self.in_stderr_buffer.read(nbytes)

    def close(self):
        self.closed = True
        self.in_buffer.close()
        self.in_stderr_buffer.close()


class Client:
    def exec_command(self, command):
        self.channel = channel = Channel()
        written = []

        class Stdin:
            def write(self, data):
                written.append(data.decode() if isinstance(data, bytes) else data)

            def close(self):
                pass

        def feed():  # root's script: a long section still streaming when the run ends
            gevent.sleep(0)
            token = re.search(r"^T=(\\S+)$", "".join(written), re.M).group(1)
            channel.in_buffer.feed(f"{token} 0\\n".encode())
            for _ in range(100000):
                if channel.closed:
                    return
                channel.in_buffer.feed(b"a line of a fact's output\\n")

        self.feeder = gevent.spawn(feed)
        return Stdin(), ChannelFile(channel, "r"), ChannelStderrFile(channel, "r")


errors, streaming = [], 0
gevent.get_hub().handle_error = lambda context, kind, value, tb: errors.append(f"{context!r}: {kind.__name__}: {value}")
mod.SSHConnector.disconnect = lambda self: None
for n in range(int(sys.argv[1])):
    c = object.__new__(mod.FleetSSHConnector)
    c.state = State(Inventory(([], {})), Config())
    c.host = SimpleNamespace(name="h", print_prefix="[h] ", connector_data={}, data={})
    c.client = Client()
    c._prefetched, c._waiting, c._readers = {}, {}, []
    c._closing = False
    c._batch([], [("k", "cat /a", False)])
    for _ in range(random.Random(n).randint(1, 80)):
        gevent.sleep(0)
    streaming += not c.client.channel.closed
    c.disconnect()
    c.client.feeder.join(5)
    if not c.client.channel.closed:
        errors.append(f"run {n}: the batch's channel is still open after the run's end")
print(streaming, len(errors))
print("\\n".join(errors[:3]))
'''


def test_the_runs_end_stops_a_streaming_batch_without_a_traceback(tmp_path):
    """Under gevent, an exception thrown into a greenlet reading a paramiko channel while the
    transport feeds it can make paramiko release a lock it does not hold ("Semaphore released
    too many times", a traceback at the end of a failed run on CI). The batch's reader is
    stopped by closing its channel instead; 200 runs' ends at random points print nothing."""
    script = tmp_path / "race.py"
    script.write_text(RACE)
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script), "200"], cwd=repo, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert done.returncode == 0, done.stderr[-2000:]
    counts, *first = done.stdout.splitlines()
    streaming, errors = map(int, counts.split())
    assert streaming >= 150, f"only {streaming} of 200 runs ended with the batch still streaming"
    assert errors == 0, "\n".join(first)


@pytest.fixture
def local_root(monkeypatch, tmp_path):
    """A FleetSSHConnector whose 'host' is this machine: the upload lands in a temp file and
    each command runs in a local shell, so the root upload's own shell step is what runs."""
    import io

    ran = []

    def run_here(self, command, print_output=False, print_input=False, **arguments):
        from pyinfra.connectors.util import CommandOutput, OutputLine
        ran.append((str(command), arguments.get("_sudo", False)))
        proc = subprocess.run(["sh", "-c", command.get_raw_value()], capture_output=True, text=True, timeout=30)
        return proc.returncode == 0, CommandOutput([OutputLine("stdout", line) for line in proc.stdout.splitlines()]
                                                   + [OutputLine("stderr", line) for line in proc.stderr.splitlines()])

    def put_here(self, filename_or_io, remote_filename):
        Path(remote_filename).write_bytes(filename_or_io.read() if isinstance(filename_or_io, io.BytesIO)
                                          else Path(filename_or_io).read_bytes())

    monkeypatch.setattr(mod.FleetSSHConnector, "run_shell_command", run_here)
    monkeypatch.setattr(SSHConnector, "_put_file", put_here)
    monkeypatch.setattr(mod, "_state", {"changed": False})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the SSH user's home, where uploads are staged
    c = object.__new__(mod.FleetSSHConnector)
    c.host = SimpleNamespace(name="h", print_prefix="[h] ", get_temp_filename=lambda name: "/tmp/pyinfra-unused")
    c.ran = ran
    return c


def staged_here(tmp_path) -> list[str]:
    stage = tmp_path / "home" / ".cache" / "fleet-upload"
    assert stage.is_dir() and stage.stat().st_mode & 0o777 == 0o700
    return sorted(p.name for p in stage.iterdir())


@pytest.mark.parametrize("link", ["symlink", "hardlink", "none", "missing"])
def test_a_root_upload_replaces_a_link_and_never_writes_through_it(local_root, tmp_path, link):
    import io

    dest, victim = tmp_path / "etc" / "app.conf", tmp_path / "victim"
    dest.parent.mkdir()
    victim.write_text("not the fleet's\n")
    victim.chmod(0o640)
    if link == "symlink":
        dest.symlink_to(victim)
    elif link == "hardlink":
        os.link(victim, dest)
    elif link == "none":
        dest.write_text("old\n")
    assert local_root.put_file(io.BytesIO(b"new\n"), str(dest), _sudo=True) is True
    assert dest.read_text() == "new\n" and not dest.is_symlink() and dest.stat().st_nlink == 1
    assert victim.read_text() == "not the fleet's\n" and victim.stat().st_mode & 0o777 == 0o640
    assert staged_here(tmp_path) == []  # staged in the SSH user's 0700 directory, and removed
    assert sorted(p.name for p in dest.parent.iterdir()) == ["app.conf"]  # no candidate left
    assert dest.stat().st_mode & 0o777 == 0o600  # private until the operation's own chmod
    (stage, stage_as_root), (root_step, as_root), (cleanup, cleanup_as_root) = local_root.ran
    assert not stage_as_root and stage.startswith("install -d -m 700 ")
    assert as_root and "mv -fT" in root_step and f"cp {tmp_path}/home/.cache/fleet-upload/" in root_step
    assert not cleanup_as_root and cleanup.startswith("rm -f ")


def test_root_uploads_ask_for_the_staging_directory_once(local_root, tmp_path):
    import io

    (tmp_path / "etc").mkdir()
    for name in ("a", "b"):
        assert local_root.put_file(io.BytesIO(name.encode()), str(tmp_path / "etc" / name), _sudo=True) is True
    assert [command.split()[0] for command, _ in local_root.ran] == ["install", "umask", "rm", "umask", "rm"]
    assert staged_here(tmp_path) == [] and (tmp_path / "etc" / "b").read_text() == "b"


def test_a_root_upload_that_cannot_be_renamed_fails_and_leaves_nothing(local_root, tmp_path):
    import io

    dest = tmp_path / "etc" / "app.conf"
    dest.mkdir(parents=True)  # a directory where the file goes: the rename refuses it
    assert local_root.put_file(io.BytesIO(b"new\n"), str(dest), _sudo=True) is False
    assert dest.is_dir() and sorted(p.name for p in dest.parent.iterdir()) == ["app.conf"]
    assert staged_here(tmp_path) == []  # nor the staged copy


def test_a_root_upload_to_a_candidate_writes_the_candidate_itself(local_root, tmp_path):
    """validated_file uploads to `<dest>.fleet-candidate` and renames it itself once checked:
    the upload writes that candidate (any link there replaced), with no candidate of its own."""
    import io

    candidate, victim = tmp_path / "etc" / "app.conf.fleet-candidate", tmp_path / "victim"
    candidate.parent.mkdir()
    victim.write_text("not the fleet's\n")
    candidate.symlink_to(victim)
    assert local_root.put_file(io.BytesIO(b"new\n"), str(candidate), _sudo=True) is True
    assert candidate.read_text() == "new\n" and not candidate.is_symlink()
    assert victim.read_text() == "not the fleet's\n"
    assert sorted(p.name for p in candidate.parent.iterdir()) == ["app.conf.fleet-candidate"]
    assert "mv " not in local_root.ran[1][0] and staged_here(tmp_path) == []


def test_a_fact_asked_live_is_bounded_and_an_operations_command_is_not(conn, monkeypatch):
    ask(conn, monkeypatch, "cat /a")
    ask(conn, monkeypatch, "cat /a", _timeout=30)  # pyinfra's own limit, when a deploy gives one
    ask(conn, monkeypatch, "sleep 1000", fact=False)
    assert conn.live == [bounded("cat /a"), "cat /a", "sleep 1000"]


@pytest.mark.parametrize("command, status, out", [
    ("printf '%s\\n' \"it's\" two; exit 3", 3, "it's\ntwo\n"),
    ("test -e /nonexistent || echo none", 0, "none\n"),
])
def test_a_bounded_fact_prints_and_exits_as_it_would_alone(command, status, out):
    alone = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    run = subprocess.run(["sh", "-c", bounded(command)], capture_output=True, text=True)
    assert (run.returncode, run.stdout, run.stderr) == (alone.returncode, alone.stdout, alone.stderr) == (status, out, "")


def test_a_fact_reading_a_fifo_live_is_stopped_with_one_line_and_leaves_nothing_running(tmp_path, monkeypatch):
    """A FIFO left where a fact reads (an apt source, authorized_keys): the batch gave up on
    it at its limit and the same fact asked live then waited for a writer without end."""
    monkeypatch.setattr(mod, "FACT_TIMEOUT", 1)
    os.mkfifo(tmp_path / "hand.list")
    command = f"grep -lsF -- needle {tmp_path}/*.list || true"
    started = time.monotonic()
    run = subprocess.run(["sh", "-c", bounded(command)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 124 and time.monotonic() - started < 10
    assert run.stderr.splitlines() == [mod.TIMED_OUT.format(command=command, seconds=1)]
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            left += [cmdline] if f"{tmp_path}/hand.list".encode() in cmdline.read_bytes() else []
        except OSError:  # a process that ended meanwhile
            pass
    assert left == []
