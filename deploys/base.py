"""Base (every host): packages, time, unattended upgrades, the admin user, sysctls, sshd.

Order matters for safety: the admin account and its keys exist before sshd is hardened to
keys only, and the sshd config is validated (`sshd -t`) before it replaces the live one.
"""

import re
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Home
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import apt, files, server, systemd

from fleet.converge.accounts import account
from fleet.converge.component import Component, Problem, Problems, SecretFile, matches
from fleet.converge.keys import host_key_name, public_host_key, secret
from fleet.converge.daemons import enabled_and_running, keep_running
from fleet.converge.ops import CANDIDATE, STAGE, secret_file, validated_file
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Packages every host gets: Debian package names (each may carry :arch or =version).
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
    # Seconds apt and dpkg wait for the package lock another run holds (unattended-upgrades)
    # before the converge fails.
    "base_apt_lock_timeout": 120,
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
    # sshd settings besides the deploy's own, which are always written: key-only logins and
    # no root (SSHD_HARDENED), ListenAddress (the host's LAN and tailnet addresses), HostKey
    # (the vault's). A setting that would undo those, or could keep the admin's key out
    # (`sshd -t` passes a config that locks everyone out), is refused.
    "base_sshd_settings": {
        "X11Forwarding": "no",
        "MaxAuthTries": "4",
        "LoginGraceTime": "30",
        "ClientAliveInterval": "300",
        "ClientAliveCountMax": "2",
    },
}

SYSCTL_FILE = "/etc/sysctl.d/60-fleet.conf"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
SSHD_CONFIG = "/etc/ssh/sshd_config"
WILDCARDS = ("0.0.0.0", "*", "[::]", "::")


class Leftovers(FactBase):
    """Files an interrupted converge can leave: `*.fleet-candidate` beside a file it installs
    (a validated file, a secret or any upload that never moved into place) and staged secret
    uploads."""

    default = list

    def command(self, places: tuple[str, ...]) -> str:
        where = " ".join(shlex.quote(p) for p in places)
        return (f"find {where} -xdev \\( -name '*{CANDIDATE}' -o -path '*/{STAGE}/*' \\)"
                " -type f 2>/dev/null || true")

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


@operation()
def leftovers_removed(places: list[str]):
    """No file an interrupted run left behind remains under `places`.

    + places: directories to look in
    """
    found = host.get_fact(Leftovers, places=tuple(places))
    if not found:
        host.noop("nothing was left by an interrupted run")
        return
    yield StringCommand("rm -f -- " + " ".join(shlex.quote(p) for p in found))


class DpkgInterrupted(FactBase):
    """Whether dpkg has pending work from a run that was cut off (its journal, or packages
    `dpkg --audit` finds half-installed)."""

    def command(self) -> str:
        return "{ ls -A /var/lib/dpkg/updates; dpkg --audit; } 2>/dev/null | head -n 3"

    def process(self, output):
        return any(line.strip() for line in output)


@operation()
def dpkg_consistent(lock_timeout: int):
    """dpkg has no unfinished work: apt refuses to install anything until `dpkg --configure
    -a` has run after an interrupted install.

    + lock_timeout: seconds to wait while another process (the apt of a killed converge, which
      runs on after its SSH session is gone, or unattended-upgrades) holds dpkg's lock
    """
    if not host.get_fact(DpkgInterrupted):
        host.noop("dpkg has no unfinished work")
        return
    tries = max(1, int(lock_timeout) // 2)
    # dpkg has no lock timeout of its own (apt's DPkg::Lock::Timeout is apt's): retry while
    # the error is the lock, bounded; any other error fails at once.
    yield StringCommand(
        f"i=0; while :; do out=$(DEBIAN_FRONTEND=noninteractive dpkg --configure -a 2>&1) && break;"
        f" case \"$out\" in *lock*) ;; *) echo \"$out\" >&2; exit 1;; esac;"
        f" i=$((i+1)); [ $i -ge {tries} ] && {{ echo \"$out\" >&2; exit 1; }}; sleep 2; done")


class LocalAddresses(FactBase):
    """Every IP address on an interface of the host (`ip -o addr`)."""

    default = list

    def command(self) -> str:
        return "ip -o addr show 2>/dev/null || true"

    def process(self, output):
        found = []
        for line in output:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("inet", "inet6"):
                found.append(fields[3].split("/")[0])
        return found


def bound_addresses(services: ServiceMap, name: str) -> dict[str, str]:
    """address -> what binds it, for every address the host's services bind but loopback and
    the tailnet address (tailscale0 may be down at converge time: ip_nonlocal_bind covers it)."""
    wanted: dict[str, str] = {}
    for service in services.on(name):
        for scope in services.scopes(service):
            if scope not in ("loopback", "tailnet"):
                wanted.setdefault(services.address(scope, name), f"{service} ({scope})")
    return wanted


@operation()
def addresses_present(wanted: dict[str, str]):
    """Stop the run for this host, before anything changes, if an address its services bind
    is on none of its interfaces: sshd bound to a mistyped LAN address (ip_nonlocal_bind
    allows it) would cut the real one off.

    + wanted: address -> the service and scope that bind it
    """
    have = host.get_fact(LocalAddresses)
    missing = {a: why for a, why in wanted.items() if a not in have}
    if not missing:
        host.noop(f"the host holds {', '.join(wanted) or 'every address it binds'}")
        return
    lines = "; ".join(f"{a} (for {why})" for a, why in missing.items())
    message = (f"{host.name}: lan_address: the host has no interface with {lines}; its addresses are "
               f"{', '.join(have) or 'none'}. Nothing was changed on it. Fix: correct lan_address in "
               "inventory.py (or give the host that address).")
    yield StringCommand(f"echo {shlex.quote(message)} >&2; exit 1")


class SshdWildcardListeners(FactBase):
    """The local addresses sshd listens on that are wildcards (inherited from ssh.socket)."""

    default = list

    def command(self) -> str:
        return "ss -Htlnp 2>/dev/null | grep '\"sshd\"' || true"

    def process(self, output):
        found = []
        for line in output:
            fields = line.split()
            if len(fields) >= 4 and fields[3].rpartition(":")[0] in WILDCARDS:
                found.append(fields[3])
        return found


@operation()
def sshd_on_own_listeners():
    """ssh.service holds no wildcard listener: once socket activation is off, the running
    sshd may still hold the socket's, and only a restart (not a reload) drops it. Sessions
    survive: ssh.service has KillMode=process."""
    if not host.get_fact(SshdWildcardListeners):
        host.noop("sshd holds no wildcard listener")
        return
    yield StringCommand("systemctl restart ssh.service")


@deploy("Base", data_defaults=DEFAULTS)
def base():
    # First, before anything changes: every address the deploys bind must be on this host.
    addresses_present(name="Check the host holds the addresses its services bind",
                      wanted=bound_addresses(ServiceMap.of_pyinfra(host), host.name))
    _after_an_interrupted_run()
    _packages()
    _time()
    _unattended_upgrades()
    _admin_user()
    _sysctls()
    _sshd()


def _after_an_interrupted_run():
    """What a converge killed mid-way can leave behind, put right before anything else runs."""
    home = host.get_fact(Home, user=host.data.ssh_user) or f"/home/{host.data.ssh_user}"
    leftovers_removed(name="Remove what an interrupted run left (candidates, staged uploads)",
                      places=["/etc", "/usr/local/lib/fleet", "/usr/local/sbin", "/var/cache/fleet",
                              f"{home}/{STAGE}"])
    dpkg_consistent(name="Finish an interrupted dpkg run (dpkg --configure -a)",
                    lock_timeout=host.data.base_apt_lock_timeout)
    files.put(
        name="Make apt wait for the package lock",
        src=_text(render("etc/apt/apt.conf.d/50fleet-lock-timeout.j2", "base", comment="//",
                         timeout=int(host.data.base_apt_lock_timeout))),
        dest="/etc/apt/apt.conf.d/50fleet-lock-timeout",
        user="root", group="root", mode="644",
    )


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
        user="root", group="root", mode="644",
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
        user="root", group="root", mode="644",
    )
    files.put(
        name="Set the unattended upgrade policy",
        src=source("base", "etc/apt/apt.conf.d/52fleet-unattended-upgrades"),
        dest="/etc/apt/apt.conf.d/52fleet-unattended-upgrades",
        user="root", group="root", mode="644",
    )
    enabled_and_running(name="Enable the daily upgrade timer", unit="apt-daily-upgrade.timer")


def _admin_user():
    user = host.data.ssh_user
    account(
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
        dest=HOST_KEY,
        user="root",
        group="root",
    )
    public = files.put(
        name="Install the SSH host public key",
        src=_text(public_host_key(secret(host_key_name(host.name)), f"root@{host.name}") + "\n"),
        dest=f"{HOST_KEY}.pub",
        user="root", group="root", mode="644",
    )
    listeners = ServiceMap.of_pyinfra(host).binds("ssh", host.name)
    config = validated_file(
        name="Harden sshd",
        content=render(
            "etc/ssh/sshd_config.j2",
            "base",
            listen_addresses=[e.address for e in listeners],
            port=listeners[0].port,
            settings=sshd_settings(host.data.base_sshd_settings),
        ),
        dest=SSHD_CONFIG,
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
        systemd.service(
            name="Stop socket-activated sshd",
            service=socket,
            running=False,
            enabled=False,
        )
    # Decided from what sshd holds now, so a run killed between the two steps is finished
    # by the next one.
    sshd_on_own_listeners(name="Restart sshd on its own listeners (if it holds a wildcard one)")
    keep_running("sshd", "ssh.service", inputs=[HOST_KEY, f"{HOST_KEY}.pub", SSHD_CONFIG], why="",
                 changed=(key, public, config), reload=True)


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


def check_lock_timeout(fleet, hosts) -> list[Problem]:
    return [Problem(h.name, "base_apt_lock_timeout", f"{h.data.get('base_apt_lock_timeout')!r} is not 0 to 3600 seconds.",
                    "set how long apt waits for the package lock, e.g. 120.")
            for h in hosts if isinstance(h.data.get("base_apt_lock_timeout"), int)
            and not 0 <= h.data["base_apt_lock_timeout"] <= 3600]


# A zoneinfo name (UTC, Europe/Berlin, Etc/GMT-3): /etc/localtime links to it under
# /usr/share/zoneinfo, so no empty part, no `..` and no space.
ZONE = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")
# A kernel parameter (net.ipv4.ip_nonlocal_bind) and its value: each goes into `sysctl` and
# into a line of the sysctl file that server.sysctl finds by a regular expression.
SYSCTL_KEY = re.compile(r"[a-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
SYSCTL_VALUE = re.compile(r"[A-Za-z0-9_.:,-]+( [A-Za-z0-9_.:,-]+)*")


def check_sysctls(fleet, hosts) -> list[Problem]:
    found = Problems(fleet)
    for h in hosts:
        sysctls = h.data.get("base_sysctls")
        for key, value in sysctls.items() if isinstance(sysctls, dict) else ():
            words = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            if not SYSCTL_KEY.fullmatch(str(key)) or isinstance(value, bool) or not SYSCTL_VALUE.fullmatch(words):
                found.add(h, "base_sysctls", f"{key!r}: {value!r} is not a kernel parameter and its value.",
                          "write it like {'net.ipv4.ip_nonlocal_bind': 1}: a dotted name, and a number or words.")
    return found


# A Debian package name (Debian Policy 5.6.7: lowercase letters, digits, '+', '-' and '.',
# two or more, starting alphanumeric), optionally with an architecture (:arm64) and a version
# (=1.2-3): what apt-get install takes, and nothing a shell or apt option could read.
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?")


def check_packages(fleet, hosts) -> list[Problem]:
    found = Problems(fleet)
    for h in hosts:
        wanted = h.data.get("base_packages")
        if not isinstance(wanted, list):  # the type check names it
            continue
        for name in wanted:
            if not isinstance(name, str) or not PACKAGE.fullmatch(name):
                found.add(h, "base_packages", f"{name!r} is not a Debian package name.",
                          "write the name as `apt-get install` takes it, e.g. 'curl' or 'curl=7.88.1-10+deb12u8'.")
    return found


# What the deploy always writes into sshd_config, whatever base_sshd_settings says: keys only,
# never root. (sshd takes the first value it reads, so a setting in data could otherwise undo
# them, and a base_sshd_settings of its own, replacing the default dict, dropped them.)
SSHD_HARDENED = {
    "PermitRootLogin": "no",
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "PubkeyAuthentication": "yes",
}
# Keywords the template writes itself (from the port map, the vault, or as fixed lines), or that
# would change how the file is read (Include, Match: every line after a Match is conditional).
SSHD_OWN = ("ListenAddress", "Port", "HostKey", "Include", "Match", "UsePAM", "PrintMotd", "AcceptEnv",
            "Subsystem")
# Keywords that decide whether the admin's key logs in: a wrong value passes `sshd -t` and locks
# every later converge out. Restricting who reaches sshd is the tailnet policy's and the
# firewall's job (firewall_lan_ssh).
SSHD_WHO = ("AuthorizedKeysFile", "AuthorizedKeysCommand", "AuthorizedKeysCommandUser", "AuthenticationMethods",
            "AllowUsers", "DenyUsers", "AllowGroups", "DenyGroups")
# Algorithm lists the converge's own SSH client (paramiko) must find one of: a list with none of
# them locks every converge out. A value starting with + or ^ only adds to OpenSSH's defaults; one
# starting with - removes from them: those of Debian 12's OpenSSH 9.2 that paramiko also speaks
# (`sshd -T` on a bookworm host; a newer sshd only adds to them).
SSHD_ALGORITHMS = {"KexAlgorithms": "_preferred_kex", "Ciphers": "_preferred_ciphers", "MACs": "_preferred_macs",
                   "HostKeyAlgorithms": "_preferred_keys"}
SSHD_DEFAULTS_PARAMIKO_SPEAKS = {
    "KexAlgorithms": ("curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "ecdh-sha2-nistp521",
                      "diffie-hellman-group-exchange-sha256", "diffie-hellman-group16-sha512",
                      "diffie-hellman-group14-sha256"),
    "Ciphers": ("aes128-ctr", "aes192-ctr", "aes256-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"),
    "MACs": ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512",
             "hmac-sha1"),
    "HostKeyAlgorithms": ("ssh-ed25519",),  # the host key is the vault's ed25519 key
}


def sshd_settings(data_settings: dict) -> dict:
    """The settings sshd_config gets: SSHD_HARDENED, then the data's others (one that repeats a
    hardened key with its own value is validated to be that value, and written once)."""
    hardened = {key.lower() for key in SSHD_HARDENED}
    return {**SSHD_HARDENED, **{k: v for k, v in (data_settings or {}).items() if str(k).lower() not in hardened}}


def _algorithm_list(value: str):
    """An sshd algorithm list as (removing, named): whether it starts with - (removes from the
    defaults), and whether an algorithm matches one of its patterns. None for a value that
    starts with + or ^ (only adds to the defaults)."""
    import fnmatch

    if value.startswith(("+", "^")):
        return None
    names = [name.strip() for name in value.lstrip("-").split(",") if name.strip()]
    return value.startswith("-"), lambda a: any(fnmatch.fnmatchcase(a, name) for name in names)


def _algorithms_problem(keyword: str, value: str) -> str | None:
    """Why `keyword value` leaves paramiko no algorithm it speaks, or None."""
    import paramiko

    parsed = _algorithm_list(value)
    if parsed is None:
        return None
    removing, named = parsed
    if removing:
        ours = SSHD_DEFAULTS_PARAMIKO_SPEAKS[keyword]
        left = [a for a in ours if not named(a)]
    else:
        ours = getattr(paramiko.Transport, SSHD_ALGORITHMS[keyword])
        left = [a for a in ours if named(a)]
        if keyword == "HostKeyAlgorithms":  # the host key is ed25519: nothing else can be offered
            left = [a for a in left if a == "ssh-ed25519"]
    if left:
        return None
    return f"leaves none the converge's SSH client speaks ({', '.join(ours[:4])}, ...): every later run is locked out"


def _key_types_problem(value: str, admin_keys: list) -> str | None:
    parsed = _algorithm_list(value)
    if parsed is None:
        return None
    removing, named = parsed
    for key in admin_keys:
        kind = str(key).split()[0] if str(key).split() else ""
        accepted = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}.get(kind, (kind,))
        hit = [a for a in accepted if named(a)]
        if (removing and len(hit) == len(accepted)) or (not removing and not hit):
            return f"does not accept the admin key type {kind}: the admin is locked out"
    return None


def check_sshd_settings(fleet, hosts) -> list[Problem]:
    """Each setting becomes one `Key value` line of sshd_config: one line each, no comments;
    none that undoes the deploy's own lines or could keep the admin's key out. A bad setting
    group_data/all.py gives every host is one line, not one per host."""
    found = Problems(fleet)
    hardened = {key.lower(): (key, value) for key, value in SSHD_HARDENED.items()}
    own, who = {k.lower() for k in SSHD_OWN}, {k.lower() for k in SSHD_WHO}
    algorithms = {k.lower(): k for k in SSHD_ALGORITHMS}
    for h in hosts:
        settings = h.data.get("base_sshd_settings") or {}
        for key, value in settings.items() if isinstance(settings, dict) else ():
            word = str(key).lower()
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", str(key)) or not re.fullmatch(r"[^\x00-\x1f#]+", str(value)):
                found.add(h, "base_sshd_settings", f"{key!r}: {value!r} is not one sshd_config setting.",
                          "use sshd's keyword and a one-line value.")
            elif word in hardened and str(value).strip().lower() != hardened[word][1]:
                found.add(h, "base_sshd_settings", f"{key!r}: {value!r} would undo key-only logins without root "
                          f"(the deploy always writes {hardened[word][0]} {hardened[word][1]}).", "leave it out.")
            elif word in own:
                found.add(h, "base_sshd_settings", f"{key!r} is written by the deploy (listen addresses from the "
                          "port map, the host key from the vault, PAM and sftp as Debian has them).", "leave it out.")
            elif word in who:
                found.add(h, "base_sshd_settings", f"{key!r} decides whether the admin's key logs in: a wrong value "
                          "passes `sshd -t` and locks every later converge out.",
                          "leave it out; restrict who reaches sshd with the tailnet policy and firewall_lan_ssh.")
            elif word in algorithms and (why := _algorithms_problem(algorithms[word], str(value))):
                found.add(h, "base_sshd_settings", f"{key!r}: {value!r} {why}.",
                          "keep one the converge speaks, or add with a leading '+'.")
            elif word in ("pubkeyacceptedalgorithms", "pubkeyacceptedkeytypes") and (
                    why := _key_types_problem(str(value), h.data.get("base_admin_ssh_keys") or [])):
                found.add(h, "base_sshd_settings", f"{key!r}: {value!r} {why}.",
                          "include the admin keys' types, or add with a leading '+'.")
    return found


COMPONENT = Component(
    name="base",
    deploy=base,
    defaults=DEFAULTS,
    secrets=host_key,
    rules=(check_admin, check_packages, check_sshd_settings, check_lock_timeout, check_sysctls,
           matches("base_timezone", ZONE, "a timezone name", "use a name from /usr/share/zoneinfo, like 'UTC' or "
                   "'Europe/Berlin' (timedatectl list-timezones).")),
    types={"base_time_sync_running": (bool, type(None))},
)
