"""python -m fleet rebuild HOST [--force]: a freshly flashed host back to its full role, data
included (`make rebuild HOST=pi5-gamma`).

The host is as Raspberry Pi Imager's first boot leaves it: the admin user and the operator's
key. The steps, each timed (the summary splits the recovery time by step):

  check     a host that answers with its vault host key AND passes its specs is healthy: the
            rebuild refuses it unless --force (a rebuild never clobbers a healthy host's data);
            a host still marked by a rebuild that stopped before its restore is not healthy
  tailnet   the dead node is deleted through Tailscale's API (devices named like the host),
            so the new node joins under the same name, never as <name>-1
  join      first contact over the LAN (FLEET_CONNECT=lan, FLEET_BOOTSTRAP=HOST: the key the
            host first shows is trusted, then the base deploy puts its vault host key back,
            so known_hosts stays valid), base and tailscale; the node's name is checked, and its
            tailnet address is pinned to the inventory's through the API when it differs;
            a host with backups is marked "restore pending" (deploys/backup.py, RESTORE_PENDING)
  converge  the full converge of the host, over the tailnet
  restore   on a host with backups: its latest snapshot (while the mark is there, neither the
            converge nor the backup timer takes a snapshot; deploys/backup.py), restored into
            the live cluster, which removes the mark; the snapshot's time is printed as the
            data's age
  verify    the host's specs, and the setup checklist's items that concern it (check only)

Why re-join instead of restoring the node's state: the node key is the host's tailnet
credential. Keeping it in backups would copy a credential into every snapshot, and a
restored key on a new SD card while the old card still exists makes two machines one node.
Deleting the dead node first keeps the name; pinning the address keeps the inventory true.
The Tailscale API key: TAILSCALE_API_KEY or the vault's tailscale_api_key (as `make
tailnet-plan`); the auth key the converge joins with must be reusable (tailscale_authkey).

Exit status: 0 rebuilt and verified; 1 a step failed (the summary says which); 2 bad usage
or bad data, or a healthy host refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from deploys.backup import MARK_RESTORE_PENDING, RESTORE_PENDING
from fleet.commands import cli
from fleet.commands.backup import parse_time
from fleet.commands.llm_check import ssh_command
from fleet.converge.vault import VaultError
from fleet.preflight.inventory import FleetConfigError, prepare, read_inventory_data, target_from_env

REPO = Path(__file__).resolve().parents[2]
PHASES = (1, 2, 3, 4)


class RebuildError(Exception):
    pass


class Refused(Exception):
    pass


def say(text: str) -> None:
    print(text, flush=True)


class Steps:
    """Each step's wall time, for the summary's recovery-time split."""

    def __init__(self):
        self.times: list[tuple[str, float, str]] = []
        self.started = time.monotonic()

    @contextmanager
    def step(self, name: str, what: str):
        say(f"==> [{time.monotonic() - self.started:6.1f}s] {name}: {what}")
        t0 = time.monotonic()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            self.times.append((name, time.monotonic() - t0, outcome))


def load(repo: Path, **env: str):
    """(entries, fleet) for the target, with FLEET_CONNECT / FLEET_BOOTSTRAP as given."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        hosts, test_fleet = read_inventory_data(repo / "inventory.py")
        return prepare(hosts, test_fleet, str(repo / "inventory.py"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def remote(entry: dict, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ssh_command(entry), f"sudo -n bash -c {shlex.quote(script)}"], text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def specs(repo: Path, name: str) -> tuple[bool, str]:
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=", "-q",
                          "--no-header", "--tb=line", "-n", "4", "tests/specs"], cwd=repo, text=True,
                         capture_output=True, env={**os.environ, "FLEET_SPEC_HOSTS": name}, timeout=900)
    last = (run.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    return run.returncode == 0, last


# --- step 1: is it healthy? ------------------------------------------------------------------

def healthy(repo: Path, entry: dict, name: str, backed_up: bool) -> tuple[bool, str]:
    probe = subprocess.run([*ssh_command(entry), "true"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"does not answer with its vault host key ({reason})"
    if backed_up and remote(entry, f"test -e {RESTORE_PENDING}", timeout=30).returncode == 0:
        # a rebuild that stopped after its converge: the host is up, its data is not back
        return False, f"answers with its vault host key, but its data was not restored after a rebuild ({RESTORE_PENDING})"
    ok, line = specs(repo, name)
    return ok, f"answers with its vault host key; specs: {line}"


# --- step 2: the tailnet's stale node ---------------------------------------------------------

class Tailscale:
    """The devices endpoints of Tailscale's API v2 (the key as basic auth's user name)."""

    def __init__(self, fleet):
        import base64

        from fleet.commands import tailnet
        from fleet.converge import keys

        try:
            key, self.source = tailnet.api_key(keys.vault_path())
        except tailnet.TailnetError as exc:
            raise RebuildError(str(exc)) from None

        self.auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        self.base = (os.environ.get(tailnet.BASE_URL_ENV) or tailnet.DEFAULT_BASE_URL).rstrip("/")
        self.tailnet = os.environ.get(tailnet.TAILNET_ENV) or str(fleet.all_data.get("tailnet_policy_tailnet") or "-")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.base}/api/v2/{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": self.auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RebuildError(f"Tailscale's API refused {method} /api/v2/{path} (HTTP {exc.code}: "
                               f"{exc.read()[:200].decode(errors='replace')}; key from {self.source})") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RebuildError(f"cannot reach Tailscale's API at {self.base}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(raw or b"{}")

    def devices(self, hostname: str, keep: tuple[str, ...] = ()) -> list[dict]:
        """The nodes named `hostname`, or `hostname-N` as Tailscale renames a second one;
        never a node whose name is another inventory host's (`keep`)."""
        found = self.call("GET", f"tailnet/{self.tailnet}/devices").get("devices") or []
        names = (hostname, *(f"{hostname}-{n}" for n in range(1, 10)))
        return [d for d in found if str(d.get("name") or d.get("hostname") or "").split(".")[0] in names
                and str(d.get("name") or d.get("hostname") or "").split(".")[0] not in keep]

    def delete(self, device_id: str) -> None:
        self.call("DELETE", f"device/{device_id}")

    def pin(self, device_id: str, address: str) -> None:
        self.call("POST", f"device/{device_id}/ip", {"ipv4": address})


# --- the command ------------------------------------------------------------------------------

def pyinfra(repo: Path, name: str, **env: str) -> None:
    cmd = [str(Path(sys.executable).parent / "pyinfra"), "-y", "inventory.py", "deploys/site.py", "--limit", name]
    rc = subprocess.run(cmd, cwd=repo, env={**os.environ, **env}).returncode
    if rc:
        raise RebuildError(f"the converge of {name} failed (pyinfra exit {rc}; its output is above). "
                           "Fix what it names and run the rebuild again: every step is safe to repeat.")


def run(args) -> int:
    repo = Path(args.repo)
    steps = Steps()
    entries, fleet = load(repo)
    name = args.host
    if name not in fleet.hosts:
        raise FleetConfigError(f"HOST={name or '(none)'} is not an inventory host. "
                               f"Fix: name one of {', '.join(fleet.hosts)}.")
    host = fleet.hosts[name]
    say(f"rebuild {name} ({', '.join(host.groups)}) on the {target_from_env()} fleet")
    restored = "nothing (the host declares no state)"

    with steps.step("check", "is it healthy (vault host key, specs)?"):
        ok, why = healthy(repo, entries[name], name, host.runs("backup"))
        say(f"  - {name} {why}")
    if ok and not args.force:
        raise Refused(f"refused: {name} {why}: it is healthy, and a rebuild would replace it and its data. "
                      f"Fix: nothing to do; if you mean it, run again with FORCE=1 (--force).")

    with steps.step("tailnet", "delete the dead node, so the new one keeps the name"):
        api = Tailscale(fleet)
        others = tuple(h.data["tailnet_name"] for h in fleet.hosts.values() if h.name != name)
        stale = api.devices(host.data["tailnet_name"], keep=others)
        for device in stale:
            api.delete(device["id"])
            say(f"  - deleted device {device.get('name') or device.get('hostname')} ({device['id']})")
        if not stale:
            say("  - no device of that name in the tailnet")

    with steps.step("join", "first contact over the LAN: base and tailscale"):
        lan_entries, _ = load(repo, FLEET_CONNECT="lan")
        if subprocess.run([*ssh_command(lan_entries[name]), "true"], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=30).returncode == 0:
            # a rebuild run before this one got this far: the card holds its vault key, which
            # known_hosts checks; the first contact's trust is for a card that does not
            say(f"  - {name} answers on the LAN with its vault host key already (an earlier rebuild joined it)")
            first_contact = {}
        else:
            first_contact = {"FLEET_BOOTSTRAP": name}
        pyinfra(repo, name, FLEET_CONNECT="lan", FLEET_COMPONENTS="base,tailscale", **first_contact)
        status = remote(lan_entries[name], "tailscale status --json --peers=false")
        try:
            me = json.loads(status.stdout)["Self"]
        except (ValueError, KeyError):
            raise RebuildError(f"{name}: `tailscale status` did not answer after the join: "
                               f"{status.stderr.strip()[-200:]}") from None
        want = host.data["tailnet_name"]
        joined_as = str(me.get("DNSName") or me.get("HostName") or "").split(".")[0]
        if joined_as != want:
            raise RebuildError(f"{name} joined the tailnet as {joined_as!r}, not {want!r} (a node of that "
                               "name still exists). Fix: delete it in the admin console (Machines), then "
                               "run the rebuild again.")
        address = (me.get("TailscaleIPs") or [""])[0]
        if address != host.tailnet_address:
            for device in api.devices(want, keep=others):
                api.pin(device["id"], host.tailnet_address)
            say(f"  - pinned {want}'s address to {host.tailnet_address} (it joined as {address})")
        say(f"  - joined as {joined_as} ({host.tailnet_address})")
        if host.runs("backup"):
            # before the converge installs the backup timer: no snapshot of the empty state
            # until the restore below has put the data back (it removes the mark); a rebuild
            # stopped in between is not taken for a healthy host by the next one
            marked = remote(lan_entries[name], MARK_RESTORE_PENDING)
            if marked.returncode:
                raise RebuildError(f"{name}: could not mark its restore as pending: {marked.stderr.strip()[-200:]}")

    with steps.step("converge", "the full converge of the host, over the tailnet"):
        pyinfra(repo, name)

    if host.runs("backup"):
        with steps.step("restore", "the latest snapshot into the live cluster"):
            listing = remote(entries[name], 'fleet-restic --no-lock snapshots --json --host '
                                            '"$(. /etc/fleet/backup/env; echo $FLEET_BACKUP_HOST)"')
            try:
                snapshots = json.loads(listing.stdout)
            except ValueError:
                raise RebuildError(f"{name}: its snapshots could not be listed: {listing.stderr.strip()[-200:]}") from None
            if not snapshots:
                raise RebuildError(f"{name}: its repository holds no snapshot, so there is no data to restore. "
                                   "The host is converged and empty.")
            latest = max(snapshots, key=lambda s: s["time"])
            taken = parse_time(latest["time"])
            age = datetime.now(timezone.utc) - taken
            say(f"  - snapshot {latest['short_id']} of {taken:%Y-%m-%d %H:%M:%S %Z}: the data is "
                f"{age.total_seconds() / 60:.1f} min old")
            restore = subprocess.run([*ssh_command(entries[name]),
                                      f"sudo -n fleet-restore --snapshot {shlex.quote(latest['id'])} --live"],
                                     stdin=subprocess.DEVNULL, text=True)
            if restore.returncode:
                raise RebuildError(f"{name}: the restore of snapshot {latest['short_id']} failed (exit "
                                   f"{restore.returncode}; its output is above)")
            restored = (f"snapshot {latest['short_id']} ({', '.join(latest.get('paths') or [])}) of "
                        f"{taken:%Y-%m-%d %H:%M:%S} UTC, {age.total_seconds() / 60:.1f} min old")

    failed = []
    with steps.step("verify", "the host's specs and the checklist items that concern it"):
        ok, line = specs(repo, name)
        say(f"  - specs: {line}")
        if not ok:
            failed.append(f"specs: {line}")
        for number in PHASES:
            phase = subprocess.run([sys.executable, "-m", "fleet", "phase", str(number), "--check-only",
                                    "--limit", name], cwd=repo, capture_output=True, text=True, timeout=900)
            summary = [line for line in phase.stdout.splitlines() if line.startswith(f"phase {number} (")]
            items = [line for line in phase.stdout.splitlines() if line[:1] == "p" and "  failing " in line]
            say(f"  - {(summary or [f'phase {number}: no summary (exit {phase.returncode})'])[-1]}")
            failed += [f"phase item {line.strip()}" for line in items]

    say("")
    say(f"rebuild {name}: {'FAILED' if failed else 'done'}; restored: {restored}")
    total = sum(t for _, t, _ in steps.times)
    say("recovery time by step: " + ", ".join(f"{n} {t:.0f}s" for n, t, _ in steps.times) + f"; total {total:.0f}s")
    for line in failed:
        say(f"  failing: {line}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog="python -m fleet rebuild", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("host", help="the inventory host to rebuild")
    parser.add_argument("--force", action="store_true", help="rebuild even a healthy host")
    parser.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    args = cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    return cli.report("rebuild", run, args, {Refused: 2, FleetConfigError: 2, VaultError: 2, RebuildError: 1},
                      interrupted="interrupted (every step is safe to run again)", every_line=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
