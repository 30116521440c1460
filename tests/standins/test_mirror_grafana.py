"""The grafana repository of the offline stand-in mirror (tests/mirror): layout, signatures,
indexes, the package and its maintainer scripts, and the grafana stand-in server run locally on
127.0.0.1 (health, authentication, the provisioned data source and dashboard, refusal of a bad
provisioning file, the admin password's life cycle). No Docker, no network but loopback; every
wait is bounded.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploys.grafana import DEFAULTS
from mirror import build as mirror_build
from mirror.checks import parse_stanzas, private_apt, sha256

REPO = Path(__file__).resolve().parents[2]
MIRROR = REPO / "tests" / "mirror"
KEY_BIN = MIRROR / "keys" / "test-mirror.gpg"
KEY_ASC = MIRROR / "keys" / "test-mirror.asc"
STANDINS = MIRROR / "standins" / "grafana"
GF_VERSION = DEFAULTS["grafana_version"]
ARCHES = ("amd64", "arm64")
DIST = "grafana/dists/stable"
DEB = f"grafana/pool/main/g/grafana/grafana_{GF_VERSION}_all.deb"
FILES = {"./usr/share/grafana/bin/grafana", "./usr/sbin/grafana-server", "./usr/sbin/grafana-cli",
         "./usr/share/grafana/conf/defaults.ini", "./etc/grafana/grafana.ini", "./etc/default/grafana-server",
         "./lib/systemd/system/grafana-server.service", "./usr/share/doc/grafana/README.stand-in"}
PASSWORD = "stand-in-admin-password-0123456789"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dpkg-deb", "gpg", "gpgv")),
    reason="needs dpkg-deb, gpg and gpgv")


@pytest.fixture(scope="module")
def gf_root(built, tmp_path_factory):
    """The built package, extracted: the stand-in is tested as it is shipped."""
    out, _ = built
    root = tmp_path_factory.mktemp("gf-deb")
    subprocess.run(["dpkg-deb", "-R", str(out / DEB), str(root)], check=True, timeout=30)
    return root


# --- the repository --------------------------------------------------------------------

def test_layout_and_return_value(built):
    out, info = built
    assert info["versions"]["grafana"] == GF_VERSION
    expected = {"grafana/gpg.key", DEB}
    expected |= {f"{DIST}/{n}" for n in ("Release", "InRelease", "Release.gpg")}
    expected |= {f"{DIST}/main/binary-{a}/Packages{ext}" for a in ARCHES for ext in ("", ".gz")}
    assert {f for f in info["files"] if f.startswith("grafana/")} == expected
    for rel in expected:
        assert info["files"][rel] == {"sha256": sha256(out / rel), "size": (out / rel).stat().st_size}
    # The key, served like https://apt.grafana.com/gpg.key (armored): the committed armored public
    # key byte for byte, so the test fleet's data can pin its sha256.
    assert (out / "grafana" / "gpg.key").read_bytes() == KEY_ASC.read_bytes()
    assert info["signing_key"]["sha256"]["armored"] == sha256(KEY_ASC)
    assert info["repos"]["grafana"] == {
        "path": "grafana/", "suites": "stable", "components": "main",
        "signing_key": "grafana/gpg.key", "signing_key_armored": True}
    assert info["packages"]["grafana"] == {
        "version": GF_VERSION, "depends": "adduser, python3, python3-yaml", "deb": [DEB]}


def test_the_test_fleet_pins_the_served_key():
    from fleet.preflight.inventory import read_inventory_data

    _, test_fleet = read_inventory_data(REPO / "inventory.py")
    spec = test_fleet["data"]["grafana_apt"]
    assert spec["key_sha256"] == sha256(KEY_ASC)
    assert spec["key_url"].endswith("/grafana/gpg.key") and spec["uris"].endswith("/grafana")
    assert spec["key_file"].endswith(".asc")  # armored: apt reads it by its extension
    assert (spec["suites"], spec["components"]) == ("stable", "main")


def test_deterministic_and_replaces_old_trees(built, tmp_path):
    _, info = built
    (tmp_path / "grafana" / "pool").mkdir(parents=True)
    (tmp_path / "grafana" / "pool" / "stale.deb").write_text("x")
    assert mirror_build.build(tmp_path)["files"] == info["files"]
    assert not (tmp_path / "grafana" / "pool" / "stale.deb").exists()


def test_version_comes_from_the_component_unless_all_py_sets_it(tmp_path):
    data = tmp_path / "all.py"
    data.write_text('tailscale_version = "1.2.3"\nnvidia_container_toolkit_version = "1.0.0-1"\n'
                    'cloudflared_version = "2030.1.2"\n')
    component = tmp_path / "grafana.py"
    component.write_text('DEFAULTS = {\n    # x\n    "grafana_version": "11.6.0+security-01",\n}\n')
    info = mirror_build.build(tmp_path / "a", data_file=data, grafana_component=component)
    assert info["packages"]["grafana"]["version"] == "11.6.0+security-01"
    deb = tmp_path / "a" / "grafana/pool/main/g/grafana/grafana_11.6.0+security-01_all.deb"
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=30)
    res = subprocess.run([sys.executable, str(root / "usr/share/grafana/bin/grafana"), "--version"],
                         capture_output=True, text=True, timeout=20)
    assert res.stdout == "grafana version 11.6.0+security-01\n"
    data.write_text(data.read_text() + 'grafana_version = "12.0.0"\n')
    assert mirror_build.build(tmp_path / "b", data_file=data, grafana_component=component)[
        "packages"]["grafana"]["version"] == "12.0.0"


def test_release_is_signed_with_the_committed_key(built, tmp_path):
    out, _ = built
    dist = out / DIST

    def gpgv(keyring, *args):
        return subprocess.run(["gpgv", "--keyring", str(keyring), *args], capture_output=True, timeout=30)

    for res in (gpgv(KEY_BIN, str(dist / "InRelease")), gpgv(KEY_BIN, str(dist / "Release.gpg"), str(dist / "Release"))):
        assert res.returncode == 0 and b"Good signature" in res.stderr, res.stderr
    # Verified with the key as served (armored, so dearmored first, as apt does for a .asc key).
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    dearmored = tmp_path / "served.gpg"
    subprocess.run(["gpg", "--batch", "--homedir", str(home), "--dearmor", "--output", str(dearmored),
                    str(out / "grafana" / "gpg.key")], check=True, capture_output=True, timeout=30)
    assert gpgv(dearmored, str(dist / "InRelease")).returncode == 0
    assert gpgv(KEY_BIN, "--output", "-", str(dist / "InRelease")).stdout == (dist / "Release").read_bytes()
    bad = tmp_path / "Release"
    bad.write_text((dist / "Release").read_text().replace("STAND-IN", "STAND-lN", 1))
    assert gpgv(KEY_BIN, str(dist / "Release.gpg"), str(bad)).returncode != 0


def test_release_fields_and_index_hashes(built):
    out, _ = built
    dist = out / DIST
    release = parse_stanzas((dist / "Release").read_text())[0]
    assert release["Origin"] == "Grafana"
    assert "STAND-IN" in release["Label"] and "STAND-IN" in release["Description"]
    assert release["Suite"] == release["Codename"] == "stable"
    assert release["Components"] == "main" and release["Architectures"] == "amd64 arm64"
    assert "Valid-Until" not in release
    listed = set()
    for field, algo in (("SHA256", hashlib.sha256), ("MD5Sum", hashlib.md5)):
        for digest, size, name in (line.split() for line in release[field].strip().splitlines()):
            data = (dist / name).read_bytes()
            assert (len(data), algo(data).hexdigest()) == (int(size), digest), name
            listed.add(name)
    assert listed == {f"main/binary-{a}/Packages{ext}" for a in ARCHES for ext in ("", ".gz")}
    for arch in ARCHES:
        index = dist / "main" / f"binary-{arch}"
        text = (index / "Packages").read_text()
        assert gzip.decompress((index / "Packages.gz").read_bytes()).decode() == text
        [entry] = parse_stanzas(text)
        deb = (out / "grafana" / entry["Filename"]).read_bytes()
        assert entry["Filename"] == DEB.removeprefix("grafana/")
        assert (entry["Package"], entry["Version"], entry["Architecture"]) == ("grafana", GF_VERSION, "all")
        assert entry["Depends"] == "adduser, python3, python3-yaml"
        assert int(entry["Size"]) == len(deb) and entry["SHA256"] == hashlib.sha256(deb).hexdigest()


@pytest.mark.skipif(not shutil.which("apt-get"), reason="needs apt-get")
def test_apt_accepts_the_signed_source(built, tmp_path):
    """A private apt updates and downloads from file: URIs through a source written like the
    deploy's: Grafana's armored key installed as a .asc file."""
    out, _ = built
    key = tmp_path / "grafana.asc"
    shutil.copyfile(out / "grafana" / "gpg.key", key)
    apt = private_apt(tmp_path, f"Types: deb\nURIs: file://{out}/grafana\nSuites: stable\nComponents: main\n"
                                f"Signed-By: {key}\n",
                      installed=["adduser", "python3", "python3-yaml"], arch="arm64")
    update = apt("update")
    assert "NO_PUBKEY" not in update and "not signed" not in update and "W:" not in update
    apt("download", "grafana")
    assert [p.name for p in (tmp_path / "dl").glob("*.deb")] == [Path(DEB).name]
    assert f"Inst grafana ({GF_VERSION} " in apt("install", "--simulate", f"grafana={GF_VERSION}")


# --- the package -----------------------------------------------------------------------

def test_package_contents(built, gf_root):
    out, _ = built
    deb = out / DEB
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    assert " Package: grafana" in info and f" Version: {GF_VERSION}" in info
    assert " Depends: adduser, python3, python3-yaml" in info and "STAND-IN" in info
    lines = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True,
                           timeout=30).stdout.splitlines()
    modes = {line.split()[-1]: line.split()[0] for line in lines}
    assert {p for p in modes if not p.endswith("/")} == FILES
    assert all(" root/root " in line for line in lines)
    for path in ("./usr/share/grafana/bin/grafana", "./usr/sbin/grafana-server", "./usr/sbin/grafana-cli"):
        assert modes[path] == "-rwxr-xr-x", path
    assert modes["./etc/grafana/grafana.ini"] == "-rw-r-----"
    assert sorted(p.name for p in (gf_root / "DEBIAN").iterdir()) == ["conffiles", "control", "postinst", "prerm"]
    assert (gf_root / "DEBIAN" / "conffiles").read_text() == "/etc/default/grafana-server\n/etc/grafana/grafana.ini\n"
    # Every file says first that it is a stand-in.
    for path in [gf_root / p.lstrip("./") for p in FILES] + [gf_root / "DEBIAN" / n for n in ("postinst", "prerm")]:
        head = "\n".join(path.read_text().splitlines()[:3])
        assert "STAND-IN for tests (tests/mirror)" in head, path
        assert "not Grafana" in " ".join(path.read_text().splitlines()[:4]), path
    script = (gf_root / "usr/share/grafana/bin/grafana").read_text()
    assert script.splitlines()[0] == "#!/usr/bin/python3"
    assert script == (STANDINS / "grafana").read_text().replace("@GRAFANA_VERSION@", GF_VERSION)
    unit = (gf_root / "lib/systemd/system/grafana-server.service").read_text().splitlines()
    for line in ("EnvironmentFile=/etc/default/grafana-server", "User=grafana", "Group=grafana",
                 "WorkingDirectory=/usr/share/grafana", "WantedBy=multi-user.target"):
        assert line in unit
    start = next(line for line in unit if line.startswith("ExecStart="))
    assert start.startswith("ExecStart=/usr/share/grafana/bin/grafana server --config=${CONF_FILE} "
                            "--homepath=/usr/share/grafana ")
    assert "cfg:default.paths.data=${DATA_DIR}" in start and "cfg:default.paths.provisioning=${PROVISIONING_CFG_DIR}" in start
    env = (gf_root / "etc/default/grafana-server").read_text().splitlines()
    for line in ("CONF_FILE=/etc/grafana/grafana.ini", "DATA_DIR=/var/lib/grafana", "LOG_DIR=/var/log/grafana",
                 "PROVISIONING_CFG_DIR=/etc/grafana/provisioning", "RESTART_ON_UPGRADE=true"):
        assert line in env


def run_maintainer_script(gf_root, tmp_path, *args) -> tuple[str, list[str]]:
    """Run postinst with every command it calls replaced by a stub that records its arguments
    (PATH holds only the stubs, so nothing on this machine is touched). getent and id say the
    user does not exist yet."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for name in ("getent", "id", "addgroup", "adduser", "mkdir", "chown", "chmod", "find", "systemctl"):
        status = 2 if name in ("getent", "id") else 0
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit {status}\n')
        (stubs / name).chmod(0o755)
    calls.write_text("")
    res = subprocess.run(["/bin/sh", str(gf_root / "DEBIAN" / "postinst"), *args], capture_output=True, text=True,
                         timeout=30, env={"PATH": str(stubs)})
    assert res.returncode == 0, res.stderr
    return res.stdout, calls.read_text().splitlines()


def test_postinst_creates_the_user_and_directories_and_does_not_start_the_service(gf_root, tmp_path):
    out, calls = run_maintainer_script(gf_root, tmp_path, "configure")
    assert "### NOT starting on installation" in out
    assert "addgroup --system --quiet grafana" in calls
    assert ("adduser --system --quiet --home /usr/share/grafana --no-create-home --ingroup grafana "
            "--disabled-password --shell /bin/false grafana") in calls
    assert "mkdir -p /var/log/grafana /var/lib/grafana" in calls
    assert "chown -R grafana:grafana /var/log/grafana /var/lib/grafana" in calls
    assert "mkdir -p /etc/grafana/provisioning/datasources /etc/grafana/provisioning/dashboards" in calls
    assert "find /etc/grafana -type f -exec chmod 640 {} ;" in calls
    assert not [c for c in calls if c.startswith("systemctl")]  # neither enabled nor started
    # An upgrade restarts only a running server (try-restart), and never enables it.
    out, calls = run_maintainer_script(gf_root, tmp_path, "configure", "12.0.0")
    assert "NOT starting" not in out
    assert not [c for c in calls if c.startswith("systemctl") and ("enable" in c or " start" in c)]


# --- the server, run locally -----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, auth: tuple[str, str] | None = None):
    """(status, parsed JSON or text); no proxy, a 5 s timeout."""
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=5) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


DASHBOARD = {"uid": "fleet-overview", "title": "Fleet overview", "tags": ["fleet"], "schemaVersion": 39,
             "panels": [{"id": 1, "type": "row", "title": "pi5-alpha", "panels": []}]}


class Grafana:
    """A stand-in server in a temporary tree: grafana.ini, the password file, provisioning."""

    def __init__(self, gf_root: Path, tmp: Path):
        self.home = gf_root / "usr" / "share" / "grafana"
        self.bin = self.home / "bin" / "grafana"
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prov = tmp / "provisioning"
        self.dashboards = tmp / "dashboards"
        for d in (self.prov / "datasources", self.prov / "dashboards", self.dashboards):
            d.mkdir(parents=True)
        self.password_file = tmp / "admin_password"
        self.password_file.write_text(PASSWORD + "\n")  # trimmed, as Grafana does
        self.password_file.chmod(0o640)
        self.ini = tmp / "grafana.ini"
        self.write_ini()
        self.datasources([{"name": "Prometheus", "type": "prometheus", "uid": "fleet-prometheus", "access": "proxy",
                           "url": "http://100.100.0.4:9090", "isDefault": True, "editable": False,
                           "jsonData": {"httpMethod": "POST", "timeInterval": "30s"}}])
        (self.prov / "dashboards" / "fleet.yaml").write_text(json.dumps({"apiVersion": 1, "providers": [
            {"name": "fleet", "orgId": 1, "folder": "", "type": "file", "disableDeletion": True,
             "options": {"path": str(self.dashboards)}}]}))
        (self.dashboards / "fleet.json").write_text(json.dumps(DASHBOARD))
        self.log = tmp / "server.log"
        self.proc = None

    def write_ini(self, anonymous=False, extra=""):
        self.ini.write_text(
            "# a grafana.ini like the deploy's\n"
            f"[paths]\ndata = {self.tmp / 'data'}\nlogs = {self.tmp / 'logs'}\nprovisioning = {self.prov}\n\n"
            f"[server]\nprotocol = http\nhttp_addr = 127.0.0.1\nhttp_port = {self.port}\n\n"
            f"[security]\nadmin_user = admin\nadmin_password = $__file{{{self.password_file}}}\n\n"
            f"[users]\nallow_sign_up = false\n\n[auth.anonymous]\nenabled = {str(anonymous).lower()}\n\n"
            "[analytics]\nreporting_enabled = false\ncheck_for_updates = false\n" + extra)

    def datasources(self, sources, name="fleet.yaml"):
        (self.prov / "datasources" / name).write_text(json.dumps({"apiVersion": 1, "datasources": sources}))

    def command(self, *extra):
        # as the package's unit runs it (cfg:default.* are the unit's defaults, under grafana.ini)
        return [sys.executable, str(self.bin), "server", f"--config={self.ini}", f"--homepath={self.home}",
                f"--pidfile={self.tmp / 'run' / 'grafana-server.pid'}", "--packaging=deb",
                "cfg:default.paths.data=/nonexistent/default-data", *extra]

    def start(self, *extra, env=None):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(*extra), stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 20  # bounded
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                status, body = request(self.url + "/api/health")
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("the stand-in did not answer:\n" + self.log.read_text())

    def run(self, *extra, timeout=20) -> subprocess.CompletedProcess:
        """Start it and expect it to stop by itself (a refused configuration)."""
        return subprocess.run(self.command(*extra), capture_output=True, text=True, timeout=timeout)

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def cli(self, *args, stdin=""):
        return subprocess.run([sys.executable, str(self.bin), "cli", "--homepath", str(self.home), "--config",
                               str(self.ini), *args], input=stdin, capture_output=True, text=True, timeout=20)

    def get(self, path, auth=None):
        return request(self.url + path, auth)


@pytest.fixture
def grafana(gf_root, tmp_path):
    server = Grafana(gf_root, tmp_path)
    try:
        yield server
    finally:
        server.stop()
        texts = [server.log.read_text() if server.log.exists() else ""]
        texts += [p.read_text() for p in (tmp_path / "logs").glob("*")] if (tmp_path / "logs").exists() else []
        assert not [t for t in texts if PASSWORD in t], "a password was logged"


ADMIN = ("admin", PASSWORD)


def test_version(grafana):
    for args in (["-v"], ["--version"]):
        res = subprocess.run([sys.executable, str(grafana.bin), *args], capture_output=True, text=True, timeout=20)
        assert res.stdout == f"grafana version {GF_VERSION}\n"
    res = subprocess.run(grafana.command("-v"), capture_output=True, text=True, timeout=20)
    assert res.stdout.startswith(f"Version {GF_VERSION} (commit: stand-in")


def test_health_auth_datasource_and_dashboard(grafana):
    health = grafana.start()
    assert health == {"commit": "stand-in", "database": "ok", "version": GF_VERSION}
    pid = (grafana.tmp / "run" / "grafana-server.pid").read_text().strip()
    assert pid == str(grafana.proc.pid)
    # nothing without credentials, nor with a wrong password
    for path in ("/api/search", "/api/datasources", "/api/dashboards/uid/fleet-overview", "/api/user"):
        status, body = grafana.get(path)
        assert (status, body["message"]) == (401, "Unauthorized"), path
    status, body = grafana.get("/api/user", ("admin", "not-the-password"))
    assert (status, body["message"]) == (401, "Invalid username or password")
    # the admin, with the password from the file ($__file, trimmed)
    status, user = grafana.get("/api/user", ADMIN)
    assert status == 200 and user["login"] == "admin" and user["isGrafanaAdmin"] is True
    status, source = grafana.get("/api/datasources/uid/fleet-prometheus", ADMIN)
    assert status == 200
    assert {k: source[k] for k in ("name", "type", "uid", "url", "access", "isDefault", "readOnly")} == {
        "name": "Prometheus", "type": "prometheus", "uid": "fleet-prometheus", "url": "http://100.100.0.4:9090",
        "access": "proxy", "isDefault": True, "readOnly": True}
    assert source["jsonData"] == {"httpMethod": "POST", "timeInterval": "30s"}
    assert grafana.get("/api/datasources", ADMIN) == (200, [source])
    assert grafana.get("/api/datasources/name/Prometheus", ADMIN) == (200, source)
    assert grafana.get("/api/datasources/uid/other", ADMIN) == (404, {"message": "Data source not found"})
    status, hits = grafana.get("/api/search?type=dash-db", ADMIN)
    assert status == 200
    assert [{k: h[k] for k in ("uid", "title", "type", "tags", "url")} for h in hits] == [
        {"uid": "fleet-overview", "title": "Fleet overview", "type": "dash-db", "tags": ["fleet"],
         "url": "/d/fleet-overview/fleet-overview"}]
    assert grafana.get("/api/search?query=FLEET", ADMIN)[1] == hits
    assert grafana.get("/api/search?query=nothing", ADMIN) == (200, [])
    assert grafana.get("/api/search?tag=fleet&tag=other", ADMIN) == (200, [])
    status, found = grafana.get("/api/dashboards/uid/fleet-overview", ADMIN)
    assert status == 200
    assert found["dashboard"]["title"] == "Fleet overview" and found["dashboard"]["panels"] == DASHBOARD["panels"]
    assert found["meta"]["provisioned"] is True and found["meta"]["provisionedExternalId"] == "fleet.json"
    assert found["meta"]["folderTitle"] == "General" and found["meta"]["slug"] == "fleet-overview"
    assert grafana.get("/api/dashboards/uid/other", ADMIN) == (404, {"message": "Dashboard not found"})
    # the health answer needs no credentials; the ini's paths beat the unit's cfg:default.* ones
    assert (grafana.tmp / "data" / "grafana.db").is_file() and not Path("/nonexistent/default-data").exists()
    assert PASSWORD.encode() not in (grafana.tmp / "data" / "grafana.db").read_bytes()
    assert (grafana.tmp / "logs" / "grafana.log").is_file()
    # it listens where told only
    with pytest.raises(OSError):
        with socket.create_connection(("127.0.0.2", grafana.port), timeout=2):
            pass
    assert grafana.stop() == 0
    assert not (grafana.tmp / "run" / "grafana-server.pid").exists()
    assert 'msg="Shutdown started" reason="System signal: SIGTERM"' in grafana.log.read_text()


def test_admin_password_is_read_only_when_the_database_is_created(grafana):
    grafana.start()
    assert grafana.stop() == 0
    grafana.password_file.write_text("a-new-password-from-the-vault\n")
    grafana.start()
    new = ("admin", "a-new-password-from-the-vault")
    # as Grafana: the file's new value is not applied to an existing database ...
    assert grafana.get("/api/user", new)[0] == 401
    assert grafana.get("/api/user", ADMIN)[0] == 200
    # ... `grafana cli admin reset-admin-password --password-from-stdin` does, while it runs
    res = grafana.cli("admin", "reset-admin-password", "--password-from-stdin",
                      stdin=grafana.password_file.read_text())
    assert res.returncode == 0 and "Admin password changed successfully" in res.stdout, res.stderr
    assert "a-new-password" not in res.stdout + res.stderr
    assert grafana.get("/api/user", new)[0] == 200
    assert grafana.get("/api/user", ADMIN)[0] == 401
    short = grafana.cli("admin", "reset-admin-password", "--password-from-stdin", stdin="abc\n")
    assert short.returncode == 1 and "too short" in short.stderr
    other = grafana.cli("admin", "other-command")
    assert other.returncode == 2 and "reset-admin-password" in other.stderr


def test_anonymous_access_when_enabled(grafana):
    grafana.write_ini(anonymous=True)
    grafana.start()
    status, hits = grafana.get("/api/search")
    assert status == 200 and [h["uid"] for h in hits] == ["fleet-overview"]
    assert grafana.get("/api/datasources")[0] == 403  # a Viewer does not read data sources
    assert grafana.get("/api/user", ("admin", "wrong"))[0] == 401  # bad credentials stay refused


def test_configuration_precedence(grafana):
    # cfg:S.K on the command line beats GF_* variables, which beat grafana.ini
    port = free_port()
    grafana.url = f"http://127.0.0.1:{port}"
    grafana.start(f"cfg:server.http_port={port}", env={"GF_SERVER_HTTP_PORT": str(free_port())})
    assert grafana.stop() == 0
    port = free_port()
    grafana.url = f"http://127.0.0.1:{port}"
    grafana.start(env={"GF_SERVER_HTTP_PORT": str(port)})
    assert "Config overridden from Environment variable" in grafana.log.read_text()


@pytest.mark.parametrize("sources,message", [
    ([{"name": "A", "type": "prometheus", "url": "http://a", "isDefault": True},
      {"name": "B", "type": "prometheus", "url": "http://b", "isDefault": True}],
     "Only one datasource per organization can be marked as default"),
    ([{"name": "A", "type": "prometheus", "uid": "not a uid!"}], "uid 'not a uid!' is invalid"),
    ([{"name": "A", "url": "http://a"}], "datasource 'A': type is required"),
    ([{"type": "prometheus"}], "datasources[0]: name is required"),
    ([{"name": "A", "type": "prometheus", "access": "browser"}], "access must be 'proxy' or 'direct'"),
])
def test_an_invalid_datasource_file_stops_the_server(grafana, sources, message):
    grafana.datasources(sources)
    res = grafana.run()
    assert res.returncode == 1, res.stderr
    assert "Error: ✗ Datasource provisioning error" in res.stderr and message in res.stderr
    with pytest.raises(OSError):
        request(grafana.url + "/api/health")


@pytest.mark.parametrize("where,text,message", [
    ("datasources", "apiVersion: 1\ndatasources: [\n", "could not parse provisioning file"),
    ("datasources", "apiVersion: 2\ndatasources: []\n", "apiVersion must be 1"),
    ("dashboards", '{"apiVersion": 1, "providers": [{"name": "x", "type": "file", "options": {}}]}',
     "options.path is required"),
    ("dashboards", '{"apiVersion": 1, "providers": [{"name": "x", "type": "sql", "options": {"path": "/"}}]}',
     "is not supported"),
    ("dashboards", '{"apiVersion": 1, "providers": [{"options": {"path": "/"}}]}', "name is required"),
])
def test_an_invalid_provisioning_file_stops_the_server(grafana, where, text, message):
    (grafana.prov / where / "broken.yml").write_text(text)
    res = grafana.run()
    assert res.returncode == 1, res.stderr
    assert "provisioning error" in res.stderr and message in res.stderr and str(grafana.prov) in res.stderr


def test_an_invalid_dashboard_is_logged_and_skipped(grafana):
    (grafana.dashboards / "broken.json").write_text('{"title": "Broken", ')
    (grafana.dashboards / "untitled.json").write_text('{"uid": "untitled", "panels": []}')
    (grafana.dashboards / "twin.json").write_text(json.dumps({**DASHBOARD, "title": "Twin"}))
    grafana.start()
    assert [h["uid"] for h in grafana.get("/api/search", ADMIN)[1]] == ["fleet-overview"]
    log = grafana.log.read_text()
    assert 'msg="failed to load dashboard from "' in log
    assert "broken.json" in log and "Dashboard title cannot be empty" in log
    assert 'msg="the same UID is used more than once"' in log


def test_startup_errors_are_clear(grafana, tmp_path):
    grafana.password_file.unlink()
    res = grafana.run()
    assert res.returncode == 1 and f"failed to read file {grafana.password_file}" in res.stderr
    grafana.password_file.write_text(PASSWORD)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grafana.port))
        busy.listen()
        res = grafana.run()
    assert res.returncode == 1
    assert f"failed to open listener on address 127.0.0.1:{grafana.port}" in res.stderr
    res = subprocess.run([sys.executable, str(grafana.bin), "server", f"--homepath={tmp_path}"],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 1 and "Could not find config defaults" in res.stderr
    res = subprocess.run([sys.executable, str(grafana.bin), "server", "--bogus"], capture_output=True, text=True,
                         timeout=20)
    assert res.returncode == 2 and "flag provided but not defined: -bogus" in res.stderr
    assert PASSWORD not in res.stdout + res.stderr
