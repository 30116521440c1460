"""Secrets on hosts: private files only, and the host identity from the vault."""

import hashlib

from fleet.converge.keys import host_key_name, public_host_key, secret


def test_sec01_secret_file_private(fh, secret_file):
    """sec-01: every secret file is mode 0600 and owned by the service user that reads it."""
    f = fh.host.file(secret_file.path)
    assert f.exists, f"{fh.name}: {secret_file.path} is missing"
    assert oct(f.mode) == oct(int(secret_file.mode, 8)), f"{fh.name}: {secret_file.path} mode {oct(f.mode)}"
    assert (f.user, f.group) == (secret_file.user, secret_file.group)


def test_sec02_secret_file_matches_vault(fh, secret_file):
    """sec-02: each secret file holds the vault's current value (compared by hash, never read back)."""
    wanted = hashlib.sha256(secret_file.content(secret(secret_file.key)).encode()).hexdigest()
    assert fh.host.file(secret_file.path).sha256sum == wanted


def test_ssh10_host_identity_from_vault(fh):
    """ssh-10: the host presents the ed25519 identity in the vault (rebuilds keep known_hosts valid)."""
    wanted = public_host_key(secret(host_key_name(fh.name))).split()[:2]
    assert fh.host.file("/etc/ssh/ssh_host_ed25519_key.pub").content_string.split()[:2] == wanted
    offered = fh.host.check_output("/usr/sbin/sshd -T | awk '$1 == \"hostkey\" {print $2}'").split()
    assert offered == ["/etc/ssh/ssh_host_ed25519_key"], "only the vault's key may be offered"
