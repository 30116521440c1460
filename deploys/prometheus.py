"""Prometheus and Alertmanager (monitoring group): Debian's packages on the tailnet address, scrape targets and alert rules generated from the inventory and the port map, every config checked by promtool/amtool before it goes live, and a reload (never a restart) for a config change.

Scrape targets: every service of the port map with a `metrics` path, on every host that runs
it, labelled with `host`, `groups` (",pis,database,") and `service`. Alert rules: the fleet's
own (a target down, disk, memory pressure, a stale backup or restore drill per backed-up
host, a failing or stale health probe, the tunnel down, the LLM endpoint down) from the
thresholds in data, plus `prometheus_extra_rules`. A new host or service is scraped,
probed and alerted on with no other edit.

Both daemons listen on every address by default and start when installed: their ARGS are in
place before the packages are (a drop-in reads /etc/fleet/<daemon>.env after Debian's
/etc/default file). ARGS (listener, storage, retention) need a restart; prometheus.yml, the
rules and alertmanager.yml are reloaded (SIGHUP, Debian's ExecReload), decided from the
host's state so a killed run still owes and gets its reload.

Alertmanager in Debian 12 is 0.25, which has no `url_file` for webhooks: a receiver's
webhook URL (a secret: it often embeds a token) is written into alertmanager.yml, which is
therefore 0640 root:prometheus and never shown in pyinfra's output.
"""

from __future__ import annotations

import re
from io import StringIO

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from fleet.converge import accounts
from fleet.converge.component import Component, Problem
from fleet.converge.daemons import keep_running
from fleet.converge.ops import validated_file
from fleet.converge.render import render
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Where Prometheus keeps its time series (Debian's default). On a Pi, an SSD path here
    # spares the SD card.
    "prometheus_data_dir": "/var/lib/prometheus/metrics2",
    # How long samples are kept (whichever of time and size is hit first).
    "prometheus_retention_time": "30d",
    # The most disk the samples may take: SD-card wear and space on a Pi.
    "prometheus_retention_size": "4GB",
    # How often targets are scraped.
    "prometheus_scrape_interval": "30s",
    # How often alert rules are evaluated.
    "prometheus_evaluation_interval": "30s",
    # The fleet's alert thresholds: how long a target may be down, the disk use (%) and the
    # lowest available memory (%) before an alert, how long a probe may fail, and how stale
    # the prober's results may be (seconds).
    "prometheus_alert_thresholds": {
        "target_down_for": "2m",
        "disk_used_percent": 85,
        "memory_available_percent": 10,
        "probe_failing_for": "2m",
        "prober_stale_seconds": 300,
    },
    # More alert rules, as Prometheus writes them: [{"alert": ..., "expr": ..., "for": ...,
    # "labels": {...}, "annotations": {...}}]. promtool checks them before they go live.
    "prometheus_extra_rules": [],
    # Alertmanager's routing tree (its `route:` section, as Alertmanager writes it).
    "prometheus_alertmanager_route": {
        "receiver": "default",
        "group_by": ["alertname", "host"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
    },
    # Receivers by name: {} receives nothing (alerts show in Prometheus and Alertmanager
    # only); {"webhook_url_key": "<vault key>"} posts them to the URL in that vault secret.
    "prometheus_alertmanager_receivers": {"default": {}},
}

UNITS = {"prometheus": "prometheus.service", "alertmanager": "prometheus-alertmanager.service"}
CONFIG = "/etc/prometheus/prometheus.yml"
RULES_DIR = "/etc/prometheus/rules"
RULES = f"{RULES_DIR}/fleet.rules.yml"
AM_CONFIG = "/etc/prometheus/alertmanager.yml"
AM_DATA = "/var/lib/prometheus/alertmanager"
HEADER = "# Managed by the fleet's prometheus deploy (deploys/prometheus.py); generated from the inventory.\n"
# systemd.time shorthands a backup schedule may use, in seconds (the stale-backup alert's unit).
# The service whose metrics carry other components' (node exporter's textfile collector):
# their own labels win over the target's (the prober's `service` is the service it probed,
# not node-exporter; honor_labels keeps it instead of renaming it exported_service).
TEXTFILE_SERVICE = "node-exporter"
SCHEDULES = {"minutely": 60, "hourly": 3600, "daily": 86400, "weekly": 604800}
DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)\Z")
SIZE = re.compile(r"^[0-9]+(B|KB|MB|GB|TB|PB|EB)\Z")


def dropin(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.d/fleet.conf"


def env_file(daemon: str) -> str:
    return f"/etc/fleet/{daemon}.env"


def dump(document) -> str:
    return HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1000)


# --- what the config says, from the inventory --------------------------------------------------

def scrape_config(data, services: ServiceMap) -> dict:
    jobs: dict[str, list] = {}
    for service, target, endpoint, path in services.scrape_targets():
        groups = services.hosts[target].groups
        jobs.setdefault((service, path), []).append({
            "targets": [str(endpoint)],
            "labels": {"host": target, "groups": f",{','.join(groups)},", "service": service},
        })
    alertmanagers = [str(services.bind("alertmanager", h, "tailnet")) for h in services.hosts_running("alertmanager")]
    return {
        "global": {"scrape_interval": data.get("prometheus_scrape_interval"),
                   "evaluation_interval": data.get("prometheus_evaluation_interval")},
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]},
        "rule_files": [f"{RULES_DIR}/*.yml"],
        "scrape_configs": [{"job_name": service, "metrics_path": path, "static_configs": statics,
                            **({"honor_labels": True} if service == TEXTFILE_SERVICE else {})}
                           for (service, path), statics in jobs.items()],
    }


def schedule_seconds(schedule) -> int | None:
    return SCHEDULES.get(str(schedule).strip())


def _applies(name: str, h) -> bool:
    from fleet.converge.component import ComponentError, component

    try:
        return component(name).applies(h.groups, h.data)
    except ComponentError:  # a fleet without that component (a trimmed-down repository)
        return False


def alert_rules(data, services: ServiceMap) -> dict:
    """The fleet's alert rules, from thresholds in data and the inventory."""
    t = {**DEFAULTS["prometheus_alert_thresholds"], **(data.get("prometheus_alert_thresholds") or {})}
    disk = 'fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|fuse.*"'
    rules = [
        {"alert": "TargetDown", "expr": "up == 0", "for": t["target_down_for"],
         "labels": {"severity": "critical"},
         "annotations": {"summary": "{{ $labels.service }} on {{ $labels.host }} is not answering Prometheus"}},
        {"alert": "DiskAlmostFull",
         "expr": f"100 * (1 - node_filesystem_avail_bytes{{{disk}}} / node_filesystem_size_bytes{{{disk}}}) "
                 f"> {t['disk_used_percent']}",
         "for": "10m", "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.mountpoint }} on {{ $labels.host }} is {{ $value | humanize }}% full"}},
        {"alert": "MemoryPressure",
         "expr": f"100 * node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes < {t['memory_available_percent']}",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $labels.host }} has {{ $value | humanize }}% of its memory available"}},
        {"alert": "ProbeFailing", "expr": "fleet_probe_success == 0", "for": t["probe_failing_for"],
         "labels": {"severity": "critical"},
         "annotations": {"summary": "the {{ $labels.probe }} probe of {{ $labels.service }} on {{ $labels.target }} fails"}},
    ]
    for prober in [h for h in services.hosts if _applies("healthcheck", services.hosts[h])]:
        sel = f'fleet_probe_last_run_timestamp_seconds{{host="{prober}"}}'
        rules.append({"alert": "ProberStale", "expr": f"time() - {sel} > {t['prober_stale_seconds']} or absent({sel})",
                      "for": "1m", "labels": {"severity": "critical", "host": prober},
                      "annotations": {"summary": f"the health prober on {prober} has not reported for "
                                                 f"{t['prober_stale_seconds']} s"}})
    for name, h in services.hosts.items():
        if not _applies("backup", h):
            continue
        for alert, metric, key, what in (
                ("BackupStale", "fleet_backup_last_success_timestamp_seconds", "backup_schedule", "backup"),
                ("RestoreDrillStale", "fleet_restore_drill_last_success_timestamp_seconds", "backup_drill_schedule",
                 "restore drill")):
            limit = 2 * schedule_seconds(h.data.get(key))
            sel = f'{metric}{{host="{name}"}}'
            rules.append({"alert": alert, "expr": f"time() - {sel} > {limit} or absent({sel})", "for": "5m",
                          "labels": {"severity": "critical", "host": name},
                          "annotations": {"summary": f"{name}: no successful {what} "
                                                     f"for more than {limit} s (2 x its {h.data.get(key)} schedule)"}})
    for name in services.hosts_running("cloudflared-metrics"):
        sel = f'node_systemd_unit_state{{host="{name}",name="cloudflared.service",state="active"}}'
        rules.append({"alert": "TunnelDown", "expr": f"{sel} < 1 or absent({sel})", "for": "2m",
                      "labels": {"severity": "critical", "host": name},
                      "annotations": {"summary": f"cloudflared on {name} is not running: its hostnames are unreachable"}})
    if services.hosts_running("llm"):
        rules.append({"alert": "LLMEndpointDown", "expr": 'fleet_probe_success{service="llm"} == 0', "for": "2m",
                      "labels": {"severity": "critical"},
                      "annotations": {"summary": "the LLM endpoint on {{ $labels.target }} gives no chat completion"}})
    groups = [{"name": "fleet", "rules": rules}]
    extra = data.get("prometheus_extra_rules") or []
    if extra:
        groups.append({"name": "extra", "rules": list(extra)})
    return {"groups": groups}


def webhook_keys(data) -> list[str]:
    return [spec["webhook_url_key"] for spec in (data.get("prometheus_alertmanager_receivers") or {}).values()
            if isinstance(spec, dict) and spec.get("webhook_url_key")]


def alertmanager_config(data, secret) -> dict:
    receivers = []
    for rname, spec in (data.get("prometheus_alertmanager_receivers") or {}).items():
        receiver = {"name": rname}
        if spec.get("webhook_url_key"):
            receiver["webhook_configs"] = [{"url": secret(spec["webhook_url_key"]), "send_resolved": True}]
        receivers.append(receiver)
    return {"route": dict(data.get("prometheus_alertmanager_route")), "receivers": receivers}


def prometheus_args(name, data, services) -> list[str]:
    return [f"--web.listen-address={services.bind('prometheus', name, 'tailnet')}",
            f"--config.file={CONFIG}",
            f"--storage.tsdb.path={data.get('prometheus_data_dir')}",
            f"--storage.tsdb.retention.time={data.get('prometheus_retention_time')}",
            f"--storage.tsdb.retention.size={data.get('prometheus_retention_size')}"]


def alertmanager_args(name, data, services) -> list[str]:
    # an empty cluster address turns gossip off (its default listener is 0.0.0.0:9094)
    return [f"--web.listen-address={services.bind('alertmanager', name, 'tailnet')}",
            f"--config.file={AM_CONFIG}", f"--storage.path={AM_DATA}", "--cluster.listen-address="]


@deploy("Prometheus", data_defaults=DEFAULTS)
def prometheus():
    from fleet.converge.keys import secret

    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    files.directory(name="Create /etc/fleet", path="/etc/fleet", user="root", group="root", mode="755")
    changed = {}
    for daemon, unit in UNITS.items():
        args = (prometheus_args if daemon == "prometheus" else alertmanager_args)(name, data, services)
        changed[daemon] = (
            files.put(name=f"Install {daemon}'s drop-in", src=StringIO(render(
                f"etc/systemd/system/{unit}.d/fleet.conf.j2", "prometheus", env=env_file(daemon))),
                dest=dropin(unit), user="root", group="root", mode="644", create_remote_dir=True),
            files.put(name=f"Install {daemon}'s arguments", src=StringIO(render(
                "etc/fleet/args.env.j2", "prometheus", args=args)), dest=env_file(daemon),
                user="root", group="root", mode="644"),
        )
    apt.packages(name="Install Prometheus and Alertmanager", packages=["prometheus", "prometheus-alertmanager"],
                 no_recommends=True)
    files.directory(name="Create Prometheus's data directory", path=data.prometheus_data_dir,
                    user="prometheus", group="prometheus", mode="750")
    files.directory(name="Create the rules directory", path=RULES_DIR, user="root", group="root", mode="755")
    # Rules first (each candidate checked on its own), then the config that loads them,
    # checked with the rules already in place: a bad rule stops the run before any reload.
    rules = validated_file(name="Install the alert rules", content=dump(alert_rules(data, services)), dest=RULES,
                           user="root", group="prometheus", mode="644", validate="promtool check rules {path}")
    config = validated_file(name="Install prometheus.yml", content=dump(scrape_config(data, services)), dest=CONFIG,
                            user="root", group="prometheus", mode="644", validate="promtool check config {path}")
    am = validated_file(name="Install alertmanager.yml", content=dump(alertmanager_config(data, secret)),
                        dest=AM_CONFIG, user="root", group="prometheus", mode="640",
                        validate="amtool check-config {path} >/dev/null")
    for daemon, unit in UNITS.items():
        keep_running(daemon, unit, inputs=[dropin(unit), env_file(daemon)], why="for its new arguments",
                     changed=changed[daemon], unit_files=True, service=daemon)
    keep_running("Prometheus's config", UNITS["prometheus"], inputs=[CONFIG, RULES], why="for its new config and rules",
                 changed=(config, rules), reload=True)
    keep_running("Alertmanager's config", UNITS["alertmanager"], inputs=[AM_CONFIG], why="for its new config",
                 changed=(am,), reload=True)


# --- validation ----------------------------------------------------------------------------------

def check_settings(fleet, hosts) -> list[Problem]:
    from fleet.converge.component import component

    problems = []
    for h in hosts:
        d = h.data
        for key in ("prometheus_retention_time", "prometheus_scrape_interval", "prometheus_evaluation_interval"):
            if not DURATION.match(str(d.get(key))):
                problems.append(Problem(h.name, key, f"{d.get(key)!r} is not a Prometheus duration.", "write it like '30s' or '15d'."))
        if not SIZE.match(str(d.get("prometheus_retention_size"))):
            problems.append(Problem(h.name, "prometheus_retention_size", f"{d.get('prometheus_retention_size')!r} is not a size.",
                                    "write it like '4GB' or '512MB'."))
        t = d.get("prometheus_alert_thresholds") or {}
        unknown = set(t) - set(DEFAULTS["prometheus_alert_thresholds"])
        if unknown:
            problems.append(Problem(h.name, "prometheus_alert_thresholds", f"unknown thresholds {sorted(unknown)}.",
                                    f"use {', '.join(DEFAULTS['prometheus_alert_thresholds'])}."))
        for key in ("disk_used_percent", "memory_available_percent"):
            v = t.get(key, 1)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 100:
                problems.append(Problem(h.name, f"prometheus_alert_thresholds.{key}", f"{v!r} is not a percentage.", "use a number from 1 to 99."))
        for key in ("target_down_for", "probe_failing_for"):
            if key in t and not DURATION.match(str(t[key])):
                problems.append(Problem(h.name, f"prometheus_alert_thresholds.{key}", f"{t[key]!r} is not a duration.", "write it like '2m'."))
        for i, rule in enumerate(d.get("prometheus_extra_rules") or []):
            if not isinstance(rule, dict) or not {"alert", "expr"} <= set(rule):
                problems.append(Problem(h.name, f"prometheus_extra_rules[{i}]", "is not an alert rule.",
                                        "write it like {'alert': 'Name', 'expr': 'up == 0', 'for': '5m'}."))
        receivers = d.get("prometheus_alertmanager_receivers") or {}
        route = d.get("prometheus_alertmanager_route") or {}
        if route.get("receiver") not in receivers:
            problems.append(Problem(h.name, "prometheus_alertmanager_route.receiver", f"{route.get('receiver')!r} is not a receiver.",
                                    f"name one of prometheus_alertmanager_receivers ({', '.join(receivers) or 'none'})."))
        for rname, spec in receivers.items():
            if not isinstance(spec, dict) or set(spec) - {"webhook_url_key"}:
                problems.append(Problem(h.name, f"prometheus_alertmanager_receivers[{rname!r}]", "is not a receiver.",
                                        "write {} or {'webhook_url_key': '<vault key of the URL>'}."))
    backup = component("backup")
    for name, h in fleet.hosts.items():
        if hosts and backup.applies(h.groups, h.data):
            for key in ("backup_schedule", "backup_drill_schedule"):
                if schedule_seconds(h.data.get(key)) is None:
                    problems.append(Problem(name, key, f"{h.data.get(key)!r}: the stale-backup alert needs a known interval.",
                                            f"use one of {', '.join(SCHEDULES)}."))
    return problems


COMPONENT = Component(
    name="prometheus",
    deploy=prometheus,
    defaults=DEFAULTS,
    groups=("monitoring",),
    vault_keys=lambda name, data: webhook_keys(data),
    rules=(check_settings, accounts.own_directory("prometheus_data_dir")),
    after=("node_exporter",),
)
