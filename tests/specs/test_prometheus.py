"""Prometheus and Alertmanager on the monitoring hosts: the tailnet address only, every
target the inventory implies is up, every rule loaded and healthy, and the settings from data.
The API is read from the test runner over the tailnet; every wait is bounded."""

import json
import time
import urllib.request

from specs.conftest import fleet_services, listening

# A converge may have just reloaded Prometheus: its first scrape and rule evaluation come
# within one interval (30 s by default). Waits below are bounded by this.
SETTLE_S = 75


def api(fh, path: str) -> dict:
    endpoint = fleet_services().bind("prometheus", fh.name, "tailnet")
    with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=10) as answer:
        return json.load(answer)["data"]


def settled(check, timeout: float = SETTLE_S):
    """check() -> (ok, detail); retried every 3 s until ok or the bound, then the last detail."""
    deadline = time.monotonic() + timeout
    while True:
        ok, detail = check()
        if ok or time.monotonic() > deadline:
            return ok, detail
        time.sleep(3)


def test_mon01_prometheus_and_alertmanager_listen_on_the_tailnet_only(fh):
    """mon-01: both daemons run and listen exactly on the tailnet address at the port map's
    ports; Alertmanager's cluster listener (0.0.0.0:9094 by default) is off."""
    for unit, service in (("prometheus", "prometheus"), ("prometheus-alertmanager", "alertmanager")):
        svc = fh.host.service(unit)
        assert svc.is_enabled and svc.is_running, unit
        port = fleet_services().port(service)
        assert {a for a, p in listening(fh, "tcp") if p == port} == {fh.tailnet_address}, unit
    assert not [p for a, p in listening(fh, "tcp") if p == 9094]
    assert not [p for a, p in listening(fh, "udp") if p == 9094]


def test_mon02_every_expected_target_is_up(fh):
    """mon-02: each (service, host) with metrics in the port map is a target, labelled with
    its host, groups and service, and up."""
    expected = {(service, host) for service, host, _, _ in fleet_services().scrape_targets()}

    def check():
        seen = {(t["labels"].get("service"), t["labels"].get("host")): t for t in api(fh, "/api/v1/targets")["activeTargets"]}
        down = {k: seen[k]["health"] + " " + seen[k].get("lastError", "") for k in expected if k in seen and seen[k]["health"] != "up"}
        return not down and expected <= set(seen), {"missing": sorted(expected - set(seen)), "not up": down}

    ok, detail = settled(check)
    assert ok, detail
    targets = api(fh, "/api/v1/targets")["activeTargets"]
    node = next(t for t in targets if t["labels"].get("service") == "node-exporter" and t["labels"]["host"] == "pi5-gamma")
    assert node["labels"]["groups"] == ",pis,database,"


def test_mon03_every_rule_file_is_loaded_and_no_rule_is_in_error(fh):
    """mon-03: the fleet's rule file is loaded, its alerts are there, none is in error, and
    the last config reload succeeded."""
    def check():
        groups = api(fh, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
        names = {r["name"] for r in rules}
        unevaluated = [r["name"] for r in rules if r.get("health") == "unknown"]
        return not bad and not unevaluated and {"TargetDown", "BackupStale"} <= names, \
            {"in error": bad, "not evaluated": unevaluated, "files": sorted({g["file"] for g in groups})}

    ok, detail = settled(check)
    assert ok, detail
    files = {g["file"] for g in api(fh, "/api/v1/rules")["groups"]}
    assert "/etc/prometheus/rules/fleet.rules.yml" in files
    assert fh.host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert "prometheus_config_last_reload_successful 1" in fh.host.check_output(
        f"curl -fsS http://{fleet_services().bind('prometheus', fh.name, 'tailnet')}/metrics")


def test_mon04_alertmanager_is_prometheus_s_and_its_config_is_valid(fh):
    """mon-04: Prometheus sends alerts to the inventory's Alertmanager, whose config passes
    amtool and is not world-readable (a webhook URL may be a secret)."""
    active = [a["url"] for a in api(fh, "/api/v1/alertmanagers")["activeAlertmanagers"]]
    assert active == [f"http://{fleet_services().bind('alertmanager', fh.name, 'tailnet')}/api/v2/alerts"]
    assert fh.host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0
    config = fh.host.file("/etc/prometheus/alertmanager.yml")
    assert config.mode == 0o640 and config.user == "root" and config.group == "prometheus"


def test_mon05_storage_and_retention_come_from_data(fh):
    """mon-05: the data directory, time and size retention are the data's."""
    flags = api(fh, "/api/v1/status/flags")
    assert flags["storage.tsdb.path"] == fh.data["prometheus_data_dir"]
    assert flags["storage.tsdb.retention.time"] == fh.data["prometheus_retention_time"]
    # Prometheus's sizes are powers of 1024 and it prints them so: "4GB" is shown as "4GiB"
    assert flags["storage.tsdb.retention.size"].replace("iB", "B") == fh.data["prometheus_retention_size"]
    assert flags["web.listen-address"] == str(fleet_services().bind("prometheus", fh.name, "tailnet"))
