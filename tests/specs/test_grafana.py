"""Grafana on the monitoring hosts: the tailnet address only, nothing without the admin's
password (the vault's), the fleet's Prometheus as its data source and the fleet dashboard with a
row per inventory host, and the password nowhere but its file. The API is read from the test
runner over the tailnet; every wait is bounded."""

import base64
import json
import time
import urllib.error
import urllib.request

from deploys.grafana import DASHBOARD, INI, PASSWORD_FILE, PASSWORD_KEY, prometheus_server
from fleet.converge.keys import secret
from specs.conftest import fleet_services, listening

# A converge may have just restarted Grafana; it answers within seconds (on a Pi, its first
# start migrates the database: longer). Waits below are bounded by this.
SETTLE_S = 90


def admin(fh) -> tuple[str, str]:
    # Grafana trims the password file's surrounding whitespace ($__file), and so does the deploy
    return fh.data["grafana_admin_user"], secret(PASSWORD_KEY).strip()


def api(fh, path: str, auth: tuple[str, str] | None = None):
    """(status, JSON body) of GET path on the host's Grafana, from the test runner; no proxy."""
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    url = f"http://{fleet_services().bind('grafana', fh.name, 'tailnet')}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def healthy(fh) -> dict:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            status, body = api(fh, "/api/health")
            if status == 200:
                return body
            last = f"HTTP {status}: {body}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"Grafana on {fh.name} did not answer /api/health within {SETTLE_S} s: {last}")
        time.sleep(2)


def test_graf01_grafana_listens_on_the_tailnet_only(fh):
    """graf-01: grafana-server is enabled and running, and the port map's `grafana` port listens
    exactly on the tailnet address (Grafana's default is every address)."""
    unit = fh.host.service("grafana-server")
    assert unit.is_enabled and unit.is_running
    healthy(fh)  # it binds once its start-up is done
    port = fleet_services().port("grafana")
    assert {a for a, p in listening(fh, "tcp") if p == port} == {fh.tailnet_address}


def test_graf02_health_answers_over_the_tailnet(fh):
    """graf-02: /api/health answers the test runner over the tailnet, with a working database
    and the data's version."""
    body = healthy(fh)
    assert body["database"] == "ok"
    # a security release's package (11.6.0+security-01) may report its version without the suffix
    assert body["version"].split("+")[0] == fh.data["grafana_version"].split("+")[0]


def test_graf03_nothing_without_the_admin_password(fh):
    """graf-03: anonymous API access and a wrong password are refused (401); the admin logs in
    with the vault's grafana_admin_password and is Grafana's admin."""
    healthy(fh)
    user, password = admin(fh)
    for path in ("/api/search", "/api/datasources", "/api/user"):
        assert api(fh, path)[0] == 401, path
    assert api(fh, "/api/user", (user, password + "-wrong"))[0] == 401
    status, me = api(fh, "/api/user", (user, password))
    assert status == 200 and me["login"] == user and me["isGrafanaAdmin"] is True


def test_graf04_prometheus_is_the_default_data_source(fh):
    """graf-04: the data source with the data's stable uid is Prometheus, queried at the URL the
    port map gives from this host, and is the default."""
    healthy(fh)
    services = fleet_services()
    status, source = api(fh, f"/api/datasources/uid/{fh.data['grafana_datasource_uid']}", admin(fh))
    assert status == 200, source
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == services.url("prometheus", server=prometheus_server(fh.name, services), client=fh.name)
    status, sources = api(fh, "/api/datasources", admin(fh))
    assert [s["uid"] for s in sources if s["isDefault"]] == [fh.data["grafana_datasource_uid"]]


def test_graf05_the_fleet_dashboard_has_a_row_per_host(fh):
    """graf-05: the fleet dashboard is provisioned (from the deploy's file) with the data's uid,
    one row per inventory host, and its panels query the stable data source."""
    healthy(fh)
    uid = fh.data["grafana_dashboard_uid"]
    status, hits = api(fh, "/api/search?type=dash-db", admin(fh))
    assert status == 200 and uid in [h["uid"] for h in hits]
    status, found = api(fh, f"/api/dashboards/uid/{uid}", admin(fh))
    assert status == 200
    assert found["meta"]["provisioned"] is True
    assert found["meta"]["provisionedExternalId"].endswith(DASHBOARD.rsplit("/", 1)[1])
    board = found["dashboard"]
    hosts = list(fleet_services().hosts)
    assert [p["title"] for p in board["panels"] if p["type"] == "row" and p["title"] in hosts] == hosts
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert uids == {fh.data["grafana_datasource_uid"]}


def test_graf06_the_admin_password_is_only_in_its_file(fh):
    """graf-06: the admin password is in no process command line, not in grafana.ini (which
    names its file), and not in Grafana's log or journal."""
    password = admin(fh)[1]
    ini = fh.host.file(INI).content_string
    assert f"$__file{{{PASSWORD_FILE}}}" in ini
    texts = {
        "command lines": fh.host.check_output("ps -eo args"),
        "grafana.ini": ini,
        "log": fh.host.run(f"cat {fh.data['grafana_logs_dir']}/*.log").stdout,
        "journal": fh.host.run("journalctl -u grafana-server --no-pager -o cat").stdout,
    }
    assert [where for where, text in texts.items() if password in text] == []
