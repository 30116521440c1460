"""The test hosts' Docker engine and base image. Standard library only: `make demo` builds
the image with the system's python3 while `make setup` creates the virtualenv beside it.

    ensure_tools()        docker.io and mmdebstrap, where missing, in one apt transaction
    ensure_engine()       a Docker engine that answers (docker.io installed, with mmdebstrap
                          where that is missing too, and dockerd started when none does)
    ensure_image(arch)    the Debian bookworm base image, built with mmdebstrap and cached
                          under a hash of its recipe (IMAGE_RECIPE)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fleet.converge.paths import state_dir

REPO = Path(__file__).resolve().parents[2]
STATE = state_dir(REPO)

# Everything that determines the base image; its hash is the image tag.
IMAGE_RECIPE = {
    # Debian's mmdebstrap: the same minbase as debootstrap's, in half the time (it resolves
    # and downloads with apt); the merged-usr hook gives /usr-merged bookworm, as debootstrap
    # does, with usr-is-merged rather than the usrmerge converter and its Perl. Its package set
    # equals debootstrap's but for lsb-base, an empty transitional package nothing here needs.
    "tool": "mmdebstrap",
    "suite": "bookworm",
    "variant": "minbase",
    "hooks": ["merged-usr"],
    "mirror": "http://deb.debian.org/debian",
    # What a freshly flashed Raspberry Pi OS Lite / cloud image already has.
    "include": [
        "systemd", "systemd-sysv", "dbus", "python3", "ca-certificates", "curl", "gnupg",
        "iproute2", "procps", "openssh-server", "sudo",
    ],
    # Host keys are made per container at "flash" time, not shared through the image.
    # Debian's kernel-wide sysctl defaults (pid_max, protected links) are dropped: in a
    # container they would be written to the CI machine's kernel. Network sysctls are per
    # network namespace and stay real.
    "post": [
        "rm -f etc/ssh/ssh_host_*",
        "rm -f usr/lib/sysctl.d/50-pid-max.conf usr/lib/sysctl.d/99-protect-links.conf",
        "rm -f etc/machine-id var/lib/dbus/machine-id && touch etc/machine-id",
    ],
}

# What log() counts from. time.monotonic() is CLOCK_MONOTONIC, one clock for the machine:
# make demo sets T0_ENV so that the lines of its later processes count from its own start.
T0_ENV = "FLEET_HARNESS_T0"
T0 = float(os.environ.get(T0_ENV, time.monotonic()))


def log(msg: str) -> None:
    print(f"[testfleet {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def docker(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return run(["docker", *args], check=check, **kw)


# --- engine -------------------------------------------------------------------------------

def apt_install(*packages: str, updated=None) -> None:
    """Debian's `packages`, in one apt transaction after one `apt-get update`; `updated` is
    called between the two (make demo starts `make setup` there: its `apt-get download`
    needs the package lists, not the dpkg lock the install holds)."""
    log(f"installing {' '.join(packages)} from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def apt_get(*args: str) -> None:
        done = run(["apt-get", *args], check=False, env=env)  # apt's and its hooks' chatter only if it fails
        if done.returncode:
            raise SystemExit(f"apt-get {' '.join(args)} failed (exit {done.returncode}):\n"
                             f"{done.stdout[-2000:]}{done.stderr[-2000:]}")

    apt_get("update", "-qq")
    if updated is not None:
        updated()
    apt_get("install", "-y", "-qq", *packages)


def engine_answers() -> bool:
    return shutil.which("docker") is not None and docker("info", check=False).returncode == 0


def ensure_tools(updated=None) -> None:
    """docker.io and the base image's build tools (ensure_build_tools), those of them that are
    missing, in one apt transaction: a fresh machine lacks both, and gets one `apt-get update`
    and one dpkg run instead of two (docs/performance.md, twenty-fourth round). `updated`: as
    in apt_install; called in any case."""
    missing = (["docker.io"] if not shutil.which("dockerd") else []) + missing_build_tools()
    if missing:
        apt_install(*missing, updated=updated)
    elif updated is not None:
        updated()


def ensure_engine(timeout: float = 90) -> None:
    if engine_answers():
        return
    if not shutil.which("dockerd"):
        ensure_tools()
    STATE.mkdir(parents=True, exist_ok=True)
    if Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "start", "docker"], check=False)
    else:
        log(f"starting dockerd (log: {STATE / 'dockerd.log'})")
        with open(STATE / "dockerd.log", "ab") as out:
            subprocess.Popen(["dockerd"], stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(1)
    raise SystemExit(f"the Docker engine did not answer within {timeout:.0f}s; see {STATE / 'dockerd.log'}")


# --- base image ---------------------------------------------------------------------------

NATIVE_ARCH = "amd64"
# Hosts started as arm64 (the Pis' real architecture) under qemu-user emulation, e.g.
# FLEET_TEST_ARM64=pi5-gamma (make test-arm64). The inventory reads the same variable to give
# those hosts TEST_FLEET["arm64_data"]: what an emulated host cannot do (docs/test-fleet.md).
QEMU = "/usr/bin/qemu-aarch64-static"


def image_tag(arch: str = NATIVE_ARCH) -> str:
    recipe = IMAGE_RECIPE if arch == NATIVE_ARCH else dict(IMAGE_RECIPE, arch=arch, qemu=QEMU)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"fleet-testhost:{digest}" if arch == NATIVE_ARCH else f"fleet-testhost-{arch}:{digest}"


def ensure_binfmt() -> None:
    """Register qemu-user for arm64 binaries on this machine (TESTING.md's path): Debian's
    qemu-user-static and binfmt-support, binfmt_misc mounted, the qemu-aarch64 entry enabled
    and allowed to run setuid programs (below). The interpreter is also copied into each arm64
    rootfs, for registrations without the F flag (TESTING.md saw one)."""
    if not Path(QEMU).exists() or not shutil.which("update-binfmts"):
        apt_install("qemu-user-static", "binfmt-support")
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], check=True)
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True)
    entry = misc / "qemu-aarch64"
    flags = next((line.split(":", 1)[1].strip() for line in entry.read_text().splitlines()
                  if line.startswith("flags:")), "") if entry.exists() else ""
    if entry.exists() and "C" not in flags:
        # Debian registers it without credentials ("C"): the kernel then runs a setuid program
        # with the caller's credentials, and `sudo` in an arm64 host says "effective uid is
        # not 0". Re-register the same entry (same magic, mask, interpreter) with O+C.
        fields = dict(line.split(" ", 1) for line in entry.read_text().splitlines() if " " in line)
        escape = lambda hexes: "".join(f"\\x{hexes[i:i + 2]}" for i in range(0, len(hexes), 2))
        entry.write_text("-1")
        (misc / "register").write_text(f":qemu-aarch64:M:{fields['offset']}:{escape(fields['magic'])}:"
                                       f"{escape(fields['mask'])}:{fields['interpreter']}:{flags}OC")
    if not entry.exists() or "enabled" not in entry.read_text():
        raise SystemExit("qemu-aarch64 is not registered in binfmt_misc: arm64 test hosts cannot run here. "
                         "Fix: apt-get install qemu-user-static binfmt-support, then update-binfmts --enable qemu-aarch64")


def ensure_build_tools(arch: str = NATIVE_ARCH) -> None:
    """mmdebstrap, and for another architecture arch-test, which mmdebstrap uses to check that
    this machine runs it (each package's command has the package's name)."""
    missing = missing_build_tools(arch)
    if missing:
        apt_install(*missing)


def missing_build_tools(arch: str = NATIVE_ARCH) -> list[str]:
    needed = [IMAGE_RECIPE["tool"]] + (["arch-test"] if arch != NATIVE_ARCH else [])
    return [pkg for pkg in needed if not shutil.which(pkg)]


def ensure_image(arch: str = NATIVE_ARCH) -> str:
    tag = image_tag(arch)
    if arch != NATIVE_ARCH:
        ensure_binfmt()
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    r = IMAGE_RECIPE
    ensure_build_tools(arch)
    log(f"building {tag} with {r['tool']} ({'about half a minute' if arch == NATIVE_ARCH else f'{arch} under qemu-user: a few minutes'})")
    with tempfile.TemporaryDirectory(prefix="fleet-rootfs-") as rootfs:
        stream_info([r["tool"], "--verbose", "--mode=root", f"--arch={arch}", f"--variant={r['variant']}",
                     *(f"--hook-dir=/usr/share/mmdebstrap/hooks/{hook}" for hook in r["hooks"]),
                     f"--include={','.join(r['include'])}", r["suite"], rootfs, r["mirror"]], r["tool"])
        for step in r["post"]:
            subprocess.run(["sh", "-c", step], cwd=rootfs, check=True)
        if arch != NATIVE_ARCH:
            # without the F flag, binfmt_misc looks the interpreter up inside the container
            link = Path(rootfs, "usr/libexec/qemu-binfmt/aarch64-binfmt-P")
            link.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(QEMU, Path(rootfs) / QEMU.lstrip("/"))
            link.unlink(missing_ok=True)
            link.symlink_to(QEMU)
        log(f"importing the rootfs as {tag}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]', "-", tag],
                       stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit(f"tar of the {r['tool']} rootfs failed")
    return tag


DPKG_STEP = re.compile(r"^(Unpacking|Setting up) ([^ :]+)")
APT_TOTAL = re.compile(r"\b(\d+) newly installed\b")


def stream_info(cmd: list[str], what: str, every: float = 5.0) -> None:
    """Run cmd, showing its progress as it goes: each of its "I: " lines (mmdebstrap prints
    one per step: apt update, download, extract, install, ...) with the elapsed time, and
    within a step, every `every` seconds, how many packages dpkg has unpacked and set up so
    far (its --verbose lines; "of N" once apt has said how many), so that the install steps
    (20 s here, minutes under qemu) are not silent; fail with its last lines if it fails."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    done = {"Unpacking": 0, "Setting up": 0}
    total = ""
    shown = time.monotonic()
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if line.startswith("I: "):
            log(f"{what}: {line[3:].strip()}")
            done = dict.fromkeys(done, 0)
            total = ""
            shown = time.monotonic()
        elif count := APT_TOTAL.search(line):
            total = f" of {count[1]}"
        elif step := DPKG_STEP.match(line):
            done[step[1]] += 1
            if time.monotonic() - shown >= every:
                log(f"{what}:   {done['Unpacking']}{total} packages unpacked, {done['Setting up']} set up (now {step[2]})")
                shown = time.monotonic()
    if proc.wait() != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))
