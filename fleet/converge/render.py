"""Render a component's templates with the data its deploy passes, under a managed-by header.

Each component has one folder, templates/<component>/, whose paths mirror the destination
(templates/base/etc/ssh/sshd_config.j2 -> /etc/ssh/sshd_config). `*.j2` files are rendered
with `render`; other files are installed as they are, from the path `source` gives.

Rendering happens here, on the operator's machine, so a rendered file reaches pyinfra as
content: template variables never appear in pyinfra's operation arguments or output.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _one_line(value) -> str:
    text = str(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{text[:40]!r}: a control character (a newline?) cannot go into this file")
    return text


def dquote(value) -> str:
    """A double-quoted value for a shell-style file (/etc/default/*, a systemd EnvironmentFile)."""
    text = _one_line(value)
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'


def systemd_env(value) -> str:
    """One assignment for a unit's Environment= line: as is when plain, else quoted with
    systemd's escapes (\\ and \" inside quotes, %% for a literal %)."""
    text = _one_line(value)
    if re.fullmatch(r"[A-Za-z0-9_./:=@+,-]*", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


_env.filters["dquote"] = dquote
_env.filters["systemd_env"] = systemd_env


def header(deploy: str, comment: str = "#") -> str:
    return f"{comment} Managed by the fleet's {deploy} deploy (deploys/{deploy}.py). Local edits are overwritten.\n"


def render(template: str, deploy: str, comment: str = "#", **context) -> str:
    """Render templates/<deploy>/<template> (its path mirrors the destination)."""
    body = _env.get_template(f"{deploy}/{template}").render(**context)
    return header(deploy, comment) + body


def source(deploy: str, path: str) -> str:
    """The file templates/<deploy>/<path>, installed as it is (no rendering)."""
    found = TEMPLATES / deploy / path
    if not found.is_file():
        raise FileNotFoundError(f"{found} does not exist")
    return str(found)
