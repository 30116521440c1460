"""The network specs fail when a host really exposes a wildcard listener, and pass again
once it is gone: proof that net-01 and net-02 can fail."""

import pytest

from integration.conftest import docker_exec, run_specs, wait_until

HOST = "pi5-beta"

TCP_SERVER = "import http.server as h; h.HTTPServer.address_family = __import__('socket').{fam}; h.HTTPServer(('{addr}', {port}), h.BaseHTTPRequestHandler).serve_forever()"
UDP_SERVER = "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', {port})); time.sleep(300)"


def listening(proto: str, port: int) -> bool:
    flag = "-tln" if proto == "tcp" else "-uln"
    out = docker_exec(HOST, "ss", "-H", flag, check=False).stdout
    return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if line.strip())


def start(code: str, proto: str, port: int, marker: str):
    docker_exec(HOST, "python3", "-c", f"# {marker}\n{code}", detach=True)
    wait_until(lambda: listening(proto, port), f"{proto}/{port} listening on {HOST}")


def stop(marker: str, proto: str, port: int):
    docker_exec(HOST, "pkill", "-f", marker, check=False)
    wait_until(lambda: not listening(proto, port), f"{proto}/{port} closed on {HOST}")


@pytest.mark.parametrize("fam,addr,shown", [
    ("AF_INET", "0.0.0.0", "0.0.0.0:8099"),
    ("AF_INET6", "::", ":::8099"),
], ids=["ipv4", "ipv6"])
def test_net01_fails_on_a_wildcard_tcp_listener(fam, addr, shown):
    marker = f"fleet-net01-probe-{fam}"
    start(TCP_SERVER.format(fam=fam, addr=addr, port=8099), "tcp", 8099, marker)
    try:
        run = run_specs("net01", HOST)
        assert run.returncode == 1, run.stdout
        assert f"{HOST}: TCP listeners on a wildcard address" in run.stdout
        assert shown.replace(":::", "::") in run.stdout.replace(":::", "::")
    finally:
        stop(marker, "tcp", 8099)
    again = run_specs("net01", HOST)
    assert again.returncode == 0, again.stdout


def test_net02_fails_on_an_unlisted_udp_wildcard():
    marker = "fleet-net02-probe"
    start(UDP_SERVER.format(port=5999), "udp", 5999, marker)
    try:
        run = run_specs("net02", HOST)
        assert run.returncode == 1, run.stdout
        assert "not in net_udp_wildcard_allowlist: [5999]" in run.stdout
    finally:
        stop(marker, "udp", 5999)
    assert run_specs("net02", HOST).returncode == 0
