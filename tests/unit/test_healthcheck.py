"""The health prober: its probe list comes from the port map and the inventory (a new host
is probed with no other edit), its settings are checked, and the prober script itself runs
here against servers on 127.0.0.1 and writes its metrics and status, within its memory
budget and its time bound."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploys import healthcheck
from deploys.vllm import API_KEY
from fleet import probe_llm
from fleet.converge import component as registry
from fleet.converge.render import render
from fleet.preflight.validate import problems

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "templates" / "healthcheck" / healthcheck.SCRIPT.lstrip("/")
PROBER = "pi0-epsilon"
KEY = "hc-test-key-0123"
MODEL = "qwen-test:1b"
RUN_TIMEOUT = 60  # seconds a local prober run may take before the test kills it
# Prometheus's own linter for the textfile output, when it is installed (`make setup`).
PROMTOOL = shutil.which("promtool") or str(REPO / ".venv" / "bin" / "promtool")


def targets(fleet, name=PROBER):
    return healthcheck.targets(name, fleet.hosts[name].data, fleet.services)


def by_service(found):
    out = {}
    for t in found:
        out.setdefault(t["service"], {})[t["host"]] = t
    return out


# --- the probe list, from data ------------------------------------------------------------

def test_the_probe_list_comes_from_the_port_map_and_inventory(data):
    fleet = data.fleet()
    found = by_service(targets(fleet))
    assert set(found["node-exporter"]) == set(fleet.hosts)
    assert set(found["ssh"]) == set(fleet.hosts)
    assert {t["probe"] for t in found["ssh"].values()} == {"ssh"}  # sshd's line, answered
    assert found["node-exporter"]["pi5-gamma"]["address"] == "100.100.0.3"
    assert found["node-exporter"]["pi5-gamma"]["probe"] == "http:/"
    postgres = found["postgres"]
    assert list(postgres) == ["pi5-gamma"] and postgres["pi5-gamma"]["probe"] == "postgres"
    assert postgres["pi5-gamma"]["port"] == fleet.services.port("postgres")
    llm = found["llm"]["jetson-prime"]
    assert (llm["probe"], llm["address"], llm["port"]) == ("llm", "100.100.0.10", 8080)
    assert llm["timeout"] == 60 and llm["engine"] == "ollama"
    assert llm["model"] == fleet.hosts["jetson-prime"].data["ollama_models"][0]
    assert llm["api_key_file"] is None
    # only what binds the tailnet is probed: loopback-only services never are
    assert "web" not in found and "maintenance" not in found
    assert all(t["timeout"] == 5 for t in targets(fleet) if t["probe"] != "llm")


def test_a_new_host_is_probed_with_no_other_edit(data):
    before = targets(data.fleet())
    data.hosts["pi5-zeta"] = {**data.hosts["pi5-beta"], "tailnet_address": "100.100.0.6",
                              "lan_address": "192.168.1.16/24", "tailnet_name": "pi5-zeta"}
    after = targets(data.fleet())
    added = [t for t in after if t not in before]
    assert sorted((t["service"], t["host"], t["address"]) for t in added) == [
        ("node-exporter", "pi5-zeta", "100.100.0.6"), ("ssh", "pi5-zeta", "100.100.0.6")]
    assert all(t in after for t in before)


def test_a_vllm_host_is_asked_for_its_served_name_with_the_key_file(data):
    data.hosts["jetson-prime"]["llm_engine"] = "vllm"
    fleet = data.fleet()
    llm = by_service(targets(fleet))["llm"]["jetson-prime"]
    assert llm["model"] == fleet.hosts["jetson-prime"].data["vllm_served_model_name"]
    assert llm["api_key_file"] == healthcheck.KEY_FILE
    assert healthcheck.vllm_hosts(fleet.services) == ["jetson-prime"]


def test_the_probe_list_is_json_the_prober_accepts(data, tmp_path):
    fleet = data.fleet()
    text = healthcheck.probe_list(PROBER, fleet.hosts[PROBER].data, fleet.services)
    config = json.loads(text)
    assert config["host"] == PROBER and config["workers"] == 8
    assert config["deadline_seconds"] == 60 + 2 * 5
    assert "Managed by the fleet's healthcheck deploy" in config["managed_by"]
    path = tmp_path / "targets.json"
    path.write_text(text)
    checked = subprocess.run([sys.executable, "-I", str(SCRIPT), "--check-config", str(path)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(config['probes'])} probes, usable" in checked.stdout


@pytest.mark.parametrize("change, message", [
    (lambda c: c["probes"][0].update(port=0), "port is 0, not a TCP port"),
    (lambda c: c["probes"][0].update(probe="ping"), "probe is 'ping'"),
    (lambda c: c["probes"].append(dict(c["probes"][0])), "is listed twice"),
    (lambda c: c.update(deadline_seconds=0), "deadline_seconds is 0"),
])
def test_a_broken_probe_list_is_refused_with_one_line(data, tmp_path, change, message):
    fleet = data.fleet()
    config = json.loads(healthcheck.probe_list(PROBER, fleet.hosts[PROBER].data, fleet.services))
    change(config)
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(config))
    checked = subprocess.run([sys.executable, "-I", str(SCRIPT), "--check-config", str(path)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 2 and message in checked.stdout, checked.stdout


# --- settings and the vLLM key --------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("healthcheck_interval_seconds", 0, "0 is not a whole number from 10 to 3600."),
    # a value of another type is the generic type check's (every setting has its default's type)
    ("healthcheck_interval_seconds", "60", "'60' is a str, but it must be an int"),
    ("healthcheck_timeout_seconds", True, "True is a bool, but it must be an int"),
    ("healthcheck_llm_timeout_seconds", 5.5, "5.5 is a float, but it must be an int"),
    ("healthcheck_parallel_probes", 0, "0 is not a whole number from 1 to 64."),
    ("healthcheck_memory_max_mb", 8, "8 is not a whole number from 32 to 1024."),
    ("healthcheck_timeout_seconds", 30, "30 s is not shorter than the interval (20 s)."),
])
def test_settings_are_checked_with_one_line_each(data, key, value, message):
    data.group_data["healthcheck"]["healthcheck_interval_seconds"] = 20
    data.group_data["healthcheck"][key] = value
    found = [p for p in problems(data.fleet()) if p.key.startswith("healthcheck_")]
    assert [(p.host, p.key) for p in found] == [(PROBER, key)], [str(p) for p in found]
    assert message in str(found[0]) and "Fix: " in str(found[0]) and "\n" not in str(found[0])


def test_the_vllm_key_is_installed_only_when_asked_and_an_llm_host_runs_vllm(data):
    fleet = data.fleet()
    pi0 = fleet.hosts[PROBER]
    assert not [s for s in registry.secret_files(PROBER, pi0.groups, pi0.data) if s.key == API_KEY]
    assert not [p for p in problems(fleet) if p.key == "healthcheck_vllm_api_key"]

    # switching the llm host to vLLM is a change of its own data: nothing else is required
    data.hosts["jetson-prime"]["llm_engine"] = "vllm"
    assert not [p for p in problems(data.fleet()) if p.key == "healthcheck_vllm_api_key"]

    data.group_data["healthcheck"]["healthcheck_vllm_api_key"] = True
    fleet = data.fleet()
    assert not [p for p in problems(fleet) if p.key == "healthcheck_vllm_api_key"]
    pi0 = fleet.hosts[PROBER]
    [secret] = [s for s in registry.secret_files(PROBER, pi0.groups, pi0.data) if s.key == API_KEY]
    assert (secret.path, secret.user, secret.group, secret.mode) == (healthcheck.KEY_FILE, "fleet-probe",
                                                                     "fleet-probe", "600")

    # the key is refused where no llm host runs vLLM
    data.hosts["jetson-prime"]["llm_engine"] = "ollama"
    [p] = [p for p in problems(data.fleet()) if p.key == "healthcheck_vllm_api_key"]
    assert p.host == PROBER and "no llm host runs vLLM" in p.message
    assert "healthcheck_vllm_api_key = False" in p.fix


# --- the units ------------------------------------------------------------------------------

def test_the_units_run_it_unprivileged_sandboxed_and_on_time():
    unit = render("etc/systemd/system/fleet-probe.service.j2", "healthcheck", user="fleet-probe",
                  script=healthcheck.SCRIPT, config=healthcheck.CONFIG, prom=healthcheck.PROM,
                  status=healthcheck.STATUS, state_dir=healthcheck.STATE_DIR, timeout_start=100,
                  memory_max_mb=64)
    for line in ("Type=oneshot", "User=fleet-probe", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 f"ReadWritePaths={healthcheck.STATE_DIR}", "PrivateTmp=yes", "CapabilityBoundingSet=",
                 "MemoryMax=64M", "TimeoutStartSec=100",
                 f"ExecStart=/usr/bin/python3 -I -B {healthcheck.SCRIPT} --config {healthcheck.CONFIG} "
                 f"--prom {healthcheck.PROM} --status {healthcheck.STATUS}"):
        assert line in unit.splitlines(), line
    assert "vllm" not in unit.lower() and "Listen" not in unit
    timer = render("etc/systemd/system/fleet-probe.timer.j2", "healthcheck", interval=60)
    assert "OnUnitInactiveSec=60s" in timer.splitlines() and "OnBootSec=60s" in timer.splitlines()


# --- the prober, run here -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake(BaseHTTPRequestHandler):
    """/health answers 200, anything else 404; POST /v1/chat/completions is an OpenAI chat
    endpoint that wants the test key."""

    chats: list = []

    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(200 if self.path == "/health" else 404, {"path": self.path})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        Fake.chats.append(body)
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": "no such path"})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self.reply(401, {"error": "Unauthorized"})
        self.reply(200, {"model": body["model"], "object": "chat.completion",
                         "choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": "Hello from the fake engine"}}]})


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    Fake.chats = []
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def silent():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def install(tmp_path) -> tuple[Path, Path]:
    """The prober and probe_llm.py side by side, as the deploy installs them; a stand-in
    pg_isready that says what it was asked."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(SCRIPT, lib / "fleet-probe")
    shutil.copy(probe_llm.__file__, lib / "probe_llm.py")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_isready"
    fake.write_text('#!/bin/sh\necho "$2:$4 - accepting connections (args: $*)"\n')
    fake.chmod(0o755)
    return lib / "fleet-probe", bin_dir


def entry(service, host, port, probe, timeout=5, **extra):
    return {"service": service, "host": host, "address": "127.0.0.1", "port": port, "probe": probe,
            "timeout": timeout, **extra}


def run_prober(tmp_path, probes, deadline=20, workers=4, outputs=None):
    """Run the prober once (its own process), bounded; (exit status, stdout, peak RSS bytes)."""
    script, bin_dir = install(tmp_path)
    config = tmp_path / "targets.json"
    config.write_text(json.dumps({"host": "local", "deadline_seconds": deadline, "workers": workers,
                                  "probes": probes}))
    prom, status = outputs or (tmp_path / "fleet_probe.prom", tmp_path / "status.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_PROBE_") and k != "JOURNAL_STREAM"}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    out, peak = tmp_path / "stdout", tmp_path / "peak"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-I", "-c", LAUNCHER, str(peak), sys.executable, "-I", "-B",
                                 str(script), "--config", str(config), "--prom", str(prom), "--status", str(status)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group: a hung run is killed whole
        try:
            proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise
    return proc.returncode, out.read_text(), int(peak.read_text()) * 1024


# Runs the prober as its child and writes the child's peak RSS (kB): a process started
# straight from pytest would count pytest's own size (Linux keeps the RSS high-water mark of
# the memory image a process had before exec). The launcher is small, so the figure is the
# prober's, or at most the launcher's.
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_round_against_local_servers_writes_metrics_and_status(tmp_path, server, silent):
    closed = free_port()
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    probes = [
        entry("web", "local", server, "http:/health"),
        entry("node-exporter", "local", server, "http:/metrics"),  # answers 404
        entry("ssh", "local", server, "tcp"),
        entry("redis", "local", closed, "tcp"),
        entry("prometheus", "monitor", closed, "http:/-/healthy"),
        entry("postgres", "db", 5432, "postgres"),
        entry("llm", "gpu", server, "llm", timeout=30, engine="vllm", model=MODEL, api_key_file=str(key_file)),
        entry("agents", "slow", silent, "http:/health", timeout=1),
    ]
    started = time.time()
    code, out, peak = run_prober(tmp_path, probes)
    assert code == 0, out  # failing probes are results, not a crash

    status = json.loads((tmp_path / "status.json").read_text())
    results = {(r["service"], r["host"]): r for r in status["results"]}
    assert [(r["service"], r["host"]) for r in status["results"]] == [(p["service"], p["host"]) for p in probes]
    ok = {k: r["ok"] for k, r in results.items()}
    assert ok == {("web", "local"): True, ("node-exporter", "local"): False, ("ssh", "local"): True,
                  ("redis", "local"): False, ("prometheus", "monitor"): False, ("postgres", "db"): True,
                  ("llm", "gpu"): True, ("agents", "slow"): False}
    assert "HTTP 404" in results["node-exporter", "local"]["error"]
    assert "refused" in results["redis", "local"]["error"].lower()
    assert "timed out" in results["agents", "slow"]["error"]
    assert "-h 127.0.0.1 -p 5432 -t 5" in results["postgres", "db"]["detail"]
    assert results["llm", "gpu"]["detail"].startswith(f"{MODEL} answered in ")
    assert Fake.chats[-1]["model"] == MODEL and Fake.chats[-1]["stream"] is False
    assert status["host"] == "local" and status["ok"] is False
    assert started <= status["finished"] <= time.time()

    prom = (tmp_path / "fleet_probe.prom").read_text()
    assert 'fleet_probe_success{service="web",target="local",probe="http:/health"} 1' in prom.splitlines()
    assert 'fleet_probe_success{service="redis",target="local",probe="tcp"} 0' in prom.splitlines()
    assert 'fleet_probe_success{service="llm",target="gpu",probe="llm"} 1' in prom.splitlines()
    assert len(re.findall(r"^fleet_probe_success\{", prom, re.M)) == len(probes)
    assert len(re.findall(r"^fleet_probe_duration_seconds\{", prom, re.M)) == len(probes)
    last = float(re.search(r"^fleet_probe_last_run_timestamp_seconds (\S+)$", prom, re.M).group(1))
    assert started <= last <= time.time()
    assert re.search(r"^fleet_probe_run_duration_seconds \d+\.\d+$", prom, re.M)
    assert re.search(r"^fleet_probe_memory_peak_bytes (\d+|NaN)$", prom, re.M)
    assert prom.endswith("\n") and "# TYPE fleet_probe_success gauge" in prom
    if Path(PROMTOOL).exists():
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=prom, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

    # the dead man's switch: a clear journal line for Prometheus, besides its metric
    assert re.search(r"^fleet-probe: Prometheus on monitor is not answering: .*refused", out, re.M | re.I), out
    assert "fleet-probe: 4/8 probes OK in " in out
    assert KEY not in out + prom + json.dumps(status)
    assert not list(tmp_path.glob("*.tmp"))
    assert peak < 64 * 1024 * 1024, f"the prober peaked at {peak / 1048576:.1f} MiB"
    print(f"prober peak RSS: {peak / 1048576:.1f} MiB")


def test_a_wrong_key_fails_the_llm_probe_without_showing_it(tmp_path, server):
    key_file = tmp_path / "api-key"
    key_file.write_text("not-the-key")
    code, out, _ = run_prober(tmp_path, [entry("llm", "gpu", server, "llm", model=MODEL,
                                               api_key_file=str(key_file)),
                                         entry("llm", "gpu2", server, "llm", model=MODEL,
                                               api_key_file=str(tmp_path / "missing"))])
    assert code == 0
    first, second = json.loads((tmp_path / "status.json").read_text())["results"]
    assert not first["ok"] and "HTTP 401: Unauthorized" in first["error"]
    assert not second["ok"] and "is missing (the healthcheck deploy installs it when healthcheck_vllm_api_key" \
        in second["error"]
    assert "not-the-key" not in out + (tmp_path / "status.json").read_text()


def test_the_round_is_bounded_by_its_deadline(tmp_path, silent):
    # one probe that would wait 30 s, in a round bounded to 2 s
    code, out, _ = run_prober(tmp_path, [entry("agents", "slow", silent, "http:/health", timeout=30),
                                         entry("agents", "slow2", silent, "tcp", timeout=30)],
                              deadline=2, workers=1)
    assert code == 0, out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["duration_seconds"] < 5
    assert [r["ok"] for r in status["results"]] == [False, False]
    assert any("deadline" in (r["error"] or "") or "timed out" in (r["error"] or "") for r in status["results"])


def test_unwritable_outputs_fail_the_unit(tmp_path, server):
    missing = tmp_path / "no-such-dir"
    code, out, _ = run_prober(tmp_path, [entry("web", "local", server, "http:/health")],
                              outputs=(missing / "fleet_probe.prom", tmp_path / "status.json"))
    assert code == 1 and "cannot write the outputs" in out
    assert json.loads((tmp_path / "status.json").read_text())["results"][0]["ok"] is True


def test_an_unreadable_probe_list_is_exit_status_2(tmp_path):
    script, _ = install(tmp_path)
    done = subprocess.run([sys.executable, "-I", str(script), "--config", str(tmp_path / "none.json"),
                           "--prom", str(tmp_path / "p"), "--status", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "cannot read the probe list" in done.stdout
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


# --- the ssh kind: sshd's identification line, answered -----------------------------------
class Greeter:
    """A loopback server that sends `lines` on each connection, then reads one line back
    (what the client identified itself as; b"" when it closed or sent nothing for 2 s), and
    closes."""

    def __init__(self, lines: bytes):
        self.lines, self.heard = lines, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                conn.sendall(self.lines)
                try:
                    self.heard.append(conn.makefile("rb").readline(300))
                except TimeoutError:
                    self.heard.append(b"")

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def greeters():
    made = []
    yield lambda lines: made.append(Greeter(lines)) or made[-1]
    for g in made:
        g.close()


def test_the_ssh_probe_reads_sshds_line_and_answers_it(tmp_path, greeters, silent, server):
    sshd = greeters(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n")
    chatty = greeters(b"a line some servers send first\r\nSSH-2.0-OpenSSH_9.9\r\n")
    smtp = greeters(b"220 mail.example ESMTP\r\n")
    code, out, _ = run_prober(tmp_path, [entry("ssh", "a", sshd.port, "ssh"), entry("ssh", "b", chatty.port, "ssh"),
                                         entry("ssh", "c", smtp.port, "ssh"),
                                         entry("ssh", "d", silent, "ssh", timeout=1),
                                         entry("ssh", "e", server, "ssh", timeout=1)])
    assert code == 0, out
    a, b, c, d, e = json.loads((tmp_path / "status.json").read_text())["results"]
    assert a["ok"] and a["detail"] == "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10"
    assert b["ok"] and b["detail"] == "SSH-2.0-OpenSSH_9.9"
    # sshd heard the prober's own line before the close: it logs an info line, not an error
    assert sshd.heard == [b"SSH-2.0-fleet_probe\r\n"] and chatty.heard == [b"SSH-2.0-fleet_probe\r\n"]
    # a listener that is not an answering sshd fails, where a TCP connect passed
    assert not c["ok"] and "closed before sending an SSH identification line" in c["error"]
    assert not d["ok"] and "timed out" in d["error"]
    assert not e["ok"] and "timed out" in e["error"]  # an HTTP server waits for a request
    assert smtp.heard == [b""]  # nothing was sent to what is not sshd
