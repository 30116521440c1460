"""Roll an app back to the image it ran before, through the same health gate as a rollout.

    python -m fleet rollback APP [--host HOST]     (make rollback APP=web [HOST=pi5-alpha])

Runs `fleet-app rollback APP` (deploys/apps.py) on each host that runs the app (or on HOST
only), over SSH with the connection pyinfra uses, streaming its output. The previous image
starts beside the live one, must answer its health path, and only then takes the traffic;
if it never gets healthy, the live one keeps serving and the command fails. The host then
holds the rolled-back image: converges keep it while apps_releases still names the image
rolled back from, and move on as soon as it names another digest.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from fleet.commands import cli
from fleet.commands.llm_check import ssh_command
from fleet.converge.vault import VaultError
from fleet.preflight.inventory import FleetConfigError, prepare, read_inventory_data

REPO = Path(__file__).resolve().parents[2]


def targets(fleet, app: str, only: str | None) -> list[str]:
    from deploys.apps import hosts_apps

    defined = fleet.all_data.get("apps_definitions") or {}
    if app not in defined:
        raise FleetConfigError(f"APP={app or '(none)'} is not an app. Fix: name one of "
                               f"{', '.join(sorted(defined)) or '(none: apps_definitions is empty)'}.")
    running = [h.name for h in fleet.hosts.values() if app in hosts_apps(h.groups, h.data)]
    if only is None:
        return running
    if only not in running:
        raise FleetConfigError(f"HOST={only} does not run {app}. Fix: name one of {', '.join(running)}, "
                               "or leave HOST out to roll back every host that runs it.")
    return [only]


def main(argv: list[str]) -> int:
    import subprocess

    parser = cli.Parser(prog="python -m fleet rollback", description=__doc__.splitlines()[0])
    parser.add_argument("app")
    parser.add_argument("--host", help="only this host (default: every host that runs the app)")
    args = cli.parse(parser, argv)  # an int: argparse's exit code (--help 0, bad usage 2)
    if isinstance(args, int):
        return args
    try:
        hosts, test_fleet = read_inventory_data(REPO / "inventory.py")
        entries, fleet = prepare(hosts, test_fleet, str(REPO / "inventory.py"))
        names = targets(fleet, args.app, args.host)
    except (FleetConfigError, VaultError) as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 1
    from deploys.apps import SCRIPT

    failed = []
    for name in names:
        print(f"rollback: {name}: {args.app}", flush=True)
        cmd = ssh_command(entries[name]) + [f"sudo -n {SCRIPT} rollback {shlex.quote(args.app)}"]
        if subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"rollback: {args.app} was not rolled back on {', '.join(failed)} (the reason is above); "
              "what served it before still serves it.", file=sys.stderr)
        return 1
    return 0
