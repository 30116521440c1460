"""The Docker test fleet: one systemd container per inventory host, like freshly flashed hosts.

    python tests/harness/testfleet.py up | down | status | converge [pyinfra args...]

`up` makes sure a Docker engine answers (installing docker.io and starting dockerd when
none does), builds the Debian bookworm base image with mmdebstrap (harness/image.py, cached
by a hash of its recipe), creates the two test networks (tailnet 100.100.0.0/16, LAN
100.101.0.0/16, both inside 100.64.0.0/10, never RFC 1918), builds and serves the vendor
mirror, starts one container per host with its hostname and both addresses, and
"flashes" it the way Raspberry Pi Imager's first boot does: fresh SSH host keys, the
inventory's ssh_user with the test public key and passwordless sudo. Everything after that
goes over SSH, like on real hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `harness` importable

from fleet.preflight.inventory import (  # noqa: E402
    FleetConfigError, extra_test_hosts, read_inventory_data, test_ssh_key)
from harness.image import (  # noqa: E402, F401 (the engine and image helpers, used here and through this module)
    NATIVE_ARCH, REPO, STATE, docker, engine_answers, ensure_binfmt, ensure_engine, ensure_image, image_tag, log,
    run,
)
from harness.killpoint import KILLED  # noqa: E402

LABEL = "fleet.testhost=1"
# Which operator key a host was flashed with (key_label below): a host flashed by another
# checkout, or before this checkout's key was made again, does not let this one log in.
KEY_LABEL = "fleet.testhost.key"
NETWORK_PREFIX = "fleet-"

# --privileged fails on our CI machines (one capability is withheld); these flags boot
# systemd. systempaths=unconfined makes /proc/sys writable so the base deploy's sysctls are
# applied for real.
RUN_FLAGS = [
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns=host",
]


# --- the inventory, as the test target sees it ---------------------------------------------

def load_inventory():
    """HOSTS and TEST_FLEET from inventory.py, with the extra hosts FLEET_TEST_EXTRA_HOSTS
    asks for (the benchmark's; fleet.preflight.inventory.extra_test_hosts)."""
    return extra_test_hosts(*read_inventory_data(REPO / "inventory.py"), "test")


def networks(test_fleet: dict) -> dict[str, str]:
    return {
        f"{NETWORK_PREFIX}tailnet": test_fleet["tailnet_network"],
        f"{NETWORK_PREFIX}lan": test_fleet["lan_network"],
    }


def host_arch(name: str) -> str:
    from fleet.preflight.inventory import emulated_hosts

    return "arm64" if name in emulated_hosts(load_inventory()[0]) else NATIVE_ARCH


# --- hosts --------------------------------------------------------------------------------

def ensure_key() -> Path:
    key = test_ssh_key(REPO)
    if not key.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-testfleet", "-f", str(key)])
    return key


# --- what an earlier engine left ----------------------------------------------------------
# A Docker engine that was killed (or whose data directory was removed) leaves its containers
# running and its bridges in place: the kernel still routes the test subnets to the old
# bridge, so a new fleet's addresses reach the old hosts, which know neither this clone's SSH
# key nor its first-boot host keys (the first converge then fails: "Authentication failed",
# "Connection reset by peer"), and the old hosts keep using the shared cores. Before the
# networks are made, such leftovers are found from the kernel's own state and removed: a route
# to a test subnet on a bridge that is not the running engine's network for it, and the
# containers (by their cgroup's container id) that the running engine does not know and whose
# network namespace holds an address in a test subnet, and the iptables rules that name a Docker
# bridge the kernel no longer has. Nothing else is touched.
_CONTAINER_ID = re.compile(r"docker[-/]([0-9a-f]{64})")


def container_of(cgroup_text: str) -> str | None:
    """The Docker container id in a /proc/<pid>/cgroup text (cgroup v1 or v2, either
    driver), or None for a process outside containers."""
    found = _CONTAINER_ID.search(cgroup_text)
    return found.group(1) if found else None


def local_addresses(fib_trie_text: str) -> set[str]:
    """The IPv4 addresses a network namespace holds, from its /proc/<pid>/net/fib_trie."""
    found, last = set(), None
    for line in fib_trie_text.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif last and text == "/32 host LOCAL":
            found.add(last)
    return found


def route_devices(subnet: str) -> list[str]:
    """The devices the kernel has a route to exactly `subnet` on."""
    out = subprocess.run(["ip", "-o", "route", "show", "exact", subnet], capture_output=True, text=True).stdout
    return [line.split(" dev ", 1)[1].split()[0] for line in out.splitlines() if " dev " in line]


def orphaned_hosts(known: set[str], subnets: list[str], proc: Path = Path("/proc")) -> dict[str, list[int]]:
    """{container id: its pids} for containers the running engine does not know whose network
    namespace holds an address in one of `subnets` (`proc`: where /proc is)."""
    nets = [ipaddress.ip_network(s) for s in subnets]
    # never this process's own container or network namespace (an operator that itself runs
    # in a container holds the bridges' gateway addresses)
    own_id = container_of((proc / "self" / "cgroup").read_text())
    own_net = os.stat(proc / "self" / "ns" / "net").st_ino
    by_id: dict[str, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cid = container_of((entry / "cgroup").read_text())
        except OSError:
            continue
        if cid and cid not in known and cid != own_id:
            by_id.setdefault(cid, []).append(int(entry.name))
    orphans = {}
    for cid, pids in by_id.items():
        first = proc / str(min(pids))
        try:
            if os.stat(first / "ns" / "net").st_ino == own_net:
                continue
            held = local_addresses((first / "net" / "fib_trie").read_text())
        except OSError:
            continue
        if any(ipaddress.ip_address(a) in net for a in held for net in nets):
            orphans[cid] = sorted(pids)
    return orphans


def _shim_of(proc: Path) -> str | None:
    """The container id a containerd shim process runs (its `-id` argument), else None."""
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not args or not args[0].endswith(b"containerd-shim-runc-v2") or b"-id" not in args:
        return None
    at = args.index(b"-id") + 1
    return args[at].decode() if at < len(args) else None


_DOCKER_BRIDGE = re.compile(r"\bbr-[0-9a-f]{12}\b")


def _interface_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def dead_bridge_rules(saved: str, exists=_interface_exists) -> list[str]:
    """The rules (`-A ...` lines of iptables-save) that name a Docker bridge the kernel no
    longer has. Docker's rule for a network's bridge `-s <subnet> ! -o <bridge> -j MASQUERADE`
    outlives a killed engine, and once that bridge is gone it matches all the subnet's traffic,
    the new bridge's included: the test hosts then see each other's connections coming from
    the gateway (so a firewall spec finds undeclared flows open, and PostgreSQL refuses a
    client by its address)."""
    return [line for line in saved.splitlines() if line.startswith("-A ")
            and any(not exists(name) for name in _DOCKER_BRIDGE.findall(line))]


def clear_dead_bridge_rules() -> None:
    if not shutil.which("iptables-save"):
        return
    for table in ("nat", "filter"):
        saved = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True)
        dead = dead_bridge_rules(saved.stdout) if saved.returncode == 0 else []
        if dead:
            log(f"removing {len(dead)} {table} rule(s) of Docker bridges that no longer exist")
        for rule in dead:
            subprocess.run(["iptables", "-t", table, "-D", *shlex.split(rule[3:])], check=True)


def clear_leftovers(test_fleet: dict) -> None:
    """Remove an earlier engine's test hosts and bridges that still hold the test subnets, and
    the rules of bridges that are gone."""
    nets = networks(test_fleet)
    ours = set()
    for name in nets:
        got = docker("network", "inspect", "-f", "{{.Id}}", name, check=False)
        if got.returncode == 0:
            ours.add("br-" + got.stdout.strip()[:12])  # Docker's name for a user network's bridge

    def routed_elsewhere() -> list[str]:
        return sorted({dev for subnet in nets.values() for dev in route_devices(subnet)} - ours)

    stale = routed_elsewhere()
    if not stale:
        clear_dead_bridge_rules()
        return
    known = set(docker("ps", "-aq", "--no-trunc").stdout.split())
    orphans = orphaned_hosts(known, list(nets.values()))
    found = (f"an earlier Docker engine's test fleet still holds {', '.join(nets.values())} (bridges {', '.join(stale)}, "
             f"{len(orphans)} container(s) this engine does not know)")
    if os.geteuid() != 0:  # stopping other users' processes and deleting links: root's, as starting dockerd is
        raise SystemExit(f"testfleet: {found}; removing them needs root: run this fleet-up once as root, "
                         "or stop those containers and run `ip link delete <bridge>` for each")
    log(f"{found}: stopping them and removing the bridges")
    # each container's processes, then the containerd shim that ran it (named by its id)
    shims = [int(proc.name) for proc in Path("/proc").iterdir() if proc.name.isdigit()
             and _shim_of(proc) in orphans]
    for pid in [p for pids in orphans.values() for p in pids] + shims:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for dev in stale:  # only a bridge named as Docker names a network's bridge
        if _DOCKER_BRIDGE.fullmatch(dev) and Path(f"/sys/class/net/{dev}/bridge").exists():
            subprocess.run(["ip", "link", "delete", dev], check=True)
    clear_dead_bridge_rules()
    left = routed_elsewhere()
    if left:
        raise SystemExit(f"testfleet: {', '.join(left)} still route a test subnet ({', '.join(nets.values())}); "
                         "remove them (ip link delete <device>) and run fleet-up again")


def ensure_networks(test_fleet: dict) -> None:
    for name, subnet in networks(test_fleet).items():
        if docker("network", "inspect", name, check=False).returncode == 0:
            continue
        gateway = subnet.replace(".0.0/16", ".255.254")
        docker("network", "create", "--label", LABEL, "--subnet", subnet, "--gateway", gateway, name)


def addr(value: str) -> str:
    return value.split("/")[0]


def wait_for(check, what: str, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


FLASH_SCRIPT = r"""
set -eu
ssh-keygen -A -q
id -u "$FLEET_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$FLEET_USER"
install -d -m 700 -o "$FLEET_USER" -g "$FLEET_USER" "/home/$FLEET_USER/.ssh"
printf '%s\n' "$FLEET_PUBKEY" > "/home/$FLEET_USER/.ssh/authorized_keys"
chown "$FLEET_USER:$FLEET_USER" "/home/$FLEET_USER/.ssh/authorized_keys"
chmod 600 "/home/$FLEET_USER/.ssh/authorized_keys"
printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$FLEET_USER" > "/etc/sudoers.d/010_$FLEET_USER-nopasswd"
chmod 440 "/etc/sudoers.d/010_$FLEET_USER-nopasswd"
systemctl reset-failed ssh.service || true
systemctl restart ssh.service
"""


def key_label(pubkey: str) -> str:
    """The KEY_LABEL value of a host flashed with `pubkey`: a digest of its key blob (not the
    comment, which says nothing about the key)."""
    blob = pubkey.split()[1] if len(pubkey.split()) > 1 else pubkey
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def start_over(name: str, inspected: str, want_image: str, want_key: str) -> str | None:
    """Why an existing host must be started afresh rather than reused, or None. `inspected`
    is `docker inspect` of its image and KEY_LABEL, one space between them."""
    image, _, key = inspected.strip().partition(" ")
    if image.split(":")[0] != want_image:
        return f"{name} runs another architecture's image than {want_image}"
    if key != want_key:
        return (f"{name} was flashed with another operator key than this checkout's "
                f"({test_ssh_key(REPO).relative_to(REPO)}), so it would refuse the converge's login")
    return None


def start_host(name: str, entry: dict, test_fleet: dict, image: str, pubkey: str) -> None:
    tailnet, lan = entry["tailnet_address"], addr(test_fleet["lan_addresses"][name])
    nets = list(networks(test_fleet))
    docker("run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
           "--label", f"{KEY_LABEL}={key_label(pubkey)}", *RUN_FLAGS,
           "--network", nets[0], "--ip", tailnet, image, "/lib/systemd/systemd")
    docker("network", "connect", "--ip", lan, nets[1], name)


def flash_host(name: str, entry: dict, pubkey: str, l4t_release: str | None = None) -> str:
    """First boot of a freshly flashed host; returns its SSH host key line. `l4t_release`:
    the /etc/nv_tegra_release line a JetPack image has (Jetson hosts only)."""
    # an emulated (arm64) host boots 5-10 times slower
    wait_for(lambda: docker("exec", name, "systemctl", "is-system-running", check=False)
             .stdout.strip() in ("running", "degraded"), f"systemd in {name}",
             timeout=90 if host_arch(name) == NATIVE_ARCH else 600, interval=2)
    docker("exec", "-e", f"FLEET_USER={entry['ssh_user']}", "-e", f"FLEET_PUBKEY={pubkey}",
           name, "sh", "-c", FLASH_SCRIPT)
    if l4t_release:
        docker("exec", "-e", f"L4T={l4t_release}", name, "sh", "-c",
               'printf "%s\n" "$L4T" > /etc/nv_tegra_release')
    return docker("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]


MIRROR = "fleet-mirror"


def ensure_mirror(test_fleet: dict, image: str) -> None:
    """Build the offline vendor mirror (tests/mirror) and serve it on the test tailnet from
    a container bound to its own address (port 80, nothing on a wildcard)."""
    out = STATE / "mirror"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(REPO / "tests" / "mirror" / "build.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    # Ollama release files and the vLLM image archive; their checksums become test data.
    subprocess.run([sys.executable, str(REPO / "tests" / "mirror" / "llm_release.py"), str(out),
                    "--base-image", image, "--data", str(REPO / test_fleet["built_data"])],
                   check=True, stdout=subprocess.DEVNULL)
    # The stand-in app images (web, api, lucidia, agents); their releases become test data too.
    subprocess.run([sys.executable, str(REPO / "tests" / "mirror" / "app_release.py"), str(out),
                    "--base-image", image, "--data", str(REPO / test_fleet["built_data"]),
                    "--mirror-url", f"http://{test_fleet['mirror_address']}"],
                   check=True, stdout=subprocess.DEVNULL)
    address = test_fleet["mirror_address"]
    if docker("inspect", "-f", "{{.State.Running}}", MIRROR, check=False).stdout.strip() != "true":
        docker("rm", "-f", MIRROR, check=False)
        docker("run", "-d", "--name", MIRROR, "--hostname", MIRROR, "--label", LABEL,
               "--network", list(networks(test_fleet))[0], "--ip", address,
               "-v", f"{out}:/srv/mirror:ro", image,
               "python3", "-m", "http.server", "80", "--bind", address, "--directory", "/srv/mirror")
    wait_for(lambda: tcp_open(address, 80), "the vendor mirror", timeout=30)
    log(f"vendor mirror serving on http://{address}")


def strays(existing: set[str], hosts) -> list[str]:
    """The labelled containers up() must remove: test hosts of an earlier inventory (not the
    mirror, which up() keeps or replaces itself)."""
    return sorted(existing - set(hosts) - {MIRROR})


def up() -> None:
    t0 = time.monotonic()
    ensure_engine()
    image = ensure_image()
    hosts, test_fleet = load_inventory()
    key = ensure_key()
    pubkey = key.with_suffix(".pub").read_text().strip()
    clear_leftovers(test_fleet)
    ensure_networks(test_fleet)
    # The mirror is built (~7 s, mostly waiting on Docker for the stand-in images) while the
    # hosts start and boot (mostly waiting on systemd); nothing on a host asks for it before
    # the converge, and up() returns only once it serves.
    log("building the vendor mirror beside the host starts")
    builder = ThreadPoolExecutor(max_workers=1)
    mirror = builder.submit(ensure_mirror, test_fleet, image)
    existing = set(docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
                   .stdout.split())
    gone = strays(existing, hosts)
    if gone:
        # e.g. a stopped benchmark's added hosts: still on the test networks, their probers
        # would probe this fleet and their addresses be taken
        log(f"removing test host(s) that are not in this inventory: {', '.join(gone)}")
        docker("rm", "-f", "-v", *gone)
        existing -= set(gone)
    for name in sorted(existing & set(hosts)):
        # a host asked for on another architecture than it runs (FLEET_TEST_ARM64), or one
        # this checkout's key cannot log in to (another clone's fleet), starts afresh
        inspected = docker("inspect", "-f", f'{{{{.Config.Image}}}} {{{{index .Config.Labels "{KEY_LABEL}"}}}}',
                           name).stdout
        why = start_over(name, inspected, image_tag(host_arch(name)).split(":")[0], key_label(pubkey))
        if why:
            log(f"{why}: starting it afresh")
            docker("rm", "-f", "-v", name)
            existing.discard(name)
    fresh = [n for n in hosts if n not in existing]
    for name in fresh:
        arch = host_arch(name)
        log(f"starting {name}" + ("" if arch == NATIVE_ARCH else f" ({arch}, emulated)"))
        start_host(name, hosts[name], test_fleet, ensure_image(arch), pubkey)
    for name in hosts:
        if docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true":
            docker("start", name)
    known = {}
    for name in hosts:
        if name in fresh:
            known[name] = flash_host(name, hosts[name], pubkey,
                                     test_fleet.get("l4t_release_files", {}).get(name))
        else:
            known[name] = docker("exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    lines = []
    for name, (kind, blob) in known.items():
        names = ",".join([hosts[name]["tailnet_address"], addr(test_fleet["lan_addresses"][name])])
        lines.append(f"{names} {kind} {blob}\n")
    # First contact trusts exactly these keys (what the operator reads off the console of a
    # freshly flashed host); after the base deploy the host presents its vault key.
    (STATE / "bootstrap_known_hosts").write_text("".join(lines))
    for name, entry in hosts.items():
        wait_for(lambda: tcp_open(entry["tailnet_address"], 22), f"SSH on {name}", timeout=60)
    mirror.result()  # its failure, if it failed
    builder.shutdown()
    (STATE / "fleet-up.json").write_text(json.dumps({"seconds": round(time.monotonic() - t0, 1),
                                                     "image": image, "started": fresh}))
    log(f"{len(hosts)} hosts up ({len(fresh)} started) in {time.monotonic() - t0:.1f}s")


def reflash(name: str) -> None:
    """What a dead SD card and a freshly flashed one do to a host: its container is destroyed
    and a blank one started in its place (same addresses), first-booted like at fleet-up (the
    admin user, the operator's key, a new host key, recorded as its first-boot key)."""
    hosts, test_fleet = load_inventory()
    arch = host_arch(name)
    image = ensure_image(arch)
    pubkey = ensure_key().with_suffix(".pub").read_text().strip()
    docker("rm", "-f", name)
    log(f"flashing a blank {name} ({arch})")
    start_host(name, hosts[name], test_fleet, image, pubkey)
    kind, blob = flash_host(name, hosts[name], pubkey, test_fleet.get("l4t_release_files", {}).get(name))
    names = ",".join([hosts[name]["tailnet_address"], addr(test_fleet["lan_addresses"][name])])
    path = STATE / "bootstrap_known_hosts"
    kept = [line for line in path.read_text().splitlines(keepends=True) if line.split(" ", 1)[0] != names]
    path.write_text("".join(kept) + f"{names} {kind} {blob}\n")
    wait_for(lambda: tcp_open(hosts[name]["tailnet_address"], 22), f"SSH on {name}", timeout=60)


def down() -> None:
    if not engine_answers():
        log("no Docker engine answers: nothing to remove")
        return
    names = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout.split()
    if names:
        docker("rm", "-f", "-v", *names)
    nets = docker("network", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}").stdout.split()
    kept = []
    for net in nets:
        # Docker 20.10 may hold a removed container's endpoint for a moment, and sometimes
        # for good ("has active endpoints" with none attached, until dockerd restarts). Such
        # a network is harmless: its addresses are free and fleet-up reuses it.
        for _ in range(10):
            removed = docker("network", "rm", net, check=False)
            if removed.returncode == 0:
                break
            time.sleep(0.5)
        else:
            kept.append(net)
            log(f"kept network {net}: {removed.stderr.strip()} (a stale Docker endpoint; "
                "fleet-up reuses the network)")
    for stale in ("known_hosts", "bootstrap_known_hosts", "fleet-up.json"):
        (STATE / stale).unlink(missing_ok=True)
    log(f"removed {len(names)} hosts and {len(nets) - len(kept)} networks")


def status() -> int:
    hosts, _ = load_inventory()
    out = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}} {{.Status}}",
                 check=False).stdout
    print(out.strip() or "no test hosts")
    running = {line.split()[0] for line in out.splitlines() if " Up " in f" {line} "}
    return 0 if set(hosts) <= running else 1


# --- converge -----------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")
HOST_RESULT = re.compile(r"^\s*\[(?P<host>[^\]]+)\]\s+(?P<result>Success|No changes|Error)")


def count_changes(output: str) -> dict[str, dict[str, int]]:
    """Per host: operations that changed something, did nothing, or failed."""
    counts: dict[str, dict[str, int]] = {}
    for line in ANSI.sub("", output).splitlines():
        m = HOST_RESULT.match(line)
        if m:
            c = counts.setdefault(m["host"], {"changed": 0, "unchanged": 0, "error": 0})
            key = {"Success": "changed", "No changes": "unchanged", "Error": "error"}[m["result"]]
            c[key] += 1
    return counts


def presented_keys(addresses: list[str], attempts: int = 3) -> dict[str, str]:
    """address -> the ed25519 host key it presents over SSH ('type base64'); one ssh-keyscan
    for all of them (it scans in parallel), unreachable addresses left out. An address that
    gave no key is scanned again (up to `attempts` scans, 2 s apart): a host whose sshd is
    slow to answer right after fleet-up would otherwise be taken for one already on its
    vault key, and its first contact refused."""
    found: dict[str, str] = {}
    missing = list(addresses)
    for attempt in range(attempts):
        if attempt:
            time.sleep(2)
        scan = run(["ssh-keyscan", "-T", "5", "-t", "ed25519", *missing], check=False)
        for line in scan.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and not line.startswith("#") and parts[0] in missing:
                found[parts[0]] = " ".join(parts[1:3])
        missing = [a for a in missing if a not in found]
        if not missing:
            break
    return found


def known_keys(path: Path) -> dict[str, str]:
    """address -> 'type base64' from a known_hosts file."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                for address in parts[0].split(","):
                    out[address] = " ".join(parts[1:3])
    return out


def hosts_to_bootstrap(env: dict) -> list[str]:
    """Hosts that do not present their vault key yet. A host presenting neither its vault
    key nor the key recorded at first boot is refused: that is what a MITM looks like."""
    from fleet.preflight.inventory import prepare

    hosts, test_fleet = load_inventory()
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ.pop("FLEET_BOOTSTRAP", None)
    try:
        prepare(hosts, test_fleet, str(REPO / "inventory.py"), "test")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    vault_keys = known_keys(STATE / "known_hosts")
    first_boot = known_keys(STATE / "bootstrap_known_hosts")
    bootstrap = []
    presented = presented_keys([entry["tailnet_address"] for entry in hosts.values()])
    for name, entry in hosts.items():
        address = entry["tailnet_address"]
        key = presented.get(address)
        if key is None or key == vault_keys.get(address):
            continue  # unreachable hosts fail in pyinfra with its own error
        if key == first_boot.get(address):
            bootstrap.append(name)
        else:
            raise SystemExit(f"{name} presents host key {key[:40]}..., neither its vault key "
                             f"nor the key recorded at first boot: refusing to connect")
    return bootstrap


_ENV_LOCK = threading.Lock()


def converge(extra: list[str], log_name: str = "converge", env: dict | None = None,
             kill_at: str | None = None, kill_delay: float = 0.0, kill_before: str | None = None,
             timeout: float = 1800, on_line=None, inventory: str = "inventory.py", window=None) -> dict:
    """Run pyinfra on deploys/site.py against the test fleet; return change counts.

    kill_before: pyinfra SIGKILLs itself as the operation of this name starts, before any of
    it reaches a host (tests/harness/killpoint.py; the fault suite's exact kill points);
    kill_at: SIGKILL pyinfra `kill_delay` seconds after it prints a line containing this text
    (a kill some time into an operation); timeout: SIGKILL it after this many seconds.
    on_line: called with each output line as it arrives. inventory: the inventory file
    (tests/integration/unchecked_inventory.py for the tests that must get past --data checks).
    window: a context manager around pyinfra's run alone, from its start to its exit (the
    benchmark's CPU readings: the host-key check before it, an ssh-keyscan of every host, is
    not the converge's work)."""
    STATE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FLEET_TARGET="test", **(env or {}))
    with _ENV_LOCK:  # hosts_to_bootstrap swaps os.environ while it validates
        bootstrap = hosts_to_bootstrap(env)
    if bootstrap:
        env["FLEET_BOOTSTRAP"] = ",".join(bootstrap)
    cmd = [str(Path(sys.executable).with_name("pyinfra")), "-y", inventory, "deploys/site.py", *extra]
    if kill_before:
        cmd[:1] = [sys.executable, str(Path(__file__).with_name("killpoint.py")), kill_before]
    with window if window is not None else contextlib.nullcontext():
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        killed: list[str] = []

        def kill(why: str) -> None:
            if proc.poll() is None:
                killed.append(why)
                proc.kill()

        watchdog = threading.Timer(timeout, kill, args=(f"timed out after {timeout:.0f}s",))
        watchdog.start()
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if on_line:
                    on_line(line)
                if kill_at and not killed and kill_at in ANSI.sub("", line):
                    threading.Timer(kill_delay, kill, args=(f"killed at {kill_at!r} (+{kill_delay:g}s)",)).start()
                    kill_at = None
            proc.wait()
        finally:
            watchdog.cancel()
        seconds = time.monotonic() - t0
    if kill_before and not killed and proc.returncode == -9 and any(
            line.startswith(KILLED) for line in lines):
        killed.append(f"killed before {kill_before!r}")
    output = "".join(lines)
    (STATE / f"{log_name}.log").write_text(output)
    counts = count_changes(output)
    return {
        "killed": killed[0] if killed else None,
        "returncode": proc.returncode,
        "seconds": round(seconds, 3),
        "hosts": counts,
        "changed": sum(c["changed"] for c in counts.values()),
        "errors": sum(c["error"] for c in counts.values()),
        "log": str(STATE / f"{log_name}.log"),
        "bootstrap": bootstrap,
        "output": output,
    }


def progress_printer(full: bool = False):
    """An on_line for converge(): every line of pyinfra's output as it comes (full), or one
    line per operation as it starts, with the run's elapsed time, and every error line."""
    t0 = time.monotonic()

    def on_line(line: str) -> None:
        plain = ANSI.sub("", line).rstrip()
        if full:
            print(line, end="", flush=True)
        elif plain.startswith("--> Starting operation:"):
            print(f"[{time.monotonic() - t0:6.1f}s] {plain[len('--> Starting operation:'):].strip()}", flush=True)
        elif plain.startswith("--> Connecting") or plain.startswith("--> Beginning"):
            print(f"[{time.monotonic() - t0:6.1f}s] {plain[4:]}", flush=True)
        elif "Error" in plain or plain.startswith("--> pyinfra error") or "Traceback" in plain:
            print(f"{'':10}{plain.strip()}", flush=True)

    return on_line


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "converge"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    if argv[0] == "up":
        up()
    elif argv[0] == "down":
        down()
    elif argv[0] == "status":
        return status()
    else:
        argv = [a for a in argv if a != "--full"]
        result = converge(argv[1:], on_line=progress_printer(full="--full" in argv))
        result.pop("output")
        # a run pyinfra stopped before any host (bad input) counts no operation: its exit says it
        failed = f", pyinfra exited {result['returncode']}" if result["returncode"] else ""
        print(f"converge: {result['changed']} changed operation(s), {result['errors']} error(s){failed}, "
              f"{result['seconds']}s (log {result['log']})")
        if result["bootstrap"]:
            print(f"  first contact (FLEET_BOOTSTRAP): {', '.join(result['bootstrap'])}")
        for name, c in sorted(result["hosts"].items()):
            # (not "changed=N": molecule's idempotence check greps for that pattern)
            print(f"  {name}: {c['changed']} changed, {c['unchanged']} unchanged, {c['error']} failed")
        print(f"FLEET_CHANGED={result['changed']}")
        return result["returncode"]
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except FleetConfigError as exc:  # bad test-fleet settings (FLEET_TEST_ARM64, FLEET_TEST_EXTRA_HOSTS): one line
        print(exc, file=sys.stderr)
        sys.exit(2)
