"""Ingress baseline: cloudflared runs, routes every domain where the maps say, ends with
the catch-all, keeps metrics on loopback; the failover's maintenance page answers."""

import pytest
import yaml

from fleet.secrets import CLOUDFLARED_GROUPS
from specs.conftest import listening

CONFIG = "/etc/cloudflared/config.yml"
tunnel_hosts = pytest.mark.fleet_hosts(lambda groups, data: set(groups) & set(CLOUDFLARED_GROUPS))
failover_hosts = pytest.mark.fleet_hosts(lambda groups, data: "failover" in groups)


def expected_routes(fh, inventory_hosts) -> dict[str, str]:
    """hostname -> service URL, from the domain map and port map (not from the deploy)."""
    services = fh.data["fleet_services"]
    out = {}
    for domain, route in fh.data["fleet_domains"].items():
        if route["tunnel"] != fh.name:
            continue
        target = inventory_hosts[route["host"]]
        svc = next(s for s in services.values() if s["port"] == route["port"]
                   and ("all" in s["groups"] or set(s["groups"]) & set(target.groups)))
        if route["host"] == fh.name and "loopback" in svc["bind"]:
            out[domain] = f"http://127.0.0.1:{route['port']}"
        else:
            out[domain] = f"http://{target.tailnet_address}:{route['port']}"
    if "failover" in fh.groups:
        for domain in fh.data["edge_failover_domains"]:
            out[domain.replace("*", "any-name")] = f"http://127.0.0.1:{services['maintenance']['port']}"
    return out


def rule_for(fh, url: str) -> str:
    out = fh.host.check_output(f"cloudflared tunnel --config {CONFIG} ingress rule {url}")
    return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.strip().startswith("service:"))


@tunnel_hosts
def test_cf01_running(fh):
    """cf-01: cloudflared is enabled and running, as its own system user."""
    svc = fh.host.service("cloudflared")
    assert svc.is_enabled and svc.is_running
    user = fh.host.check_output("systemctl show -p User --value cloudflared")
    assert user == fh.data["cloudflared_user"]


@tunnel_hosts
def test_cf02_every_domain_routes_where_the_maps_say(fh):
    """cf-02: for every domain the tunnel carries, cloudflared's own matching picks the
    service the domain map and port map name."""
    from specs.conftest import _FLEET

    routes = expected_routes(fh, _FLEET.hosts)
    assert routes, f"{fh.name} carries no domain"
    for domain, service in routes.items():
        assert rule_for(fh, f"https://{domain}") == service, domain


@tunnel_hosts
def test_cf03_catch_all_last(fh):
    """cf-03: the last rule is the catch-all http_status:404, and unknown hosts hit it."""
    ingress = yaml.safe_load(fh.host.file(CONFIG).content_string)["ingress"]
    assert ingress[-1] == {"service": "http_status:404"}
    assert all("hostname" in rule for rule in ingress[:-1])
    assert rule_for(fh, "https://not-routed.example.com") == "http_status:404"


@tunnel_hosts
def test_cf04_metrics_on_loopback(fh):
    """cf-04: the metrics endpoint listens on 127.0.0.1 only and reports ready."""
    port = fh.data["fleet_services"]["cloudflared-metrics"]["port"]
    assert {a for a, p in listening(fh, "tcp") if p == port} == {"127.0.0.1"}
    assert fh.host.run(f"curl -fsS --max-time 5 http://127.0.0.1:{port}/ready").rc == 0


@failover_hosts
def test_mp01_maintenance_page(fh):
    """mp-01: the maintenance page answers every path (503) and /health (200) on 127.0.0.1
    only, and the failover tunnel sends the wildcard domains to it."""
    port = fh.data["fleet_services"]["maintenance"]["port"]
    assert {a for a, p in listening(fh, "tcp") if p == port} == {"127.0.0.1"}
    page = fh.host.run(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/any/path")
    assert page.stdout == "503"
    assert fh.host.run(f"curl -fsS http://127.0.0.1:{port}/health").rc == 0
    body = fh.host.check_output(f"curl -s http://127.0.0.1:{port}/")
    assert "temporarily offline" in body
