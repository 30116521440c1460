"""pyinfra's SSH connector with TCP settings on its socket (hosts named `@fleet/<name>`).

pyinfra's own SSH connector leaves paramiko's socket as the kernel makes it. Two things
follow on a fleet of small hosts:

- A host that stops answering mid-run (power cut, cable pulled, tailnet down) hangs the
  run: the read waits for output that never comes and TCP only gives up after ~15 minutes
  of retransmissions. Here the socket gets TCP keepalive probes (after `IDLE` s of silence,
  every `INTERVAL` s, `COUNT` of them) and TCP_USER_TIMEOUT (unacknowledged data for
  `USER_TIMEOUT` s ends the connection), so such a host fails its run with an error that
  names it, within about a minute, while the other hosts finish.
- Nagle's algorithm with delayed ACKs adds ~40 ms to every small request/response round
  trip, and a converge is mostly those; TCP_NODELAY removes it.

When such a connection dies, paramiko raises EOFError, which pyinfra does not expect from a
connector: it aborts the whole run, every host with it. This connector reports it as the
SSHException pyinfra handles per host, so only that host fails, named, and the others
finish.

The options are set on the connected socket through paramiko's public Transport.sock (no
paramiko internals are patched). The subclass also answers facts from one batch per host
(below), and installs a file uploaded under sudo by renaming a candidate over it instead of
writing into it (`_put_as_root`: a link left at the path is replaced, never followed). It is
registered as the pyinfra connector `fleet` in pyproject.toml, and the inventory names every
host `@fleet/<name>`: the host is still called `<name>` everywhere (--limit, output, data).
"""

from __future__ import annotations

import atexit
import functools
import gc
import hashlib
import json
import logging
import os
import secrets
import shlex
import socket
import sys
from pathlib import Path

import click
import gevent
import gevent.event
from paramiko import SSHException
from pyinfra.api import FactBase, StringCommand
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api.exceptions import ConnectError
from pyinfra.connectors.ssh import SSHConnector
from pyinfra.connectors.util import CommandOutput, OutputLine, make_unix_command_for_host, write_stdin
from pyinfra.context import ctx_state
from pyinfra.facts.files import File, Sha1File, Sha256File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from fleet.converge import daemons, opcost
from fleet.converge.ops import CANDIDATE, STAGE

logger = logging.getLogger("pyinfra")
# Upload arguments that hand the file to a user other than root (pyinfra's own upload does that)
HANDOVER = ("_sudo_user", "_doas", "_doas_user", "_dzdo", "_dzdo_user", "_su_user")
# What pyinfra's _get_fact prints when a fact's required command is missing; a pyinfra that
# changed it sends other commands, which then just are not grouped (_SystemdKind.parse).
NOCMD = getattr(pyinfra_facts, "_MISSING_COMMAND_MARKER", "##PYINFRA_NOCMD##")

# Every run over this connector also drops repeated costs of pyinfra's CLI, with exact
# equivalents (fleet/converge/opcost.py says which and why).
opcost.install()
# pyinfra logs ~2,700 lines in a no-op of the site ("No changes", "Skipped" per host and
# operation). Each LogRecord also looks up the current thread (under gevent, a new dummy
# thread object for each greenlet), the process id and multiprocessing's process name, which
# pyinfra's formatter never prints: without them, 2,700 lines take ~35 ms less.
logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


class HideSkipped(logging.Filter):
    """Leaves out pyinfra's "[host] Skipped" line for each host an operation is not for,
    unless the run is verbose (`-v`, which also prints why an operation changed nothing).

    The fleet's hosts differ: a no-op of the 7-host site printed 1,347 of them among 2,978
    lines, and ~220 for each added host like pi0-epsilon, which runs 76 of the site's ~295
    operations. They say only that the host is not in that component's group; the results
    table at the end still counts each operation's hosts. (Ansible's `display_skipped_hosts =
    false` makes the same choice.) Each line cost the operator ~25-50 µs of CPU to format
    and print: per added host, 60 → 47 ms and 82 → 60 ms in two alternating series
    (docs/performance.md, thirteenth round).

    Only pyinfra's own line is matched: an INFO record from `run_host_op`, the one place it
    logs "Skipped". If pyinfra words or places it otherwise, the filter matches nothing and
    every line is printed as before. Where opcost's run_single_op is in place, pyinfra does
    not reach that line for those hosts at all, and the line is made only with `-v`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName != "run_host_op" or record.levelno != logging.INFO:
            return True
        msg = record.msg
        if not (isinstance(msg, str) and "Skipped" in msg):
            return True
        return bool(getattr(ctx_state.get(), "print_noop_info", False))


if not any(isinstance(f, HideSkipped) for f in logger.filters):
    logger.addFilter(HideSkipped())

# At exit, the interpreter's last garbage collections walk every object the run made: 0.12-
# 0.22 s after pyinfra's last line of a no-op converge, 0.02-0.03 s when those objects are
# frozen first (gc.freeze leaves them out of every later collection; measured in alternating
# runs, docs/performance.md). The process is ending and its memory goes back whole. The other
# exit handlers (logging's flush) and reference counting still run; only objects caught in
# reference cycles are no longer finalized, and nothing of ours leaves a file or connection to
# such a finalizer (files are closed where they are written; the OS closes the sockets).
atexit.register(gc.freeze)

IDLE = 15
INTERVAL = 5
COUNT = 4
USER_TIMEOUT = 45


def tune(sock: socket.socket) -> None:
    """Apply the fleet's TCP options to a connected socket (those the platform has)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", IDLE), ("TCP_KEEPINTVL", INTERVAL), ("TCP_KEEPCNT", COUNT),
                        ("TCP_USER_TIMEOUT", USER_TIMEOUT * 1000)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


# --- Fact prefetch -----------------------------------------------------------------------
# pyinfra 3 caches no fact: every operation runs its fact commands when it executes, one SSH
# round trip each, and every operation waits for every host. A no-op converge of the site is
# ~100 operations per host, so its time is round trips, not work. Here the fact commands a
# host was asked last run (recorded in the file named by the host's `fleet_prefetch_file`
# data) run in one batch started when the host connects; the answers stream back while pyinfra
# prepares and runs the operations, and serve the facts this run asks (a fact asked before its
# answer is there waits for that one answer) — until anything other than a fact runs on any
# host (a command, an upload), from which point every fact goes to the host again. So a fact
# is answered from the batch only while the converge has changed nothing anywhere, and each
# answer was read on the host before it was used: what pyinfra's own answer would have been
# too. Facts not recorded, or run other than as root through sudo or as the SSH user (the
# batch's two scripts), are asked live. Nothing a fact returns is written to disk: the
# record holds the commands (which never carry secrets), not output.
# pyinfra offers no hook between a fact and its command, so a command is known to be a
# fact's by its caller (pyinfra.api.facts._get_fact) on the stack: read-only, no patching.

SUDO_PREFIX = ("sudo", "-H", "-n", "sh", "-c")
ROOT_PREFIX = " ".join(SUDO_PREFIX) + " "
USER_PREFIX = " ".join(SUDO_PREFIX[3:]) + " "
BATCH_TIMEOUT = 120
# how long the run's end waits for a closed batch's reader (it returns on paramiko's end-of-file)
CLOSE_WAIT = 5
# what the run prints for a host whose batch gave up (a timeout, a stray line): the rest asked live
GAVE_UP = "fact prefetch gave no usable answer"
# The SSH user's script runs before root's on the same channel: a user fact that hangs (a home
# directory on a stalled network mount) is killed after this long, and root's script starts.
USER_SCRIPT_TIMEOUT = 20
# Uploads and commands from operations: state may change, prefetched answers are void.
_state = {"changed": False}
# A fact asked live is bounded as the batch is (BATCH_TIMEOUT): see bounded().
FACT_TIMEOUT = BATCH_TIMEOUT
TIMED_OUT = ("fleet: `{command}` did not finish in {seconds} s and was stopped: something it reads never "
             "answers (a FIFO left where a file was, a stalled mount, a daemon that does not reply). Fix: find "
             "it on this host; the converge's other hosts went on.")


def bounded(command) -> StringCommand:
    """A fact's command, killed on the host (with its process group: `timeout` makes one)
    when it has not finished after FACT_TIMEOUT s, exiting 124 with TIMED_OUT on stderr.
    pyinfra fails that host with "could not load fact" and the line, and the others go on.
    Without it, a fact asked live had no limit (only the batch had one): a `grep` or `cat` of a
    FIFO left where a file is read (the apt sources, authorized_keys, the node exporter's
    textfiles), or a wedged daemon's CLI, held the whole run forever. pyinfra's own `_timeout`
    only stops waiting: the process stays on the host, as root. `timeout` is coreutils
    (Essential); what the fact prints and its exit status are otherwise its own."""
    inner = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    said = TIMED_OUT.format(command=inner if len(inner) <= 160 else inner[:157] + "...", seconds=FACT_TIMEOUT)
    return StringCommand(f"timeout -k 5 {FACT_TIMEOUT} sh -c {shlex.quote(inner)} || {{ rc=$?; "
                         f"[ $rc -ne 124 ] || echo {shlex.quote(said)} >&2; exit $rc; }}")


def _fact_caller():
    """The frame of pyinfra.api.facts._get_fact when the command being run is a fact's
    (that function on the stack, a few calls up), else None."""
    from pyinfra.api import facts

    code = facts._get_fact.__code__
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return None
        if frame.f_code is code:
            return frame
        frame = frame.f_back
    return None


def _asked_class(caller) -> type | None:
    """The fact class _get_fact was asked for (its `cls` argument), read from its frame."""
    asked = getattr(caller, "f_locals", {}).get("cls")
    return asked if isinstance(asked, type) else None


# The batch's commands run in this many concurrent lanes: one slow check (a backup
# repository opened over the network, seconds) no longer holds up the other hundred.
LANES = 4


def batch_script(commands: list[str], token: str, lanes: int = LANES, start: int = 0) -> str:
    """A sh script that runs each command as `sh -c` would (in a subshell with no arguments,
    stdin from /dev/null) and prints, on its stdout, one section per command as soon as that
    command has finished: `<token> <index>`, its stdout, `<token>-err <index>`, its stderr,
    `<token>-end <index> <exit status>`. Commands are dealt round robin to `lanes` lanes that
    run at once, each command's output into its own files; a lane names each finished
    command on a FIFO, and the script's main shell alone prints the sections, in the order
    they finish, so they never interleave (facts only read, so their order does not matter).
    A subshell is a fork without an exec and the markers are printf builtins. The commands run
    in `sh`, as pyinfra runs them; the sections are printed by one `bash` (Essential on Debian
    and Raspberry Pi OS), which reads each output file with its `read` builtin: one process for
    the batch instead of a `cat` per command (~1 ms of a small host's CPU each, ~30 per host in
    a no-op of the site). A file holding a NUL byte, which a bash variable cannot, is copied by
    `cat`, as is every file on a host without bash. Sections are numbered from `start`, so
    two scripts can share one stream (the SSH user's and root's, one channel)."""
    lines = ['d=$(mktemp -d) || exit 1', "trap 'rm -rf \"$d\"' EXIT", "trap 'exit 1' HUP INT PIPE TERM",
             'mkfifo "$d/q" || exit 1', 'exec 3<>"$d/q"',
             'run() { c=$2; { printf "%s %s\\n" "$T" "$1"; ( unset T d; set --; eval "$c" ) </dev/null 2>"$d/$1.e" 3>&-; '
             'rc=$?; printf "\\n%s-err %s\\n" "$T" "$1"; } >"$d/$1.o"; echo "$1 $rc" >&3; }',
             f"T={token}"]
    used = min(lanes, len(commands)) or 1
    for lane in range(used):
        lines.append("{")
        lines += [f"run {start + i} {shlex.quote(commands[i])}" for i in range(lane, len(commands), used)]
        lines.append("} </dev/null >/dev/null 2>&1 &")
    loop = (f'n=0; while [ "$n" -lt {len(commands)} ] && read -r i rc <&3; do {{copy}};'
            ' printf "\\n%s-end %s %s\\n" "$T" "$i" "$rc"; n=$((n+1)); done')
    # read -d '' stops at a NUL (status 0: cat copies that file whole) or at the end (status 1);
    # asked in an `if`, so an errexit in an exported SHELLOPTS cannot end the loop there
    copy = 'for f in "$d/$i.o" "$d/$i.e"; do if IFS= read -r -d "" s <"$f"; then cat "$f"; else printf "%s" "$s"; fi; done'
    lines.append("if command -v bash >/dev/null 2>&1; then BASH_ENV= LC_ALL=C bash -c "
                 + shlex.quote('d=$1 T=$2; ' + loop.format(copy=copy)) + ' sh "$d" "$T"'
                 + '; else ' + loop.format(copy='cat "$d/$i.o" "$d/$i.e"') + "; fi")
    lines.append("exec 3>&-")
    lines.append("wait")
    return "\n".join(lines) + "\n"


# --- Facts of one kind, one command for all ----------------------------------------------
# A no-op converge asks ~70 `File` facts (a subshell and a `stat` each), ~30 checksum facts and
# ~20 daemon states (systemctl, find) per host: most of the batch's processes. In the batch,
# the facts of one kind are answered by one pseudo-command, and its output is split back into
# what each fact's own command prints. A command joins a group only when the fact's own code
# gives back that very command for the parsed arguments, running the group's tool first (so a
# pyinfra upgrade that changes a fact, or that tool, just turns this off), and a group's answer
# is used only when it has exactly the expected shape (its tool exited 0, one answer per
# member); otherwise its facts are simply not prefetched and are asked one by one, as any
# other fact not in the record.
Result = tuple[int, list[str], list[str]]


class _FileKind:
    """pyinfra's File (also Directory, Link: the same command), Sha1File and Sha256File: one
    existence line per path (shell builtins, the fact's own test), then one stat/sha1sum/
    sha256sum over the paths that exist, whose line for each is what the fact's own command
    prints first (its fallbacks run only when that fails, and then the group is not used).

    A checksum kind (`regular` set) hashes only regular files. A path that exists as anything
    else is left to its fact's own command, asked live if the run asks it: a FIFO (or a device
    such as /dev/zero) put where a managed file was would make the group's reader wait for a
    writer, holding up its lane of the batch, and the facts after it, until BATCH_TIMEOUT. The
    fleet's file operations ask File first and never hash a path that is not a file."""

    def __init__(self, fact: type[FactBase], head: str, stop: str, exists: str, tool: str, regular: str = ""):
        self.fact, self.head, self.stop, self.exists, self.tool = fact, head, stop, exists, tool
        self.regular = regular

    def parse(self, command: str) -> str | None:
        if not command.startswith(self.head) or self.stop not in command:
            return None
        try:
            words = shlex.split(command[len(self.head):].split(self.stop, 1)[0])
        except ValueError:
            return None
        if len(words) != 1 or self.fact().command(words[0]).get_raw_value() != command:
            return None
        # the fact runs this very tool first (a pyinfra that changed its format stops the grouping)
        return words[0] if f"{self.tool} {shlex.quote(words[0])} 2> /dev/null" in command else None

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        take = 'set -- "$@" "$p"; echo y'
        if self.regular:  # x: there, but not a regular file (not hashed, not answered)
            take = f"if {self.regular}; then {take}; else echo x; fi"
        return (f'set --; for p in {quoted}; do if {self.exists}; then {take}; else echo n; fi; done;'
                f' [ $# -eq 0 ] || {self.tool} "$@" 2>/dev/null')

    def split(self, result: Result, paths: list[str]) -> list[Result | None] | None:
        """Each path's answer (None: one to ask live), or None when the group answers none."""
        status, lines, err = result
        flags, rest = lines[:len(paths)], lines[len(paths):]
        shapes = ("y", "n", "x") if self.regular else ("y", "n")
        if (status != 0 or err or len(flags) != len(paths) or any(f not in shapes for f in flags)
                or flags.count("y") != len(rest)):
            return None
        answers = iter(rest)
        return [None if flag == "x" else (0, [next(answers)] if flag == "y" else [], []) for flag in flags]


class _DaemonKind:
    """Recognises fleet.converge.daemons.DaemonState's command: `systemctl show` of the unit,
    its drop-ins on disk (shell builtins), and one `find` over its stamp and inputs. Answered
    in a group by _UnitsKind."""

    SHOW, FIND = daemons.DaemonState.SHOW, daemons.DaemonState.TIMES
    # the properties its `systemctl show` prints, in the order systemd prints them
    PROPERTIES = tuple(word for flag, word in zip(SHOW.split(), SHOW.split()[1:]) if flag == "-p")

    def parse(self, command: str) -> tuple[str, tuple[str, ...]] | None:
        head = f" printf 'StampPath=%s\\n' "
        if not command.startswith(self.SHOW) or head not in command:
            return None
        try:
            paths = shlex.split(command.split(head, 1)[1].split(";", 1)[1].strip()[len("find"):].split(self.FIND, 1)[0])
        except (ValueError, IndexError):
            return None
        if not paths or not paths[0].startswith(daemons.APPLIED_DIR + "/"):
            return None
        unit, inputs = paths[0][len(daemons.APPLIED_DIR) + 1:], tuple(paths[1:])
        return (unit, inputs) if daemons.DaemonState().command(unit, inputs) == command else None


class _SystemdKind:
    """Recognises pyinfra's SystemdStatus and SystemdEnabled for one system unit (what its
    systemd.service operation asks, twice per unit): `systemctl show --all` of the unit's Id
    and the fact's own property. Answered in a group by _UnitsKind."""

    FACTS = {"SubState": SystemdStatus, "UnitFileState": SystemdEnabled}
    SHOW = "systemctl show --all --property Id --property"

    @staticmethod
    def guarded(inner) -> str:
        """The command pyinfra's _get_fact sends for a fact that requires systemctl."""
        return StringCommand("if", "command", "-v", "systemctl", ">/dev/null", "2>&1;", "then", "(", inner, ");",
                             "else", "echo", f"'{NOCMD}';", "fi").get_raw_value()

    def __init__(self):
        before, self.TAIL = self.guarded("\0").split("\0")
        self.HEAD = f"{before}{self.SHOW} "

    def parse(self, command: str) -> tuple[str, str] | None:
        if not command.startswith(self.HEAD) or not command.endswith(self.TAIL):
            return None
        key, _, rest = command[len(self.HEAD):-len(self.TAIL)].partition(" ")
        fact = self.FACTS.get(key)
        try:
            words = shlex.split(rest)
        except ValueError:
            return None
        if (fact is None or len(words) != 1 or any(c in words[0] for c in "*?[")  # a pattern: many units
                or self.guarded(fact().command(services=words[0])) != command):
            return None
        return key, words[0]


class _UnitsKind:
    """DaemonState (_DaemonKind) and pyinfra's SystemdStatus/SystemdEnabled (_SystemdKind),
    both answered by one `systemctl show` of every property either asks, for every unit either
    names (each once), then every daemon's drop-ins on disk and one `find` over every daemon's
    stamp and inputs, in order. systemctl is the costliest process of the batch (~10 ms of a
    small host's CPU each, most of it its start and its connection to systemd), and the two
    kinds used to run one each.

    systemd prints one block per unit, an empty line between, each property a `Name=value`
    line in systemd's own order whatever order they were asked in; a property named with -p is
    printed even when empty, so `--all` changes nothing for these; `--timestamp` only the form
    of timestamps, which the systemd facts do not ask. So a fact's own answer is its unit's
    block cut down to the lines of the properties its own command names, in the same order:
    for a systemd fact, Id and its property (its command's `--all` shows both whatever their
    value); for a daemon, its seven, then its drop-ins on disk, its stamp's path and its
    `find` lines (find prints each path it finds in the order given, so each line goes back to
    its daemon by walking the paths in order). Nothing is sent to /dev/null: systemctl failing,
    any stderr, a block too many or too few, or a block with other lines, and no member is
    answered."""

    PROPERTIES = ("Id", *dict.fromkeys((*_DaemonKind.PROPERTIES, *_SystemdKind.FACTS)))
    SHOW = "systemctl show --all --timestamp=us+utc " + " ".join(f"--property {p}" for p in PROPERTIES)

    def __init__(self):
        self.kinds = {"daemon": _DaemonKind(), "systemd": _SystemdKind()}

    def parse(self, command: str) -> tuple[str, tuple] | None:
        for name, kind in self.kinds.items():
            found = kind.parse(command)
            if found is not None:
                return name, found
        return None

    @staticmethod
    def _unit(member: tuple[str, tuple]) -> str:
        name, arguments = member
        return arguments[0] if name == "daemon" else arguments[1]

    def command(self, members: list[tuple[str, tuple]]) -> str:
        q = shlex.quote
        units = " ".join(q(unit) for unit in dict.fromkeys(self._unit(m) for m in members))
        daemons_ = [arguments for name, arguments in members if name == "daemon"]
        dropins = " ".join(daemons.DaemonState.dropins_on_disk(unit) for unit, _ in daemons_)
        paths = " ".join(q(p) for unit, inputs in daemons_ for p in (daemons.stamp_path(unit), *inputs))
        find = f" find {paths}{_DaemonKind.FIND};" if paths else ""
        # a failed systemctl prints no first separator: the group is then not used
        return f"{self.SHOW} {units} && echo --; {dropins} echo --;{find} true"

    def split(self, result: Result, members: list[tuple[str, tuple]]) -> list[Result] | None:
        status, lines, err = result
        if status != 0 or err or lines.count("--") != 2:
            return None
        first = lines.index("--")
        second = lines.index("--", first + 1)
        blocks: list[list[str]] = [[]]
        for line in lines[:first]:
            if line == "":
                blocks.append([])
            else:
                blocks[-1].append(line)
        units = list(dict.fromkeys(self._unit(m) for m in members))
        daemons_ = [arguments for name, arguments in members if name == "daemon"]
        dropins, times = lines[first + 1:second], lines[second + 1:]
        if (len(blocks) != len(units) or len(dropins) != len(daemons_)
                or any(line.split("=", 1)[0] not in self.PROPERTIES for block in blocks for line in block)):
            return None
        by_unit = dict(zip(units, blocks))
        dropin_of = iter(dropins)
        found = iter(times)
        line = next(found, None)
        answers: list[Result] = []
        for name, arguments in members:
            block = by_unit[self._unit((name, arguments))]
            if name == "systemd":
                key = arguments[0]
                mine = [row for row in block if row.split("=", 1)[0] in ("Id", key)]
                if [row.split("=", 1)[0] for row in mine] != ["Id", key]:
                    return None
                answers.append((0, mine, []))
                continue
            unit, inputs = arguments
            stamp = daemons.stamp_path(unit)
            own = [row for row in block if row.split("=", 1)[0] in _DaemonKind.PROPERTIES]
            stamps = []
            for path in (stamp, *inputs):
                if line is not None and line.startswith("Times=") and line.split(" ", 2)[2:] == [path]:
                    stamps.append(line)
                    line = next(found, None)
            answers.append((0, [*own, next(dropin_of), f"StampPath={stamp}", *stamps], []))
        return answers if line is None else None


KINDS = (
    _FileKind(File, "! (test -e ", " || test -L ", 'test -e "$p" || test -L "$p"',
              "stat -c 'user=%U group=%G mode=%A atime=%X mtime=%Y ctime=%Z size=%s %N'"),
    _FileKind(Sha1File, "test -e ", " && ( sha1sum ", 'test -e "$p"', "sha1sum", 'test -f "$p"'),
    _FileKind(Sha256File, "test -e ", " && ( sha256sum ", 'test -e "$p"', "sha256sum", 'test -f "$p"'),
    _UnitsKind(),
)


@functools.lru_cache(maxsize=8192)
def fact_kind(command: str) -> tuple[int, object] | None:
    """(index in KINDS, the fact's arguments) when `command` is exactly that kind's fact
    command, else None."""
    for index, kind in enumerate(KINDS):
        found = kind.parse(command)
        if found is not None:
            return index, found
    return None


def group_facts(commands: list[str], apart: frozenset[int] = frozenset()
                ) -> tuple[list[str], list[tuple[int, int | tuple[int, list]]]]:
    """(the commands to run: the others, and one per kind present, where the kind's first
    member was (the record lists commands in the order the last run asked them, and the batch
    answers roughly in that order); the plan: for each run command's index, the original
    command's index, or for a group (its kind, the members' (original index, arguments))).
    The commands whose indexes are in `apart` (guesses, not asked before) form groups of their
    own, so a guess that makes its group's tool fail (a path that is now a directory) costs the
    other guesses their answers, never the answers of what was asked last run."""
    slots: list = []  # an original index, or the (kind, apart) whose group goes there
    by_kind: dict[tuple[int, bool], list] = {}
    for index, command in enumerate(commands):
        found = fact_kind(command)
        if found is None:
            slots.append(index)
            continue
        group = (found[0], index in apart)
        if group not in by_kind:
            by_kind[group] = []
            slots.append(group)
        by_kind[group].append((index, found[1]))
    run, plan = [], []
    for slot in slots:
        if isinstance(slot, int):
            run.append(commands[slot])
            plan.append((len(run) - 1, slot))
        else:
            members = by_kind[slot]
            run.append(KINDS[slot[0]].command([arguments for _, arguments in members]))
            plan.append((len(run) - 1, (slot[0], members)))
    return run, plan


def shifted(entry: int | tuple[int, list], by: int) -> int | tuple[int, list]:
    """A plan entry (group_facts) with its original indexes moved up by `by`."""
    if isinstance(entry, int):
        return entry + by
    kind, members = entry
    return kind, [(index + by, arguments) for index, arguments in members]


def ungroup_one(result: Result, entry: int | tuple[int, list]) -> list[tuple[int, Result]]:
    """One run command's result as (original index, result) pairs: itself, or its group's
    members (but those its kind leaves to be asked live); a group whose answer is not exactly
    what is expected answers none of them."""
    if isinstance(entry, int):
        return [(entry, result)]
    kind, members = entry
    answers = KINDS[kind].split(result, [arguments for _, arguments in members])
    if answers is None or len(answers) != len(members):
        return []
    return [(index, answer) for (index, _), answer in zip(members, answers) if answer is not None]


class BrokenBatch(Exception):
    """The batch printed a line its script does not print: nothing after it is used."""


class BatchReader:
    """batch_script's stream, read line by line as it comes: `feed` returns (index, (exit
    status, stdout lines, stderr lines)) when a command's section ends, else None, and raises
    BrokenBatch at a line outside what the script prints (a section is used only whole)."""

    def __init__(self, token: str, count: int):
        self.token, self.count = token, count
        self.seen: set[int] = set()
        self.current: int | None = None
        self.out: list[str] = []
        self.err: list[str] | None = None

    @staticmethod
    def _body(lines: list[str]) -> list[str]:
        # the next marker's own leading newline: an empty line when the output ended with one
        # (or was empty), else it ended the output's unterminated last line
        if lines and lines[-1] == "":
            lines.pop()
        return lines

    def feed(self, line: str) -> tuple[int, Result] | None:
        if self.current is None:
            words = line.split(" ")
            if (len(words) == 2 and words[0] == self.token and words[1].isdigit()
                    and int(words[1]) < self.count and int(words[1]) not in self.seen):
                self.current, self.out, self.err = int(words[1]), [], None
                return None
            raise BrokenBatch(line[:80])
        if self.err is None:
            if line == f"{self.token}-err {self.current}":
                self.err = []
            else:
                self.out.append(line)
            return None
        words = line.split(" ")
        if len(words) == 3 and words[0] == f"{self.token}-end" and words[1] == str(self.current) and words[2].isdigit():
            index, result = self.current, (int(words[2]), self._body(self.out), self._body(self.err))
            self.seen.add(index)
            self.current = None
            return index, result
        self.err.append(line)
        return None


# A recorded command not asked for this many runs in a row is dropped from the record.
RECORD_KEEP_RUNS = 3
# A file a run found missing and then created (files.put, validated_file, secret_file) gets its
# checksum asked by the next run, which the record cannot know of: without a guess, the first
# no-op after a converge that created files asks each such checksum live, a round trip on the
# run's path each (16 on a new pi0-like host, ~50 for the whole test fleet). So a run that
# changed something also records, for every path pyinfra's File fact (not Directory or Link:
# the same command) found missing, the checksum facts that follow an upload (files.put's
# Sha1File, the fleet's own operations' Sha256File). The next run's batch answers them in
# groups of their own (group_facts' `apart`), and a guess not asked then is not kept.
GUESSES = (Sha1File, Sha256File)


class FleetSSHConnector(SSHConnector):
    __examples_doc__ = "Hosts are named @fleet/<inventory name>; everything else is pyinfra's SSH connector."

    @staticmethod
    def make_names_data(name: str | None = None):
        if not name:
            raise ValueError("@fleet connector needs a host name: @fleet/<name>")
        yield name, {}, []

    def _connect(self) -> None:
        super()._connect()
        transport = self.client.get_transport() if self.client is not None else None
        if transport is not None and isinstance(transport.sock, socket.socket):
            tune(transport.sock)

    def _lost(self, exc: Exception) -> SSHException:
        why = type(exc).__name__ if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        return SSHException(f"the connection to {self.host.name} was lost mid-run ({why})")

    # -- prefetch ----------------------------------------------------------------------
    def _record_path(self) -> Path | None:
        path = self.host.data.get("fleet_prefetch_file")
        return Path(path) if isinstance(path, str) and path else None

    def _read_record(self) -> tuple[dict[str, int], list[str]]:
        """(the commands asked in the last runs, with how many runs ago; the guesses)."""
        path = self._record_path()
        try:
            record = json.loads(path.read_text()) if path else {}
        except (OSError, ValueError):
            return {}, []
        commands = record.get("commands") if isinstance(record, dict) else None
        if not isinstance(commands, dict):
            return {}, []
        guesses = record.get("guesses")
        guesses = [g for g in guesses if isinstance(g, str) and g not in commands] if isinstance(guesses, list) else []
        return {c: a for c, a in commands.items() if isinstance(c, str) and isinstance(a, int)}, guesses

    def _cache_key(self, command, arguments: dict) -> str | None:
        """The command line pyinfra would send, if a batch can run it the same way: as root
        through sudo, or as the SSH user, with no other user, password, stdin or pty."""
        if arguments.get("_stdin") is not None or arguments.get("_get_pty"):
            return None
        args = {k: v for k, v in arguments.items()
                if k not in ("_get_pty", "_timeout", "_stdin", "_success_exit_codes")}
        if args.get("_sudo_user") or args.get("_sudo_password") or args.get("_su_user"):
            return None
        key = make_unix_command_for_host(self.state, self.host, command, **args).get_raw_value()
        return key if self._inner(key) is not None else None

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _inner(key: str) -> tuple[bool, str] | None:
        """(as root, the command `sh -c` runs) for a batchable command line, else None.

        pyinfra builds the line as the prefix and shlex.quote(command); undoing that quoting
        and checking that quoting the result gives the line back is exact and ~100x faster
        than shlex.split on a long fact script (2.3 s of a no-op converge); any other line
        is split by shlex."""
        for as_root, prefix in ((True, ROOT_PREFIX), (False, USER_PREFIX)):
            if key.startswith(prefix):
                quoted = key[len(prefix):]
                command = quoted[1:-1].replace("'\"'\"'", "'") if quoted[:1] == "'" == quoted[-1:] else quoted
                if command and shlex.quote(command) == quoted:
                    return as_root, command
        try:
            words = shlex.split(key)
        except ValueError:
            return None
        if len(words) == 6 and tuple(words[:5]) == SUDO_PREFIX:
            return True, words[5]
        if len(words) == 3 and tuple(words[:2]) == SUDO_PREFIX[3:]:
            return False, words[2]
        return None

    def _prefetch(self) -> None:
        self._asked: dict[str, None] = {}
        self._prefetched: dict[str, tuple[int, list, list]] = {}
        self._waiting: dict[str, gevent.event.Event] = {}
        self._readers: list[tuple[object, gevent.Greenlet]] = []  # (its channel, its reader)
        self._closing = False
        self._missing: dict[str, tuple[str, dict]] = {}  # File facts answered "no such path"
        self._previous, guesses = self._read_record()
        if _state["changed"]:
            return
        wanted: dict[bool, list[tuple[str, str, bool]]] = {False: [], True: []}
        for keys, guess in ((self._previous, False), (guesses, True)):
            for key in keys:
                if (inner := self._inner(key)) is not None:
                    wanted[inner[0]].append((key, inner[1], guess))
        if wanted[False] or wanted[True]:
            self._batch(wanted[False], wanted[True])

    def _batch(self, user: list[tuple[str, str, bool]], root: list[tuple[str, str, bool]]) -> None:
        """Start the batch and return: its answers arrive while pyinfra prepares and runs
        the operations, each one as soon as its command has finished on the host, and a fact
        asked before its answer is there waits for that answer alone (run_shell_command). So
        one slow check (a backup repository's key derivation, ~1 s) holds up only the
        operation that asks it, not the whole run's start.

        One channel runs both scripts, one stream of sections: the SSH user's, given on the
        command line as pyinfra gives any command, then root's through sudo, read from stdin.
        The user's comes first: it is a few quick facts (the address the connection comes
        from), and root's can take seconds (that key derivation), which the firewall's
        preparation would then wait for. A second channel for the user's script cost each
        host ~3 ms more CPU (its own session process and login shell)."""
        token = "fleet-prefetch-" + secrets.token_hex(8)
        plan: list[tuple[int, int | tuple[int, list]]] = []
        keys: list[str] = []

        def script(wanted: list[tuple[str, str, bool]]) -> str:
            commands, part = group_facts([inner for _, inner, _ in wanted],
                                         frozenset(i for i, (_, _, guess) in enumerate(wanted) if guess))
            text = batch_script(commands, token, start=len(plan))
            # a list, not a generator: len(plan) is read before plan grows
            plan.extend([(len(plan) + run, shifted(entry, len(keys))) for run, entry in part])
            keys.extend(key for key, _, _ in wanted)
            return text

        lines = []
        if user:
            # coreutils' timeout (Essential) kills the script's process group, lanes included.
            # Sections are printed only for finished commands; one cut off mid-print leaves
            # the reader in it, so nothing after it is used (asked live), never a wrong answer.
            inner = make_unix_command_for_host(self.state, self.host, StringCommand(script(user)), _sudo=False)
            lines.append(f"timeout {USER_SCRIPT_TIMEOUT} {inner.get_raw_value()} </dev/null")
        root_script = script(root) if root else ""
        if root:
            # bounded on the host as the reader is here: a fact that never ends (a read from a
            # stalled mount) is killed with its lane when the reader gives up, not left running
            # as root after the run; timeout runs as root, so it may signal the whole group
            lines.append(make_unix_command_for_host(self.state, self.host,
                                                    StringCommand("timeout", str(BATCH_TIMEOUT), "sh", "-s"),
                                                    _sudo=True).get_raw_value())
        try:
            stdin, stdout, stderr = self.client.exec_command("; ".join(lines))
            if root:
                write_stdin(root_script, stdin)
            else:
                stdin.close()
        except (OSError, SSHException, EOFError) as exc:
            logger.warning(f"{self.host.print_prefix}fact prefetch failed ({exc}); facts are asked one by one")
            return
        events = {key: gevent.event.Event() for key in keys}
        self._waiting.update(events)
        self._readers.append((stdout.channel, gevent.spawn(self._read_batch, stdout, stderr,
                                                           BatchReader(token, len(plan)), dict(plan), keys, events)))

    def _read_batch(self, stdout, stderr, reader: BatchReader, plan: dict, keys: list[str],
                    events: dict[str, gevent.event.Event]) -> None:
        """Read the batch's sections as they come. Its time limit and the end of the run close
        the channel; nothing is killed or interrupted (gevent.Timeout) while paramiko reads.

        Under gevent a Condition's notify() switches greenlets with its lock held (gevent's
        failed non-blocking acquire sleeps, and Condition._is_owned makes one), so paramiko's
        transport feeding a channel can hold the pipe's lock while a reader, woken by the last
        feed, waits to take it back. An exception thrown into that reader then has paramiko's
        BufferedPipe.read release a lock it does not hold: "RuntimeError: Semaphore released
        too many times" and a traceback at the end of the run (CI saw it once, on a host whose
        run failed while its batch was still streaming). Closing the channel ends the reads
        with end-of-file, through paramiko's own path."""
        channel = stdout.channel
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            channel.close()

        timer = gevent.get_hub().loop.timer(BATCH_TIMEOUT)
        timer.start(gevent.spawn, expire)
        drain = gevent.spawn(lambda: list(stderr))  # the script itself prints nothing there
        answered = 0
        try:
            for raw in stdout:
                got = reader.feed((raw.decode() if isinstance(raw, bytes) else raw).rstrip("\n"))
                if got is None:
                    continue
                entry = plan[got[0]]
                for index, result in ungroup_one(got[1], entry):
                    if not any("\r" in line for line in result[1] + result[2]):
                        self._prefetched[keys[index]] = result
                        answered += 1
                # answered, or (a group of the wrong shape) to be asked live: either way now
                for index in ([entry] if isinstance(entry, int) else [i for i, _ in entry[1]]):
                    events[keys[index]].set()
            if reader.seen != set(plan):
                raise BrokenBatch(f"no end after {BATCH_TIMEOUT} s" if expired
                                  else f"{len(reader.seen)} of {len(plan)} sections")
        except (BrokenBatch, OSError, SSHException, EOFError) as exc:
            if not self._closing:  # at the run's end an unfinished batch is simply not needed
                logger.warning(f"{self.host.print_prefix}{GAVE_UP} after {answered} "
                               f"({type(exc).__name__}: {exc}); the rest are asked one by one")
        finally:
            timer.close()
            for event in events.values():  # anything unanswered is asked live
                event.set()
            channel.close()  # done or given up: the host's side ends, and stderr's read with it
            drain.join(CLOSE_WAIT)
        logger.debug(f"{self.host.print_prefix}prefetched {answered} fact commands")

    def _write_record(self) -> None:
        path = self._record_path()
        asked = getattr(self, "_asked", None)
        if path is None or not asked:
            return
        commands = {key: 0 for key in asked}
        for key, age in getattr(self, "_previous", {}).items():
            if key not in commands and age + 1 < RECORD_KEEP_RUNS:
                commands[key] = age + 1
        record: dict = {"commands": commands}
        if _state["changed"]:  # a run that changed nothing created no file
            guesses = {}
            for path_on_host, arguments in getattr(self, "_missing", {}).values():
                for fact in GUESSES:
                    guess = self._cache_key(fact().command(path_on_host), arguments)
                    if guess is not None and guess not in commands:
                        guesses[guess] = None
            if guesses:
                record["guesses"] = list(guesses)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(record, indent=0))
            tmp.replace(path)
        except OSError as exc:
            logger.warning(f"{self.host.print_prefix}cannot write {path}: {exc.strerror}")

    def connect(self) -> None:
        super().connect()
        self._prefetch()

    def disconnect(self) -> None:
        # a batch still running is closed, not killed: see _read_batch
        self._closing = True
        readers = getattr(self, "_readers", [])
        for channel, _ in readers:
            channel.close()
        gevent.joinall([greenlet for _, greenlet in readers], timeout=CLOSE_WAIT)
        self._write_record()
        super().disconnect()

    def run_shell_command(self, command, print_output: bool = False, print_input: bool = False, **arguments):
        caller = _fact_caller()
        key = None
        if caller is not None:
            key = self._cache_key(command, dict(arguments)) if hasattr(self, "_asked") else None
            if key is not None:
                self._asked[key] = None
                waiting = self._waiting.get(key)
                if waiting is not None and not _state["changed"]:
                    waiting.wait()  # its batch's reader sets it: answered, or the batch ended
                answer = None if _state["changed"] else self._prefetched.get(key)
                if answer is not None:
                    status, out, err = answer
                    if not out:
                        self._note_missing(caller, key, arguments)
                    codes = arguments.get("_success_exit_codes")
                    if print_input:
                        print(f"{self.host.print_prefix}>>> {key} (prefetched)", file=sys.stderr)
                    lines = [OutputLine("stdout", line) for line in out] + [OutputLine("stderr", line) for line in err]
                    return (status in codes if codes else status == 0), CommandOutput(lines)
            if not arguments.get("_timeout"):  # pyinfra passes _timeout=None when none was given
                command = bounded(command)
        else:
            _state["changed"] = True
        try:
            result = super().run_shell_command(command, print_output=print_output, print_input=print_input,
                                               **arguments)
        except EOFError as exc:
            raise self._lost(exc) from None
        if key is not None and not result[1].stdout_lines:
            self._note_missing(caller, key, arguments)
        return result

    def _note_missing(self, caller, key: str, arguments: dict) -> None:
        """A fact printed nothing: if it is the File fact, its path does not exist (GUESSES)."""
        if _asked_class(caller) is File and (found := fact_kind(self._inner(key)[1])) is not None:
            self._missing[key] = (found[1], dict(arguments))  # a File command parses as File's kind only

    # A file transfer opens the SFTP channel the first time one is needed; when the host has
    # stopped answering by then, pyinfra raises ConnectError, which it does not expect from
    # a transfer either: it ends the whole run. Reported as the per-host SSHException.
    def put_file(self, filename_or_io, remote_filename, remote_temp_filename=None, print_output: bool = False,
                 print_input: bool = False, **arguments):
        _state["changed"] = True
        try:
            if arguments.get("_sudo") and not any(arguments.get(key) for key in HANDOVER):
                return self._put_as_root(filename_or_io, remote_filename, remote_temp_filename, print_output,
                                         print_input, arguments)
            return super().put_file(filename_or_io, remote_filename, remote_temp_filename, print_output,
                                    print_input, **arguments)
        except (EOFError, ConnectError) as exc:
            raise self._lost(exc) from None

    # pyinfra's sudo upload stages the file in /tmp, readable by every user of the host while it
    # is there (validated configs can hold secrets: Redis's ACL hashes, a webhook URL with its
    # token in alertmanager.yml), and then runs `cp <temp> <dest>` as root, which writes into
    # whatever is at <dest>: through a symlink or a hard link left there by hand it rewrites
    # the file the link points to (and the chown and chmod that follow change that file's
    # owner and mode), and it truncates the live file before writing it (a run killed then
    # leaves it half written). Here the file is staged in a 0700 directory of the SSH user's
    # own (STAGE, as secret_file stages secrets), root copies it to a candidate beside <dest>
    # (umask 077: private until the operation's own chmod) and renames the candidate over
    # <dest>: a link is replaced, never followed, and <dest> is always either the old file or
    # the new one. Candidates and staged copies a killed run leaves are removed by the base
    # deploy. No pyinfra operation or option does this; it is pyinfra's own sequence with a
    # private staging directory, and `cp` to a candidate then `mv -T` in place of `cp` to <dest>.
    def _put_as_root(self, filename_or_io, remote_filename: str, remote_temp_filename, print_output: bool,
                     print_input: bool, arguments: dict) -> bool:
        del remote_temp_filename  # pyinfra's name in /tmp: staged privately instead
        unprivileged = {key: value for key, value in arguments.items() if key not in ("_sudo", "_chdir")}
        stage = self._stage_dir(print_output, print_input, unprivileged)
        if stage is None:
            return False
        q = shlex.quote
        staged = f"{stage}/{hashlib.sha256(remote_filename.encode()).hexdigest()[:16]}"
        self._put_file(filename_or_io, staged)
        # a candidate (validated_file's) is not a live file: it is written as the candidate itself
        target = remote_filename if remote_filename.endswith(CANDIDATE) else f"{remote_filename}{CANDIDATE}"
        rename = "" if target == remote_filename else f" && mv -fT {q(target)} {q(remote_filename)}"
        status, output = self.run_shell_command(
            StringCommand(f"umask 077 && rm -f {q(target)} && cp {q(staged)} {q(target)}{rename}"
                          f" || {{ rm -f {q(target)}; exit 1; }}"),
            print_output=print_output, print_input=print_input, **arguments)
        removed, removal = self.run_shell_command(StringCommand("rm", "-f", staged), print_output=print_output,
                                                  print_input=print_input, **unprivileged)
        if status is False:  # the staged copy is removed on a failure too
            logger.error(f"File upload error: {output.stderr}")
            return False
        if removed is False:
            logger.error(f"Unable to remove the staged copy: {removal.stderr}")
            return False
        if print_output:
            click.echo(f"{self.host.print_prefix}file uploaded: {remote_filename}", err=True)
        return True

    def _stage_dir(self, print_output: bool, print_input: bool, unprivileged: dict) -> str | None:
        """The SSH user's private staging directory (made 0700 if missing), its absolute path
        asked once per connection: one more command on a run that uploads, none on a no-op."""
        if getattr(self, "_stage", None) is None:
            status, output = self.run_shell_command(
                StringCommand(f'install -d -m 700 "$HOME/{STAGE}" && printf \'%s\\n\' "$HOME/{STAGE}"'),
                print_output=print_output, print_input=print_input, **unprivileged)
            path = output.stdout.strip() if status else ""
            if not path.startswith("/"):
                logger.error(f"{self.host.print_prefix}cannot make the upload staging directory ~/{STAGE}: "
                             f"{output.stderr or path}")
                return None
            self._stage = path
        return self._stage

    def get_file(self, *args, **kwargs):
        try:
            return super().get_file(*args, **kwargs)
        except (EOFError, ConnectError) as exc:
            raise self._lost(exc) from None
