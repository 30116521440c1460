"""Specs run against the fleet FLEET_TARGET names: the real hosts (`make verify`) or the
Docker test fleet (molecule's verify step). Each spec is parametrized over the hosts it
applies to (tests/specs/selection.py: a spec file named after a component runs where that
component applies), so each host fails on its own. Expected values come from the same
inventory, data and defaults the deploys use (the fleet model).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import secrets
import shlex
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
import testinfra
from testinfra.backend.paramiko import ParamikoBackend

from fleet.converge import component as registry
from fleet.converge import keys
from fleet.converge.connector import tune
from fleet.converge.services import ServiceMap
from fleet.preflight.inventory import FleetConfigError, hosts_named, prepare, read_inventory_data, target_from_env
from specs.selection import spec_hosts
from specs.waivers import WAIVERS

# pytest keeps each spec module's assertion-rewritten code in __pycache__ (a hash-checked .pyc,
# written atomically, so xdist workers may share it), but only where bytecode may be written:
# under PYTHONDONTWRITEBYTECODE (set on the CI machine's kind) every spec process, the
# controller and each worker, rewrote all 25 spec modules from source again, ~0.2 CPU-s each.
# The spec processes import only the checkout's own packages and the virtualenv's (never a
# template or a stand-in by path), so what they write stays in git-ignored __pycache__
# directories of tests/ (fleet/ and deploys/ are compiled by `make setup`).
sys.dont_write_bytecode = False

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FleetHost:
    name: str
    groups: tuple[str, ...]
    data: dict
    host: testinfra.host.Host  # commands run with sudo
    user_host: testinfra.host.Host  # commands run as the admin user

    @property
    def lan_address(self) -> str:
        return str(self.data["lan_address"]).split("/")[0]

    @property
    def tailnet_address(self) -> str:
        return self.data["tailnet_address"]


@functools.cache
def _load():
    """(host entries, fleet model), validated as a converge validates them. Loaded on first
    use, not at import: an xdist worker is handed the opened vault first (pytest_configure)."""
    hosts, test_fleet = read_inventory_data(REPO / "inventory.py")
    return prepare(hosts, test_fleet, str(REPO / "inventory.py"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist, in the controller, once per worker: hand the worker the vault this process has
    opened, over xdist's own channel to it (a pipe between the two processes: no file, no
    environment variable, no command line), so that each worker does not derive the vault's
    key again (scrypt: ~0.4 s of CPU per process by design). Only to a worker on this machine:
    one started elsewhere (xdist's `--tx ssh=...`) opens the vault itself."""
    spec = node.gateway.spec
    if not spec.popen or spec.via or spec.ssh:
        return
    _load()
    node.workerinput["fleet_vault"] = {"path": str(keys.vault_path()), "content": keys.current()}


def pytest_configure(config):
    shared = getattr(config, "workerinput", {}).get("fleet_vault")
    if shared:
        keys.adopt(shared["path"], shared["content"])
    try:
        _load()
        _only()
    except FleetConfigError as exc:  # bad inventory, data, vault or LIMIT: its one line, no traceback
        raise pytest.UsageError(str(exc)) from None


def _only() -> list[str] | None:
    """The hosts FLEET_SPEC_HOSTS names (`make verify LIMIT=...`: host and group names,
    comma-separated), or None for every host."""
    raw = os.environ.get("FLEET_SPEC_HOSTS", "")
    return hosts_named(fleet_model(), raw, "LIMIT (FLEET_SPEC_HOSTS)") if raw.strip() else None


_TARGET = target_from_env()
_CACHE: dict[str, FleetHost] = {}
# Data the converge under test was given on the command line (pyinfra --data), e.g.
# {"llm_engine": "vllm"} when a test converged the llm host with the other engine.
_OVERRIDES = json.loads(os.environ.get("FLEET_SPEC_DATA") or "{}")


# One SSH connection per host for the whole run, shared by its sudo and user views: the
# specs run hundreds of short commands, and a new connection (or a new ssh process over a
# ControlMaster) for each costs far more than the command. testinfra's paramiko backend
# keeps a connection open, but accepts any host key (WarningPolicy) and leaves Nagle on;
# here the host key must match the inventory's known_hosts (RejectPolicy, as pyinfra and
# ssh -o StrictHostKeyChecking=yes do) and the socket gets the converge's TCP settings
# (fleet.converge.connector.tune: TCP_NODELAY, keepalive). A connection that died (a fault
# test restarted sshd) is opened again once, by testinfra's own retry.
_CLIENTS: dict[str, paramiko.SSHClient] = {}


def _client(entry: dict) -> paramiko.SSHClient:
    key = entry["ssh_hostname"]
    client = _CLIENTS.get(key)
    transport = client.get_transport() if client is not None else None
    if transport is None or not transport.is_active():
        client = paramiko.SSHClient()
        client.load_host_keys(entry["ssh_known_hosts_file"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(entry["ssh_hostname"], port=int(entry.get("ssh_port") or 22), username=entry["ssh_user"],
                       key_filename=entry.get("ssh_key"), timeout=10, allow_agent=not entry.get("ssh_key"),
                       look_for_keys=not entry.get("ssh_key"))
        tune(client.get_transport().sock)
        _CLIENTS[key] = client
    return client


# One root shell per connection for the specs' root commands. A `sudo` per command costs the
# host ~10 ms of CPU (PAM, its journal line, which journal-upload then ships) and a new SSH
# session with a login shell another ~4 ms; over the ~870 root commands of a run that was a
# third of the test hosts' CPU, and the 2 cores they share with the operator set the specs'
# wall time. Each command still runs as `sudo /bin/sh -c <command>` did: a fresh /bin/sh
# with the command as its argument (so a syntax error is that shell's, exit 2), as root,
# stdin from /dev/null; only the sudo and the session are shared. After it, the shell
# prints a random token on stderr, then the token and the exit status on stdout, and the
# output before each token is the command's. A shell that died (a test restarted sshd) is
# opened again, once, before a command is sent, never after.
ROOT_SHELL_TIMEOUT = 600


class _RootShell:
    def __init__(self, client: paramiko.SSHClient):
        self.client = client
        self.token = ("fleet-spec-" + secrets.token_hex(12)).encode()
        self.chan = client.get_transport().open_session()
        self.chan.exec_command("sudo -n /bin/sh")
        self.chan.settimeout(0.2)
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return not self.chan.closed and not self.chan.exit_status_ready() and self.client.get_transport().is_active()

    def run(self, command: str) -> tuple[int, bytes, bytes]:
        token = self.token.decode()
        with self.lock:
            self.chan.sendall(f"/bin/sh -c {shlex.quote(command)} </dev/null; s=$?; printf '%s\\n' {token} >&2;"
                              f" printf '%s %d\\n' {token} \"$s\"\n".encode())
            out, err = bytearray(), bytearray()
            end = re.compile(re.escape(self.token) + rb" (\d+)\n$")
            err_end = self.token + b"\n"
            deadline = time.monotonic() + ROOT_SHELL_TIMEOUT
            # sshd forwards the two pipes on its own schedule: wait for both tokens, reading
            # stderr whenever it has data so that it never fills the channel's window
            while True:
                while self.chan.recv_stderr_ready():
                    err += self.chan.recv_stderr(65536)
                found = end.search(out, max(0, len(out) - len(self.token) - 8))
                if found and err.endswith(err_end):
                    break
                if time.monotonic() > deadline:
                    self.chan.close()
                    raise paramiko.SSHException(f"the root shell timed out during: {command[:200]}")
                stream = err if found else out
                try:
                    chunk = self.chan.recv_stderr(65536) if found else self.chan.recv(65536)
                except TimeoutError:
                    continue
                if chunk == b"":
                    self.chan.close()
                    raise paramiko.SSHException(f"the root shell ended during: {command[:200]}")
                stream += chunk
            return int(found.group(1)), bytes(out[:found.start()]), bytes(err[:-len(err_end)])


_SHELLS: dict[str, _RootShell] = {}


def _root_shell(entry: dict) -> _RootShell:
    client = _client(entry)
    shell = _SHELLS.get(entry["ssh_hostname"])
    if shell is None or shell.client is not client or not shell.alive():
        shell = _SHELLS[entry["ssh_hostname"]] = _RootShell(client)
    return shell


class _FleetBackend(ParamikoBackend):
    def __init__(self, entry: dict, sudo: bool):
        super().__init__(f"{entry['ssh_user']}@{entry['ssh_hostname']}", sudo=sudo)
        self._entry = entry

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        return _client(self._entry)

    def run(self, command: str, *args: str, **kwargs):
        if not self.sudo or self.sudo_user is not None or self.get_pty:
            return super().run(command, *args, **kwargs)
        shown = self.encode(self.get_command(command, *args))  # what a failure shows: as testinfra ran it
        rc, stdout, stderr = _root_shell(self._entry).run(self.quote(command, *args))
        return self.result(rc, shown, stdout, stderr)


def _close_connections() -> None:
    for client in _CLIENTS.values():
        client.close()


atexit.register(_close_connections)


def _testinfra_host(entry: dict, sudo: bool) -> testinfra.host.Host:
    backend = _FleetBackend(entry, sudo)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


def fleet_entries() -> dict:
    """Every host's inventory entry with its connection settings (ssh user, key, known_hosts)."""
    return _load()[0]


def fleet_model():
    """The fleet model the specs expect values from (fleet.preflight.model.Fleet)."""
    return _load()[1]


def fleet_services() -> ServiceMap:
    """Services by name over the fleet (where each binds, how one host reaches another's)."""
    return fleet_model().services


def fleet_host(name: str) -> FleetHost:
    if name not in _CACHE:
        model = fleet_model().hosts[name]
        data = {**model.data, **_OVERRIDES}
        entry = fleet_entries()[name]
        _CACHE[name] = FleetHost(
            name=name, groups=model.groups, data=data,
            host=_testinfra_host(entry, sudo=True),
            user_host=_testinfra_host(entry, sudo=False),
        )
    return _CACHE[name]


def pytest_generate_tests(metafunc):
    only = _only()
    if "secret_file" in metafunc.fixturenames:
        # one case per (host, secret file), so each fails on its own
        pairs = [(name, item) for name, h in fleet_model().hosts.items() if not only or name in only
                 for item in registry.secret_files(name, h.groups, {**h.data, **_OVERRIDES})]
        metafunc.parametrize(("fh", "secret_file"), pairs, indirect=["fh"],
                             ids=[f"{name}-{item.path}" for name, item in pairs])
        return
    if "fh" in metafunc.fixturenames:
        # @pytest.mark.fleet_hosts(predicate) overrides the file's default selection, e.g.
        # the hosts where a component does NOT apply; other hosts are not parametrized at all.
        marker = metafunc.definition.get_closest_marker("fleet_hosts")
        names = spec_hosts(metafunc.definition.fspath, fleet_model().hosts, _OVERRIDES,
                           marker.args[0] if marker else None, only)
        metafunc.parametrize("fh", names, indirect=True, ids=names)


@pytest.fixture
def fh(request) -> FleetHost:
    return fleet_host(request.param)


@pytest.fixture
def waive(request):
    """Call waive('base-06') inside a spec: skips with the waiver's justification when the
    current target has one for that spec, otherwise does nothing."""

    def _waive(spec_id: str) -> None:
        reason = WAIVERS.get((spec_id, _TARGET))
        if reason:
            pytest.skip(f"waived on the {_TARGET} fleet: {reason}")

    return _waive


def listening(fh: FleetHost, proto: str) -> list[tuple[str, int]]:
    """(address, port) of every listening socket of `proto` ('tcp' or 'udp'), parsed."""
    out = []
    for spec in fh.host.socket.get_listening_sockets():
        scheme, _, rest = spec.partition("://")
        if scheme != proto:
            continue
        address, _, port = rest.rpartition(":")
        out.append((address, int(port)))
    return out


WILDCARDS = ("0.0.0.0", "::", "*", "")


# Spec files whose checks of a host run beside that host's other specs, on a worker of their
# own: they read through their own tool only (restic, over its own SSH channel to the
# repository host), start no listener and change nothing the host's other specs look at. They
# are the slowest part of the slowest host (restic derives its key on every call, ~1 s here),
# so in the host's lane they set the wall time of the whole run.
OWN_LANE = ("test_backup.py",)


def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (`-n N`), all of a host's specs go to one worker, so hosts are checked
    in parallel while each host's specs still run one after another, as without xdist (specs
    that take no host run together; OWN_LANE's files take a lane of their own). xdist's own `loadgroup` marks do not group under this
    pytest (9.2: the nodeid it rewrites is read back unchanged), so the host is read from the
    test's id, which starts with the host's name (pytest_generate_tests above)."""
    from xdist.scheduler import LoadScopeScheduling

    names = sorted(fleet_model().hosts, key=len, reverse=True)

    class ByHost(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            param = nodeid.rsplit("[", 1)[1] if nodeid.endswith("]") else ""
            host = next((n for n in names if param == f"{n}]" or param.startswith(f"{n}-")), "fleet")
            spec_file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return f"{host} {spec_file}" if host != "fleet" and spec_file in OWN_LANE else host

    class OwnLanesFirst(OrderedDict):
        """xdist's queue of scopes (ordered by test count): OWN_LANE's few but slow scopes
        go to the front, so they start at once instead of after a host's whole lane."""

        def __setitem__(self, scope, tests):
            super().__setitem__(scope, tests)
            if " " in scope:
                self.move_to_end(scope, last=False)

    scheduler = ByHost(config, log)
    scheduler.workqueue = OwnLanesFirst(scheduler.workqueue)
    return scheduler
