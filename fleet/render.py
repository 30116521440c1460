"""Render templates/ with the data a deploy passes, under a managed-by header.

Rendering happens here, on the operator's machine, so a rendered file reaches pyinfra as
content: template variables never appear in pyinfra's operation arguments or output.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def header(deploy: str, comment: str = "#") -> str:
    return f"{comment} Managed by the fleet's {deploy} deploy (deploys/{deploy}.py). Local edits are overwritten.\n"


def render(template: str, deploy: str, comment: str = "#", **context) -> str:
    """Render templates/<template> (its path mirrors the destination)."""
    body = _env.get_template(template).render(**context)
    return header(deploy, comment) + body

