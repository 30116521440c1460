"""One way to add a vendor apt repository: a signed deb822 source, never apt-key.

    vendor_apt_source("tailscale", host.data.tailscale_apt, deploy="tailscale")

`spec` (data, per vendor) holds: uris, suites, components ("" for a flat repository),
key_url, key_sha256, key_file (its extension tells apt the format: .gpg binary, .asc
armored). The key is fetched on the host and installed only if its SHA-256 matches the
pin; the source names it in Signed-By. Any other source file for the same URI is removed
(two files with different Signed-By make apt fail with "Conflicting values set for option
Signed-By"). Package lists are refreshed only when something here changed.
"""

from __future__ import annotations

import re
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files

from fleet.converge.ops import verified_download
from fleet.converge.render import header

KEYRINGS = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"
REQUIRED = ("uris", "suites", "components", "key_url", "key_sha256", "key_file")


class AptSourceFiles(FactBase):
    """Source files under sources.list.d that mention a repository URI."""

    default = list

    def command(self, uri: str) -> str:
        needle = shlex.quote(uri.rstrip("/"))
        return f"grep -lsF -- {needle} {SOURCES_DIR}/*.list {SOURCES_DIR}/*.sources || true"

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


def source_path(name: str) -> str:
    return f"{SOURCES_DIR}/{name}.sources"


def stale_sources(found: list[str], keep: str) -> list[str]:
    """The files to remove: every file for the URI except the one we manage."""
    return sorted(path for path in found if path != keep)


def render_source(name: str, spec: dict, deploy: str) -> str:
    lines = [
        "Types: deb",
        f"URIs: {spec['uris']}",
        f"Suites: {spec['suites']}",
    ]
    if spec["components"]:
        lines.append(f"Components: {spec['components']}")
    lines.append(f"Signed-By: {KEYRINGS}/{spec['key_file']}")
    return header(deploy) + "\n".join(lines) + "\n"


def check_spec(name: str, spec: dict) -> None:
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{name} apt source data lacks {', '.join(missing)}")
    for key in REQUIRED:
        if not isinstance(spec[key], str) or re.search(r"[\s'\"\\]", spec[key].replace(" ", "")
                                                     if key == "components" else spec[key]):
            raise ValueError(f"{name} apt source: {key} must be one line of text without quotes or "
                             "backslashes (components may hold spaces)")
    for key in ("uris", "key_url"):
        if not re.fullmatch(r"https?://[^/\s]+\S*", spec[key]):
            raise ValueError(f"{name} apt source: {key} {spec[key]!r} is not an http(s) URL")
    if not spec["suites"]:
        raise ValueError(f"{name} apt source: suites is empty ('/' for a flat repository)")
    if not re.fullmatch(r"([A-Za-z0-9._/-]+( [A-Za-z0-9._/-]+)*)?", spec["components"]):
        raise ValueError(f"{name} apt source: components {spec['components']!r} is not a list of component "
                         "names separated by spaces")
    if not re.fullmatch(r"[0-9a-f]{64}", str(spec["key_sha256"])):
        raise ValueError(f"{name} apt source: key_sha256 must be the key file's SHA-256 (64 hex digits)")
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.(gpg|asc)", spec["key_file"]):
        raise ValueError(f"{name} apt source: key_file must be a file name (it is written in {KEYRINGS}) "
                         "ending in .gpg (binary) or .asc (armored)")


# A Debian package version as apt takes it after `name=`: [epoch:]upstream[-revision], the
# upstream part starting with a digit (Debian Policy 5.6.12). A pin that is not one (None, a
# typo, a value with spaces) would only fail in apt-get on each host, mid-converge.
DEB_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*")


def rule(key: str, when=None, version: str | None = None):
    """A validation rule (fleet.converge.component) for the apt source spec in data `key`:
    every problem check_spec would raise at converge time, reported before any host is touched;
    and, with `version`, that data key's package pin is a Debian version.
    `when(data)`: only hosts where the source is used."""
    from fleet.converge.component import Problems

    def check_apt_source(fleet, hosts):
        problems = Problems(fleet)
        for h in hosts:
            if when is not None and not when(h.data):
                continue
            pin = h.data.get(version) if version else "0"
            if not isinstance(pin, str) or not DEB_VERSION.fullmatch(pin):
                problems.add(h, version, f"{pin!r} is not a Debian package version.",
                             f"pin the version as `apt-cache policy` shows it (e.g. '1.2.3-1'), "
                             f"in {fleet.where_set(h, version)}.")
            spec = h.data.get(key)
            try:
                if not isinstance(spec, dict):
                    raise ValueError(f"{spec!r} is not a dict")
                check_spec(key, spec)
            except ValueError as exc:
                problems.add(h, key, f"{exc}.",
                             f"write it like the default in docs/settings.md ({', '.join(REQUIRED)}).")
        return problems

    return check_apt_source


def vendor_apt_source(name: str, spec: dict, deploy: str, packages: list[str]):
    """Ensure the vendor's key, source and fresh package lists. Returns the operations."""
    check_spec(name, spec)
    key = verified_download(
        name=f"Install the {name} repository key (pinned SHA-256)",
        src=spec["key_url"],
        dest=f"{KEYRINGS}/{spec['key_file']}",
        sha256=spec["key_sha256"],
    )
    ours = source_path(name)
    removed = []
    for path in stale_sources(host.get_fact(AptSourceFiles, uri=spec["uris"]), ours):
        removed.append(files.file(name=f"Remove the stale {name} source {path}", path=path, present=False))
    source = files.put(
        name=f"Add the {name} apt source",
        src=StringIO(render_source(name, spec, deploy)),
        dest=ours,
        user="root", group="root", mode="644",
    )
    installed = host.get_fact(DebPackages)
    missing = any(p.split("=")[0] not in installed for p in packages)
    changed = [key, source, *removed]
    refresh = apt.update(
        name=f"Refresh package lists for {name}",
        _if=lambda: missing or any(op.did_change() for op in changed),
    )
    return [key, source, refresh, *removed]

