"""Ingress on the test fleet: a domain-map change restarts cloudflared on that tunnel's host
only; an invalid ingress fails the run before any restart and the tunnel keeps running."""

import json
import runpy

from harness import testfleet
from integration.conftest import UNCHECKED, docker_exec, main_pid, settle

TUNNELS = ("pi5-alpha", "jetson-prime", "droplet-failover")
UNIT = "cloudflared.service"


def test_domain_map_change_restarts_only_that_tunnel():
    domains = runpy.run_path(str(testfleet.REPO / "group_data" / "all.py"))["fleet_domains"]
    domains = dict(domains, **{"docs.blackroad.io": {"host": "pi5-alpha", "service": "web", "tunnel": "pi5-alpha"}})
    before = {h: main_pid(h, UNIT) for h in TUNNELS}
    run = testfleet.converge(["--data", f"fleet_domains={json.dumps(domains)}"], log_name="converge-domains")
    assert run["returncode"] == 0, run["output"][-3000:]
    after = {h: main_pid(h, UNIT) for h in TUNNELS}
    assert [h for h in TUNNELS if before[h] != after[h]] == ["pi5-alpha"]
    rule = docker_exec("pi5-alpha", "cloudflared", "tunnel", "--config", "/etc/cloudflared/config.yml",
                       "ingress", "rule", "https://docs.blackroad.io").stdout
    assert "http://127.0.0.1:3000" in rule
    back = testfleet.converge([], log_name="converge-domains-back")
    assert back["returncode"] == 0
    settle("converge-domains-settled")


def test_ingress_without_catch_all_fails_before_restart():
    host = "pi5-alpha"
    pid = main_pid(host, UNIT)
    config = docker_exec(host, "cat", "/etc/cloudflared/config.yml").stdout
    bad = testfleet.converge(["--limit", host, "--data", "cloudflared_catch_all_service="],
                             log_name="converge-no-catch-all",
                             inventory=UNCHECKED)
    assert bad["returncode"] != 0
    assert "The last ingress rule must match all URLs" in bad["output"]
    assert "validation failed: /etc/cloudflared/config.yml left unchanged" in bad["output"]
    assert main_pid(host, UNIT) == pid, "cloudflared must not restart"
    assert docker_exec(host, "systemctl", "is-active", "cloudflared").stdout.strip() == "active"
    assert docker_exec(host, "cat", "/etc/cloudflared/config.yml").stdout == config
    settle("converge-after-no-catch-all")
