"""The fleet as a model: hosts, their groups and their effective data.

Effective data follows pyinfra's precedence: the components' DEFAULTS < group_data/all.py <
group_data/<group>.py < the host's own entry in inventory.py. The same files pyinfra loads
are read here, and the inventory hands pyinfra the same DEFAULTS as its lowest layer
(fleet.preflight.inventory), so validation, specs, tools and the deploys see one set of
values.
"""

from __future__ import annotations

import ipaddress
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from fleet.converge import component as registry
from fleet.converge.services import HostAddresses, ServiceMap, bare

# Keys in a HOSTS entry that describe the host rather than being data for deploys.
HOST_META_KEYS = ("groups",)


def host_defaults(name: str) -> dict[str, Any]:
    """What a host's entry in inventory.py may leave out: its machine name in the tailnet is
    its inventory name."""
    return {"tailnet_name": name}


@dataclass
class Host:
    name: str
    groups: tuple[str, ...]
    data: dict[str, Any]
    # key -> the groups that set it (to find keys set differently by two groups)
    group_sources: dict[str, list[str]] = field(default_factory=dict)
    # the keys the host's own entry in inventory.py sets
    entry_keys: frozenset = frozenset()
    # what is wrong with the entry's shape ("" when nothing)
    entry_error: str = ""

    @property
    def tailnet_address(self) -> str:
        return self.data["tailnet_address"]

    @property
    def lan_interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.data["lan_address"])

    @property
    def lan_address(self) -> str:
        return str(self.lan_interface.ip)

    def runs(self, component: str) -> bool:
        """Whether a component applies to this host."""
        return registry.component(component).applies(self.groups, self.data)


@dataclass
class Fleet:
    hosts: dict[str, Host]
    # The all-hosts layer: the components' DEFAULTS under group_data/all.py.
    all_data: dict[str, Any]
    group_data: dict[str, dict[str, Any]]
    # the keys group_data/all.py sets (the rest of all_data are components' defaults)
    all_py_keys: frozenset = frozenset()

    @property
    def known_groups(self) -> list[str]:
        return sorted(self.group_data)

    @property
    def domains(self) -> dict[str, dict]:
        domains = self.all_data.get("fleet_domains")
        return domains if isinstance(domains, dict) else {}

    @property
    def services(self) -> ServiceMap:
        """Services by name over this fleet's hosts (fleet.converge.services)."""
        services = self.all_data.get("fleet_services")
        return ServiceMap(services if isinstance(services, dict) else {}, [
            HostAddresses(h.name, h.groups, h.data.get("tailnet_address"), bare(h.data.get("lan_address")), h.data)
            for h in self.hosts.values()
        ])

    def hosts_with(self, component: str) -> list[Host]:
        return [h for h in self.hosts.values() if h.runs(component)]

    def where_set(self, host: Host, key: str) -> str:
        """The data file a host's value of `key` comes from (for the Fix: part of a message)."""
        if key in host.entry_keys:
            return "its entry in inventory.py"
        if key in host.group_sources:
            return ", ".join(f"group_data/{g}.py" for g in host.group_sources[key])
        if key in self.all_py_keys:
            return "group_data/all.py"
        return "the data"


def _public(namespace: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not isinstance(value, ModuleType) and not callable(value)
    }


class DataFileError(Exception):
    """A data file cannot be read; the message is one line: file:line, what, and the fix."""


def _run_data_file(path: Path) -> dict[str, Any]:
    try:
        return runpy.run_path(str(path))
    except SyntaxError as exc:
        raise DataFileError(f"{path}:{exc.lineno}: invalid Python ({exc.msg}). Fix: correct that line; "
                            "data files hold plain assignments like `key = value`.") from None
    except Exception as exc:  # noqa: BLE001 - any error in a data file is the user's to fix, in one line
        tb = exc.__traceback__
        line = "?"
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        raise DataFileError(f"{path}:{line}: {type(exc).__name__}: {exc}. Fix: data files hold plain "
                            "assignments like `key = value`.") from None


def load_group_data(group_data_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read group_data/*.py the way pyinfra does: each file's public names are its data."""
    all_data: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted(group_data_dir.glob("*.py")):
        data = _public(_run_data_file(path))
        if path.stem == "all":
            all_data = data
        else:
            groups[path.stem] = data
    return all_data, groups


def build_fleet(
    hosts: dict[str, dict[str, Any]],
    all_data: dict[str, Any],
    group_data: dict[str, dict[str, Any]],
    defaults: dict[str, Any] | None = None,
) -> Fleet:
    """`defaults`: the lowest layer (every component's DEFAULTS unless given). An entry that is
    not a dict, or groups that are not a list of names, give a host in no group (validation
    names it)."""
    all_py_keys = frozenset(all_data)
    all_data = {**(registry.defaults() if defaults is None else defaults), **all_data}
    built: dict[str, Host] = {}
    for name, entry in hosts.items():
        error = "" if isinstance(entry, dict) else f"the entry is a {type(entry).__name__}, not a dict of the host's facts"
        entry = entry if isinstance(entry, dict) else {}
        raw = entry.get("groups", ())
        groups = tuple(raw) if isinstance(raw, (list, tuple)) and all(isinstance(g, str) for g in raw) else ()
        if not error and not groups and raw:
            error = f"groups is {raw!r}, not a list of group names"
        data = dict(all_data)
        sources: dict[str, list[str]] = {}
        for group in groups:
            for key, value in group_data.get(group, {}).items():
                sources.setdefault(key, []).append(group)
                data[key] = value
        data.update(host_defaults(name))
        data.update({k: v for k, v in entry.items() if k not in HOST_META_KEYS})
        built[name] = Host(name=name, groups=groups, data=data, group_sources=sources,
                           entry_keys=frozenset(entry), entry_error=error)
    return Fleet(hosts=built, all_data=all_data, group_data=group_data, all_py_keys=all_py_keys)


def load_fleet(hosts: dict[str, dict[str, Any]], group_data_dir: Path) -> Fleet:
    all_data, group_data = load_group_data(group_data_dir)
    return build_fleet(hosts, all_data, group_data)
