"""Base (every host): packages, time, unattended upgrades, the admin user, sysctls, sshd.

Order matters for safety: the admin account and its keys exist before sshd is hardened to
keys only, and the sshd config is validated (`sshd -t`) before it replaces the live one.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from fleet.converge.component import Component, Problem, SecretFile
from fleet.converge.keys import host_key_name, public_host_key, secret
from fleet.converge.ops import keep_running, secret_file, validated_file
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Packages every host gets.
    "base_packages": [
        "sudo",
        "ca-certificates",
        "curl",
        "gnupg",
        "iproute2",
        "unattended-upgrades",
        "apt-listchanges",
        "systemd-timesyncd",
        "tzdata",
    ],
    # Timezone, a name under /usr/share/zoneinfo.
    "base_timezone": "UTC",
    # Whether systemd-timesyncd is kept running (it is always enabled). None leaves its
    # running state alone: systemd skips it inside a container (ConditionVirtualization).
    "base_time_sync_running": True,
    # Kernel settings, applied now and persisted in /etc/sysctl.d/60-fleet.conf.
    "base_sysctls": {
        # Services may bind their tailnet address before tailscale0 is up.
        "net.ipv4.ip_nonlocal_bind": 1,
        "net.ipv6.ip_nonlocal_bind": 1,
    },
    # Daily unattended security upgrades (Debian's default origins).
    "base_unattended_upgrades": True,
    # sshd settings; ListenAddress is always the host's LAN and tailnet addresses.
    "base_sshd_settings": {
        "PermitRootLogin": "no",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PubkeyAuthentication": "yes",
        "X11Forwarding": "no",
        "MaxAuthTries": "4",
        "LoginGraceTime": "30",
        "ClientAliveInterval": "300",
        "ClientAliveCountMax": "2",
    },
}

SYSCTL_FILE = "/etc/sysctl.d/60-fleet.conf"


@deploy("Base", data_defaults=DEFAULTS)
def base():
    _packages()
    _time()
    _unattended_upgrades()
    _admin_user()
    _sysctls()
    _sshd()


def _packages():
    wanted = host.data.base_packages
    installed = host.get_fact(DebPackages)
    apt.packages(
        name="Install base packages",
        packages=wanted,
        # Refresh the package lists only when something is missing: a converged host
        # then stays a no-op.
        update=any(pkg not in installed for pkg in wanted),
        no_recommends=True,
    )


def _time():
    zone = host.data.base_timezone
    files.link(
        name="Set the timezone",
        path="/etc/localtime",
        target=f"/usr/share/zoneinfo/{zone}",
    )
    files.put(
        name="Record the timezone name",
        src=_text(f"{zone}\n"),
        dest="/etc/timezone",
        mode="644",
    )
    systemd.service(
        name="Enable time synchronisation",
        service="systemd-timesyncd.service",
        enabled=True,
        running=host.data.base_time_sync_running,
    )


def _unattended_upgrades():
    enabled = "1" if host.data.base_unattended_upgrades else "0"
    files.put(
        name="Configure unattended upgrades",
        src=_text(render("etc/apt/apt.conf.d/20auto-upgrades.j2", "base", comment="//",
                         enabled=enabled)),
        dest="/etc/apt/apt.conf.d/20auto-upgrades",
        mode="644",
    )
    files.put(
        name="Set the unattended upgrade policy",
        src=source("base", "etc/apt/apt.conf.d/52fleet-unattended-upgrades"),
        dest="/etc/apt/apt.conf.d/52fleet-unattended-upgrades",
        mode="644",
    )
    systemd.service(
        name="Enable the daily upgrade timer",
        service="apt-daily-upgrade.timer",
        enabled=True,
        running=True,
    )


def _admin_user():
    user = host.data.ssh_user
    server.user(
        name="Create the admin user",
        user=user,
        shell="/bin/bash",
        create_home=True,
        groups=["sudo"],
        append=True,
    )
    server.user_authorized_keys(
        name="Install the admin SSH keys",
        user=user,
        group=user,
        public_keys=host.data.base_admin_ssh_keys,
        delete_keys=True,
    )
    validated_file(
        name="Allow the admin user passwordless sudo",
        content=render("etc/sudoers.d/fleet-admin.j2", "base", user=user),
        dest="/etc/sudoers.d/90-fleet-admin",
        validate="visudo -cqf {path}",
        mode="440",
    )


def _sysctls():
    for key, value in host.data.base_sysctls.items():
        server.sysctl(
            name=f"Set {key}",
            key=key,
            value=value,
            persist=True,
            persist_file=SYSCTL_FILE,
        )


def _sshd():
    # The host's identity comes from the vault, so a rebuilt host keeps it and the
    # operators' known_hosts stays valid. Only the ed25519 key is offered.
    key = secret_file(
        name="Install the SSH host key",
        key=host_key_name(host.name),
        dest="/etc/ssh/ssh_host_ed25519_key",
        user="root",
        group="root",
    )
    public = files.put(
        name="Install the SSH host public key",
        src=_text(public_host_key(secret(host_key_name(host.name)), f"root@{host.name}") + "\n"),
        dest="/etc/ssh/ssh_host_ed25519_key.pub",
        mode="644",
    )
    listeners = ServiceMap.of_pyinfra(host).binds("ssh", host.name)
    config = validated_file(
        name="Harden sshd",
        content=render(
            "etc/ssh/sshd_config.j2",
            "base",
            listen_addresses=[e.address for e in listeners],
            port=listeners[0].port,
            settings=host.data.base_sshd_settings,
        ),
        dest="/etc/ssh/sshd_config",
        validate="/usr/sbin/sshd -t -f {path}",
        mode="644",
    )
    # Debian 12 can run sshd socket-activated: ssh.socket then holds port 22 on every
    # address and ListenAddress is ignored. Switch to the plain service. With Accept=no
    # the running sshd inherited the socket's wildcard listener, so it must be restarted
    # (not reloaded) once the socket is gone. Sessions survive: ssh.service has
    # KillMode=process, and socket-spawned sessions live on their own.
    socket = "ssh.socket"
    socket_on = host.get_fact(SystemdEnabled, services=[socket]).get(socket) or host.get_fact(
        SystemdStatus, services=[socket]
    ).get(socket)
    if socket_on:
        socket_off = systemd.service(
            name="Stop socket-activated sshd",
            service=socket,
            running=False,
            enabled=False,
        )
        systemd.service(
            name="Restart sshd on its own listeners",
            service="ssh.service",
            restarted=True,
            _if=socket_off.did_change,
        )
    keep_running("sshd", "ssh.service", any_changed(key, public, config), why="", reload=True)


def _text(content: str) -> StringIO:
    return StringIO(content)


def host_key(name: str, data) -> list[SecretFile]:
    # The host's identity comes from the vault, so a rebuilt host keeps it.
    return [SecretFile(host_key_name(name), "/etc/ssh/ssh_host_ed25519_key", "root", "root")]


def check_admin(fleet, hosts) -> list[Problem]:
    """sshd is hardened to keys only: every host needs the admins' public keys."""
    problems = []
    for h in hosts:
        keys = h.data.get("base_admin_ssh_keys") or []
        if not isinstance(keys, list):
            problems.append(Problem(h.name, "base_admin_ssh_keys", f"{keys!r} is not a list.",
                                    "write it as a list of public key lines in group_data/all.py."))
            continue
        if not keys:
            problems.append(Problem(
                h.name, "base_admin_ssh_keys",
                "is empty, but sshd is hardened to key-only logins.",
                "add your public key(s) to base_admin_ssh_keys in group_data/all.py."))
        for k in keys:
            if not isinstance(k, str) or not k.startswith(("ssh-", "ecdsa-", "sk-")):
                problems.append(Problem(h.name, "base_admin_ssh_keys",
                                        f"{str(k)[:30]!r}... is not an OpenSSH public key.",
                                        "paste the one-line contents of your ~/.ssh/*.pub."))
    return problems


def check_time_sync(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        value = h.data.get("base_time_sync_running")
        if value not in (True, False, None):
            problems.append(Problem(h.name, "base_time_sync_running", f"{value!r} is not True, False or None.",
                                    "use True (keep it running), or None only where systemd cannot run it."))
    return problems


COMPONENT = Component(
    name="base",
    deploy=base,
    defaults=DEFAULTS,
    secrets=host_key,
    rules=(check_admin, check_time_sync),
)
