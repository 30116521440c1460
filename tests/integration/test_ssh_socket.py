"""Debian 12's socket-activated sshd: ssh.socket holds port 22 on every address and
ignores ListenAddress. A host switched to it is caught by the specs and converged back to
ssh.service bound to LAN + tailnet, over the very SSH session the socket served."""

from harness import testfleet
from integration.conftest import docker_exec, run_specs, wait_until
from integration.test_sshd_safety import new_ssh_session_works

HOST = "pi400-delta"


def port22_sockets() -> set[str]:
    out = docker_exec(HOST, "ss", "-H", "-tln", "sport", "= :22").stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def test_socket_activated_sshd_is_converged_back():
    docker_exec(HOST, "sh", "-c", "systemctl disable --now ssh.service && systemctl enable --now ssh.socket")
    wait_until(lambda: any(s.startswith(("0.0.0.0:", "*:", "[::]:")) for s in port22_sockets()),
               "ssh.socket holding port 22 on a wildcard")
    assert new_ssh_session_works(HOST).returncode == 0, "the socket-activated sshd must still serve SSH"

    caught = run_specs("ssh06 or ssh07 or net01", HOST)
    assert caught.returncode == 1 and "test_ssh06_listening_exactly" in caught.stdout

    fixed = testfleet.converge(["--limit", HOST], log_name="converge-ssh-socket")
    assert fixed["returncode"] == 0, fixed["output"][-3000:]
    assert fixed["hosts"][HOST]["changed"] >= 2  # socket stopped, service started
    entry = testfleet.load_inventory()[1]["lan_addresses"][HOST].split("/")[0]
    assert port22_sockets() == {f"{entry}:22", f"{testfleet.load_inventory()[0][HOST]['tailnet_address']}:22"}
    assert run_specs("ssh06 or ssh07 or net01", HOST).returncode == 0
    assert new_ssh_session_works(HOST).returncode == 0

    again = testfleet.converge(["--limit", HOST], log_name="converge-ssh-socket-again")
    assert again["returncode"] == 0 and again["changed"] == 0, again["output"][-3000:]
