"""Integration tests drive the Docker test fleet (make fleet-up) and must leave it as found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import testfleet

REPO = Path(__file__).resolve().parents[2]
# the inventory for a converge that must get past the --data checks (see the file)
UNCHECKED = str(Path(__file__).with_name("unchecked_inventory.py").relative_to(REPO))


@pytest.fixture(scope="session", autouse=True)
def _fleet_up():
    if testfleet.status() != 0:
        pytest.fail("the test fleet is not up: run `make fleet-up` first")


def docker_exec(host: str, *cmd: str, detach: bool = False, check: bool = True):
    args = ["docker", "exec", *(["-d"] if detach else []), host, *cmd]
    return subprocess.run(args, check=check, text=True, capture_output=True)


def wait_until(check, what: str, timeout: float = 20, interval: float = 0.25) -> None:
    """Poll `check` a bounded number of times."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_specs(selector: str, hosts: str, data: dict | None = None) -> subprocess.CompletedProcess:
    """Run the spec suite (as `make verify` does) for some hosts; return the finished run.
    `data`: what the converge under test was given with --data (FLEET_SPEC_DATA)."""
    env = dict(os.environ, FLEET_TARGET="test", FLEET_SPEC_HOSTS=hosts,
               FLEET_SPEC_DATA=json.dumps(data or {}))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "testpaths=",
         "tests/specs", "-k", selector],
        cwd=REPO, env=env, text=True, capture_output=True, timeout=300,
    )


def main_pid(host: str, unit: str) -> str:
    """A unit's main PID on a test host: unchanged means not restarted."""
    return docker_exec(host, "systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()


def settle(log_name: str) -> None:
    """A plain converge of the whole test fleet changes nothing: the test left it as found."""
    again = testfleet.converge([], log_name=log_name)
    assert again["returncode"] == 0 and again["changed"] == 0, again["output"][-3000:]


def edge_fake():
    """The fake Cloudflare API (127.0.0.1) as the test fleet's account would hold it before any
    `edge apply`: the data's zones, the tunnels whose credentials the demo vault holds, and the
    Workers and KV namespaces the data keeps. Stop it with .stop()."""
    from deploys.cloudflared import credentials_key
    from fakes.cloudflare_api import FakeCloudflare
    from fleet.converge import keys
    from fleet.preflight.inventory import select_vault
    from fleet.preflight.model import load_group_data

    hosts, test_fleet = testfleet.load_inventory()
    select_vault(REPO, test_fleet, "test")
    vault = keys.current()
    all_data, _ = load_group_data(REPO / "group_data")
    fake = FakeCloudflare(account_id=test_fleet["all_data"]["edge_account_id"])
    for zone in all_data["edge_zones"]:
        fake.add_zone(zone)
    for host in hosts:
        if credentials_key(host) in vault:  # every host that runs cloudflared has them
            creds = json.loads(vault[credentials_key(host)])
            fake.add_tunnel(host, creds["TunnelSecret"], creds["TunnelID"])
    for name in all_data["edge_workers_keep"]:
        fake.add_worker(name)
    for title in all_data["edge_kv_keep"]:
        fake.add_kv(title)
    return fake


def edge_env(cloudflare, **extra: str) -> dict:
    """The environment of an operator command run against the test fleet and the fake API."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(FLEET_TARGET="test", CLOUDFLARE_API_BASE_URL=cloudflare.url, CLOUDFLARE_API_TOKEN=cloudflare.token,
               NO_PROXY="127.0.0.1", **extra)
    return env


def redis(name: str, *commands: list[str]) -> list[str]:
    """Commands to host `name`'s Redis over the tailnet as its first data user, after AUTH (the specs'
    client, tests/specs/test_redis.py: one connection, a 5 s timeout); each reply's first line."""
    from deploys.redis import password_key
    from fleet.converge.keys import secret
    from fleet.preflight.inventory import read_inventory_data, select_vault
    from fleet.preflight.model import build_fleet, load_group_data
    from specs.test_redis import resp

    select_vault(REPO, testfleet.load_inventory()[1], "test")
    hosts, _ = read_inventory_data(REPO / "inventory.py")
    model = build_fleet(hosts, *load_group_data(REPO / "group_data"))
    user = next(iter(model.hosts[name].data["redis_users"]))
    auth, *replies = resp(model.hosts[name].tailnet_address, model.services.port("redis"),
                          ["AUTH", user, secret(password_key(user))], *commands)
    assert auth == "+OK", auth
    return replies
