"""python -m fleet COMMAND [ARGS]: the operator's commands (the Makefile wraps each one).

  check        validate inventory.py and group_data/ for FLEET_TARGET (no host is touched)
  vault        manage the secrets vault (init, view, list, get, set, edit, rekey, hostkeys)
  edge         Cloudflare state: plan | apply [--delete-unlisted]
  apikey       the guide's API keys in Workers KV: create NAME [--user ID] | list
  tailnet      the tailnet policy from the service graph: show | check | plan | apply [--force]
  llm-check    one chat completion on the llm host's endpoint [--via HOST]
  backup       one backup of HOST now, and the snapshot it made
  restore      restore HOST's snapshot: a side cluster, or the live one with --confirm
  backups      every host's snapshots: count, latest, age, size
  rebuild      a freshly flashed HOST back to its full role, data included [--force]
  rollback     switch APP back to its previous image, through the health gate [--host HOST]
  phase        one phase of the setup checklist: converge, verify each item [--limit] [--check-only]
  docs         regenerate docs/settings.md, docs/fleet.md and docs/runbook.md
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "check": "fleet.preflight.inventory",
    "vault": "fleet.commands.vault",
    "edge": "fleet.commands.edge",
    "apikey": "fleet.commands.apikey",
    "tailnet": "fleet.commands.tailnet",
    "llm-check": "fleet.commands.llm_check",
    "backup": "fleet.commands.backup:main_backup",
    "restore": "fleet.commands.backup:main_restore",
    "backups": "fleet.commands.backup:main_backups",
    "rebuild": "fleet.commands.rebuild",
    "rollback": "fleet.commands.rollback",
    "phase": "fleet.commands.phase",
    "docs": "fleet.commands.docs",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"fleet: unknown command {argv[0]!r}. Fix: use one of {', '.join(COMMANDS)} "
              "(python -m fleet --help).", file=sys.stderr)
        return 2
    module, _, function = COMMANDS[argv[0]].partition(":")
    return getattr(importlib.import_module(module), function or "main")(argv[1:])


def run(argv: list[str]) -> int:
    """main(argv), with what ends a command early turned into a quiet exit status."""
    try:
        return main(argv)
    except BrokenPipeError:
        # the reader went away (`python -m fleet backups | head`): stop quietly, as a Unix tool
        # killed by SIGPIPE does, instead of a traceback. Python's documented recipe: stdout
        # goes to /dev/null, so the interpreter's last flush at exit finds no closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        # Ctrl-C in a command that says nothing more itself (its own message, when it has one,
        # comes from fleet.commands.cli.report): one line and 130, as a shell reports SIGINT
        print(f"fleet {argv[0]}: interrupted" if argv else "fleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
