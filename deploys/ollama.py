"""Ollama (llm hosts whose `llm_engine` is "ollama"): a pinned release, checked, on the tailnet.

Like upstream's install.sh, without piping a script into sh: the release bundle for the
host's architecture (and, on a Jetson with L4T R35/R36, the JetPack add-on, which upstream's
installer also fetches) is downloaded and its SHA-256 compared with `ollama_sha256` before
anything is unpacked; a mismatch fails the run with nothing installed. Each version unpacks
into its own directory, so an upgrade is a switch of ExecStart, never a half-written tree.

The server runs as a system user from a systemd unit; an override sets OLLAMA_HOST to the
tailnet address and the port map's `llm` port (never 11434, never a wildcard). It is ordered
after tailscaled but does not need tailscale0: base sets net.ipv4.ip_nonlocal_bind, so the
listener binds the tailnet address before the interface exists. `/usr/local/bin/ollama`
points the CLI at that address for every user. Models in `ollama_models` are pulled only
when the server does not list them.
"""

from __future__ import annotations

import json
import re
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, OperationError, StringCommand, deploy, operation
from pyinfra.facts.files import File
from pyinfra.facts.server import Arch, Groups
from pyinfra.operations import apt, files, systemd

from deploys.llm import engine_is
from fleet.converge import accounts
from fleet.converge.accounts import account
from fleet.converge.component import Component, Problem, Problems
from fleet.converge.daemons import keep_running
from fleet.converge.ops import verified_download
from fleet.converge.render import render
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Where a release's assets are downloaded from; {version} is ollama_version (group_data/all.py).
    "ollama_release_url": "https://github.com/ollama/ollama/releases/download/v{version}",
    # Asset name -> SHA-256, copied from that release's sha256sum.txt. Required: validation
    # refuses an Ollama host whose bundle has no checksum here.
    "ollama_sha256": {},
    # L4T major release (first field of /etc/nv_tegra_release) -> upstream's JetPack add-on.
    "ollama_jetpack_addons": {"R35": "jetpack5", "R36": "jetpack6"},
    # The system user the server runs as ...
    "ollama_user": "ollama",
    # ... and its home, which holds the models.
    "ollama_home": "/var/lib/ollama",
    # Models pulled once (the guide's default model); a second converge pulls nothing.
    "ollama_models": ["qwen2.5:7b"],
}

UNIT = "/etc/systemd/system/ollama.service"
OVERRIDE = "/etc/systemd/system/ollama.service.d/fleet.conf"
CLI = "/usr/local/bin/ollama"
INSTALL_ROOT = "/opt/ollama"
CACHE = "/var/cache/fleet/ollama"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}


class L4TRelease(FactBase):
    """The L4T major release of an NVIDIA Jetson ("R36"), or None on other hosts."""

    def command(self) -> str:
        return "head -n1 /etc/nv_tegra_release 2>/dev/null || true"

    def process(self, output):
        match = re.match(r"#\s*(R\d+)\b", "\n".join(output).strip())
        return match.group(1) if match else None


class OllamaModels(FactBase):
    """Model names the Ollama server at `address` lists, or None when it does not answer."""

    def command(self, address: str) -> str:
        url = shlex.quote(f"http://{address}/api/tags")
        return f"curl -fsS --max-time 10 {url} 2>/dev/null || true"

    def process(self, output):
        try:
            return sorted(m["name"] for m in json.loads("\n".join(output))["models"])
        except (ValueError, KeyError, TypeError):
            return None


def model_name(name: str) -> str:
    """Ollama's canonical name: an untagged model is `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def assets(arch: str, addon: str | None) -> list[str]:
    names = [f"ollama-linux-{arch}.tar.zst"]
    if addon:
        names.append(f"ollama-linux-{arch}-{addon}.tar.zst")
    return names


def listen_address() -> str:
    """host:port of the port map's `llm` service on this host's tailnet address."""
    return str(ServiceMap.of_pyinfra(host).bind("llm", host.name, "tailnet"))


@operation()
def unpacked_release(archives: list[str], dest: str):
    """Unpack the verified `archives` (tar.zst) into `dest`, all or nothing.

    + archives: bundle first, then add-ons, unpacked over each other as upstream does
    + dest: the version's own directory; present means installed
    """
    if host.get_fact(File, path=f"{dest}/bin/ollama"):
        host.noop(f"{dest} is unpacked")
        return
    q = shlex.quote
    partial = q(f"{dest}.partial")
    steps = [f"rm -rf {partial}", f"install -d -m 755 {partial}"]
    steps += [f"tar --zstd -xf {q(a)} -C {partial} --no-same-owner" for a in archives]
    steps += [f"test -x {partial}/bin/ollama", f"mv {partial} {q(dest)}"]
    yield StringCommand(" && ".join(steps) + f" || {{ rm -rf {partial}; exit 1; }}")


@operation()
def ollama_model(model: str, address: str, binary: str, timeout: int = 600):
    """Pull `model` unless the server at `address` already lists it.

    + model: a model name (untagged means :latest)
    + address: host:port the server listens on
    + binary: the ollama CLI to pull with
    """
    present = host.get_fact(OllamaModels, address=address)
    if present is not None and model_name(model) in present:
        host.noop(f"model {model} is present")
        return
    q = shlex.quote
    env = f"OLLAMA_HOST={q(address)}"
    # The server may have just (re)started: wait for it, bounded, before pulling.
    yield StringCommand(
        f"i=0; until {env} {q(binary)} list >/dev/null 2>&1; do i=$((i+1)); "
        f"[ $i -ge 60 ] && {{ echo {q(f'the Ollama server at {address} did not answer within 60s')} >&2; exit 1; }}; "
        f"sleep 1; done; {env} timeout {int(timeout)} {q(binary)} pull {q(model)}"
    )


def retire():
    """The host switched to another engine: stop and disable Ollama, freeing the LLM port.
    Binaries and models stay, so switching back pulls nothing."""
    if host.get_fact(File, path=UNIT):
        systemd.service(name="Stop and disable Ollama (another engine serves the LLM port)",
                        service="ollama.service", running=False, enabled=False)


@deploy("Ollama", data_defaults=DEFAULTS)
def ollama():
    data = host.data
    arch = ARCHES.get(host.get_fact(Arch), host.get_fact(Arch))
    release = host.get_fact(L4TRelease)
    addon = data.ollama_jetpack_addons.get(release) if release else None
    version = data.ollama_version
    names = assets(arch, addon)
    missing = [n for n in names if not re.fullmatch(r"[0-9a-f]{64}", str(data.ollama_sha256.get(n, "")))]
    if missing:
        raise OperationError(
            f"ollama_sha256 has no checksum for {', '.join(missing)} (Ollama {version}). Fix: copy "
            f"it from {data.ollama_release_url.format(version=version)}/sha256sum.txt into group data.")

    # Every download is verified before anything below runs: a bad checksum stops here.
    base_url = data.ollama_release_url.format(version=version)
    archives = []
    for name in names:
        path = f"{CACHE}/{version}/{name}"
        verified_download(name=f"Download {name} {version} (checksum verified)",
                          src=f"{base_url}/{name}", dest=path, sha256=data.ollama_sha256[name])
        archives.append(path)

    apt.packages(name="Install zstd (Ollama bundles are tar.zst)", packages=["zstd"])
    user, home = data.ollama_user, data.ollama_home
    present_groups = host.get_fact(Groups)
    account(
        name="Create the ollama system user",
        user=user,
        system=True,
        shell="/usr/sbin/nologin",
        home=home,
        create_home=False,
        # GPU device access on a Jetson, as upstream's installer grants it
        groups=[g for g in ("render", "video") if g in present_groups],
    )
    files.directory(name="Create the Ollama home", path=home, user=user, group=user, mode="750")
    files.directory(name="Create the Ollama models directory", path=f"{home}/models",
                    user=user, group=user, mode="750")

    dest = f"{INSTALL_ROOT}/{version}" + (f"-{addon}" if addon else "")
    unpacked = unpacked_release(name=f"Unpack Ollama {version}", archives=archives, dest=dest)
    binary = f"{dest}/bin/ollama"
    address = listen_address()
    files.put(
        name="Install the ollama CLI (pointed at the tailnet address)",
        src=StringIO(render("usr/local/bin/ollama.j2", "ollama", interpreter="/bin/sh", binary=binary,
                            address=address)),
        dest=CLI,
        user="root", group="root", mode="755",
    )
    unit = files.put(
        name="Install the ollama unit",
        src=StringIO(render("etc/systemd/system/ollama.service.j2", "ollama", binary=binary,
                            user=user, home=home)),
        dest=UNIT,
        user="root", group="root", mode="644",
    )
    files.directory(name="Create the ollama unit's drop-in directory", path=f"{UNIT}.d",
                    user="root", group="root", mode="755")
    override = files.put(
        name="Bind Ollama to the tailnet address (unit override)",
        src=StringIO(render("etc/systemd/system/ollama.service.d/fleet.conf.j2", "ollama",
                            address=address, models=f"{home}/models")),
        dest=OVERRIDE,
        user="root", group="root", mode="644",
    )
    keep_running("ollama", "ollama.service", inputs=[binary, UNIT, OVERRIDE],
                 why="for its new release or settings", changed=(unpacked, unit, override), unit_files=True,
                 service="llm")
    for model in data.ollama_models:
        ollama_model(name=f"Pull the {model} model (only if absent)", model=model,
                     address=address, binary=binary)


SHA256 = re.compile(r"[0-9a-f]{64}")
# A release's version (it names the download and the install directory) and where releases
# are downloaded from: an http(s) URL without spaces or quotes, with {version} in it.
VERSION = re.compile(r"[0-9]+(\.[0-9]+)*(-rc[0-9]+)?")
RELEASE_URL = re.compile(r"https?://[^\s'\"\\]*\{version\}[^\s'\"\\]*")
# A model as `ollama pull` names it: [registry/][namespace/]name[:tag], each part letters,
# digits, '.', '_' and '-' (nothing a shell or the CLI could read as anything else).
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*(:[A-Za-z0-9][A-Za-z0-9._-]*)?")


def check_release(fleet, hosts) -> list[Problem]:
    """The release is never installed unchecked; it is named by a version and a URL; models
    are a list of names."""
    problems = Problems(fleet)
    for h in hosts:
        data = h.data
        version = data.get("ollama_version")
        if not (isinstance(version, str) and VERSION.fullmatch(version)):
            problems.add(h, "ollama_version", f"{data.get('ollama_version')!r} is not an Ollama release version.",
                         "write it as the release's tag shows it without the v, e.g. '0.34.4'.")
        if not RELEASE_URL.fullmatch(str(data.get("ollama_release_url"))):
            problems.add(h, "ollama_release_url", f"{data.get('ollama_release_url')!r} is not a release URL.",
                         f"use an http(s) URL with {{version}} in it, e.g. {DEFAULTS['ollama_release_url']!r}.")
        asset = f"ollama-linux-{data.get('arch')}.tar.zst"
        sums = data.get("ollama_sha256")
        if not isinstance(sums, dict) or not SHA256.fullmatch(str(sums.get(asset, ""))):
            problems.append(Problem(
                h.name, "ollama_sha256",
                f"has no SHA-256 for {asset} (ollama_version {data.get('ollama_version')}); "
                "the release is never installed unchecked.",
                "copy it (and the JetPack add-on's, on a Jetson) from the release's "
                "sha256sum.txt into group_data/llm.py."))
        models = data.get("ollama_models")
        if not isinstance(models, list) or not all(isinstance(m, str) and MODEL.fullmatch(m) for m in models):
            problems.append(Problem(h.name, "ollama_models", f"{models!r} is not a list of model names.",
                                    "write it like ['qwen2.5:7b'] (or a registry path, 'hf.co/user/repo:tag')."))
    return problems


COMPONENT = Component(
    name="ollama",
    deploy=ollama,
    defaults=DEFAULTS,
    groups=("llm",),
    when=engine_is("ollama"),
    rules=(check_release, accounts.account_name("ollama_user"), accounts.own_directory("ollama_home")),
    after=("llm",),
    before=("cloudflared",),  # serve before the tunnel routes to it
)
