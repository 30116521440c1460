"""The droplet's dead man's switch: its watch list comes from the inventory (a new prober is
watched with no other edit), its settings are checked, and the script itself runs here
against a node exporter page and a webhook receiver on 127.0.0.1: fresh, stale, unreachable,
a failed POST retried, the repeat while stale, the all-clear, and no URL token in its output."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploys import deadman
from fleet.preflight.validate import problems

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "templates" / "deadman" / deadman.SCRIPT.lstrip("/")
DROPLET = "droplet-failover"
TOKEN = "tok-9f3c1e-secret"
RUN_TIMEOUT = 30  # seconds one local run may take before the test kills it


# --- the watch list, from data --------------------------------------------------------------

def test_the_watch_list_is_every_probers_node_exporter_over_the_tailnet(data):
    fleet = data.fleet()
    config = json.loads(deadman.watch_list(DROPLET, fleet.hosts[DROPLET].data, fleet.services))
    assert config["watch"] == [{"prober": "pi0-epsilon", "url": "http://100.100.0.5:9100/metrics"}]
    assert (config["stale_seconds"], config["repeat_seconds"], config["timeout"]) == (300, 14400, 10)
    assert config["webhook_url_file"] is None and config["host"] == DROPLET
    assert [h.name for h in fleet.hosts_with("deadman")] == [DROPLET]


def test_a_new_prober_is_watched_with_no_other_edit(data):
    data.hosts["pi0-zeta"] = {**data.hosts["pi0-epsilon"], "tailnet_address": "100.100.0.6",
                              "lan_address": "192.168.1.16/24", "tailnet_name": "pi0-zeta"}
    fleet = data.fleet()
    watched = deadman.watch(DROPLET, fleet.services)
    assert {"prober": "pi0-zeta", "url": "http://100.100.0.6:9100/metrics"} in watched and len(watched) == 2


def test_the_webhook_url_is_a_secret_file_only_when_data_names_one(data):
    fleet = data.fleet()
    assert deadman.secret_files(DROPLET, fleet.hosts[DROPLET].data) == []
    data.group_data["cloud"]["deadman_webhook_url_key"] = "deadman_webhook_url"
    fleet = data.fleet()
    (secret,) = deadman.secret_files(DROPLET, fleet.hosts[DROPLET].data)
    assert (secret.key, secret.path, secret.user, secret.mode) == (
        "deadman_webhook_url", deadman.WEBHOOK_FILE, deadman.USER, "600")
    assert json.loads(deadman.watch_list(DROPLET, fleet.hosts[DROPLET].data, fleet.services))[
        "webhook_url_file"] == deadman.WEBHOOK_FILE


@pytest.mark.parametrize("key, value, message", [
    ("deadman_interval_seconds", 5, "5 is not a whole number from 10 to 3600."),
    ("deadman_stale_seconds", "300", "'300' is a str, but it must be an int"),
    ("deadman_timeout_seconds", 60, "60 s is not shorter than the interval (30 s)."),
    ("deadman_stale_seconds", 100, "100 s is less than 2 rounds of the prober on pi0-epsilon"),
    ("deadman_webhook_url_key", "", "'' is not a vault key name."),
    ("deadman_webhook_url_key", 5, "5 is not a vault key name."),
])
def test_settings_are_checked_with_one_line_each(data, key, value, message):
    data.group_data["cloud"]["deadman_interval_seconds"] = 30
    data.group_data["healthcheck"]["healthcheck_interval_seconds"] = 60
    data.group_data["cloud"][key] = value
    found = [p for p in problems(data.fleet()) if p.key.startswith("deadman_")]
    assert [(p.host, p.key) for p in found] == [(DROPLET, key)], [str(p) for p in found]
    assert message in str(found[0]) and "Fix: " in str(found[0]) and "\n" not in str(found[0])


def test_a_fleet_without_a_prober_is_refused(data):
    data.hosts["pi0-epsilon"]["groups"] = ["pis"]
    found = [str(p) for p in problems(data.fleet()) if p.host == DROPLET and p.key == "groups"]
    assert found and "no health prober to watch" in found[0], found


def test_the_watch_list_is_one_the_script_accepts_and_a_broken_one_is_refused(data, tmp_path):
    fleet = data.fleet()
    path = tmp_path / "watch.json"
    path.write_text(deadman.watch_list(DROPLET, fleet.hosts[DROPLET].data, fleet.services))
    ok = subprocess.run([sys.executable, "-I", str(SCRIPT), "--check-config", str(path)],
                        capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert ok.returncode == 0 and "1 probers watched, usable" in ok.stdout, ok.stdout + ok.stderr
    config = json.loads(path.read_text())
    config["watch"][0]["url"] = "ftp://100.100.0.5/metrics"
    path.write_text(json.dumps(config))
    bad = subprocess.run([sys.executable, "-I", str(SCRIPT), "--check-config", str(path)],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert bad.returncode == 2 and "watch[0] needs a prober name and an http:// url" in bad.stdout, bad.stdout


# --- the script, against 127.0.0.1 ------------------------------------------------------------

class Fake:
    """A node exporter page with the prober's timestamp, and a webhook receiver."""

    def __init__(self):
        self.timestamp: float | None = time.time()
        self.hook_status = 200
        self.posts: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = "# HELP node_load1 x\nnode_load1 0.1\n"
                if fake.timestamp is not None:
                    body += f"# TYPE fleet_probe_last_run_timestamp_seconds gauge\n" \
                            f"fleet_probe_last_run_timestamp_seconds {fake.timestamp:.15e}\n"
                self._answer(200, body.encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                fake.posts.append((self.path, json.loads(self.rfile.read(length))))
                self._answer(fake.hook_status, b"ok")

            def _answer(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake():
    f = Fake()
    yield f
    f.server.shutdown()
    f.server.server_close()


def configure(tmp_path, fake, port=None, repeat=14400, hook=True):
    (tmp_path / "hook").write_text(f"http://127.0.0.1:{fake.port}/alert?token={TOKEN}\n")
    config = {"host": DROPLET, "stale_seconds": 60, "repeat_seconds": repeat, "timeout": 2,
              "webhook_url_file": str(tmp_path / "hook") if hook else None,
              "watch": [{"prober": "pi0-epsilon", "url": f"http://127.0.0.1:{port or fake.port}/metrics"}]}
    (tmp_path / "watch.json").write_text(json.dumps(config))


def run(tmp_path):
    done = subprocess.run([sys.executable, "-I", "-B", str(SCRIPT), "--config", str(tmp_path / "watch.json"),
                           "--prom", str(tmp_path / "out.prom"), "--state", str(tmp_path / "state.json")],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert TOKEN not in done.stdout + done.stderr, "the webhook URL's token was printed"
    return done, (tmp_path / "out.prom").read_text(), json.loads((tmp_path / "state.json").read_text())


def test_a_fresh_prober_is_a_quiet_1(tmp_path, fake):
    configure(tmp_path, fake)
    done, prom, state = run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'fleet_deadman_prober_fresh{prober="pi0-epsilon"} 1' in prom
    assert "fleet_deadman_last_run_timestamp_seconds " in prom
    assert "is fresh" in done.stdout and fake.posts == []
    assert state["probers"]["pi0-epsilon"]["stale"] is False


def test_stale_notifies_once_retries_a_failed_post_repeats_and_clears(tmp_path, fake):
    configure(tmp_path, fake)
    run(tmp_path)
    fake.timestamp = time.time() - 600
    fake.hook_status = 500                                     # the receiver is down: owed
    done, prom, state = run(tmp_path)
    assert done.returncode == 0
    assert 'fleet_deadman_prober_fresh{prober="pi0-epsilon"} 0' in prom
    assert "is stale: its last round was 600 s ago (limit 60 s)" in done.stdout
    assert "could not notify about pi0-epsilon: the webhook answered HTTP 500" in done.stdout
    assert len(fake.posts) == 1 and state["probers"]["pi0-epsilon"]["notified"] is None

    fake.hook_status = 200                                     # retried at the next check
    done, _, state = run(tmp_path)
    assert len(fake.posts) == 2 and "notified the webhook: pi0-epsilon is stale" in done.stdout
    path, body = fake.posts[-1]
    assert path == f"/alert?token={TOKEN}" and body["version"] == "4" and body["status"] == "firing"
    assert body["alerts"][0]["labels"] == {"alertname": "ProberStale", "host": "pi0-epsilon",
                                           "severity": "critical", "source": f"fleet-deadman on {DROPLET}"}
    run(tmp_path)                                              # still stale: told already
    assert len(fake.posts) == 2

    fake.timestamp = time.time()                               # the all-clear, once
    done, prom, _ = run(tmp_path)
    assert len(fake.posts) == 3 and fake.posts[-1][1]["status"] == "resolved"
    assert 'fleet_deadman_prober_fresh{prober="pi0-epsilon"} 1' in prom
    run(tmp_path)
    assert len(fake.posts) == 3


def test_stale_is_told_again_after_the_repeat_interval(tmp_path, fake):
    configure(tmp_path, fake, repeat=1)
    fake.timestamp = None                                      # no metric: the prober never wrote
    done, _, _ = run(tmp_path)
    assert "has no fleet_probe_last_run_timestamp_seconds" in done.stdout and len(fake.posts) == 1
    time.sleep(1.1)
    run(tmp_path)
    assert len(fake.posts) == 2 and fake.posts[-1][1]["status"] == "firing"


def test_an_unreachable_prober_is_stale_and_journal_and_metric_say_so_without_a_webhook(tmp_path, fake):
    with __import__("socket").socket() as s:                   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    configure(tmp_path, fake, port=closed, hook=False)
    done, prom, state = run(tmp_path)
    assert done.returncode == 0 and "is stale" in done.stdout and "did not answer" in done.stdout
    assert 'fleet_deadman_prober_age_seconds{prober="pi0-epsilon"} NaN' in prom
    assert 'fleet_deadman_prober_fresh{prober="pi0-epsilon"} 0' in prom and fake.posts == []


def test_unwritable_outputs_fail_the_unit_and_a_bad_list_is_status_2(tmp_path, fake):
    configure(tmp_path, fake)
    done = subprocess.run([sys.executable, "-I", "-B", str(SCRIPT), "--config", str(tmp_path / "watch.json"),
                           "--prom", "/nonexistent/dir/out.prom", "--state", str(tmp_path / "state.json")],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 1 and "cannot write the outputs" in done.stdout
    (tmp_path / "watch.json").write_text("{not json")
    done = subprocess.run([sys.executable, "-I", "-B", str(SCRIPT), "--config", str(tmp_path / "watch.json")],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 2 and "not JSON" in done.stdout
