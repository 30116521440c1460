"""Monitoring generated from the inventory: scrape targets, alert rules (checked and unit
tested with Debian's promtool), Alertmanager's config, and the node exporter's arguments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploys import node_exporter, prometheus
from fleet.preflight.validate import problems as find_problems

PROMTOOL = shutil.which("promtool") or str(Path(__file__).resolve().parents[2] / ".venv/bin/promtool")
TESTS = Path(__file__).parent / "promtool"
needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(),
                                    reason="promtool is missing: `make setup` takes it from Debian's prometheus package")


def effective(fleet, name):
    return fleet.hosts[name].data


def targets(config) -> dict[str, dict[str, str]]:
    """job -> {host: target}"""
    return {job["job_name"]: {s["labels"]["host"]: s["targets"][0] for s in job["static_configs"]}
            for job in config["scrape_configs"]}


def test_every_host_and_metrics_service_is_scraped_with_its_labels(data):
    fleet = data.fleet()
    config = prometheus.scrape_config(effective(fleet, "pi400-delta"), fleet.services)
    jobs = targets(config)
    assert set(jobs["node-exporter"]) == set(fleet.hosts)
    assert jobs["node-exporter"]["pi5-gamma"] == "100.100.0.3:9100"
    assert jobs["postgres-exporter"] == {"pi5-gamma": "100.100.0.3:9187"}
    assert jobs["prometheus"] == {"pi400-delta": "100.100.0.4:9090"}
    assert jobs["alertmanager"] == {"pi400-delta": "100.100.0.4:9093"}
    assert "llm" not in jobs  # Ollama has no /metrics; vLLM does (below)
    static = next(j for j in config["scrape_configs"] if j["job_name"] == "node-exporter")["static_configs"]
    labels = next(s["labels"] for s in static if s["labels"]["host"] == "pi5-alpha")
    assert labels == {"host": "pi5-alpha", "groups": ",pis,gateway,agents,", "service": "node-exporter"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["100.100.0.4:9093"]


def test_vllm_metrics_are_scraped_where_the_engine_is_vllm(data):
    data.hosts["jetson-prime"]["llm_engine"] = "vllm"
    fleet = data.fleet()
    jobs = targets(prometheus.scrape_config(effective(fleet, "pi400-delta"), fleet.services))
    assert jobs["llm"] == {"jetson-prime": "100.100.0.10:8080"}


def test_a_new_host_is_scraped_and_alerted_on_with_no_other_edit(data):
    data.hosts["pi5-zeta"] = {**data.hosts["pi5-beta"], "tailnet_address": "100.100.0.6",
                              "lan_address": "192.168.1.16/24", "tailnet_name": "pi5-zeta",
                              "groups": ["pis", "database"]}
    fleet = data.fleet()
    jobs = targets(prometheus.scrape_config(effective(fleet, "pi400-delta"), fleet.services))
    assert jobs["node-exporter"]["pi5-zeta"] == "100.100.0.6:9100"
    assert jobs["postgres-exporter"]["pi5-zeta"] == "100.100.0.6:9187"
    rules = prometheus.alert_rules(effective(fleet, "pi400-delta"), fleet.services)["groups"][0]["rules"]
    stale = [r for r in rules if r["alert"] == "BackupStale"]
    assert {r["labels"]["host"] for r in stale} == {"pi5-gamma", "pi5-zeta"}


def test_node_exporter_listens_on_the_tailnet_address_only(data):
    fleet = data.fleet()
    args = node_exporter.args("pi0-epsilon", effective(fleet, "pi0-epsilon"), fleet.services)
    assert args[0] == "--web.listen-address=100.100.0.5:9100"
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in args
    assert not any("0.0.0.0" in a or "[::]" in a for a in args)


def test_alertmanager_turns_its_cluster_listener_off(data):
    fleet = data.fleet()
    args = prometheus.alertmanager_args("pi400-delta", effective(fleet, "pi400-delta"), fleet.services)
    assert "--cluster.listen-address=" in args and "--web.listen-address=100.100.0.4:9093" in args


def test_a_webhook_url_comes_from_the_vault_and_is_required_there(data):
    data.group_data["monitoring"]["prometheus_alertmanager_receivers"] = {"default": {"webhook_url_key": "alert_webhook"}}
    fleet = data.fleet()
    config = prometheus.alertmanager_config(effective(fleet, "pi400-delta"), lambda key: f"https://hooks.example/{key}")
    assert config["receivers"] == [{"name": "default", "webhook_configs": [
        {"url": "https://hooks.example/alert_webhook", "send_resolved": True}]}]
    assert prometheus.COMPONENT.vault_keys("pi400-delta", effective(fleet, "pi400-delta")) == ["alert_webhook"]


@pytest.mark.parametrize("key, value, message", [
    ("prometheus_retention_size", "4 gigs", "is not a size"),
    ("prometheus_retention_time", "forever", "is not a Prometheus duration"),
    ("prometheus_alert_thresholds", {"disk_used_percent": 120}, "is not a percentage"),
    ("prometheus_alert_thresholds", {"disk_full": 90}, "unknown thresholds"),
    ("prometheus_extra_rules", [{"expr": "up == 0"}], "is not an alert rule"),
    ("prometheus_alertmanager_route", {"receiver": "pager"}, "'pager' is not a receiver"),
])
def test_bad_monitoring_data_is_one_line_naming_the_key(data, key, value, message):
    data.group_data["monitoring"][key] = value
    problems = [str(p) for p in find_problems(data.fleet())]
    assert any(message in p and key in p and "Fix:" in p for p in problems), problems


def write_rules(tmp_path, data) -> Path:
    fleet = data.fleet()
    (tmp_path / "fleet.rules.yml").write_text(prometheus.dump(prometheus.alert_rules(effective(fleet, "pi400-delta"),
                                                                                     fleet.services)))
    return tmp_path / "fleet.rules.yml"


@needs_promtool
def test_promtool_accepts_the_generated_config_and_rules(tmp_path, data):
    fleet = data.fleet()
    rules = write_rules(tmp_path, data)
    config = prometheus.scrape_config(effective(fleet, "pi400-delta"), fleet.services)
    config["rule_files"] = [str(rules)]
    (tmp_path / "prometheus.yml").write_text(prometheus.dump(config))
    for args in (["check", "rules", str(rules)], ["check", "config", str(tmp_path / "prometheus.yml")]):
        run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_alert_rules_pass_their_promtool_unit_tests(tmp_path, data):
    """tests/unit/promtool/*.test.yml: each alert fires when it should, and only then."""
    write_rules(tmp_path, data)
    for test in sorted(TESTS.glob("*.test.yml")):
        shutil.copy(test, tmp_path / test.name)
        run = subprocess.run([PROMTOOL, "test", "rules", test.name], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_refuses_an_invalid_rule_from_data(tmp_path, data):
    """What the deploy's validation step does with a bad extra rule: promtool says no."""
    data.group_data["monitoring"]["prometheus_extra_rules"] = [{"alert": "Broken", "expr": "up ==== 0"}]
    rules = write_rules(tmp_path, data)
    run = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "Broken" in run.stdout + run.stderr or "parse error" in run.stdout + run.stderr
