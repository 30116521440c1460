"""python -m fleet COMMAND [ARGS]: the operator's commands (the Makefile wraps each one).

  check        validate inventory.py and group_data/ for FLEET_TARGET (no host is touched)
  vault        manage the secrets vault (init, view, list, get, set, edit, rekey, hostkeys)
  edge         Cloudflare state: plan | apply [--delete-unlisted]
  llm-check    one chat completion on the llm host's endpoint [--via HOST]
  docs         regenerate docs/settings.md from the components' DEFAULTS
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "check": "fleet.preflight.inventory",
    "vault": "fleet.commands.vault",
    "edge": "fleet.commands.edge",
    "llm-check": "fleet.commands.llm_check",
    "docs": "fleet.commands.docs",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        word = f"unknown command {argv[0]!r}. " if argv and argv[0] not in ("-h", "--help") else ""
        print(f"{word}{__doc__.strip()}", file=sys.stderr if word else sys.stdout)
        return 2 if word else 0
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
