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

from fleet.ops import keep_running, secret_file, validated_file
from fleet.render import render
from fleet.secrets import host_key_name, public_host_key, secret

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
        # In a container systemd skips timesyncd (ConditionVirtualization=!container):
        # asking for "running" there could never converge, so only enablement is managed.
        running=None,
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
        src="files/etc/apt/apt.conf.d/52fleet-unattended-upgrades",
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
    addresses = [str(host.data.lan_address).split("/")[0], host.data.tailnet_address]
    config = validated_file(
        name="Harden sshd",
        content=render(
            "etc/ssh/sshd_config.j2",
            "base",
            listen_addresses=addresses,
            port=host.data.fleet_services["ssh"]["port"],
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
