"""Docker engine (every host with docker_enabled): engine from data, one daemon.json model.

daemon.json is rendered here and nowhere else: published ports default to 127.0.0.1,
logs rotate, containers survive daemon restarts (live-restore), address pools come from
data (validation keeps them off every LAN and the tailnet), and on GPU hosts the nvidia
runtime is part of the same file. It is validated before it replaces the live file
(`dockerd --validate` where the engine has it, Docker >= 23; the shipped checker
templates/docker/usr/local/lib/fleet/check-daemon-json otherwise), and docker restarts only when it
changed.
"""

import ipaddress
import json
import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import apt, files

from fleet.converge import aptsource
from fleet.converge.accounts import account
from fleet.converge.aptsource import vendor_apt_source
from fleet.converge.component import Component, Problem, Problems, component, matches
from fleet.converge.daemons import keep_running
from fleet.converge.ops import validated_file
from fleet.converge.services import TAILNET_RANGE
from fleet.converge.render import source

DEFAULTS = {
    # Whether a host runs the Docker engine (group_data/healthcheck.py turns it off for the
    # 512 MB Pi Zero).
    "docker_enabled": True,
    # Address pools for networks Docker creates. Must not overlap any LAN in the inventory
    # or the tailnet (100.64.0.0/10), or containers lose the route to those hosts.
    "docker_address_pools": [{"base": "172.30.0.0/16", "size": 24}],
    # Where the engine comes from: "docker-ce" (Docker's repository) or "distribution"
    # (Debian's docker.io).
    "docker_source": "docker-ce",
    # Docker's apt repository (used when docker_source is "docker-ce").
    "docker_apt": {
        "uris": "https://download.docker.com/linux/debian",
        "suites": "bookworm",
        "components": "stable",
        "key_url": "https://download.docker.com/linux/debian/gpg",
        "key_sha256": "1500c1f56fa9e26b9b8f42452a553675796ade0807cdce11975eb98170b3a570",
        "key_file": "docker.asc",
    },
    # Log rotation for the json-file driver: the size at which a container's log rotates ...
    "docker_log_max_size": "10m",
    # ... and how many rotated files are kept.
    "docker_log_max_file": 3,
    # Extra daemon.json keys, merged last (validated on the host like the rest). Not the
    # fleet's own (ip, log-driver, log-opts, live-restore, default-address-pools, runtimes)
    # nor hosts: those are refused.
    "docker_daemon_extra": {},
    # Kernel command line tokens Raspberry Pi OS needs for memory limits to work.
    "docker_cmdline_tokens": ["cgroup_memory=1", "cgroup_enable=memory"],
}

CE_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
DISTRIBUTION_PACKAGES = ["docker.io", "apparmor", "xz-utils"]
CHECKER = "/usr/local/lib/fleet/check-daemon-json"
DAEMON_JSON = "/etc/docker/daemon.json"


def daemon_config(data, groups) -> dict:
    """The one model of /etc/docker/daemon.json for a host."""
    config = {
        "ip": "127.0.0.1",
        "log-driver": "json-file",
        "log-opts": {"max-size": str(data.docker_log_max_size), "max-file": str(data.docker_log_max_file)},
        "live-restore": True,
        "default-address-pools": data.docker_address_pools,
    }
    if component("nvidia").applies(groups, data):
        # the NVIDIA toolkit's runc shim, registered here rather than by `nvidia-ctk runtime
        # configure`, so no second tool rewrites this file
        config["runtimes"] = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    config.update(data.docker_daemon_extra)
    return config


def render_daemon_json(config: dict) -> str:
    # JSON has no comments, so no managed-by header: deploys/docker.py owns this file.
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


class BootCmdline(FactBase):
    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output):
        return "\n".join(output).strip() or None


@operation()
def cmdline_tokens(path: str, tokens: list[str]):
    """Append missing tokens to the single line of a Raspberry Pi cmdline.txt and report
    that a reboot is needed (/var/run/reboot-required); never reboot.

    + path: the cmdline file (skipped when it does not exist: not Raspberry Pi OS)
    + tokens: `key=value` tokens that must be on the line
    """
    line = host.get_fact(BootCmdline, path=path)
    if line is None:
        host.noop(f"{path} does not exist (not Raspberry Pi OS)")
        return
    missing = [t for t in tokens if t not in line.split()]
    if not missing:
        host.noop(f"{path} has {' '.join(tokens)}")
        return
    q = shlex.quote
    # keep it one line: append to the first line only, then ask for a reboot (validation
    # keeps tokens to [A-Za-z0-9_.,:=-], nothing sed or the shell would read specially)
    yield StringCommand(f"sed -i {q('1s|$| ' + ' '.join(missing) + '|')} {q(path)}")
    yield StringCommand("echo 'docker: memory cgroups enabled in cmdline.txt' >> /var/run/reboot-required.pkgs"
                        " && touch /var/run/reboot-required")
    host.log(f"reboot needed for {' '.join(missing)} in {path} (not forced)")


def _engine():
    if host.data.docker_source == "docker-ce":
        version = host.data.docker_ce_version
        vendor_apt_source("docker", host.data.docker_apt, "docker", CE_PACKAGES)
        return apt.packages(
            name="Install Docker CE (pinned)",
            packages=[f"docker-ce={version}", f"docker-ce-cli={version}", *CE_PACKAGES[2:]],
        )
    if host.data.docker_source == "distribution":
        # Without docker.io's Recommends, like every other package here: they bring git, Perl,
        # binutils, criu and needrestart (with its own apt hook) onto every Docker host, and
        # nothing the fleet runs uses them. Of the rest, the two the engine itself can call:
        # apparmor (apparmor_parser loads the docker-default profile where the kernel has
        # AppArmor) and xz-utils (`docker load` of an .xz archive runs xz).
        return apt.packages(name="Install Debian's docker.io", packages=DISTRIBUTION_PACKAGES, no_recommends=True)
    raise ValueError(f"docker_source must be 'docker-ce' or 'distribution', not {host.data.docker_source!r}")


@deploy("Docker", data_defaults=DEFAULTS)
def docker():
    _engine()
    files.put(
        name="Install the daemon.json checker (for engines without --validate)",
        src=source("docker", "usr/local/lib/fleet/check-daemon-json"),
        dest=CHECKER,
        user="root", group="root", mode="755",
    )
    q = shlex.quote
    validate = (
        "if dockerd --help 2>&1 | grep -q -- '--validate'; then dockerd --validate --config-file {path};"
        f" else python3 {q(CHECKER)} {{path}}; fi"
    )
    files.directory(name="Create /etc/docker", path="/etc/docker", user="root", group="root", mode="755")
    config = validated_file(
        name="Render daemon.json",
        content=render_daemon_json(daemon_config(host.data, host.groups)),
        dest=DAEMON_JSON,
        validate=validate,
        mode="644",
    )
    keep_running("docker", "docker.service", inputs=[DAEMON_JSON], why="for its new daemon.json", changed=(config,))
    account(
        name="Add the admin user to the docker group",
        user=host.data.ssh_user,
        groups=["docker"],
        append=True,
    )
    if host.data.get("pis_boot_cmdline_file"):
        cmdline_tokens(
            name="Enable memory cgroups on Raspberry Pi OS",
            path=host.data.pis_boot_cmdline_file,
            tokens=host.data.docker_cmdline_tokens,
        )




def _names(names: list[str], every: list[str]) -> str:
    return "all" if names == every and len(names) > 1 else ",".join(names)


def check_pools(fleet, hosts) -> list[Problem]:
    """Address pools must stay off every LAN and the tailnet, or containers lose those routes.
    One problem per mistake: a pool set for many hosts that overlaps a LAN many hosts share
    is one line, naming them."""
    problems = []
    lans: dict = {}  # LAN network -> the hosts on it
    for other in fleet.hosts.values():
        try:
            lans.setdefault(other.lan_interface.network, []).append(other.name)
        except (KeyError, TypeError, ValueError):
            continue
    overlaps: dict = {}  # (pool, what it overlaps) -> hosts whose pools include it
    every = [h.name for h in hosts]
    for h in hosts:
        pools = h.data.get("docker_address_pools")
        if not isinstance(pools, list):
            problems.append(Problem(h.name, "docker_address_pools", f"{pools!r} is not a list of pools.",
                                    "write pools as [{'base': '172.30.0.0/16', 'size': 24}]."))
            continue
        for pool in pools:
            try:
                base = ipaddress.ip_network(pool["base"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(h.name, "docker_address_pools",
                                        f"{pool!r} has no valid 'base' network.",
                                        "write pools as {'base': '172.30.0.0/16', 'size': 24}."))
                continue
            for lan in lans:
                if base.overlaps(lan):
                    overlaps.setdefault((base, lan), []).append(h.name)
            if base.overlaps(TAILNET_RANGE):
                overlaps.setdefault((base, TAILNET_RANGE), []).append(h.name)
    for (base, net), names in overlaps.items():
        what = (f"the tailnet {net}" if net == TAILNET_RANGE
                else f"the LAN {net} of {', '.join(lans[net])}")
        problems.append(Problem(_names(names, every), "docker_address_pools", f"pool {base} overlaps {what}.",
                                "pick a pool outside every LAN in inventory.py and outside 100.64.0.0/10 "
                                "(e.g. 172.30.0.0/16)."))
    return problems


def check_source(fleet, hosts) -> list[Problem]:
    return [Problem(h.name, "docker_source", f"{h.data.get('docker_source')!r} is not an engine source.",
                    "use 'docker-ce' (Docker's repository) or 'distribution' (Debian's docker.io).")
            for h in hosts if h.data.get("docker_source") not in ("docker-ce", "distribution")]


TOKEN = re.compile(r"[A-Za-z0-9_.,:=-]+")


def check_cmdline_tokens(fleet, hosts) -> list[Problem]:
    tokens = {h.name: h.data.get("docker_cmdline_tokens") for h in hosts}
    return [Problem(name, "docker_cmdline_tokens", f"{value!r} is not a list of key=value kernel tokens.",
                    "write tokens like 'cgroup_memory=1' (letters, digits and . , : = _ -).")
            for name, value in tokens.items()
            if not isinstance(value, list) or not all(isinstance(t, str) and TOKEN.fullmatch(t) for t in value)]


def check_cmdline_file(fleet, hosts) -> list[Problem]:
    """pis_boot_cmdline_file (group_data/pis.py) is the path of the Pi's cmdline.txt, or empty
    where the host has none: the memory-cgroup step reads and edits that one file."""
    found = Problems(fleet)
    for h in hosts:
        path = h.data.get("pis_boot_cmdline_file")
        if path and not (isinstance(path, str) and path.startswith("/") and "\n" not in path):
            found.add(h, "pis_boot_cmdline_file", f"{path!r} is not the absolute path of a file.",
                      "set it to the Pi's cmdline.txt, e.g. '/boot/firmware/cmdline.txt', or '' where there is none.")
    return found


# The json-file log driver's max-size: a number with an optional k, m or g unit.
LOG_SIZE = re.compile(r"[1-9][0-9]*[kmg]?")


def check_logs(fleet, hosts) -> list[Problem]:
    """dockerd refuses a daemon.json with a bad log option and would not start again. (A value
    of the wrong type is reported by the check of every setting's type.)"""
    found = Problems(fleet)
    for h in hosts:
        count = h.data.get("docker_log_max_file")
        if isinstance(count, int) and count < 1:
            found.add(h, "docker_log_max_file", f"{count!r} is not a number of log files.",
                      "use a whole number from 1, e.g. 3.")
    return found


# daemon.json keys docker_daemon_extra may not set: the fleet's own (each has a setting that is
# checked, or a component that owns it) and the engine's API sockets.
DAEMON_KEYS_NOT_EXTRA = {
    "ip": "containers are published on loopback unless a port names an address (spec dk-04): "
          "publish a container on the tailnet address by naming it",
    "log-driver": "set the log rotation with docker_log_max_size and docker_log_max_file",
    "log-opts": "set the log rotation with docker_log_max_size and docker_log_max_file",
    "live-restore": "the fleet restarts dockerd without stopping the containers",
    "default-address-pools": "set docker_address_pools (checked against every LAN and the tailnet)",
    "runtimes": "the nvidia component registers its runtime",
    "hosts": "the engine's API stays on its local socket (over TCP it is root for whoever reaches it, "
             "and dockerd refuses to start with hosts beside docker.service's -H fd://)",
}


def check_daemon_extra(fleet, hosts) -> list[Problem]:
    """docker_daemon_extra is merged last into daemon.json, so it could undo what the fleet
    checks elsewhere: publishing on every address, a pool over the LAN, a TCP API."""
    found = Problems(fleet)
    for h in hosts:
        extra = h.data.get("docker_daemon_extra")
        for key in sorted(extra) if isinstance(extra, dict) else ():  # the type check names a non-dict
            if key in DAEMON_KEYS_NOT_EXTRA:
                found.add(h, "docker_daemon_extra", f"{key!r} cannot be set through docker_daemon_extra.",
                          f"leave it out: {DAEMON_KEYS_NOT_EXTRA[key]}.")
    return found


def check_enabled(fleet, hosts) -> list[Problem]:
    return [Problem(h.name, "docker_enabled", f"{h.data.get('docker_enabled')!r} is not True or False.",
                    "write docker_enabled = True or False in the group's data.")
            for h in fleet.hosts.values() if not isinstance(h.data.get("docker_enabled"), bool)]


def enabled(data) -> bool:
    """docker_enabled is true"""
    return bool(data.get("docker_enabled"))


COMPONENT = Component(
    name="docker",
    deploy=docker,
    defaults=DEFAULTS,
    when=enabled,
    rules=(check_enabled, check_pools, check_source, check_cmdline_tokens, check_cmdline_file, check_logs,
           check_daemon_extra,
           matches("docker_log_max_size", LOG_SIZE, "a log file size", "use a number with k, m or g, e.g. '10m'."),
           aptsource.rule("docker_apt", when=lambda data: data.get("docker_source") == "docker-ce",
                          version="docker_ce_version")),
    after=("tailscale",),
)
