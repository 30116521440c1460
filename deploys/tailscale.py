"""Tailscale (every host): vendor repo, pinned version, join once, then converge settings.

The node joins once with its auth key read from a 0600 file (`--auth-key=file:`); later
runs compare `tailscale status --json` with the wanted hostname and tags and change only
what differs (`tailscale set --hostname`, or a re-`up` naming every setting for tags,
which `set` cannot change), never using the auth key again.
"""

import json
import re
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import apt, files

from fleet.converge import aptsource
from fleet.converge.aptsource import vendor_apt_source
from fleet.converge.component import Component, Problem, Problems, SecretFile
from fleet.converge.daemons import keep_running
from fleet.converge.ops import secret_file
from fleet.converge.render import render

DEFAULTS = {
    # Tailscale's apt repository (deb822 source, key pinned by SHA-256).
    "tailscale_apt": {
        "uris": "https://pkgs.tailscale.com/stable/debian",
        "suites": "bookworm",
        "components": "main",
        "key_url": "https://pkgs.tailscale.com/stable/debian/bookworm.noarmor.gpg",
        "key_sha256": "3e03dacf222698c60b8e2f990b809ca1b3e104de127767864284e6c228f1fb39",
        "key_file": "tailscale-archive-keyring.gpg",
    },
    # tailscaled's WireGuard UDP port (written to /etc/default/tailscaled).
    "tailscale_port": 41641,
    # Extra tailscaled flags (FLAGS= in /etc/default/tailscaled).
    "tailscale_daemon_flags": "",
}

# The auth key (vault key -> file): tailscaled runs as root and reads it only through
# `tailscale up --auth-key=file:`, and only to join.
AUTHKEY = "tailscale_authkey"
AUTHKEY_FILE = "/etc/tailscale/authkey"
# tailscaled's port and flags, read by its unit (EnvironmentFile).
DEFAULTS_FILE = "/etc/default/tailscaled"


class TailscaleStatus(FactBase):
    """`tailscale status --json`, or None when tailscale is absent or its daemon is down.
    Without peers: only the node's own state is read, and with them the output (and the
    daemon's work) grows with every device of the tailnet, on every host, every run."""

    def command(self) -> str:
        return "tailscale status --json --peers=false 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None


def wanted_tags(groups, tags_by_group: dict) -> list[str]:
    return sorted({tag for group in groups for tag in tags_by_group.get(group, [])})


@operation()
def tailscale_node(hostname: str, tags: list[str], auth_key_file: str):
    """Join the tailnet once, then keep the node's hostname and tags as wanted.

    + hostname: the node name in the tailnet
    + tags: ACL tags to advertise (sorted)
    + auth_key_file: the 0600 file holding the auth key (used only to join)
    """
    status = host.get_fact(TailscaleStatus)
    q = shlex.quote
    settings = f"--hostname={q(hostname)} --advertise-tags={q(','.join(tags))}"
    state = (status or {}).get("BackendState")
    if state in (None, "NoState", "NeedsLogin", "NeedsMachineAuth"):
        yield StringCommand(f"tailscale up --auth-key=file:{q(auth_key_file)} {settings}")
        return
    me = status.get("Self") or {}
    have_tags = sorted(me.get("Tags") or [])
    if state != "Running" or have_tags != tags:
        # `tailscale set` cannot change tags: re-up naming every non-default setting, so
        # the CLI accepts it; the node is logged in, so no key is needed or sent.
        yield StringCommand(f"tailscale up {settings}")
    elif me.get("HostName") != hostname:
        yield StringCommand(f"tailscale set --hostname={q(hostname)}")
    else:
        host.noop(f"tailscale is up as {hostname} with tags {','.join(tags) or '(none)'}")


@deploy("Tailscale", data_defaults=DEFAULTS)
def tailscale():
    vendor_apt_source("tailscale", host.data.tailscale_apt, "tailscale", ["tailscale"])
    apt.packages(
        name="Install Tailscale (pinned)",
        packages=[f"tailscale={host.data.tailscale_version}"],
    )
    defaults = files.put(
        name="Set tailscaled's port and flags",
        src=StringIO(render("etc/default/tailscaled.j2", "tailscale",
                            port=host.data.tailscale_port, flags=host.data.tailscale_daemon_flags)),
        dest=DEFAULTS_FILE,
        user="root", group="root", mode="644",
    )
    keep_running("tailscaled", "tailscaled.service", inputs=[DEFAULTS_FILE], why="for its new port or flags",
                 changed=(defaults,))
    files.directory(
        name="Create /etc/tailscale (root only)",
        path=AUTHKEY_FILE.rsplit("/", 1)[0],
        user="root",
        group="root",
        mode="700",
    )
    secret_file(
        name="Install the Tailscale auth key",
        key=AUTHKEY,
        dest=AUTHKEY_FILE,
        user="root",
        group="root",
    )
    tailscale_node(
        name="Join the tailnet / converge hostname and tags",
        hostname=host.data.tailnet_name,
        tags=wanted_tags(host.groups, host.data.tailscale_tags_by_group),
        auth_key_file=AUTHKEY_FILE,
    )


def auth_key(name: str, data) -> list[SecretFile]:
    return [SecretFile(AUTHKEY, AUTHKEY_FILE, "root", "root")]


def check_tags(fleet, hosts) -> list[Problem]:
    problems = []
    tags_by_group = fleet.all_data.get("tailscale_tags_by_group", {})
    if not isinstance(tags_by_group, dict):
        return [Problem("all", "tailscale_tags_by_group", f"{tags_by_group!r} is not a dict.",
                        "map each group to its tags, e.g. {'pis': ['tag:pi']}.")]
    for group, tags in tags_by_group.items():
        key = f"tailscale_tags_by_group[{group!r}]"
        if group not in fleet.known_groups:
            problems.append(Problem("all", key, f"unknown group {group!r}.",
                                    f"use one of {', '.join(fleet.known_groups)}."))
        if not isinstance(tags, list):
            problems.append(Problem("all", key, f"{tags!r} is not a list of tags.",
                                    "write it like ['tag:gateway']."))
            continue
        for tag in tags:
            if not re.fullmatch(r"tag:[a-z0-9][a-z0-9-]*", str(tag)):
                problems.append(Problem("all", key, f"{tag!r} is not a Tailscale ACL tag.",
                                        "write tags like 'tag:gateway' (lowercase, digits, dashes)."))
    return problems


# One tailscaled flag: --name or --name=value, the value with nothing the unit's word
# splitting or a shell would read (no space, quote, backslash, $ or ;).
DAEMON_FLAG = re.compile(r"--?[a-z][a-z0-9-]*(=[^\s\"'\\$;`]*)?")


# A tailnet machine name: one DNS label (MagicDNS names the machine <name>.<tailnet>.ts.net).
MACHINE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_names(fleet, hosts) -> list[Problem]:
    """tailnet_name (default: the inventory name) is a DNS label, and no two hosts share one:
    the second would join as <name>-1 and never match what the fleet looks for."""
    problems, seen = [], {}
    for h in hosts:
        name = h.data.get("tailnet_name")
        if not isinstance(name, str) or not MACHINE_NAME.fullmatch(name):
            problems.append(Problem(h.name, "tailnet_name", f"{name!r} is not a tailnet machine name.",
                                    "use lower-case letters, digits and '-' (63 at most), or leave it out to use the "
                                    "inventory name."))
        elif name in seen:
            problems.append(Problem(h.name, "tailnet_name", f"{name!r} is also {seen[name]}'s.",
                                    "give each host its own tailnet name."))
        else:
            seen[name] = h.name
    return problems


def check_daemon(fleet, hosts) -> list[Problem]:
    """tailscaled's port and flags: a bad value stops tailscaled at its restart, and with it the
    tailnet the operator may be connected over, so it is refused before any host is touched.
    (A value of the wrong type is reported by the check of every setting's type.)"""
    found = Problems(fleet)
    for h in hosts:
        port = h.data.get("tailscale_port")
        if isinstance(port, int) and not 0 <= port <= 65535:
            found.add(h, "tailscale_port", f"{port!r} is not a UDP port.",
                      "use an integer 1-65535 (0: tailscaled picks one), e.g. 41641.")
        flags = h.data.get("tailscale_daemon_flags")
        bad = [f for f in flags.split() if not DAEMON_FLAG.fullmatch(f)] if isinstance(flags, str) else []
        if bad:
            found.add(h, "tailscale_daemon_flags", f"{', '.join(map(repr, bad))} is not a tailscaled flag.",
                      "write flags like '--verbose=1 --no-logs-no-support', space-separated, or '' for none.")
    return found


COMPONENT = Component(
    name="tailscale",
    deploy=tailscale,
    defaults=DEFAULTS,
    secrets=auth_key,
    rules=(check_tags, check_names, check_daemon, aptsource.rule("tailscale_apt", version="tailscale_version")),
    after=("base",),
)
