"""sshd baseline, asserted on sshd's own parsed view of its config (`sshd -T`)."""

import pytest

from specs.conftest import listening


def sshd_effective(fh) -> dict[str, list[str]]:
    out = fh.host.check_output("/usr/sbin/sshd -T")
    parsed: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        parsed.setdefault(key.lower(), []).append(value.strip())
    return parsed


@pytest.mark.parametrize("spec_id,key,wanted", [
    ("ssh-01", "passwordauthentication", "no"),
    ("ssh-02", "permitrootlogin", "no"),
    ("ssh-03", "kbdinteractiveauthentication", "no"),
    ("ssh-04", "pubkeyauthentication", "yes"),
], ids=["ssh-01", "ssh-02", "ssh-03", "ssh-04"])
def test_ssh_setting(fh, spec_id, key, wanted):
    """ssh-01..04: passwords, root login and keyboard-interactive off; keys on."""
    assert sshd_effective(fh)[key] == [wanted], f"{spec_id} {fh.name}: {key}"


def expected_endpoints(fh) -> set[str]:
    port = fh.data["fleet_services"]["ssh"]["port"]
    return {f"{fh.lan_address}:{port}", f"{fh.tailnet_address}:{port}"}


def test_ssh05_listen_addresses_configured(fh):
    """ssh-05: sshd is configured to listen on exactly the LAN and tailnet addresses."""
    assert set(sshd_effective(fh)["listenaddress"]) == expected_endpoints(fh)


def test_ssh06_listening_exactly(fh):
    """ssh-06: the live sockets on the ssh port are exactly LAN + tailnet (no wildcard)."""
    port = fh.data["fleet_services"]["ssh"]["port"]
    live = {f"{a}:{p}" for a, p in listening(fh, "tcp") if p == port}
    assert live == expected_endpoints(fh)


def test_ssh07_no_socket_activation(fh):
    """ssh-07: ssh.socket is off (it would hold the port on every address) and ssh.service runs."""
    assert not fh.host.service("ssh.socket").is_enabled
    assert fh.host.service("ssh.service").is_running
    assert fh.host.service("ssh.service").is_enabled


def test_ssh08_admin_keys_exact(fh):
    """ssh-08: the admin account authorizes exactly the keys in data (no stray keys)."""
    user = fh.data["ssh_user"]
    path = f"/home/{user}/.ssh/authorized_keys"
    f = fh.host.file(path)
    assert f.user == user and f.mode & 0o077 == 0, f"{path} must be owned by {user}, not group/world accessible"
    present = {line.strip() for line in f.content_string.splitlines() if line.strip()}
    assert present == set(fh.data["base_admin_ssh_keys"])


def test_ssh09_admin_sudo_without_password(fh):
    """ssh-09: the admin account (key-only, no password) can use sudo non-interactively."""
    assert fh.user_host.run("sudo -n true").rc == 0
