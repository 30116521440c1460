"""Tailscale baseline: the daemon, the node's identity in the tailnet, its UDP port."""

import json

from deploys.tailscale import wanted_tags
from specs.conftest import WILDCARDS, listening


def status(fh) -> dict:
    return json.loads(fh.host.check_output("tailscale status --json"))


def test_ts01_daemon(fh):
    """ts-01: tailscaled is enabled and running, at the pinned version."""
    svc = fh.host.service("tailscaled")
    assert svc.is_enabled and svc.is_running
    assert fh.host.package("tailscale").version == fh.data["tailscale_version"]


def test_ts02_node_identity(fh):
    """ts-02: the node is up with the inventory's hostname and its groups' tags."""
    s = status(fh)
    assert s["BackendState"] == "Running"
    assert s["Self"]["HostName"] == fh.data["tailnet_name"]
    assert sorted(s["Self"].get("Tags") or []) == wanted_tags(fh.groups, fh.data["tailscale_tags_by_group"])


def test_ts03_tailnet_address(fh):
    """ts-03: the node's tailnet IPv4 is the inventory's (every bind address depends on it)."""
    assert fh.host.check_output("tailscale ip -4").split() == [fh.tailnet_address]


def test_ts04_udp_port(fh):
    """ts-04: tailscaled holds exactly its configured UDP port on a wildcard, nothing else."""
    port = fh.data["tailscale_port"]
    procs = fh.host.check_output("ss -H -ulnp")
    wild = {p for a, p in listening(fh, "udp") if a in WILDCARDS}
    assert port in wild, f"tailscaled is not listening on UDP {port}"
    lines = [line for line in procs.splitlines() if f":{port} " in line]
    assert lines and all("tailscaled" in line for line in lines)
    assert f'PORT="{port}"' in fh.host.file("/etc/default/tailscaled").content_string
