"""The fleet as a model: hosts, their groups and their effective data.

Effective data follows pyinfra's precedence: group_data/all.py < group_data/<group>.py <
the host's own entry in inventory.py. The same files pyinfra loads are read here, so
validation and the deploys see the same values.
"""

from __future__ import annotations

import ipaddress
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# Keys in a HOSTS entry that describe the host rather than being data for deploys.
HOST_META_KEYS = ("groups",)


@dataclass
class Host:
    name: str
    groups: tuple[str, ...]
    data: dict[str, Any]
    # key -> the groups that set it (to find keys set differently by two groups)
    group_sources: dict[str, list[str]] = field(default_factory=dict)

    @property
    def tailnet_address(self) -> str:
        return self.data["tailnet_address"]

    @property
    def lan_interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.data["lan_address"])

    @property
    def lan_address(self) -> str:
        return str(self.lan_interface.ip)

    def services(self, fleet_services: dict[str, dict]) -> dict[str, dict]:
        """The port map's services this host runs (by group membership)."""
        return {
            name: svc
            for name, svc in fleet_services.items()
            if "all" in svc.get("groups", ()) or set(svc.get("groups", ())) & set(self.groups)
        }


@dataclass
class Fleet:
    hosts: dict[str, Host]
    all_data: dict[str, Any]
    group_data: dict[str, dict[str, Any]]

    @property
    def known_groups(self) -> list[str]:
        return sorted(self.group_data)



def _public(namespace: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not isinstance(value, ModuleType) and not callable(value)
    }


def load_group_data(group_data_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read group_data/*.py the way pyinfra does: each file's public names are its data."""
    all_data: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted(group_data_dir.glob("*.py")):
        data = _public(runpy.run_path(str(path)))
        if path.stem == "all":
            all_data = data
        else:
            groups[path.stem] = data
    return all_data, groups


def build_fleet(
    hosts: dict[str, dict[str, Any]],
    all_data: dict[str, Any],
    group_data: dict[str, dict[str, Any]],
) -> Fleet:
    built: dict[str, Host] = {}
    for name, entry in hosts.items():
        groups = tuple(entry.get("groups", ()))
        data = dict(all_data)
        sources: dict[str, list[str]] = {}
        for group in groups:
            for key, value in group_data.get(group, {}).items():
                sources.setdefault(key, []).append(group)
                data[key] = value
        data.update({k: v for k, v in entry.items() if k not in HOST_META_KEYS})
        built[name] = Host(name=name, groups=groups, data=data, group_sources=sources)
    return Fleet(hosts=built, all_data=all_data, group_data=group_data)


def load_fleet(hosts: dict[str, dict[str, Any]], group_data_dir: Path) -> Fleet:
    all_data, group_data = load_group_data(group_data_dir)
    return build_fleet(hosts, all_data, group_data)
