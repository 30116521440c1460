"""Build the offline, signed apt mirror of STAND-IN vendor packages for the test fleet.

The vendors' apt repositories (Tailscale, Cloudflare's cloudflared, the NVIDIA container
toolkit, Grafana) cannot be reached from the test hosts, so this writes look-alike
repositories, laid out like the vendors' own, holding stand-in packages
(tests/mirror/standins/) at the versions pinned in group_data/all.py (Grafana's: the grafana
component's DEFAULTS, unless all.py sets it), signed with the committed TEST-ONLY key
(tests/mirror/keys/).
Deploys install from it through ordinary signed deb822 sources. Someone else serves OUT over
HTTP.

    python tests/mirror/build.py OUTDIR      # prints what it built, as JSON

Output is byte-for-byte deterministic for the same inputs: every timestamp (Release Date,
signatures, .deb members) is the signing key's creation time, which is fixed, never in the
future and never older than the key. Ed25519 signatures are deterministic too.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA_FILE = REPO / "group_data" / "all.py"
GRAFANA_COMPONENT = REPO / "deploys" / "grafana.py"
KEYS = HERE / "keys"
STANDINS = HERE / "standins"
PRIVATE_KEY = KEYS / "test-mirror-private.asc"
PUBLIC_KEY_BIN = KEYS / "test-mirror.gpg"
PUBLIC_KEY_ASC = KEYS / "test-mirror.asc"

ARCHES = ("amd64", "arm64")
MAINTAINER = "Fleet test mirror (STAND-IN, not the vendor) <test-mirror@fleet.invalid>"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")

# Where each repository lives under OUT, mirroring the vendor's URL layout.
TS_ROOT = Path("tailscale/stable/debian")
TS_SUITE = "bookworm"
NV_ROOT = Path("nvidia/stable/deb")
# https://pkg.cloudflare.com/cloudflared, suite "any"; its key is https://pkg.cloudflare.com/
# cloudflare-main.gpg, one level up from the repository.
CF_ROOT = Path("cloudflared")
CF_SUITE = "any"
CF_KEY = "cloudflare-main.gpg"
# https://apt.grafana.com, suite "stable"; its key (armored) is https://apt.grafana.com/gpg.key.
GF_ROOT = Path("grafana")
GF_SUITE = "stable"
GF_KEY = "gpg.key"
# What build() replaces under OUT: the repository trees and the top-level key file.
TOPS = ("tailscale", "nvidia", "cloudflared", CF_KEY, "grafana")


@dataclass
class Package:
    name: str
    version: str
    depends: str
    section: str
    summary: str
    # (source file under standins/, destination path in the package, mode)
    files: list = field(default_factory=list)
    conffiles: list = field(default_factory=list)
    scripts: dict = field(default_factory=dict)  # maintainer script name -> source file

    @property
    def deb_name(self) -> str:
        # Debian file names drop the epoch.
        return "%s_%s_all.deb" % (self.name, self.version.split(":", 1)[-1])


def read_versions(data_file: Path = DATA_FILE, grafana_component: Path = GRAFANA_COMPONENT) -> dict:
    data = runpy.run_path(str(data_file))
    return {
        "tailscale": data["tailscale_version"],
        "cloudflared": data["cloudflared_version"],
        "nvidia_container_toolkit": data["nvidia_container_toolkit_version"],
        # all.py sits above the component's DEFAULTS, as in the fleet's data
        "grafana": data.get("grafana_version") or component_default(grafana_component, "grafana_version"),
    }


def component_default(path: Path, key: str):
    """A key of a component's DEFAULTS literal, read with ast: the deploy is not imported (it
    needs pyinfra, and the build must not run product code)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "DEFAULTS"):
            return ast.literal_eval(node.value)[key]
    raise ValueError("%s: no DEFAULTS literal" % path)


def upstream(version: str) -> str:
    """Debian version -> upstream version: drop the epoch and the Debian revision."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def packages(versions: dict) -> dict:
    """The stand-in packages, by repository."""
    ts = versions["tailscale"]
    cf = versions["cloudflared"]
    nv = versions["nvidia_container_toolkit"]
    t, c, n = "tailscale/", "cloudflared/", "nvidia/"
    doc_nv = lambda pkg: (n + "README.stand-in", "usr/share/doc/%s/README.stand-in" % pkg, 0o644)
    tailscale = Package(
        name="tailscale", version=ts, depends="python3", section="net",
        summary="STAND-IN for tests: imitates the Tailscale CLI and daemon (not Tailscale)",
        files=[
            (t + "tailscale", "usr/bin/tailscale", 0o755),
            (t + "tailscaled", "usr/sbin/tailscaled", 0o755),
            (t + "tailscaled.service", "lib/systemd/system/tailscaled.service", 0o644),
            (t + "tailscaled.default", "etc/default/tailscaled", 0o644),
            (t + "README.stand-in", "usr/share/doc/tailscale/README.stand-in", 0o644),
        ],
        conffiles=["/etc/default/tailscaled"],
        scripts={"postinst": t + "postinst", "prerm": t + "prerm"},
    )
    # Like the real package: the binary and docs, no systemd unit and no maintainer scripts
    # (deploys write their own unit). python3-yaml reads the config file.
    cloudflared = Package(
        name="cloudflared", version=cf, depends="python3, python3-yaml", section="net",
        summary="STAND-IN for tests: imitates Cloudflare's cloudflared CLI (opens no tunnel)",
        files=[
            (c + "cloudflared", "usr/bin/cloudflared", 0o755),
            (c + "README.stand-in", "usr/share/doc/cloudflared/README.stand-in", 0o644),
        ],
    )
    nvidia = [
        Package(
            name="libnvidia-container1", version=nv, depends="libc6", section="libs",
            summary="STAND-IN for tests: NVIDIA container runtime library (not NVIDIA software)",
            files=[doc_nv("libnvidia-container1")],
        ),
        Package(
            name="libnvidia-container-tools", version=nv, section="utils",
            depends="libnvidia-container1 (= %s), libc6" % nv,
            summary="STAND-IN for tests: NVIDIA container runtime library (command-line tools)",
            files=[(n + "nvidia-container-cli", "usr/bin/nvidia-container-cli", 0o755),
                   doc_nv("libnvidia-container-tools")],
        ),
        Package(
            name="nvidia-container-toolkit-base", version=nv, depends="libc6", section="utils",
            summary="STAND-IN for tests: NVIDIA Container Toolkit base (not NVIDIA software)",
            files=[(n + "nvidia-ctk", "usr/bin/nvidia-ctk", 0o755),
                   (n + "nvidia-container-runtime", "usr/bin/nvidia-container-runtime", 0o755),
                   doc_nv("nvidia-container-toolkit-base")],
        ),
        Package(
            name="nvidia-container-toolkit", version=nv, section="utils",
            depends="nvidia-container-toolkit-base (= %s), libnvidia-container-tools (= %s)"
                    % (nv, nv),
            summary="STAND-IN for tests: NVIDIA Container Toolkit (not NVIDIA software)",
            files=[doc_nv("nvidia-container-toolkit")],
        ),
    ]
    # Like Grafana's package: the server binary under /usr/share/grafana (and the compat
    # wrappers), its defaults, two conffiles, a systemd unit it neither enables nor starts, and
    # a postinst that creates the grafana user. python3-yaml reads the provisioning files;
    # adduser is what the postinst (like the real one) creates the user with.
    gf, g = versions["grafana"], "grafana/"
    grafana = Package(
        name="grafana", version=gf, depends="adduser, python3, python3-yaml", section="default",
        summary="STAND-IN for tests: imitates Grafana's server and CLI (not Grafana)",
        files=[
            (g + "grafana", "usr/share/grafana/bin/grafana", 0o755),
            (g + "grafana-server", "usr/sbin/grafana-server", 0o755),
            (g + "grafana-cli", "usr/sbin/grafana-cli", 0o755),
            (g + "defaults.ini", "usr/share/grafana/conf/defaults.ini", 0o644),
            (g + "grafana.ini", "etc/grafana/grafana.ini", 0o640),
            (g + "grafana-server.default", "etc/default/grafana-server", 0o644),
            (g + "grafana-server.service", "lib/systemd/system/grafana-server.service", 0o644),
            (g + "README.stand-in", "usr/share/doc/grafana/README.stand-in", 0o644),
        ],
        conffiles=["/etc/default/grafana-server", "/etc/grafana/grafana.ini"],
        scripts={"postinst": g + "postinst", "prerm": g + "prerm"},
    )
    return {"tailscale": [tailscale], "cloudflared": [cloudflared], "nvidia": nvidia, "grafana": [grafana]}


def substitutions(versions: dict) -> dict:
    return {
        "@TAILSCALE_VERSION@": versions["tailscale"],
        "@CLOUDFLARED_VERSION@": upstream(versions["cloudflared"]),
        "@NVIDIA_CONTAINER_TOOLKIT_VERSION@": versions["nvidia_container_toolkit"],
        "@NVIDIA_UPSTREAM_VERSION@": upstream(versions["nvidia_container_toolkit"]),
        # Grafana's package version is its release's (12.3.0, 11.6.0+security-01): no revision
        "@GRAFANA_VERSION@": versions["grafana"].split(":", 1)[-1],
    }


def render(src: Path, subs: dict) -> bytes:
    text = src.read_text()
    for key, value in subs.items():
        text = text.replace(key, value)
    left = PLACEHOLDER.findall(text)
    if left:
        raise ValueError("%s: unknown placeholders %s" % (src, sorted(set(left))))
    return text.encode()


def description(pkg: Package) -> str:
    return ("%s\n This package was built by tests/mirror/build.py for the fleet's offline test"
            "\n mirror. It is a STAND-IN that imitates the vendor package's name, version,"
            "\n dependencies and documented CLI behaviour; it is not the vendor's software."
            % pkg.summary)


def installed_size(root: Path) -> int:
    # dpkg-gencontrol's rule: every file rounded up to a KiB, every directory 1 KiB.
    total = 0
    for path in root.rglob("*"):
        if "DEBIAN" in path.relative_to(root).parts:
            continue
        total += 1 if path.is_dir() else -(-path.stat().st_size // 1024)
    return total


def control_stanza(pkg: Package, size_kib: int) -> str:
    return ("Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: %s\nInstalled-Size: %d\n"
            "Depends: %s\nSection: %s\nPriority: optional\nDescription: %s\n"
            % (pkg.name, pkg.version, MAINTAINER, size_kib, pkg.depends, pkg.section,
               description(pkg)))


def build_deb(pkg: Package, subs: dict, work: Path, epoch: int) -> tuple[Path, str]:
    """Build one .deb with dpkg-deb; return its path and its control stanza."""
    root = work / pkg.name
    for src, dest, mode in pkg.files:
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(render(STANDINS / src, subs))
        target.chmod(mode)  # explicit: a checkout's umask must not change the package
    debian = root / "DEBIAN"
    debian.mkdir(parents=True)
    stanza = control_stanza(pkg, installed_size(root))
    (debian / "control").write_text(stanza)
    if pkg.conffiles:
        (debian / "conffiles").write_text("".join(c + "\n" for c in pkg.conffiles))
    for name, src in pkg.scripts.items():
        (debian / name).write_bytes(render(STANDINS / src, subs))
        (debian / name).chmod(0o755)
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (epoch, epoch))
    deb = work / pkg.deb_name
    # gzip, not xz: multi-threaded xz output can depend on the machine's core count.
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z9", "--build", str(root), str(deb)],
        check=True, capture_output=True, env=dict(os.environ, SOURCE_DATE_EPOCH=str(epoch)))
    return deb, stanza


def digests(data: bytes) -> dict:
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}


def packages_entry(stanza: str, filename: str, deb: bytes) -> str:
    d = digests(deb)
    head, _, desc = stanza.partition("Description: ")
    fields = "Filename: %s\nSize: %d\nMD5sum: %s\nSHA256: %s\n" % (
        filename, d["size"], d["md5"], d["sha256"])
    # Same field order as apt-ftparchive: file fields after Depends, Description last.
    before, _, after = head.partition("Section: ")
    return before + fields + "Section: " + after + "Description: " + desc


def write_index(directory: Path, entries: list[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    text = "\n".join(entries).encode()
    (directory / "Packages").write_bytes(text)
    # mtime=0 and no file name in the header: the same bytes every time.
    (directory / "Packages.gz").write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    return [directory / "Packages", directory / "Packages.gz"]


def release_text(fields: list[tuple[str, str]], base: Path, indexes: list[Path]) -> str:
    lines = ["%s: %s" % kv for kv in fields]
    rows = []
    for path in sorted(indexes):
        d = digests(path.read_bytes())
        rows.append((d, path.relative_to(base).as_posix()))
    for title, algo in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(title + ":")
        lines += [" %s %16d %s" % (d[algo], d["size"], rel) for d, rel in rows]
    return "\n".join(lines) + "\n"


def rfc2822(epoch: int) -> str:
    # Locale-independent, the format apt-ftparchive writes.
    t = time.gmtime(epoch)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
              "Dec")
    return "%s, %02d %s %d %02d:%02d:%02d UTC" % (
        days[t.tm_wday], t.tm_mday, months[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min,
        t.tm_sec)


class Signer:
    """gpg with the test key imported into a throwaway GNUPGHOME (never ~/.gnupg)."""

    def __enter__(self):
        self.home = tempfile.mkdtemp(prefix="mirror-gpg-")  # short path: agent socket limit
        self.env = dict(os.environ, GNUPGHOME=self.home, LC_ALL="C")
        self.gpg("--import", str(PRIVATE_KEY))
        out = self.gpg("--with-colons", "--list-secret-keys").stdout
        sec = next(line.split(":") for line in out.splitlines() if line.startswith("sec:"))
        self.fingerprint = next(line.split(":")[9] for line in out.splitlines()
                                if line.startswith("fpr:"))
        self.epoch = int(sec[5])  # the key's creation time
        return self

    def gpg(self, *args):
        return subprocess.run(["gpg", "--batch", "--no-tty", "--quiet", *args], env=self.env,
                              check=True, capture_output=True, text=True)

    def sign(self, release: Path):
        common = ("--faked-system-time", "%d!" % self.epoch, "--local-user", self.fingerprint,
                  "--digest-algo", "SHA512", "--yes")
        self.gpg(*common, "--clearsign", "--output", str(release.parent / "InRelease"),
                 str(release))
        self.gpg(*common, "--armor", "--detach-sign", "--output",
                 str(release.parent / "Release.gpg"), str(release))

    def __exit__(self, *exc):
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def write_pool_repo(root: Path, suite: str, pkgs: list, built: dict, fields: list,
                    signer: Signer) -> None:
    """A dists/SUITE + pool/ repository (one "main" component) of Architecture: all
    packages, listed for every architecture; Release signed."""
    dist = root / "dists" / suite
    entries = []
    for pkg in pkgs:
        deb, stanza = built[pkg.name]
        rel = pool_path(pkg)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, root / rel)
        entries.append(packages_entry(stanza, rel, deb.read_bytes()))
    indexes = []
    for arch in ARCHES:
        indexes += write_index(dist / "main" / ("binary-" + arch), entries)
    release = dist / "Release"
    release.write_text(release_text(fields, dist, indexes))
    signer.sign(release)


def pool_path(pkg: Package) -> str:
    return "pool/main/%s/%s/%s" % (pkg.name[0], pkg.name, pkg.deb_name)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, data_file: Path = DATA_FILE, grafana_component: Path = GRAFANA_COMPONENT) -> dict:
    """Build the mirror into OUT (replacing OUT/tailscale, OUT/cloudflared, OUT/nvidia,
    OUT/grafana and OUT/cloudflare-main.gpg); describe it."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    versions = read_versions(data_file, grafana_component)
    subs = substitutions(versions)
    pkgs = packages(versions)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        with Signer() as signer:
            epoch = signer.epoch
            date = rfc2822(epoch)
            work = stage / "work"
            work.mkdir()
            built = {p.name: build_deb(p, subs, work, epoch) for ps in pkgs.values() for p in ps}

            # Tailscale: a dists/ + pool/ repository with a suite per Debian release.
            ts = stage / TS_ROOT
            write_pool_repo(ts, TS_SUITE, pkgs["tailscale"], built, [
                ("Origin", "Tailscale"),
                ("Label", "Tailscale (STAND-IN test mirror, not the vendor)"),
                ("Suite", TS_SUITE), ("Codename", TS_SUITE),
                ("Architectures", " ".join(ARCHES)), ("Components", "main"),
                ("Date", date),
                ("Description", "STAND-IN packages for tests (tests/mirror), not Tailscale"),
            ], signer)
            shutil.copyfile(PUBLIC_KEY_BIN, ts / (TS_SUITE + ".noarmor.gpg"))

            # Cloudflare: one dists/ + pool/ repository whose single suite is "any".
            write_pool_repo(stage / CF_ROOT, CF_SUITE, pkgs["cloudflared"], built, [
                ("Origin", "cloudflare"),
                ("Label", "cloudflare (STAND-IN test mirror, not the vendor)"),
                ("Suite", CF_SUITE), ("Codename", CF_SUITE),
                ("Architectures", " ".join(ARCHES)), ("Components", "main"),
                ("Date", date),
                ("Description", "STAND-IN packages for tests (tests/mirror), not Cloudflare"),
            ], signer)
            shutil.copyfile(PUBLIC_KEY_BIN, stage / CF_KEY)

            # NVIDIA: one flat repository per architecture (apt source "Suites: /").
            nv = stage / NV_ROOT
            for arch in ARCHES:
                flat = nv / arch
                flat.mkdir(parents=True)
                entries = []
                for pkg in sorted(pkgs["nvidia"], key=lambda p: p.name):
                    deb, stanza = built[pkg.name]
                    shutil.copyfile(deb, flat / pkg.deb_name)
                    entries.append(packages_entry(stanza, "./" + pkg.deb_name,
                                                  deb.read_bytes()))
                indexes = write_index(flat, entries)
                release = flat / "Release"
                release.write_text(release_text([
                    ("Origin", "NVIDIA"),
                    ("Label", "NVIDIA container toolkit (STAND-IN test mirror, not the vendor)"),
                    ("Architectures", arch),
                    ("Date", date),
                    ("Description", "STAND-IN packages for tests (tests/mirror), not NVIDIA"),
                ], flat, indexes))
                signer.sign(release)
            shutil.copyfile(PUBLIC_KEY_ASC, stage / "nvidia" / "gpgkey")

            # Grafana: one dists/ + pool/ repository, suite "stable"; the key armored, at the
            # repository's root.
            write_pool_repo(stage / GF_ROOT, GF_SUITE, pkgs["grafana"], built, [
                ("Origin", "Grafana"),
                ("Label", "Grafana (STAND-IN test mirror, not the vendor)"),
                ("Suite", GF_SUITE), ("Codename", GF_SUITE),
                ("Architectures", " ".join(ARCHES)), ("Components", "main"),
                ("Date", date),
                ("Description", "STAND-IN packages for tests (tests/mirror), not Grafana"),
            ], signer)
            shutil.copyfile(PUBLIC_KEY_ASC, stage / GF_ROOT / GF_KEY)
            shutil.rmtree(work)

        # Swap the new trees (and the key file) in only once they are complete.
        for top in TOPS:
            if (out / top).is_dir() and not (out / top).is_symlink():
                shutil.rmtree(out / top)
            os.replace(stage / top, out / top)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    paths = []
    for top in map(out.joinpath, TOPS):
        paths += [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
    files = {p.relative_to(out).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(paths)}
    nv_repos = {
        "nvidia-" + arch: {
            "path": "%s/%s/" % (NV_ROOT.as_posix(), arch), "suites": "/", "components": None,
            "signing_key": "nvidia/gpgkey", "signing_key_armored": True,
        } for arch in ARCHES
    }
    return {
        "out": str(out),
        "versions": versions,
        "date": date,
        "signing_key": {
            "fingerprint": signer.fingerprint,
            "created": epoch,
            "sha256": {"binary": sha256_file(PUBLIC_KEY_BIN),
                       "armored": sha256_file(PUBLIC_KEY_ASC)},
        },
        "repos": {
            "tailscale": {
                "path": TS_ROOT.as_posix() + "/", "suites": TS_SUITE, "components": "main",
                "signing_key": "%s/%s.noarmor.gpg" % (TS_ROOT.as_posix(), TS_SUITE),
                "signing_key_armored": False,
            },
            "cloudflared": {
                "path": CF_ROOT.as_posix() + "/", "suites": CF_SUITE, "components": "main",
                "signing_key": CF_KEY, "signing_key_armored": False,
            },
            "grafana": {
                "path": GF_ROOT.as_posix() + "/", "suites": GF_SUITE, "components": "main",
                "signing_key": "%s/%s" % (GF_ROOT.as_posix(), GF_KEY), "signing_key_armored": True,
            },
            **nv_repos,
        },
        "packages": {p.name: {"version": p.version, "depends": p.depends,
                              "deb": pkg_paths(p, repo)}
                     for repo, ps in pkgs.items() for p in ps},
        "files": files,
    }


def pkg_paths(pkg: Package, repo: str) -> list[str]:
    if repo == "tailscale":
        return ["%s/%s" % (TS_ROOT.as_posix(), pool_path(pkg))]
    if repo == "cloudflared":
        return ["%s/%s" % (CF_ROOT.as_posix(), pool_path(pkg))]
    if repo == "grafana":
        return ["%s/%s" % (GF_ROOT.as_posix(), pool_path(pkg))]
    return ["%s/%s/%s" % (NV_ROOT.as_posix(), arch, pkg.deb_name) for arch in ARCHES]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/mirror/build.py OUTDIR", file=sys.stderr)
        return 2
    print(json.dumps(build(Path(argv[0])), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
