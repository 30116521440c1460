"""What the operator commands that talk to a vendor's API share: the fleet's data from a
repository, and running a command so that every error is one line per problem, prefixed with
the command's name, with secrets blanked out, and never a traceback.

    def main(argv):
        parser, sub = cli.commands("python -m fleet edge", __doc__, REPO)
        ...
        args = cli.parse(parser, argv)      # an int: argparse's own exit code (--help 0, usage 2)
        if isinstance(args, int):
            return args
        return cli.report("edge", run, args, {EdgeError: 1},
                          interrupted="interrupted (changes printed above were made)")

`run(args)` appends every secret it holds to `args.redact` as soon as it has it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from fleet.converge.vault import VaultError
from fleet.preflight.inventory import FleetConfigError, read_inventory_data, select_vault, target_from_env
from fleet.preflight.model import Fleet, load_fleet


def load_data(repo: Path) -> Fleet:
    """The fleet model of `repo`'s inventory.py and group_data/, its target's vault selected.
    For the test fleet, TEST_FLEET["all_data"] replaces those fleet-wide keys (its edge account)."""
    hosts, test_fleet = read_inventory_data(repo / "inventory.py")
    select_vault(repo, test_fleet)
    fleet = load_fleet(hosts, repo / "group_data")
    if target_from_env() == "test":
        fleet.all_data.update(test_fleet.get("all_data") or {})
    return fleet


class Parser(argparse.ArgumentParser):
    """argparse's parser, but bad usage is one line on stderr, naming what is wrong and where
    the right usage is, then exit 2 (argparse prints its whole usage block first). Its
    subcommands' parsers are of this class too (argparse makes them of the parent's class)."""

    def error(self, message: str):
        print(f"{self.prog}: {message}. Fix: see `{self.prog} --help`.", file=sys.stderr)
        raise SystemExit(2)


def positive(kind):
    """An argparse type: a number of `kind` above zero (argparse names the option when it fails:
    `llm-check --timeout -1` reached socket.settimeout and `vault set --generate -5` os.urandom, each
    ending in a traceback)."""
    def convert(text: str):
        value = kind(text)  # ValueError: argparse says "invalid ... value"
        if not value > 0 or value == float("inf"):
            raise ValueError(text)
        return value
    convert.__name__ = f"positive {kind.__name__}"
    return convert


def commands(prog: str, doc: str, repo: Path):
    """A parser whose description is the command's docstring, with the hidden --repo option
    (tests point it at another inventory), and its subcommands' group."""
    parser = Parser(prog=prog, description=doc.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--repo", default=str(repo), help=argparse.SUPPRESS)
    return parser, parser.add_subparsers(dest="command", required=True)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return int(exc.code or 0)
    args.redact = []
    return args


def report(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
           errors: dict[type[Exception], int], interrupted: str, every_line: bool = True) -> int:
    """run(args); an error it raises of a class in `errors` (or VaultError, FleetConfigError:
    exit code 1 unless `errors` names them) is printed as `name: message` and its exit code
    returned, Ctrl-C as `name: <interrupted>` and 130. With every_line false, only the
    message's first line is prefixed."""
    try:
        return run(args)
    except (*errors, VaultError, FleetConfigError) as exc:
        message = str(exc)
        for secret in args.redact:
            message = message.replace(secret, "***")
        if every_line:
            print("\n".join(f"{name}: {line}" for line in message.splitlines()), file=sys.stderr)
        else:
            print(f"{name}: {message}", file=sys.stderr)
        return next((code for cls, code in errors.items() if isinstance(exc, cls)), 1)
    except KeyboardInterrupt:
        print(f"{name}: {interrupted}", file=sys.stderr)
        return 130
