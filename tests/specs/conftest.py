"""Specs run against the fleet FLEET_TARGET names: the real hosts (`make verify`) or the
Docker test fleet (molecule's verify step). Each spec is parametrized over the hosts it
applies to (tests/specs/selection.py: a spec file named after a component runs where that
component applies), so each host fails on its own. Expected values come from the same
inventory, data and defaults the deploys use (the fleet model).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from fleet.converge import component as registry
from fleet.converge.services import ServiceMap
from fleet.preflight.inventory import prepare, read_inventory_data, ssh_options, target_from_env
from specs.selection import spec_hosts
from specs.waivers import WAIVERS

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


def _load():
    hosts, test_fleet = read_inventory_data(REPO / "inventory.py")
    return prepare(hosts, test_fleet, str(REPO / "inventory.py"))


_ENTRIES, _FLEET = _load()
_TARGET = target_from_env()
_CACHE: dict[str, FleetHost] = {}
# Data the converge under test was given on the command line (pyinfra --data), e.g.
# {"llm_engine": "vllm"} when a test converged the llm host with the other engine.
_OVERRIDES = json.loads(os.environ.get("FLEET_SPEC_DATA") or "{}")


# One SSH connection per host for the whole run: testinfra asks OpenSSH for ControlMaster
# but gives no ControlPath, so without one every command opened a new connection (~0.37 s
# each). The masters live in a private directory of this run only (mkdtemp: 0700), so a run
# never reuses a connection a fault or a rebuilt host made stale, and they are closed when
# the run ends. testinfra %-formats the command line: %%C reaches ssh as %C (a hash of
# host, port and user).
_CONTROL_DIR = tempfile.mkdtemp(prefix="fleet-ssh-")
_CONTROL_PATH = f"{_CONTROL_DIR}/%C"


def _close_connections() -> None:
    for entry in {e["ssh_hostname"]: e for name, e in _ENTRIES.items() if name in _CACHE}.values():
        subprocess.run(["ssh", "-o", f"ControlPath={_CONTROL_PATH}", "-O", "exit",
                        f"{entry['ssh_user']}@{entry['ssh_hostname']}"], capture_output=True, timeout=10, check=False)
    shutil.rmtree(_CONTROL_DIR, ignore_errors=True)


atexit.register(_close_connections)


def _testinfra_host(entry: dict, sudo: bool) -> testinfra.host.Host:
    user, address = entry["ssh_user"], entry["ssh_hostname"]
    kwargs = {"sudo": sudo, "controlpath": _CONTROL_PATH.replace("%", "%%")}
    if entry.get("ssh_key"):
        kwargs["ssh_identity_file"] = entry["ssh_key"]
    kwargs["ssh_extra_args"] = " ".join(ssh_options(entry))
    return testinfra.get_host(f"ssh://{user}@{address}", **kwargs)


def fleet_entries() -> dict:
    """Every host's inventory entry with its connection settings (ssh user, key, known_hosts)."""
    return _ENTRIES


def fleet_model():
    """The fleet model the specs expect values from (fleet.preflight.model.Fleet)."""
    return _FLEET


def fleet_services() -> ServiceMap:
    """Services by name over the fleet (where each binds, how one host reaches another's)."""
    return _FLEET.services


def fleet_host(name: str) -> FleetHost:
    if name not in _CACHE:
        model = _FLEET.hosts[name]
        data = {**model.data, **_OVERRIDES}
        entry = _ENTRIES[name]
        _CACHE[name] = FleetHost(
            name=name, groups=model.groups, data=data,
            host=_testinfra_host(entry, sudo=True),
            user_host=_testinfra_host(entry, sudo=False),
        )
    return _CACHE[name]


def pytest_generate_tests(metafunc):
    only = [n for n in os.environ.get("FLEET_SPEC_HOSTS", "").split(",") if n] or None
    if "secret_file" in metafunc.fixturenames:
        # one case per (host, secret file), so each fails on its own
        pairs = [(name, item) for name, h in _FLEET.hosts.items() if not only or name in only
                 for item in registry.secret_files(name, h.groups, {**h.data, **_OVERRIDES})]
        metafunc.parametrize(("fh", "secret_file"), pairs, indirect=["fh"],
                             ids=[f"{name}-{item.path}" for name, item in pairs])
        return
    if "fh" in metafunc.fixturenames:
        # @pytest.mark.fleet_hosts(predicate) overrides the file's default selection, e.g.
        # the hosts where a component does NOT apply; other hosts are not parametrized at all.
        marker = metafunc.definition.get_closest_marker("fleet_hosts")
        names = spec_hosts(metafunc.definition.fspath, _FLEET.hosts, _OVERRIDES,
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
