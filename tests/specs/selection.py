"""Which hosts a spec runs on, from the component registry (no connection is made here).

A spec file named after a component (tests/specs/test_<component>.py) runs on the hosts that
component applies to, so adding a component and its spec file needs no other edit. Files
named otherwise (test_net.py, test_ssh.py, test_secrets.py) hold fleet-wide specs and run on
every host. A spec can narrow or change that with @pytest.mark.fleet_hosts(predicate), where
predicate(groups, data) -> bool sees the host's effective data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Mapping

from fleet.converge.component import components

Predicate = Callable[[Iterable[str], Mapping], bool]


def component_of(spec_file: str | Path) -> str | None:
    """The component a spec file is about (test_docker.py -> "docker"), or None (fleet-wide)."""
    stem = Path(spec_file).stem
    name = stem[len("test_"):] if stem.startswith("test_") else stem
    return name if name in {c.name for c in components()} else None


def default_predicate(spec_file: str | Path) -> Predicate:
    name = component_of(spec_file)
    if name is None:
        return lambda groups, data: True
    component = next(c for c in components() if c.name == name)
    return component.applies


def spec_hosts(spec_file: str | Path, hosts: Mapping, overrides: Mapping | None = None,
               predicate: Predicate | None = None, only: Iterable[str] | None = None) -> list[str]:
    """Names of the fleet model's `hosts` a spec in `spec_file` runs on. `overrides`: data a
    converge was given on the command line (--data), `only`: a host filter (FLEET_SPEC_HOSTS)."""
    applies = predicate or default_predicate(spec_file)
    wanted = set(only) if only else None
    return [name for name, h in hosts.items()
            if (wanted is None or name in wanted) and applies(h.groups, {**h.data, **(overrides or {})})]
