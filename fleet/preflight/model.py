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

    def runs(self, component: str) -> bool:
        """Whether a component applies to this host."""
        return registry.component(component).applies(self.groups, self.data)


@dataclass
class Fleet:
    hosts: dict[str, Host]
    # The all-hosts layer: the components' DEFAULTS under group_data/all.py.
    all_data: dict[str, Any]
    group_data: dict[str, dict[str, Any]]

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
    defaults: dict[str, Any] | None = None,
) -> Fleet:
    """`defaults`: the lowest layer (every component's DEFAULTS unless given)."""
    all_data = {**(registry.defaults() if defaults is None else defaults), **all_data}
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
