"""Target selection: turn inventory.py's data into pyinfra groups, after validating the
whole fleet. Nothing here touches a host.

Targets (FLEET_TARGET):
  fleet  the real hosts, reached on their tailnet address (FLEET_CONNECT=lan: on the LAN)
  test   the Docker test fleet: TEST_FLEET's LAN addresses, the test network's tailnet
         addresses (the same as the real ones), and the test SSH key made by fleet-up
Nothing but addresses, the SSH connection and the vault differ between the two.

Host keys: every host's SSH identity is in the vault, so pyinfra checks hosts strictly
against a known_hosts file generated from it (.state/<target>/known_hosts). A host that
does not hold its vault key yet (freshly flashed or rebuilt) is named in FLEET_BOOTSTRAP
(comma-separated, or "all"): for it, pyinfra uses .state/<target>/bootstrap_known_hosts,
trusting the key it first sees on the real fleet (accept-new), and the key recorded at
flash time on the test fleet. The base deploy then installs the vault key.
"""

from __future__ import annotations

import ast
import copy
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from fleet.converge import component as registry
from fleet.converge import keys
from fleet.converge.vault import VaultError
from fleet.preflight import validate as validation
from fleet.preflight.model import DataFileError, Fleet, host_defaults, load_fleet
from fleet.converge.paths import state_dir, test_ssh_key  # noqa: F401 (used and re-exported)

TARGETS = ("fleet", "test")
# pyinfra's SSH connector with the fleet's TCP settings (fleet.converge.connector).
CONNECTOR = "@fleet/"
CONNECT = ("tailnet", "lan")


class FleetConfigError(PyinfraError):
    """Raised before any host is touched; pyinfra prints it without a traceback."""


def read_inventory_data(inventory_file: str | Path) -> tuple[dict, dict]:
    """HOSTS and TEST_FLEET from inventory.py, read as literals (nothing is executed)."""
    try:
        tree = ast.parse(Path(inventory_file).read_text(), filename=str(inventory_file))
    except SyntaxError as exc:
        raise FleetConfigError(f"{inventory_file}:{exc.lineno}: invalid Python ({exc.msg}). "
                               "Fix: correct that line.") from None
    except OSError as exc:
        raise FleetConfigError(f"{inventory_file}: cannot be read ({exc.strerror}). "
                               "Fix: run from the repository root.") from None
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("HOSTS", "TEST_FLEET"):
                try:
                    found[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    raise FleetConfigError(
                        f"{inventory_file}:{node.lineno}: {target.id} must be a plain literal (no names, "
                        "calls or expressions). Fix: write the values out.") from None
    if not all(isinstance(v, dict) for v in found.values()):
        raise FleetConfigError(f"{inventory_file}: HOSTS and TEST_FLEET must be dicts. "
                               "Fix: write them like {'pi5-alpha': {...}}.")
    missing = {"HOSTS", "TEST_FLEET"} - set(found)
    if missing:
        raise FleetConfigError(f"{inventory_file}: {', '.join(sorted(missing))} must be plain "
                               "dict literals. Fix: define them as data, without code.")
    return found["HOSTS"], found["TEST_FLEET"]


def target_from_env() -> str:
    target = os.environ.get("FLEET_TARGET", "fleet")
    if target not in TARGETS:
        raise FleetConfigError(
            f"FLEET_TARGET={target!r} is not a target. Fix: use one of {', '.join(TARGETS)}."
        )
    return target


def select_vault(repo: Path, test_fleet: dict, target: str | None = None) -> None:
    """The target's vault: the demo vault (and its documented passphrase file) for the test
    fleet, secrets/fleet.vault otherwise (FLEET_VAULT overrides both; see fleet.converge.keys)."""
    if (target or target_from_env()) == "test":
        keys.use(repo / test_fleet["vault"], repo / test_fleet["vault_passphrase_file"])
    else:
        keys.use(repo / keys.DEFAULT_VAULT)


def bootstrap_hosts(hosts: dict) -> set[str]:
    raw = os.environ.get("FLEET_BOOTSTRAP", "").strip()
    if not raw:
        return set()
    names = set(hosts) if raw == "all" else {n.strip() for n in raw.split(",") if n.strip()}
    unknown = names - set(hosts)
    if unknown:
        raise FleetConfigError(
            f"FLEET_BOOTSTRAP names unknown host(s) {', '.join(sorted(unknown))}. "
            f"Fix: use host names from inventory.py ({', '.join(hosts)}) or 'all'."
        )
    return names


def apply_target(hosts: dict, test_fleet: dict, repo: Path, target: str) -> dict:
    """The host entries for a target, with connection data for pyinfra's SSH connector."""
    hosts = copy.deepcopy(hosts)
    for name, entry in hosts.items():
        if not isinstance(entry, dict):
            raise FleetConfigError(f"{name}: HOSTS: the entry is a {type(entry).__name__}, not a dict of the "
                                   "host's facts. Fix: write it like the other entries in inventory.py.")
    connect = os.environ.get("FLEET_CONNECT", "tailnet")
    if connect not in CONNECT:
        raise FleetConfigError(
            f"FLEET_CONNECT={connect!r} is not a way to connect. Fix: use one of {', '.join(CONNECT)}."
        )
    if target == "test":
        key = test_ssh_key(repo)
        if not key.exists():
            raise FleetConfigError(
                f"the test fleet's SSH key {key} does not exist. Fix: run `make fleet-up` first."
            )
        pubkey = key.with_suffix(".pub").read_text().strip()
        built = built_data(repo, test_fleet)
        emulated = emulated_hosts(hosts)
        for name, entry in hosts.items():
            if name not in test_fleet["lan_addresses"]:
                raise FleetConfigError(
                    f"{name}: TEST_FLEET['lan_addresses'] has no entry. "
                    f"Fix: add a test LAN address for {name} in inventory.py."
                )
            entry["lan_address"] = test_fleet["lan_addresses"][name]
            entry.update(copy.deepcopy(test_fleet.get("data", {})))
            entry.update(copy.deepcopy(built))
            if name in emulated:
                entry.update(copy.deepcopy(test_fleet.get("arm64_data", {})))
            entry["base_admin_ssh_keys"] = [pubkey]
            entry["ssh_key"] = str(key)
    elif os.environ.get(ARM64_ENV, "").strip():
        raise FleetConfigError(f"{ARM64_ENV} is set, but the target is the real fleet ({target}): emulated arm64 "
                               f"hosts exist only in the test fleet. Fix: unset {ARM64_ENV} or set FLEET_TARGET=test.")
    bootstrap = bootstrap_hosts(hosts)
    chosen = sorted({n.strip() for n in os.environ.get(registry.SELECT_ENV, "").split(",") if n.strip()})
    selection = f"--{'+'.join(chosen)}" if chosen else ""
    for name, entry in hosts.items():
        known = "bootstrap_known_hosts" if name in bootstrap else "known_hosts"
        entry["ssh_known_hosts_file"] = str(state_dir(repo, target) / known)
        first_contact = name in bootstrap and target == "fleet"
        entry["ssh_strict_host_key_checking"] = "accept-new" if first_contact else "yes"
        # the fact commands pyinfra asked last run, prefetched in one batch (fleet.converge.connector);
        # a run limited to some components (FLEET_COMPONENTS) keeps its own record
        entry["fleet_prefetch_file"] = str(state_dir(repo, target) / "facts" / f"{name}{selection}.json")
        address = entry.get("tailnet_address") if connect == "tailnet" else entry.get("lan_address")
        if isinstance(address, str) and address:
            entry["ssh_hostname"] = address.split("/")[0]
        for key, value in host_defaults(name).items():
            entry.setdefault(key, value)
    return hosts


ARM64_ENV = "FLEET_TEST_ARM64"
EXTRA_ENV = "FLEET_TEST_EXTRA_HOSTS"
# Where the extra hosts' addresses are taken, in each test network: its /24 at this offset.
EXTRA_SUBNET = 200
EXTRA_MAX = 20


def extra_test_hosts(hosts: dict, test_fleet: dict, target: str) -> tuple[dict, dict]:
    """(HOSTS, TEST_FLEET) with the extra test hosts FLEET_TEST_EXTRA_HOSTS=name:count asks
    for: `count` more hosts like `name` (its groups and facts), named `<name>-x1`... and
    addressed in each test network's 200th /24 (100.100.200.1, 100.101.200.1, ...). The
    benchmark (make bench) measures what one more host of an existing group adds to a
    converge with them; they exist only in the test fleet. Unset: the inventory as it is."""
    raw = os.environ.get(EXTRA_ENV, "").strip()
    if not raw:
        return hosts, test_fleet
    if target != "test":
        raise FleetConfigError(f"{EXTRA_ENV} is set, but the target is the real fleet ({target}): extra hosts "
                               f"exist only in the test fleet. Fix: unset {EXTRA_ENV} or set FLEET_TARGET=test.")
    name, _, count = (part.strip() for part in raw.partition(":"))
    like = hosts.get(name)
    if (not isinstance(like, dict) or not (count.isascii() and count.isdigit())
            or not 1 <= int(count) <= EXTRA_MAX):
        raise FleetConfigError(f"{EXTRA_ENV}={raw!r} is not <host>:<count>. Fix: name a host of inventory.py "
                               f"({', '.join(hosts)}) and a count from 1 to {EXTRA_MAX}, e.g. "
                               f"{EXTRA_ENV}=pi0-epsilon:3.")
    hosts, test_fleet = copy.deepcopy(hosts), copy.deepcopy(test_fleet)
    nets = {key: ipaddress.ip_network(test_fleet[key]) for key in ("tailnet_network", "lan_network")}
    for index in range(1, int(count) + 1):
        extra = f"{name}-x{index}"
        tailnet, lan = (net.network_address + EXTRA_SUBNET * 256 + index for net in nets.values())
        entry = dict(copy.deepcopy(like), tailnet_address=str(tailnet), tailnet_name=extra)
        lan_address = f"{lan}/{nets['lan_network'].prefixlen}"
        # the same copies again (HOSTS that already went through here) are no change
        again = hosts.get(extra) == entry and test_fleet["lan_addresses"].get(extra) == lan_address
        if (extra in hosts and not again) or any(address not in net for address, net in
                                                 zip((tailnet, lan), nets.values())):
            raise FleetConfigError(f"{EXTRA_ENV}={raw!r}: {extra} is already a host of inventory.py, or "
                                   f"{tailnet} / {lan} is outside the test networks "
                                   f"({', '.join(str(n) for n in nets.values())}). Fix: copy another host, or "
                                   f"give TEST_FLEET /16 networks.")
        hosts[extra] = entry
        test_fleet["lan_addresses"][extra] = lan_address
    return hosts, test_fleet


def emulated_hosts(hosts: dict) -> set[str]:
    """The test hosts run as arm64 under qemu-user (FLEET_TEST_ARM64=name[,name]: make
    test-arm64); they get TEST_FLEET["arm64_data"] over the test data."""
    names = {n.strip() for n in os.environ.get(ARM64_ENV, "").split(",") if n.strip()}
    unknown = sorted(names - set(hosts))
    if unknown:
        raise FleetConfigError(f"{ARM64_ENV}={os.environ[ARM64_ENV]!r}: {', '.join(unknown)} is not a host in "
                               f"inventory.py. Fix: name test hosts from HOSTS, e.g. {ARM64_ENV}=pi5-gamma.")
    return names


def built_data(repo: Path, test_fleet: dict) -> dict:
    """TEST_FLEET["built_data"]: data the test suite wrote when it built the mirror."""
    if not test_fleet.get("built_data"):
        return {}
    path = repo / test_fleet["built_data"]
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FleetConfigError(f"{path} does not exist. Fix: run `make fleet-up` first.") from None
    except ValueError as exc:
        raise FleetConfigError(f"{path} is not JSON ({exc}). Fix: run `make fleet-up` again.") from None
    if not isinstance(data, dict):
        raise FleetConfigError(f"{path} must hold a JSON object. Fix: run `make fleet-up` again.")
    return data


def ssh_options(entry: dict) -> list[str]:
    """ssh -o options that reach a prepared entry's host as pyinfra does (strict known_hosts)."""
    return ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", f"UserKnownHostsFile={entry['ssh_known_hosts_file']}",
            "-o", f"StrictHostKeyChecking={entry['ssh_strict_host_key_checking']}"]


def offered_keys(entry: dict) -> set[str]:
    """Public keys pyinfra's SSH connector will offer for a host, as far as they can be
    known here: the host's ssh_key (its .pub), else the agent's and ~/.ssh's default keys."""
    key = entry.get("ssh_key")
    if key:
        pub = Path(f"{key}.pub")
        if pub.exists():
            return {pub.read_text().strip()}
        derived = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", key],
                                 capture_output=True, text=True, check=False)
        return {derived.stdout.strip()} if derived.returncode == 0 else set()
    keys = set()
    if os.environ.get("SSH_AUTH_SOCK"):
        agent = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True, check=False)
        if agent.returncode == 0:
            keys |= {line for line in agent.stdout.splitlines() if line.strip()}
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        pub = Path.home() / ".ssh" / f"{name}.pub"
        if pub.exists():
            keys.add(pub.read_text().strip())
    return keys


def prepare(hosts: dict, test_fleet: dict, inventory_file: str, target: str | None = None):
    """(host entries for the target, validated Fleet), or FleetConfigError on bad data."""
    repo = Path(inventory_file).resolve().parent
    target = target or target_from_env()
    hosts, test_fleet = extra_test_hosts(hosts, test_fleet, target)
    # the command line first: a mistyped --limit is named even where the data has problems too
    check_patterns(cli_patterns(), list(hosts), sorted({"all"} | {
        group for entry in hosts.values() if isinstance(entry, dict) and isinstance(entry.get("groups"), list)
        for group in entry["groups"] if isinstance(group, str)}))
    select_vault(repo, test_fleet, target)
    keys.open_early()  # the key derivation runs while the data below is validated
    try:
        registry.selected()  # FLEET_COMPONENTS names real components (apply_target reads it)
    except registry.ComponentError as exc:
        raise FleetConfigError(str(exc)) from None
    entries = apply_target(hosts, test_fleet, repo, target)
    try:
        fleet = load_fleet(entries, repo / "group_data")
    except DataFileError as exc:
        raise FleetConfigError(str(exc)) from None
    given = cli_data()
    override(fleet, entries, given)
    try:
        validation.validate(fleet, {name: offered_keys(entry) for name, entry in entries.items()})
        check_vault(fleet)
    except validation.InventoryError as exc:
        raise FleetConfigError(str(validation.InventoryError(once_for_cli(exc.problems, given)))) from None
    write_known_hosts(fleet, state_dir(repo, target))
    if target == "fleet":
        forget_first_contacts(fleet, bootstrap_hosts(entries), state_dir(repo, target))
    return entries, fleet


# A secret written inside other text (an env file's KEY=value line, a JSON string) must not
# end that text early: no line break, other control character, quote or backslash.
INSIDE_TEXT = re.compile(r'[^\x00-\x1f\x7f"\\]*')


def check_vault(fleet: Fleet) -> None:
    """The vault opens, and holds every secret the fleet's hosts get; a secret that goes inside
    other text fits in it. A message names the secret, never its value."""
    try:
        data = keys.current()
    except VaultError as exc:
        raise FleetConfigError(f"vault: {exc}. No host was touched.") from None
    found, told = [], set()
    for host in fleet.hosts.values():
        for key in registry.vault_keys(host.name, host.groups, host.data):
            if key not in data:
                how = ("python -m fleet vault hostkeys" if key == keys.host_key_name(host.name)
                       else f"python -m fleet vault set {key}")
                found.append(validation.Problem(
                    host.name, f"vault[{key!r}]",
                    f"is missing from {keys.vault_path()}.", f"run `{how}`."))
        for spec in registry.secret_files(host.name, host.groups, host.data):
            value = data.get(spec.key)
            if spec.fmt != "{value}" and isinstance(value, str) and not INSIDE_TEXT.fullmatch(value) \
                    and spec.key not in told:
                told.add(spec.key)
                found.append(validation.Problem(
                    "all", f"vault[{spec.key!r}]",
                    f"has a line break, control character, quote or backslash, and it is written inside "
                    f"{spec.path} (e.g. a trailing newline from `echo`).",
                    f"store it as one line: `printf %s \"$VALUE\" | python -m fleet vault set {spec.key}`."))
    if found:
        raise validation.InventoryError(found)


def write_known_hosts(fleet: Fleet, directory: Path) -> None:
    """known_hosts from the vault's host keys: both addresses of every host."""
    directory.mkdir(parents=True, exist_ok=True)
    addresses = {h.name: [h.tailnet_address, h.lan_address] for h in fleet.hosts.values()}
    lines = keys.known_hosts_lines(keys.current(), addresses)
    path = directory / "known_hosts"
    text = "".join(f"{line}\n" for line in lines)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def forget_first_contacts(fleet: Fleet, bootstrap: set[str], directory: Path) -> None:
    """A real host named in FLEET_BOOTSTRAP is met as a new card: what bootstrap_known_hosts
    kept for its addresses from an earlier first contact (the card before, or this one before
    its vault key went on, as in a rebuild run again) would refuse it, since accept-new
    trusts only an address it holds no key for. ssh-keygen -R drops those lines, hashed ones
    too (the test fleet's file holds the keys recorded at flash time instead, and is kept)."""
    path = directory / "bootstrap_known_hosts"
    if not bootstrap or not path.exists():
        return
    for name in sorted(bootstrap):
        h = fleet.hosts[name]
        for address in (h.lan_address, h.tailnet_address):
            if address:
                subprocess.run(["ssh-keygen", "-R", str(address).split("/")[0], "-f", str(path)],
                               capture_output=True, timeout=30)


def pyinfra_groups(hosts: dict, test_fleet: dict, inventory_file: str) -> dict[str, Any]:
    """{group: [(host, host_data), ...]} for pyinfra, and `all`: (every host, the components'
    DEFAULTS). pyinfra merges group_data/all.py over `all`'s data and the group files over
    that, so the DEFAULTS are the lowest layer for every deploy, as in the fleet model.
    Hosts go through the `fleet` connector (fleet.converge.connector) and keep their names."""
    entries, fleet = prepare(hosts, test_fleet, inventory_file)
    groups: dict[str, Any] = {}
    for name, host in fleet.hosts.items():
        data = {k: v for k, v in entries[name].items() if k != "groups"}
        for group in host.groups:
            groups.setdefault(group, []).append((f"{CONNECTOR}{name}", data))
    groups["all"] = ([f"{CONNECTOR}{name}" for name in fleet.hosts], copy.deepcopy(registry.defaults()))
    return groups


def _cli_params() -> dict | None:
    """What click parsed from the pyinfra command line loading this inventory (or running
    config.py); None when they are loaded some other way (the API, tests)."""
    import click

    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.params


def cli_patterns() -> dict[str, tuple[str, ...]]:
    """The --limit and --exclude patterns of the pyinfra command line loading this inventory,
    as click parsed them; none when the inventory is loaded some other way (the API, tests)."""
    params = _cli_params()
    if params is None:
        return {}
    return {option: tuple(params.get(option) or ()) for option in ("limit", "exclude")}


# pyinfra's options that it puts over every host's data, as `--data KEY=VALUE` does
SSH_OPTIONS = ("ssh_user", "ssh_key", "ssh_key_password", "ssh_port", "ssh_password")


def cli_data() -> dict:
    """What the pyinfra command line loading this inventory puts over every host's data
    (`--data KEY=VALUE`, parsed as pyinfra parses it: true/false, an integer, JSON, else text;
    `--user`, `--port`, ...), so that it is validated with the rest: `--data
    base_apt_lock_timeout=abc` or `--data fleet_services=1` ended in a traceback.
    Empty when the inventory is loaded some other way (the API, tests)."""
    params = _cli_params()
    if params is None:
        return {}
    from pyinfra_cli.util import parse_cli_arg

    given = {}
    for arg in params.get("data") or ():
        key, _, value = arg.partition("=")
        given[key] = parse_cli_arg(value)
    given.update({key: params[key] for key in SSH_OPTIONS if params.get(key)})
    return given


def check_cli_data() -> None:
    """Each --data is KEY=VALUE. pyinfra splits it before loading the inventory and ends in a
    traceback on one without "=" (`--data llm_engine`); config.py, which it runs first, calls this."""
    for arg in (_cli_params() or {}).get("data") or ():
        key, sep, _ = arg.partition("=")
        if not sep or not key.strip():
            raise FleetConfigError(f"--data {arg!r} is not KEY=VALUE. Fix: write it like --data llm_engine=vllm "
                                   "(a JSON value for a list or a dict).")


def override(fleet, entries: dict, given: dict) -> None:
    """Put `given` (cli_data) over every host's data in the model, as pyinfra puts it over its
    hosts' data, so validation and the deploys' model see what the run will use."""
    if not given:
        return
    fleet.all_data.update(given)
    for host in fleet.hosts.values():
        host.data.update(given)
    for entry in entries.values():
        entry.update({key: value for key, value in given.items() if key in SSH_OPTIONS})


def once_for_cli(problems: list, given: dict) -> list:
    """A problem with a value given on the command line is the same on every host it is put
    over: reported once, where it was given (`--data`), not once per host."""
    found = []
    for problem in problems:
        if re.split(r"[\[.]", problem.key, maxsplit=1)[0] in given:
            problem = validation.Problem("--data", problem.key, problem.message, problem.fix)
            if problem in found:
                continue
        found.append(problem)
    return found


def check_patterns(patterns: dict[str, tuple[str, ...]], hosts: list[str], groups: list[str]) -> None:
    """Each --limit and --exclude pattern names a group or matches a host name, as pyinfra
    matches them (a group name, else a shell pattern over host names). pyinfra only warns
    about one that matches nothing and goes on: a mistyped --limit then runs on no host and
    exits 0, and a mistyped --exclude runs on the very host it was meant to leave out."""
    from fnmatch import fnmatch

    for option, given in patterns.items():
        for pattern in given:
            if pattern not in groups and not any(fnmatch(name, pattern) for name in hosts):
                several = (f" pyinfra takes one name per --{option}: " + " ".join(
                    f"--{option} {part.strip()}" for part in pattern.split(",") if part.strip()) + ".") \
                    if "," in pattern else ""
                raise FleetConfigError(
                    f"--{option} {pattern!r} matches no host and no group; nothing was run. Fix: use names "
                    f"from inventory.py ({', '.join(hosts)}) or groups ({', '.join(groups)}); a shell "
                    f"pattern such as 'pi5-*' matches host names.{several}")


def hosts_named(fleet, raw: str | None, option: str = "--limit") -> list[str]:
    """The host names, in inventory order, of a comma-separated list of host and group names
    (`make phaseN|verify LIMIT=...`, `phase --limit`, FLEET_SPEC_HOSTS); every host when `raw`
    is empty. A name that is neither is one line naming it and the names there are."""
    if not raw:
        return list(fleet.hosts)
    chosen, unknown = set(), []
    for name in (n.strip() for n in raw.split(",") if n.strip()):
        if name in fleet.hosts:
            chosen.add(name)
        elif name == "all":
            chosen.update(fleet.hosts)
        elif name in fleet.known_groups:
            chosen.update(h.name for h in fleet.hosts.values() if name in h.groups)
        else:
            unknown.append(name)
    if unknown:
        raise FleetConfigError(f"{option} names {', '.join(map(repr, unknown))}, neither a host nor a group. "
                               f"Fix: use names from inventory.py ({', '.join(fleet.hosts)}) or groups "
                               f"({', '.join(fleet.known_groups)}).")
    return [h for h in fleet.hosts if h in chosen]


def main(argv: list[str]) -> int:
    """`python -m fleet check`: validate the inventory for FLEET_TARGET."""
    if argv:
        print(f"check: unknown arguments {' '.join(argv)!r}. Fix: `python -m fleet check` takes none; "
              "FLEET_TARGET selects the inventory.", file=sys.stderr)
        return 2
    inventory_file = Path(__file__).resolve().parents[2] / "inventory.py"
    try:
        hosts, test_fleet = read_inventory_data(inventory_file)
        _, fleet = prepare(hosts, test_fleet, str(inventory_file))
    except FleetConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    target = target_from_env()
    print(f"inventory OK ({target}): {len(fleet.hosts)} hosts, {len(fleet.known_groups)} groups")
    for host in fleet.hosts.values():
        print(f"  {host.name:<18} {host.tailnet_address:<15} {host.lan_address:<15} {','.join(host.groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
