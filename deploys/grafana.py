"""Grafana (monitoring group): Grafana's own apt repository at a pinned version, on the tailnet address only, with the fleet's Prometheus as its default data source and one fleet dashboard generated from the inventory (a row per host, a panel per service probe).

The repository key is installed only when its SHA-256 matches `grafana_apt.key_sha256`, which
is empty until the operator has reviewed the key and pinned it (validation says how). The
package neither enables nor starts grafana-server; the deploy writes grafana.ini, the
provisioning files and the dashboard (each checked in Python first: Grafana has no config
check), then enables and starts it, and restarts it exactly when one of its inputs changed
after it started (decided from the host's state, fleet.converge.daemons). Grafana reads its
provisioning only at start, so a restart is how a changed data source or dashboard is applied.

The admin password is the vault's `grafana_admin_password`, installed as
/etc/grafana/admin_password (0640 root:grafana) and named in grafana.ini as
`$__file{/etc/grafana/admin_password}`: it is never in the ini, an argument or a command line.
Grafana reads `admin_password` only when it creates its database (its first start); later
changes of the setting are ignored. So after the restart, the deploy checks (from the host,
reading the file) that the file's password logs in; when Grafana refuses it (the vault value
was changed), it runs `grafana cli admin reset-admin-password --password-from-stdin` with the
file as standard input, as the grafana user: the new password goes through stdin, never an
argument. The value must be one line (Grafana trims surrounding whitespace). A changed
`grafana_admin_user` is not applied to an existing database (rename the user in Grafana).

No data is declared for backups: the dashboard and data source are provisioned from this
repository and the admin password from the vault, so a rebuilt host gets them back.
"""

from __future__ import annotations

import json
import re
import shlex
from io import StringIO

import yaml
from pyinfra import host
from pyinfra.api import FactBase, OperationError, StringCommand, deploy, operation
from pyinfra.operations import apt, files

from fleet.converge import accounts, aptsource
from fleet.converge.aptsource import vendor_apt_source
from fleet.converge.component import Component, Problem, SecretFile
from fleet.converge.daemons import keep_running
from fleet.converge.ops import secret_file
from fleet.converge.render import header, render
from fleet.converge.services import ServiceMap, Unreachable

DEFAULTS = {
    # Grafana's apt repository (deb822 source). key_sha256 is empty until you have reviewed
    # Grafana's key and pinned its SHA-256 (validation refuses an empty pin and says how).
    "grafana_apt": {
        "uris": "https://apt.grafana.com",
        "suites": "stable",
        "components": "main",
        "key_url": "https://apt.grafana.com/gpg.key",
        "key_sha256": "",
        "key_file": "grafana.asc",
    },
    # The Grafana version installed (grafana=<version> from that repository).
    "grafana_version": "12.3.0",
    # The admin user's login. Its password is the vault's grafana_admin_password.
    "grafana_admin_user": "admin",
    # Where Grafana keeps its database (users, sessions); on a Pi, an SSD path spares the SD card.
    "grafana_data_dir": "/var/lib/grafana",
    # Where Grafana writes its log files.
    "grafana_logs_dir": "/var/log/grafana",
    # The Prometheus data source's uid: dashboards refer to it, so keep it stable.
    "grafana_datasource_uid": "fleet-prometheus",
    # The fleet dashboard's uid (its URL is /d/<uid>): keep it stable for bookmarks.
    "grafana_dashboard_uid": "fleet-overview",
    # The fleet dashboard's title.
    "grafana_dashboard_title": "Fleet overview",
    # Hosts in these groups get a temperature panel (the Raspberry Pis expose their SoC's).
    "grafana_temperature_groups": ["pis"],
    # Set on a host outside those groups that exposes a temperature (node_thermal_zone_temp
    # or node_hwmon_temp_celsius), to give it a temperature panel too.
    "grafana_temperature": False,
}

UNIT = "grafana-server.service"
HOME = "/usr/share/grafana"
BINARY = f"{HOME}/bin/grafana"
ETC = "/etc/grafana"
INI = f"{ETC}/grafana.ini"
# read by the package's unit (EnvironmentFile): the daemon's paths and options
ENV_FILE = "/etc/default/grafana-server"
PASSWORD_FILE = f"{ETC}/admin_password"
PASSWORD_KEY = "grafana_admin_password"
PROVISIONING = f"{ETC}/provisioning"
DATASOURCES = f"{PROVISIONING}/datasources/fleet.yaml"
PROVIDERS = f"{PROVISIONING}/dashboards/fleet.yaml"
# Under /etc, root's: the package's postinst makes /var/lib/grafana the grafana user's on
# every upgrade, and Grafana must not be able to rewrite what it is given.
DASHBOARDS_DIR = f"{ETC}/dashboards/fleet"
# One file name whatever the uid, so a changed uid replaces the dashboard instead of adding one.
DASHBOARD = f"{DASHBOARDS_DIR}/fleet.json"
DATASOURCE_NAME = "Prometheus"
# What the package's postinst sets on every configure under /etc/grafana (root:grafana, files
# 0640, directories 0755): the same here, so a package upgrade changes nothing of ours.
OWNER, GROUP, MODE, DIR_MODE = "root", "grafana", "640", "755"
UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}\Z")
VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+([+~-][A-Za-z0-9.+~-]+)?\Z")
LOGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
# node exporter's filesystems worth a disk panel (not virtual or in-memory ones)
FILESYSTEMS = 'fstype!~"tmpfs|ramfs|squashfs|nsfs|fuse.*"'


# --- what the files say, from the inventory ------------------------------------------------------

def prometheus_server(name: str, services: ServiceMap) -> str:
    """The Prometheus Grafana queries: its own host's when it runs one, else the first host
    of the inventory that does. Unreachable when no host runs Prometheus."""
    running = services.hosts_running("prometheus")
    if not running:
        raise Unreachable("no host runs 'prometheus' (the monitoring group's)")
    return name if name in running else running[0]


def render_ini(name: str, data, services: ServiceMap) -> str:
    endpoint = services.bind("grafana", name, "tailnet")
    return render("etc/grafana/grafana.ini.j2", "grafana", data_dir=data.get("grafana_data_dir"),
                  logs_dir=data.get("grafana_logs_dir"), provisioning_dir=PROVISIONING,
                  http_addr=endpoint.address, http_port=endpoint.port,
                  admin_user=data.get("grafana_admin_user"), admin_password=f"$__file{{{PASSWORD_FILE}}}")


def datasources(name: str, data, services: ServiceMap) -> dict:
    server = prometheus_server(name, services)
    source = {"name": DATASOURCE_NAME, "type": "prometheus", "uid": data.get("grafana_datasource_uid"),
              "access": "proxy", "url": services.url("prometheus", server=server, client=name),
              "isDefault": True, "editable": False, "jsonData": {"httpMethod": "POST"}}
    interval = services.hosts[server].data.get("prometheus_scrape_interval")
    if interval:  # Grafana's smallest step for queries: Prometheus's scrape interval
        source["jsonData"]["timeInterval"] = interval
    return {"apiVersion": 1, "datasources": [source]}


def providers() -> dict:
    return {"apiVersion": 1, "providers": [{
        "name": "fleet", "orgId": 1, "folder": "", "type": "file", "disableDeletion": True,
        "allowUiUpdates": False, "options": {"path": DASHBOARDS_DIR}}]}


def _label(value: str) -> str:
    """A PromQL label value, quoted."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def has_temperature(h, groups) -> bool:
    return bool(set(h.groups) & set(groups)) or h.data.get("grafana_temperature") is True


def dashboard(data, services: ServiceMap) -> dict:
    """The fleet dashboard: a row per inventory host (up, CPU, memory, disk and, where the
    host exposes it, temperature), then a row with a panel per probed service of the port map."""
    source = {"type": "prometheus", "uid": data.get("grafana_datasource_uid")}
    panels: list[dict] = []
    y = 0

    def panel(title, kind, expr, legend, x, w, h, field):
        return {"id": len(panels) + 1, "type": kind, "title": title, "datasource": source,
                "gridPos": {"h": h, "w": w, "x": x, "y": y},
                "targets": [{"refId": "A", "datasource": source, "expr": expr, "legendFormat": legend}],
                "fieldConfig": {"defaults": field, "overrides": []}, "options": {}}

    def row(title):
        nonlocal y
        panels.append({"id": len(panels) + 1, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        y += 1

    percent = {"unit": "percent", "min": 0, "max": 100}
    updown = {"mappings": [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                                          "1": {"text": "UP", "color": "green", "index": 1}}}],
              "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                           {"color": "green", "value": 1}]}}
    groups = data.get("grafana_temperature_groups") or ()
    for name, h in services.hosts.items():
        row(name)
        sel = f"host={_label(name)}"
        fs = f"{sel},{FILESYSTEMS}"
        wanted = [
            ("Up", "stat", f"up{{{sel}}}", "{{service}}", updown),
            ("CPU", "timeseries",
             f'100 * (1 - avg by (host) (rate(node_cpu_seconds_total{{{sel},mode="idle"}}[$__rate_interval])))',
             "busy", percent),
            ("Memory", "timeseries",
             f"100 * (1 - node_memory_MemAvailable_bytes{{{sel}}} / node_memory_MemTotal_bytes{{{sel}}})",
             "used", percent),
            ("Disk", "timeseries",
             f"100 * (1 - node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}})",
             "{{mountpoint}}", percent),
        ]
        if has_temperature(h, groups):
            # Raspberry Pi OS exposes the SoC as a thermal zone (and a hwmon chip): either will do
            wanted.append(("Temperature", "timeseries",
                           f"max by (host) (node_thermal_zone_temp{{{sel}}}) or "
                           f"max by (host) (node_hwmon_temp_celsius{{{sel}}})", "SoC", {"unit": "celsius"}))
        x = 0
        for i, (title, kind, expr, legend, field) in enumerate(wanted):
            width = 24 // len(wanted) + (i < 24 % len(wanted))  # the row's full 24 columns
            panels.append(panel(f"{name}: {title}", kind, expr, legend, x, width, 6, field))
            x += width
        y += 6
    probed = [s for s in services.services if services.probe(s) and services.hosts_running(s)]
    if probed:
        row("Service probes")
        okfail = {"min": 0, "max": 1, "mappings": [{"type": "value", "options": {
            "0": {"text": "FAIL", "color": "red", "index": 0}, "1": {"text": "OK", "color": "green", "index": 1}}}]}
        for i, service in enumerate(probed):
            if i and i % 3 == 0:
                y += 6
            # the prober's labels: service, target (the probed host), probe (how)
            panels.append(panel(f"Probe: {service}", "state-timeline", f"fleet_probe_success{{service={_label(service)}}}",
                                "{{target}}", (i % 3) * 8, 8, 6, okfail))
    return {
        "uid": data.get("grafana_dashboard_uid"), "title": data.get("grafana_dashboard_title"),
        "description": "Generated by the fleet's grafana deploy (deploys/grafana.py) from the inventory; "
                       "changes made in Grafana are not kept.",
        "tags": ["fleet"], "editable": False, "timezone": "browser", "schemaVersion": 39, "version": 1,
        "refresh": "1m", "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []}, "templating": {"list": []}, "panels": panels,
    }


def dump_yaml(document: dict) -> str:
    # sorted keys: the same inventory always gives the same bytes (no change, no restart)
    return header("grafana") + yaml.safe_dump(document, sort_keys=True, default_flow_style=False, width=1000)


def dump_json(document: dict) -> str:
    return json.dumps(document, sort_keys=True, indent=2) + "\n"


def check_files(datasources_yaml: str, providers_yaml: str, dashboard_json: str) -> list[str]:
    """What Grafana would refuse at start (or skip) in the provisioning files and the dashboard;
    [] when they are fine. Each is parsed back, as Grafana will read it."""
    errors = []
    try:
        ds = yaml.safe_load(datasources_yaml)
        sources = ds["datasources"]
        if ds.get("apiVersion") != 1 or not isinstance(sources, list) or not sources:
            errors.append(f"{DATASOURCES}: needs apiVersion 1 and a list of datasources")
        elif sum(bool(s.get("isDefault")) for s in sources) > 1:
            errors.append(f"{DATASOURCES}: only one data source may be the default")
        for s in sources if isinstance(sources, list) else ():
            if not s.get("name") or not UID.match(str(s.get("uid", ""))) or not s.get("url"):
                errors.append(f"{DATASOURCES}: data source {s.get('name')!r} needs a name, a uid "
                              "([a-zA-Z0-9_-]{1,40}) and a url")
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        errors.append(f"{DATASOURCES}: does not parse back ({exc})")
    try:
        prov = yaml.safe_load(providers_yaml)
        if prov.get("apiVersion") != 1 or not all(
                p.get("name") and p.get("type") == "file" and p["options"].get("path") for p in prov["providers"]):
            errors.append(f"{PROVIDERS}: needs apiVersion 1 and file providers with a name and options.path")
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        errors.append(f"{PROVIDERS}: does not parse back ({exc})")
    try:
        board = json.loads(dashboard_json)
        ids = [p["id"] for p in board["panels"]]
        if not board.get("title") or not UID.match(str(board.get("uid", ""))):
            errors.append(f"{DASHBOARD}: needs a title and a uid ([a-zA-Z0-9_-]{{1,40}})")
        if len(ids) != len(set(ids)):
            errors.append(f"{DASHBOARD}: two panels share an id")
    except (ValueError, KeyError, TypeError) as exc:
        errors.append(f"{DASHBOARD}: does not parse back ({exc})")
    return errors


# --- the admin password: applied to Grafana's database when the vault's changes ------------------

# Run on the host: waits (bounded) for a running grafana-server to answer, then logs in with the
# password file's content. Prints "ok", "refused" (401) or nothing (not running, no answer, no
# file). The password is read from the file here: it is never an argument.
LOGIN_CHECK = r'''
import base64, subprocess, sys, time, urllib.error, urllib.request
address, user, path, unit, wait = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
if subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode != 0:
    sys.exit(0)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + wait
while True:
    try:
        with opener.open(f"http://{address}/api/health", timeout=5) as answer:
            if answer.status == 200:
                break
    except (OSError, ValueError):
        pass
    if time.monotonic() > deadline:
        sys.exit(0)
    time.sleep(1)
try:
    with open(path) as f:
        password = f.read().strip()
except OSError:
    sys.exit(0)
token = base64.b64encode(f"{user}:{password}".encode()).decode()
request = urllib.request.Request(f"http://{address}/api/user", headers={"Authorization": "Basic " + token})
try:
    with opener.open(request, timeout=10):
        print("ok")
except urllib.error.HTTPError as exc:
    print("refused" if exc.code == 401 else "")
except OSError:
    pass
'''


class AdminLogin(FactBase):
    """Whether the admin password in `password_file` logs in to Grafana at `address`: "ok",
    "refused", or None when that cannot be told (Grafana not running or not answering)."""

    def command(self, address: str, user: str, password_file: str, unit: str, wait: int) -> str:
        q = shlex.quote
        return (f"python3 -c {q(LOGIN_CHECK)} {q(address)} {q(user)} {q(password_file)} {q(unit)} {int(wait)}"
                " 2>/dev/null || true")

    def process(self, output):
        text = "".join(output).strip()
        return text if text in ("ok", "refused") else None


@operation()
def admin_password(address: str, user: str, password_file: str, unit: str, wait: int = 120):
    """Grafana's admin password is the one in `password_file`: reset through `grafana cli`
    (password on stdin) only when Grafana refuses it. Decided from the host's state.

    + address: host:port Grafana listens on
    + user: the admin login
    + password_file: the file holding the password (the vault's)
    + unit: grafana's systemd unit (nothing is checked while it is not running)
    + wait: how long to wait for a (re)started Grafana to answer, in seconds
    """
    state = host.get_fact(AdminLogin, address=address, user=user, password_file=password_file, unit=unit, wait=wait)
    if state != "refused":
        host.noop(f"Grafana's admin password is the vault's ({state or 'Grafana not answering: nothing to check'})")
        return
    q = shlex.quote
    # as the grafana user: the database and its journal stay Grafana's
    yield StringCommand(f"runuser -u grafana -- {q(BINARY)} cli --homepath {q(HOME)} --config {q(INI)} "
                        f"admin reset-admin-password --password-from-stdin < {q(password_file)}")


# --- the deploy ----------------------------------------------------------------------------------

def put(label: str, content: str, dest: str):
    return files.put(name=label, src=StringIO(content), dest=dest, user=OWNER, group=GROUP, mode=MODE)


@deploy("Grafana", data_defaults=DEFAULTS)
def grafana():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    # Everything is rendered and checked before anything on the host changes.
    ini = render_ini(name, data, services)
    ds_yaml = dump_yaml(datasources(name, data, services))
    prov_yaml = dump_yaml(providers())
    board = dump_json(dashboard(data, services))
    errors = check_files(ds_yaml, prov_yaml, board)
    if errors:
        raise OperationError("Grafana's files are invalid, nothing was changed: " + "; ".join(errors))

    vendor_apt_source("grafana", data.grafana_apt, "grafana", ["grafana"])
    # The package creates the grafana user and group and does not start the service.
    apt.packages(name="Install Grafana (pinned)", packages=[f"grafana={data.grafana_version}"])
    for path in (data.grafana_data_dir, data.grafana_logs_dir):
        files.directory(name=f"Create {path}", path=path, user="grafana", group="grafana", mode="755")
    for path in (f"{PROVISIONING}/datasources", f"{PROVISIONING}/dashboards", f"{ETC}/dashboards", DASHBOARDS_DIR):
        files.directory(name=f"Create {path}", path=path, user=OWNER, group=GROUP, mode=DIR_MODE)
    password = secret_file(name="Install the Grafana admin password", key=PASSWORD_KEY, dest=PASSWORD_FILE,
                           user=OWNER, group=GROUP, mode=MODE)
    changed = (
        put("Install grafana.ini", ini, INI),
        put("Provision the Prometheus data source", ds_yaml, DATASOURCES),
        put("Provision the fleet dashboards' provider", prov_yaml, PROVIDERS),
        put("Install the fleet dashboard", board, DASHBOARD),
        password,
    )
    # The binary and the package's environment file too: an upgrade the package did not
    # restart into (its postinst restarts only a running server) is restarted here.
    keep_running("grafana", UNIT, inputs=[INI, DATASOURCES, PROVIDERS, DASHBOARD, PASSWORD_FILE, ENV_FILE, BINARY],
                 why="for its new config, provisioning or release", changed=changed, unit_files=False,
                 service="grafana")
    admin_password(name="Apply the vault's admin password to Grafana (only if Grafana refuses it)",
                   address=str(services.bind("grafana", name, "tailnet")), user=data.grafana_admin_user,
                   password_file=PASSWORD_FILE, unit=UNIT)


def admin_password_file(name: str, data) -> list[SecretFile]:
    return [SecretFile(PASSWORD_KEY, PASSWORD_FILE, OWNER, GROUP, mode=MODE)]


# --- validation ----------------------------------------------------------------------------------

def _pin_given(data) -> bool:
    spec = data.get("grafana_apt")
    return not isinstance(spec, dict) or bool(SHA256.match(str(spec.get("key_sha256", ""))))


def check_key_pin(fleet, hosts) -> list[Problem]:
    """The repository key is pinned: the operator reviewed it and wrote its SHA-256."""
    problems = []
    for h in hosts:
        spec = h.data.get("grafana_apt")
        if _pin_given(h.data):
            continue  # pinned, or not a dict (aptsource's rule reports that)
        url = spec.get("key_url") or DEFAULTS["grafana_apt"]["key_url"]
        problems.append(Problem(
            h.name, "grafana_apt.key_sha256",
            f"{spec.get('key_sha256')!r} is not a pinned SHA-256 of Grafana's repository key; it is never installed unchecked.",
            f"review the key (`curl -fsSL {url} | gpg --show-keys` must show the fingerprint in Grafana's "
            f"installation docs), then pin `curl -fsSL {url} | sha256sum` as key_sha256 in grafana_apt "
            "(the whole dict, in group_data/monitoring.py); a key rotation is a reviewed change of this pin."))
    return problems


def check_settings(fleet, hosts) -> list[Problem]:
    problems = []
    for h in hosts:
        d = h.data
        version = d.get("grafana_version")
        if not VERSION.match(str(version)):
            problems.append(Problem(h.name, "grafana_version", f"{version!r} is not a Grafana package version.",
                                    "write it like '12.3.0', as apt.grafana.com lists it."))
        for key in ("grafana_datasource_uid", "grafana_dashboard_uid"):
            if not UID.match(str(d.get(key))):
                problems.append(Problem(h.name, key, f"{d.get(key)!r} is not a Grafana uid.",
                                        "use 1 to 40 letters, digits, '-' and '_'."))
        user = d.get("grafana_admin_user")
        if not LOGIN.match(str(user)):
            problems.append(Problem(h.name, "grafana_admin_user", f"{user!r} is not a usable login.",
                                    "use letters, digits, '.', '_', '@' and '-' (e.g. 'admin')."))
        if not str(d.get("grafana_dashboard_title") or "").strip() or any(
                ord(c) < 32 for c in str(d.get("grafana_dashboard_title"))):
            problems.append(Problem(h.name, "grafana_dashboard_title", "is empty or not one line.",
                                    "write a title like 'Fleet overview'."))
        for group in d.get("grafana_temperature_groups") or ():
            if group not in fleet.known_groups:
                problems.append(Problem(h.name, "grafana_temperature_groups", f"{group!r} is not a group.",
                                        f"use groups of the inventory ({', '.join(fleet.known_groups)})."))
        try:
            services = fleet.services
            services.url("prometheus", server=prometheus_server(h.name, services), client=h.name)
            services.bind("grafana", h.name, "tailnet")
        except (Unreachable, KeyError) as exc:
            problems.append(Problem(h.name, "fleet_services", f"Grafana needs its own tailnet listener and a "
                                    f"Prometheus it can reach: {exc}.",
                                    "bind 'grafana' and 'prometheus' to the tailnet and run Prometheus on a "
                                    "monitoring host."))
    return problems


COMPONENT = Component(
    name="grafana",
    deploy=grafana,
    defaults=DEFAULTS,
    groups=("monitoring",),
    secrets=admin_password_file,
    # an unpinned key gets check_key_pin's one line (how to pin it), not aptsource's as well
    rules=(check_key_pin, aptsource.rule("grafana_apt", when=_pin_given), check_settings,
           accounts.own_directory("grafana_data_dir"),
           accounts.own_directory("grafana_logs_dir")),
    after=("tailscale", "prometheus"),
)
