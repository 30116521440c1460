"""Ingress baseline (hosts running cloudflared): it runs, routes every domain where the
maps say, ends with the catch-all and keeps its metrics on loopback."""

import yaml

from specs.conftest import fleet_services, listening

CONFIG = "/etc/cloudflared/config.yml"


def expected_routes(fh) -> dict[str, str]:
    """hostname -> service URL, from the domain map and the port map (not from the deploy):
    each domain's service as this tunnel host reaches it."""
    services = fleet_services()
    out = {}
    for domain, route in fh.data["fleet_domains"].items():
        if route["tunnel"] == fh.name:
            out[domain] = services.url(route["service"], server=route["host"], client=fh.name)
    if services.runs("maintenance", fh.name):
        page = services.url("maintenance", server=fh.name, client=fh.name)
        for domain in fh.data["edge_failover_domains"]:
            out[domain.replace("*", "any-name")] = page
    return out


# cloudflared's answer per (host, URL), asked once per run: cf-02 and app-06 ask it for the
# same domains, and the specs do not change the ingress they read.
_RULES: dict[tuple[str, str], str] = {}


def rule_for(fh, url: str) -> str:
    if (fh.name, url) not in _RULES:
        out = fh.host.check_output(f"cloudflared tunnel --config {CONFIG} ingress rule {url}")
        _RULES[fh.name, url] = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                                    if line.strip().startswith("service:"))
    return _RULES[fh.name, url]


def test_cf01_running(fh):
    """cf-01: cloudflared is enabled and running, as its own system user."""
    svc = fh.host.service("cloudflared")
    assert svc.is_enabled and svc.is_running
    user = fh.host.check_output("systemctl show -p User --value cloudflared")
    assert user == fh.data["cloudflared_user"]


def test_cf02_every_domain_routes_where_the_maps_say(fh):
    """cf-02: for every domain the tunnel carries, cloudflared's own matching picks the
    service the domain map and port map name."""
    routes = expected_routes(fh)
    assert routes, f"{fh.name} carries no domain"
    for domain, service in routes.items():
        assert rule_for(fh, f"https://{domain}") == service, domain


def test_cf03_catch_all_last(fh):
    """cf-03: the last rule is the catch-all http_status:404, and unknown hosts hit it."""
    ingress = yaml.safe_load(fh.host.file(CONFIG).content_string)["ingress"]
    assert ingress[-1] == {"service": "http_status:404"}
    assert all("hostname" in rule for rule in ingress[:-1])
    assert rule_for(fh, "https://not-routed.example.com") == "http_status:404"


def test_cf04_metrics_on_loopback(fh):
    """cf-04: the metrics endpoint listens on 127.0.0.1 only and reports ready."""
    metrics = fleet_services().bind("cloudflared-metrics", fh.name)
    assert metrics.address == "127.0.0.1"
    assert {a for a, p in listening(fh, "tcp") if p == metrics.port} == {"127.0.0.1"}
    assert fh.host.run(f"curl -fsS --max-time 5 http://{metrics}/ready").rc == 0
