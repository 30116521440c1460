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

from fleet.converge.paths import state_root

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
# Compiled templates, kept between runs.
BYTECODE_DIR = state_root(REPO) / "jinja-bytecode"


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's own cache of compiled templates on disk. Every converge compiled every template
    it renders again (docs/performance.md, sixth round); now a run loads the compiled code,
    and a template whose source changed is compiled again (Jinja checks each entry against
    the SHA-1 of the source and the Python version). What is kept is a template's code, never
    a rendered file. A cache that cannot be read or written (a read-only checkout, a file in
    the way, a damaged entry) is not used: the template is compiled as before."""

    def __init__(self, directory: Path):
        super().__init__(str(directory))
        self.writable = True

    def load_bytecode(self, bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # unreadable or damaged (a hand edit): compiled as if not kept
            bucket.reset()

    def dump_bytecode(self, bucket) -> None:
        if not self.writable:
            return
        try:
            Path(self.directory).mkdir(mode=0o700, parents=True, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError:
            self.writable = False


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    bytecode_cache=_BytecodeCache(BYTECODE_DIR),
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


def render(template: str, deploy: str, comment: str = "#", interpreter: str | None = None, **context) -> str:
    """Render templates/<deploy>/<template> (its path mirrors the destination); a script's
    `interpreter` (e.g. "/bin/bash") goes on the first line, before the header."""
    body = _env.get_template(f"{deploy}/{template}").render(**context)
    return (f"#!{interpreter}\n" if interpreter else "") + header(deploy, comment) + body


def source(deploy: str, path: str) -> str:
    """The file templates/<deploy>/<path>, installed as it is (no rendering)."""
    found = TEMPLATES / deploy / path
    if not found.is_file():
        raise FileNotFoundError(f"{found} does not exist")
    return str(found)
