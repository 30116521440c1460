"""Grafana: grafana.ini, the provisioning files and the fleet dashboard rendered from the
inventory, the checks they pass before upload, the admin password's file, and the rules."""

import copy
import json

import yaml

from deploys import grafana as g
from fleet.converge import component as registry
from fleet.preflight.validate import problems

HOST = "pi400-delta"


def rendered(data):
    fleet = data.fleet()
    d = fleet.hosts[HOST].data
    return fleet, d, g.dashboard(d, fleet.services)


def rows(board) -> list[str]:
    return [p["title"] for p in board["panels"] if p["type"] == "row"]


def panels_of(board, host) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row" and p["title"].startswith(f"{host}: ")]


def test_ini_binds_the_tailnet_address_and_holds_no_password(data):
    fleet = data.fleet()
    ini = g.render_ini(HOST, fleet.hosts[HOST].data, fleet.services)
    lines = ini.splitlines()
    assert "http_addr = 100.100.0.4" in lines and "http_port = 3000" in lines
    # the password is a reference to its file, which the vault fills; nothing else names it
    assert [line for line in lines if "password" in line and not line.startswith("#")] == [
        "admin_password = $__file{/etc/grafana/admin_password}"]
    assert "admin_user = admin" in lines
    for section, key, value in (("auth.anonymous", "enabled", "false"), ("users", "allow_sign_up", "false"),
                                ("analytics", "reporting_enabled", "false"),
                                ("analytics", "check_for_updates", "false"),
                                ("paths", "data", "/var/lib/grafana"), ("paths", "logs", "/var/log/grafana"),
                                ("paths", "provisioning", "/etc/grafana/provisioning")):
        start = lines.index(f"[{section}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        assert f"{key} = {value}" in lines[start:end], (section, key)


def test_the_password_file_is_a_secret_file_for_grafana(data):
    fleet = data.fleet()
    for name, h in fleet.hosts.items():
        files = [s for s in registry.secret_files(name, h.groups, h.data) if s.key == "grafana_admin_password"]
        if name == HOST:
            assert [(s.path, s.user, s.group, s.mode) for s in files] == [
                ("/etc/grafana/admin_password", "root", "grafana", "640")]
        else:
            assert files == []


def test_datasource_is_the_monitoring_prometheus_with_a_stable_uid(data):
    fleet = data.fleet()
    doc = g.datasources(HOST, fleet.hosts[HOST].data, fleet.services)
    [source] = doc["datasources"]
    assert doc["apiVersion"] == 1
    assert source["uid"] == "fleet-prometheus" and source["name"] == "Prometheus" and source["isDefault"] is True
    assert source["url"] == fleet.services.url("prometheus", server=HOST, client=HOST) == "http://100.100.0.4:9090"
    assert source["jsonData"]["timeInterval"] == fleet.hosts[HOST].data["prometheus_scrape_interval"]
    # the dashboard's queries name that uid; more hosts change neither
    _, _, board = rendered(data)
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert uids == {"fleet-prometheus"}
    data.hosts["pi5-zeta"] = {**copy.deepcopy(data.hosts["pi5-beta"]), "tailnet_address": "100.100.0.6",
                              "tailnet_name": "pi5-zeta", "lan_address": "192.168.1.16/24"}
    fleet = data.fleet()
    assert g.datasources(HOST, fleet.hosts[HOST].data, fleet.services)["datasources"][0]["uid"] == "fleet-prometheus"
    data.group_data["monitoring"]["grafana_datasource_uid"] = "other-uid"
    fleet, d, board = rendered(data)
    assert g.datasources(HOST, d, fleet.services)["datasources"][0]["uid"] == "other-uid"
    assert {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])} == {"other-uid"}


def test_a_row_per_host_and_a_new_host_adds_its_row_with_no_other_edit(data):
    fleet, _, before = rendered(data)
    assert rows(before) == [*fleet.hosts, "Service probes"]
    assert before["uid"] == "fleet-overview" and before["title"] == "Fleet overview"
    data.hosts["pi5-zeta"] = {**copy.deepcopy(data.hosts["pi5-beta"]), "tailnet_address": "100.100.0.6",
                              "tailnet_name": "pi5-zeta", "lan_address": "192.168.1.16/24"}
    fleet, _, after = rendered(data)
    assert rows(after) == [*rows(before)[:-1], "pi5-zeta", "Service probes"]
    new = panels_of(after, "pi5-zeta")
    assert [p["title"] for p in new] == [f"pi5-zeta: {t}" for t in ("Up", "CPU", "Memory", "Disk", "Temperature")]
    assert all('host="pi5-zeta"' in p["targets"][0]["expr"] for p in new)
    # the existing hosts' rows are untouched
    for host in rows(before)[:-1]:
        assert panels_of(after, host) == panels_of(before, host)
    ids = [p["id"] for p in after["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_query_node_exporter_by_host_and_temperature_only_where_exposed(data):
    fleet, _, board = rendered(data)
    alpha = {p["title"].split(": ")[1]: p["targets"][0]["expr"] for p in panels_of(board, "pi5-alpha")}
    assert alpha["Up"] == 'up{host="pi5-alpha"}'
    assert 'node_cpu_seconds_total{host="pi5-alpha",mode="idle"}' in alpha["CPU"]
    assert "node_memory_MemAvailable_bytes" in alpha["Memory"] and "node_filesystem_avail_bytes" in alpha["Disk"]
    assert "node_thermal_zone_temp" in alpha["Temperature"] and "node_hwmon_temp_celsius" in alpha["Temperature"]
    for host in ("jetson-prime", "droplet-failover"):  # not Pis
        assert "Temperature" not in [p["title"].split(": ")[1] for p in panels_of(board, host)]
    data.hosts["jetson-prime"]["grafana_temperature"] = True  # its data says it exposes one
    _, _, board = rendered(data)
    assert "jetson-prime: Temperature" in [p["title"] for p in panels_of(board, "jetson-prime")]
    for p in board["panels"]:  # every row uses the dashboard's full width, no overlap
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_a_probe_panel_per_probed_service(data):
    fleet, _, board = rendered(data)
    services = fleet.services
    probed = [s for s in services.services if services.probe(s) and services.hosts_running(s)]
    assert "ssh" in probed and "llm" in probed and "web" not in probed
    probes = [p for p in board["panels"] if p["title"].startswith("Probe: ")]
    assert [p["targets"][0]["expr"] for p in probes] == [f'fleet_probe_success{{service="{s}"}}' for s in probed]
    assert all(p["targets"][0]["legendFormat"] == "{{target}}" for p in probes)


def test_files_are_deterministic_and_pass_their_checks(data):
    fleet, d, board = rendered(data)
    ds = g.dump_yaml(g.datasources(HOST, d, fleet.services))
    prov = g.dump_yaml(g.providers())
    text = g.dump_json(board)
    assert g.check_files(ds, prov, text) == []
    assert text == g.dump_json(g.dashboard(copy.deepcopy(d), data.fleet().services))  # same bytes again
    assert json.loads(text) == board and text.endswith("\n")
    assert list(json.loads(text)) == sorted(board)  # sorted keys
    assert yaml.safe_load(prov)["providers"][0]["options"]["path"] == g.DASHBOARDS_DIR
    assert yaml.safe_load(ds) == g.datasources(HOST, d, fleet.services)


def test_checks_refuse_what_grafana_would(data):
    fleet, d, board = rendered(data)
    ds_doc = g.datasources(HOST, d, fleet.services)
    ds, prov = g.dump_yaml(ds_doc), g.dump_yaml(g.providers())
    two = copy.deepcopy(ds_doc)
    two["datasources"].append({**two["datasources"][0], "name": "Other", "uid": "other"})
    assert any("only one data source may be the default" in e
               for e in g.check_files(g.dump_yaml(two), prov, g.dump_json(board)))
    assert any("does not parse back" in e for e in g.check_files(ds, prov, g.dump_json(board)[:-10]))
    twins = copy.deepcopy(board)
    twins["panels"][1]["id"] = twins["panels"][0]["id"]
    assert any("share an id" in e for e in g.check_files(ds, prov, g.dump_json(twins)))
    assert any(g.PROVIDERS in e for e in g.check_files(ds, "apiVersion: 1\nproviders: [{name: x}]\n", g.dump_json(board)))


def test_login_check_never_carries_the_password():
    fact = g.AdminLogin()
    command = fact.command(address="100.100.0.4:3000", user="admin", password_file="/etc/grafana/admin_password",
                           unit="grafana-server.service", wait=120)
    assert "/etc/grafana/admin_password" in command and "100.100.0.4:3000" in command
    assert fact.process(["ok"]) == "ok" and fact.process(["refused"]) == "refused"
    assert fact.process([]) is None and fact.process(["Traceback"]) is None


def test_an_unpinned_key_is_refused_with_one_line_saying_how_to_pin_it(data):
    del data.group_data["monitoring"]["grafana_apt"]  # the default: key_sha256 ""
    found = [str(p) for p in problems(data.fleet()) if "grafana" in p.key]
    assert len(found) == 1, found
    [line] = found
    assert "\n" not in line
    assert line.startswith("pi400-delta: grafana_apt.key_sha256: '' is not a pinned SHA-256")
    assert "curl -fsSL https://apt.grafana.com/gpg.key | sha256sum" in line
    assert "gpg --show-keys" in line and "installation docs" in line and "rotation" in line
    data.group_data["monitoring"]["grafana_apt"] = {**g.DEFAULTS["grafana_apt"], "key_sha256": "ABC"}
    assert [p.key for p in problems(data.fleet()) if "grafana" in p.key] == ["grafana_apt.key_sha256"]


def test_rules_name_the_key_and_the_fix(data):
    monitoring = data.group_data["monitoring"]
    monitoring["grafana_apt"] = {**monitoring["grafana_apt"], "suites": "stable main"}
    monitoring["grafana_version"] = "latest"
    monitoring["grafana_datasource_uid"] = "has space"
    monitoring["grafana_dashboard_uid"] = "x" * 41
    monitoring["grafana_admin_user"] = "admin user"
    monitoring["grafana_data_dir"] = "relative/dir"
    monitoring["grafana_temperature_groups"] = ["pies"]
    found = [str(p) for p in problems(data.fleet()) if "grafana" in p.key]
    for wanted in ("grafana_apt: grafana_apt apt source: suites must be one line",
                   "grafana_version: 'latest' is not a Grafana package version.",
                   "grafana_datasource_uid: 'has space' is not a Grafana uid.",
                   "grafana_dashboard_uid: 'xxxx", "grafana_admin_user: 'admin user' is not a usable login.",
                   "grafana_data_dir: 'relative/dir' is not a directory a service may own.",
                   "grafana_temperature_groups: 'pies' is not a group."):
        assert any(wanted in p for p in found), (wanted, found)
    assert all(p.startswith("pi400-delta: ") and " Fix: " in p for p in found)


def test_grafana_needs_a_reachable_prometheus(data):
    data.all_data["fleet_services"] = copy.deepcopy(data.all_data["fleet_services"])
    # a Prometheus on another host that binds loopback only: Grafana cannot reach it
    data.all_data["fleet_services"]["prometheus"].update(bind=["loopback"], groups=["database"])
    found = [str(p) for p in problems(data.fleet()) if p.key == "fleet_services" and "Grafana" in p.message]
    assert found and all("Prometheus it can reach" in p for p in found)
