"""The component contract, and the one ordered registry of components.

A component is one module in `deploys/` that ends with

    COMPONENT = Component(
        name="docker",                 # the module's name
        deploy=docker,                 # its @deploy function
        defaults=DEFAULTS,             # its settings, one comment per key
        groups=("all",),               # hosts in any of these groups ("all": every host) ...
        when=lambda data: ...,         # ... for which this data predicate holds (optional)
        secrets=secret_files,          # (host name, data) -> [SecretFile] it installs (optional)
        rules=(check_pools,),          # (fleet, hosts it applies to) -> [Problem] (optional)
        after=("nvidia",),             # components that must run before it on a host
        state=lambda name, data: [...],# paths on the host worth backing up (optional)
        after_state=False,             # True: run after every component that declares state
    )

`components()` finds every module of the `deploys` package (but `site`), imports it and
orders the components so each runs after everything it names in `after` (and before what
it names in `before`); ties are broken by name, so the order is stable. This list is what
`deploys/site.py`, the secrets registry, validation, the specs, the operator commands and
the settings reference in docs/ read: adding a component edits no other file.

Nothing here imports pyinfra: the registry is read before any host is touched.
"""

from __future__ import annotations

import importlib
import os
import importlib.util
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

PACKAGE = "deploys"
REPO = Path(__file__).resolve().parents[2]
# Modules of the package that are not components.
NOT_COMPONENTS = ("site",)


class ComponentError(Exception):
    """The registry itself is inconsistent (a module without COMPONENT, a cycle in the order)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the fleet's data: `host: key: what is wrong. Fix: what to change.`"""

    host: str
    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.host}: {self.key}: {self.message} Fix: {self.fix}"


class Problems(list):
    """A rule's problems, one per bad value: a value group_data/all.py gives every host is
    reported once, as host `all`, not once per host (the fleet model says where a value is set).

        found = Problems(fleet)
        found.add(h, "tailscale_port", f"{port!r} is not a UDP port.", "use an integer 1-65535.")
    """

    def __init__(self, fleet):
        super().__init__()
        self.fleet = fleet

    def add(self, host, key: str, message: str, fix: str) -> None:
        where = self.fleet.where_set(host, key)
        problem = Problem("all" if where == "group_data/all.py" else host.name, key, message, fix)
        if problem not in self:
            self.append(problem)


# An account's name, as Debian's adduser takes it by default (the admin's, a service's).
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# A DNS hostname as the domain map, the edge and a tunnel's ingress take it: two or more labels
# of letters, digits and inner hyphens, or `*.` and such a name for a wildcard.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(\*\.)?({_LABEL}\.)+{_LABEL}")


def matches(key: str, pattern, what: str, fix: str):
    """A validation rule: the setting `key`, where it is text, is all of `pattern` (a compiled
    regular expression); else `key: 'value' is not <what>. Fix: <fix>`, once per value. A value
    that is not text is the check of every setting's type to report."""

    def check(fleet, hosts):
        found = Problems(fleet)
        for h in hosts:
            value = h.data.get(key)
            if isinstance(value, str) and not pattern.fullmatch(value):
                found.add(h, key, f"{value!r} is not {what}.", fix)
        return found

    check.__name__ = f"check_{key}"
    return check


@dataclass(frozen=True)
class SecretFile:
    """A secret a component installs on a host: vault key -> file, owner, mode 0600."""

    key: str
    path: str
    user: str
    group: str
    mode: str = "600"
    # How the value is written: "{value}" as is, or wrapped, e.g. "VLLM_API_KEY={value}\n".
    fmt: str = "{value}"

    def content(self, value: str) -> str:
        return self.fmt.format(value=value)


def _no_secrets(name: str, data: Mapping) -> list[SecretFile]:
    return []


def _no_state(name: str, data: Mapping) -> list[str]:
    return []


@dataclass(frozen=True)
class Component:
    name: str
    deploy: Callable[[], Any]
    defaults: dict
    # The groups whose hosts get it; "all" means every host.
    groups: tuple[str, ...] = ("all",)
    # A further condition on the host's effective data (defaults included), e.g. an engine choice.
    when: Callable[[Mapping], bool] | None = None
    # (host name, effective data) -> the secret files it installs on that host.
    secrets: Callable[[str, Mapping], list[SecretFile]] = _no_secrets
    # Instead of `secrets`, for a component whose secrets follow the host's groups (apps):
    # (host name, groups, effective data) -> the secret files.
    group_secrets: Callable[[str, tuple, Mapping], list[SecretFile]] | None = None
    # Validation rules: (fleet model, the hosts it applies to) -> problems.
    rules: tuple[Callable[..., list[Problem]], ...] = ()
    # The types a setting may have when its default's type is not enough (e.g. True or None);
    # every other key must have its default's type (validation checks).
    types: dict = field(default_factory=dict)
    # (host name, effective data) -> vault keys it reads that are not files on the host
    # (a password set as a hash or verifier); the vault must hold them like secret files.
    vault_keys: Callable[[str, Mapping], list[str]] = lambda name, data: []
    # (host name, effective data) -> directories on the host whose content is state worth
    # backing up (a service's data directory); the backup component includes them.
    state: Callable[[str, Mapping], list[str]] = _no_state
    # Instead of groups/when: a predicate on the host's groups and data, for a component
    # whose hosts follow other components (backup: the hosts that have state to back up).
    applies_to: Callable[[Iterable[str], Mapping], bool] | None = None
    # Order on a host: run after these components / before these.
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    # Run after every component that declares `state` (the backup: what it saves must exist
    # before its first snapshot, whichever component a later change adds).
    after_state: bool = False
    # Filled in by the registry: the module's name and the first paragraph of its docstring.
    module: str = field(default="", compare=False)
    summary: str = field(default="", compare=False)

    def applies(self, groups: Iterable[str], data: Mapping) -> bool:
        """Whether a host with these groups and effective data gets this component.
        `data` is a dict (the fleet model) or pyinfra's host.data: both have .get()."""
        if self.applies_to is not None:
            return bool(self.applies_to(tuple(groups), data))
        if "all" not in self.groups and not set(self.groups) & set(groups):
            return False
        return self.when is None or bool(self.when(data))

    def secret_files(self, name: str, groups: Iterable[str], data: Mapping) -> list[SecretFile]:
        if not self.applies(groups, data):
            return []
        if self.group_secrets is not None:
            return list(self.group_secrets(name, tuple(groups), data))
        return list(self.secrets(name, data))


def order(found: list[Component]) -> list[Component]:
    """Topological order by after/before, ties broken by name (Kahn's algorithm)."""
    by_name = {c.name: c for c in found}
    needs: dict[str, set[str]] = {c.name: set() for c in found}
    for c in found:
        for other in c.after:
            if other not in by_name:
                raise ComponentError(f"deploys/{c.name}.py: after={other!r} names no component. "
                                     f"Fix: use one of {', '.join(sorted(by_name))}.")
            needs[c.name].add(other)
        for other in c.before:
            if other not in by_name:
                raise ComponentError(f"deploys/{c.name}.py: before={other!r} names no component. "
                                     f"Fix: use one of {', '.join(sorted(by_name))}.")
            needs[other].add(c.name)
        if c.after_state:
            needs[c.name].update(o.name for o in found if o.state is not _no_state and o is not c)
    ordered: list[Component] = []
    ready = sorted(n for n, deps in needs.items() if not deps)
    while ready:
        name = ready.pop(0)
        ordered.append(by_name[name])
        for other, deps in needs.items():
            if name in deps:
                deps.discard(name)
                if not deps and other not in ready and by_name[other] not in ordered:
                    ready.append(other)
        ready.sort()
    if len(ordered) != len(found):
        stuck = sorted(n for n, deps in needs.items() if deps)
        raise ComponentError(f"the components {', '.join(stuck)} order each other in a cycle "
                             "(after/before). Fix: remove one of the constraints.")
    return ordered


def discover(package: str = PACKAGE) -> list[Component]:
    """Import every component module of `package` and return their COMPONENTs, ordered."""
    if package == PACKAGE and importlib.util.find_spec(package) is None:
        sys.path.insert(0, str(REPO))  # run from outside the repository
    pkg = importlib.import_module(package)
    found = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name in NOT_COMPONENTS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        component = getattr(module, "COMPONENT", None)
        if not isinstance(component, Component):
            raise ComponentError(f"{package}/{info.name}.py defines no COMPONENT. Fix: end it with "
                                 "COMPONENT = Component(...) (see docs/architecture.md).")
        if component.name != info.name:
            raise ComponentError(f"{package}/{info.name}.py: COMPONENT is named {component.name!r}. "
                                 f"Fix: name it {info.name!r}, like its module.")
        summary = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        object.__setattr__(component, "module", module.__name__)
        object.__setattr__(component, "summary", summary)
        found.append(component)
    return order(found)


@lru_cache(maxsize=None)
def _registry(package: str) -> tuple[Component, ...]:
    return tuple(discover(package))


def components(package: str = PACKAGE) -> tuple[Component, ...]:
    """Every component, in the order they run on a host (imported once per process)."""
    return _registry(package)


# FLEET_COMPONENTS=base,tailscale limits a converge to those components (the benchmark's
# base-only run, a phase of the setup checklist); unset or empty: every component.
SELECT_ENV = "FLEET_COMPONENTS"


def selected(package: str = PACKAGE) -> tuple[Component, ...]:
    """The components a converge runs, in order: those FLEET_COMPONENTS names, or all."""
    raw = os.environ.get(SELECT_ENV, "").strip()
    if not raw:
        return components(package)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    known = {c.name for c in components(package)}
    if not names:  # `FLEET_COMPONENTS=,` selected no component: a converge that silently did nothing
        raise ComponentError(f"{SELECT_ENV}={raw!r} names no component. Fix: name components from deploys/ "
                             f"({', '.join(sorted(known))}), comma-separated, or leave it unset for all of them.")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ComponentError(f"{SELECT_ENV} names no component {', '.join(map(repr, unknown))}. "
                             f"Fix: use names from deploys/ ({', '.join(sorted(known))}).")
    return tuple(c for c in components(package) if c.name in names)


def component(name: str, package: str = PACKAGE) -> Component:
    for c in components(package):
        if c.name == name:
            return c
    raise ComponentError(f"no component {name!r}. Fix: use one of "
                         f"{', '.join(c.name for c in components(package))}.")


def defaults(package: str = PACKAGE) -> dict[str, Any]:
    """Every component's DEFAULTS, merged: the lowest data layer, under group_data/all.py.
    Keys are prefixed with their component, so two components never set the same key."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for c in components(package):
        for key, value in c.defaults.items():
            if key in owner:
                raise ComponentError(f"DEFAULTS key {key!r} is set by both deploys/{owner[key]}.py and "
                                     f"deploys/{c.name}.py. Fix: keep it in one component.")
            owner[key] = c.name
            merged[key] = value
    return merged


def vault_keys(name: str, groups: Iterable[str], data: Mapping, package: str = PACKAGE) -> list[str]:
    """Every vault key a host's components read: their secret files' and their other keys."""
    groups = tuple(groups)
    found = [item.key for item in secret_files(name, groups, data, package)]
    found += [key for c in components(package) if c.applies(groups, data) for key in c.vault_keys(name, data)]
    return list(dict.fromkeys(found))


def state_paths(name: str, groups: Iterable[str], data: Mapping, package: str = PACKAGE) -> list[str]:
    """Every state directory a host declares, from the components that apply to it."""
    groups = tuple(groups)
    return [path for c in components(package)
            if c.state is not _no_state and c.applies(groups, data) for path in c.state(name, data)]


def secret_files(name: str, groups: Iterable[str], data: Mapping, package: str = PACKAGE) -> list[SecretFile]:
    """Every secret file a host gets, from the components that apply to it."""
    return [item for c in components(package) for item in c.secret_files(name, groups, data)]
