"""The cloudflared repository of the offline stand-in mirror (tests/mirror): layout, signatures,
indexes, the package, and the cloudflared stand-in CLI run locally (ingress validate / rule,
and `tunnel run` serving its metrics server on 127.0.0.1). No Docker, no network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import runpy
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

from mirror import build as mirror_build
from mirror.checks import parse_stanzas, private_apt, sha256

REPO = Path(__file__).resolve().parents[2]
MIRROR = REPO / "tests" / "mirror"
KEY_BIN = MIRROR / "keys" / "test-mirror.gpg"
STANDIN_SRC = MIRROR / "standins" / "cloudflared" / "cloudflared"
CF_VERSION = runpy.run_path(str(REPO / "group_data" / "all.py"))["cloudflared_version"]
ARCHES = ("amd64", "arm64")
DIST = "cloudflared/dists/any"
DEB = f"cloudflared/pool/main/c/cloudflared/cloudflared_{CF_VERSION}_all.deb"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("dpkg-deb", "gpg", "gpgv")),
    reason="needs dpkg-deb, gpg and gpgv")


@pytest.fixture(scope="module")
def cf_root(built, tmp_path_factory):
    """The built package, extracted: the stand-in is tested as it is shipped."""
    out, _ = built
    root = tmp_path_factory.mktemp("cf-deb")
    subprocess.run(["dpkg-deb", "-R", str(out / DEB), str(root)], check=True, timeout=30)
    return root





# --- the repository --------------------------------------------------------------------

def test_layout_and_return_value(built):
    out, info = built
    assert info["versions"]["cloudflared"] == CF_VERSION
    expected = {"cloudflare-main.gpg", DEB}
    expected |= {f"{DIST}/{n}" for n in ("Release", "InRelease", "Release.gpg")}
    expected |= {f"{DIST}/main/binary-{a}/Packages{ext}" for a in ARCHES for ext in ("", ".gz")}
    listed = {f for f in info["files"] if f.startswith("cloudflare")}
    assert listed == expected
    for rel in expected:
        assert info["files"][rel]["sha256"] == sha256(out / rel)
        assert info["files"][rel]["size"] == (out / rel).stat().st_size
    # The key, served like https://pkg.cloudflare.com/cloudflare-main.gpg: the committed binary
    # public key byte for byte, so its sha256 can be pinned.
    assert (out / "cloudflare-main.gpg").read_bytes() == KEY_BIN.read_bytes()
    assert info["files"]["cloudflare-main.gpg"]["sha256"] == sha256(KEY_BIN)
    assert info["signing_key"]["sha256"]["binary"] == sha256(KEY_BIN)
    assert info["repos"]["cloudflared"] == {
        "path": "cloudflared/", "suites": "any", "components": "main",
        "signing_key": "cloudflare-main.gpg", "signing_key_armored": False}
    assert info["packages"]["cloudflared"] == {
        "version": CF_VERSION, "depends": "python3, python3-yaml", "deb": [DEB]}
    assert not list(out.glob(".staging-*"))


def test_deterministic_and_replaces_old_trees(built, tmp_path):
    _, info = built
    (tmp_path / "cloudflared" / "pool").mkdir(parents=True)
    (tmp_path / "cloudflared" / "pool" / "stale.deb").write_text("x")
    (tmp_path / "cloudflare-main.gpg").write_text("old key")
    assert mirror_build.build(tmp_path)["files"] == info["files"]
    assert not (tmp_path / "cloudflared" / "pool" / "stale.deb").exists()


def test_version_comes_from_the_data_file(tmp_path):
    data = tmp_path / "all.py"
    data.write_text('tailscale_version = "1.2.3"\nnvidia_container_toolkit_version = "1.0.0-1"\n'
                    'cloudflared_version = "2030.1.2"\n')
    info = mirror_build.build(tmp_path / "out", data_file=data)
    assert info["packages"]["cloudflared"]["version"] == "2030.1.2"
    deb = tmp_path / "out" / "cloudflared/pool/main/c/cloudflared/cloudflared_2030.1.2_all.deb"
    assert deb.is_file()
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=30)
    res = subprocess.run([sys.executable, str(root / "usr/bin/cloudflared"), "--version"],
                         capture_output=True, text=True, timeout=20)
    assert res.stdout == "cloudflared version 2030.1.2 (built 2026-01-01-0000 UTC)\n"


def gpgv(*args, **kw):
    return subprocess.run(["gpgv", "--keyring", str(KEY_BIN), *args], capture_output=True,
                          timeout=30, **kw)


def test_release_is_signed_with_the_committed_key(built, tmp_path):
    out, _ = built
    dist = out / DIST
    for res in (gpgv(str(dist / "InRelease"), text=True),
                gpgv(str(dist / "Release.gpg"), str(dist / "Release"), text=True)):
        assert res.returncode == 0 and "Good signature" in res.stderr, res.stderr
    # Verified with the key as served, too.
    served = subprocess.run(["gpgv", "--keyring", str(out / "cloudflare-main.gpg"),
                             str(dist / "InRelease")], capture_output=True, timeout=30)
    assert served.returncode == 0
    assert gpgv("--output", "-", str(dist / "InRelease")).stdout == (dist / "Release").read_bytes()
    bad = tmp_path / "Release"
    bad.write_text((dist / "Release").read_text().replace("STAND-IN", "STAND-lN", 1))
    assert gpgv(str(dist / "Release.gpg"), str(bad)).returncode != 0


def test_release_fields_and_index_hashes(built):
    out, _ = built
    dist = out / DIST
    release = parse_stanzas((dist / "Release").read_text())[0]
    assert release["Origin"] == "cloudflare"
    assert "STAND-IN" in release["Label"] and "STAND-IN" in release["Description"]
    assert release["Suite"] == release["Codename"] == "any"
    assert release["Components"] == "main" and release["Architectures"] == "amd64 arm64"
    assert "Valid-Until" not in release
    listed = set()
    for field, algo in (("SHA256", hashlib.sha256), ("MD5Sum", hashlib.md5)):
        rows = [line.split() for line in release[field].strip().splitlines()]
        for digest, size, name in rows:
            data = (dist / name).read_bytes()
            assert (len(data), algo(data).hexdigest()) == (int(size), digest), name
            listed.add(name)
    assert listed == {f"main/binary-{a}/Packages{ext}" for a in ARCHES for ext in ("", ".gz")}
    for arch in ARCHES:
        index = dist / "main" / f"binary-{arch}"
        text = (index / "Packages").read_text()
        assert gzip.decompress((index / "Packages.gz").read_bytes()).decode() == text
        [entry] = parse_stanzas(text)
        deb = (out / "cloudflared" / entry["Filename"]).read_bytes()
        assert entry["Filename"] == DEB.removeprefix("cloudflared/")
        assert entry["Package"] == "cloudflared" and entry["Version"] == CF_VERSION
        assert entry["Architecture"] == "all"
        assert entry["Depends"] == "python3, python3-yaml"
        assert int(entry["Size"]) == len(deb)
        assert entry["SHA256"] == hashlib.sha256(deb).hexdigest()
        assert entry["MD5sum"] == hashlib.md5(deb).hexdigest()


def test_package_contents(built, cf_root):
    out, _ = built
    deb = out / DEB
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True,
                          check=True, timeout=30).stdout
    assert " Package: cloudflared" in info and f" Version: {CF_VERSION}" in info
    assert " Depends: python3, python3-yaml" in info
    assert " Architecture: all" in info and "STAND-IN" in info
    contents = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True,
                              text=True, check=True, timeout=30).stdout
    listed = {line.split()[-1] for line in contents.splitlines()}
    files = {p for p in listed if not p.endswith("/")}
    assert files == {"./usr/bin/cloudflared", "./usr/share/doc/cloudflared/README.stand-in"}
    assert all(" root/root " in line for line in contents.splitlines())
    assert "-rwxr-xr-x root/root" in next(line for line in contents.splitlines()
                                          if line.endswith("./usr/bin/cloudflared"))
    # No systemd unit and no maintainer scripts, like the real package.
    assert not any("systemd" in p or p.startswith("./etc") for p in listed)
    assert sorted(p.name for p in (cf_root / "DEBIAN").iterdir()) == ["control"]
    script = (cf_root / "usr/bin/cloudflared").read_text()
    head = script.splitlines()[:3]
    assert head[0] == "#!/usr/bin/python3"
    assert "STAND-IN for tests (tests/mirror)" in head[1]
    assert "cloudflared" in head[2] and "opens no tunnel to Cloudflare" in head[2]
    assert "@" not in "".join(head)
    # The shipped script is the committed source with the version filled in.
    assert script == STANDIN_SRC.read_text().replace("@CLOUDFLARED_VERSION@", CF_VERSION)


@pytest.mark.skipif(not shutil.which("apt-get"), reason="needs apt-get")
def test_apt_accepts_the_signed_source(built, tmp_path):
    """A private apt (no system lists, keys or sources) updates and downloads from file: URIs,
    through a source written like Cloudflare's own."""
    out, _ = built
    apt = private_apt(
        tmp_path,
        f"Types: deb\nURIs: file://{out}/cloudflared\nSuites: any\nComponents: main\n"
        f"Signed-By: {out}/cloudflare-main.gpg\n",
        installed=["python3", "python3-yaml"],
        arch="amd64",
    )

    update = apt("update")
    assert "NO_PUBKEY" not in update and "not signed" not in update and "W:" not in update
    apt("download", "cloudflared")
    assert [p.name for p in (tmp_path / "dl").glob("*.deb")] == [Path(DEB).name]
    assert f"Inst cloudflared ({CF_VERSION} " in apt("install", "--simulate", "cloudflared")


# --- the stand-in CLI: version, ingress validate, ingress rule ---------------------------

TUNNEL_ID = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
OTHER_ID = "0b7e3f4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
SECRET = "U1RBTkQtSU4tdGVzdC1zZWNyZXQtZG8tbm90LXByaW50LTAxMjM0NTY3ODk="  # base64
LAST_RULE = ("The last ingress rule must match all URLs (i.e. it should not have a hostname "
             "or path filter)")
BAD_WILDCARD = ('Hostname patterns can have at most one wildcard character ("*") and it can '
                'only be used for subdomains, e.g. "*.example.com"')
NO_PATH = ("ingress rules don't support proxying to a different path on the origin service. "
           "The path will be the same as the eyeball request's path")

RULES = [
    {"hostname": "blackroad.io", "service": "http://127.0.0.1:3000"},
    {"hostname": "api.blackroad.io", "path": "^/v[0-9]+/", "service": "http://127.0.0.1:8000"},
    {"hostname": "api.blackroad.io", "service": "http_status:403"},
    {"hostname": "*.lucidia.earth", "service": "https://localhost:3001"},
    {"hostname": "agents.blackroad.io", "service": "http://100.100.0.12:8001"},
    {"hostname": "*.blackroad.io", "path": "health", "service": "hello_world"},
    {"hostname": "ssh.blackroad.io", "service": "ssh://localhost:22"},
    {"hostname": "db.blackroad.io", "service": "tcp://127.0.0.1:5432"},
    {"hostname": "rdp.blackroad.io", "service": "rdp://10.0.0.5:3389"},
    {"hostname": "sock.blackroad.io", "service": "unix:/run/app.sock"},
    {"service": "http_status:404"},
]


def write_yaml(path: Path, data: dict) -> Path:
    # JSON is YAML: no dependency on how a YAML emitter quotes "*.example.com".
    path.write_text(json.dumps(data, indent=2))
    return path


class CLI:
    def __init__(self, root: Path, home: Path):
        self.script = root / "usr/bin/cloudflared"
        self.home = home
        home.mkdir(exist_ok=True)
        self.env = dict(os.environ, HOME=str(home))

    def __call__(self, *args, cwd=None):
        return subprocess.run([sys.executable, str(self.script), *map(str, args)],
                              capture_output=True, text=True, timeout=20, env=self.env, cwd=cwd)

    def config(self, rules=None, **top) -> Path:
        data = {"tunnel": TUNNEL_ID, "credentials-file": str(self.home / "creds.json"), **top}
        if rules is not None:
            data["ingress"] = rules
        return write_yaml(self.home / "config.yml", data)


@pytest.fixture
def cli(cf_root, tmp_path):
    return CLI(cf_root, tmp_path / "home")


def test_version(cli):
    line = f"cloudflared version {CF_VERSION} (built 2026-01-01-0000 UTC)\n"
    for args in (["--version"], ["-v"], ["version"]):
        res = cli(*args)
        assert (res.returncode, res.stdout) == (0, line), args
    assert cli("version", "--short").stdout == CF_VERSION + "\n"


def test_validate_ok(cli):
    conf = cli.config(RULES)
    for flag in (["--config", conf], [f"--config={conf}"]):
        res = cli("tunnel", *flag, "ingress", "validate")
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"Validating rules from {conf}\nOK\n"
    # --config is also a global flag, as in the real package's own service unit.
    assert cli("--no-autoupdate", "--config", conf, "tunnel", "ingress", "validate").returncode == 0


def test_default_config_search(cli):
    (cli.home / ".cloudflared").mkdir()
    conf = write_yaml(cli.home / ".cloudflared" / "config.yml", {"ingress": RULES})
    res = cli("tunnel", "ingress", "validate")
    assert res.returncode == 0 and res.stdout.splitlines() == [
        f"Validating rules from {conf}", "OK"]
    conf.unlink()
    if any(Path(d, "config.yml").exists() or Path(d, "config.yaml").exists()
           for d in ("/etc/cloudflared", "/usr/local/etc/cloudflared")):
        return  # this machine has a real config; the "none found" case cannot be shown
    res = cli("tunnel", "ingress", "validate")
    assert res.returncode == 0 and res.stdout.startswith("No configuration file was found.")


def validate_error(cli, rules, **top):
    conf = cli.config(rules, **top)
    res = cli("tunnel", "--config", conf, "ingress", "validate")
    assert res.returncode == 1, (rules, res.stdout, res.stderr)
    assert res.stdout == f"Validating rules from {conf}\n"
    assert res.stderr.startswith("Validation failed: ")
    return res.stderr.strip()


def test_missing_catch_all(cli):
    err = validate_error(cli, [{"hostname": "blackroad.io", "service": "http://127.0.0.1:3000"}])
    assert err == "Validation failed: " + LAST_RULE
    # A path filter on the last rule is not a catch-all either.
    err = validate_error(cli, [{"hostname": "a.example.com", "service": "http_status:404"},
                               {"path": "^/", "service": "http_status:404"}])
    assert err == "Validation failed: " + LAST_RULE


def test_catch_all_not_last(cli):
    for first in ({"service": "http://127.0.0.1:3000"},
                  {"hostname": "*", "service": "http://127.0.0.1:3000"}):
        err = validate_error(cli, [first, {"hostname": "blackroad.io",
                                           "service": "http://127.0.0.1:3000"},
                                   {"service": "http_status:404"}])
        assert err == (f"Validation failed: Rule #1 is matching the hostname "
                       f"'{first.get('hostname', '')}', but this will match every hostname, "
                       f"meaning the rules which follow it will never be triggered.")


@pytest.mark.parametrize("hostname", ["foo.*.example.com", "*example.com", "api.*",
                                      "**.example.com", "*.*.example.com"])
def test_bad_wildcard(cli, hostname):
    err = validate_error(cli, [{"hostname": hostname, "service": "http://127.0.0.1:3000"},
                               {"service": "http_status:404"}])
    assert err == "Validation failed: " + BAD_WILDCARD


def test_hostname_with_port_and_bad_path_regex(cli):
    err = validate_error(cli, [{"hostname": "blackroad.io:443", "service": "http://x:1"},
                               {"service": "http_status:404"}])
    assert err == "Validation failed: Hostname cannot contain a port"
    err = validate_error(cli, [{"hostname": "blackroad.io", "path": "([a-z", "service":
                                "http://x:1"}, {"service": "http_status:404"}])
    assert err.startswith("Validation failed: Rule #1 has an invalid regex: ")


@pytest.mark.parametrize("service, message", [
    ("localhost:3000", "localhost:3000 is an invalid address, please make sure it has a scheme "
                       "and a hostname"),
    ("127.0.0.1", "127.0.0.1 is an invalid address, please make sure it has a scheme and a "
                  "hostname"),
    ("ftp://files.example.com", "ftp://files.example.com is an invalid address"),
    ("http_status:abc", "invalid HTTP status"),
    ("http_status:99", "invalid HTTP status code: 99"),
    ("http_status:999", "invalid HTTP status code: 999"),
    ("tcp://127.0.0.1", "tcp://127.0.0.1 is an invalid address"),
    ("ssh://localhost", "ssh://localhost is an invalid address"),
    ("unix:run/app.sock", "unix:run/app.sock is an invalid address"),
    ("hello-world-ish", "hello-world-ish is an invalid address"),
])
def test_bad_service(cli, service, message):
    err = validate_error(cli, [{"hostname": "blackroad.io", "service": service},
                               {"service": "http_status:404"}])
    assert err.startswith("Validation failed: " + message), err


def test_rule_without_service_and_empty_ingress(cli):
    err = validate_error(cli, [{"hostname": "blackroad.io"}, {"service": "http_status:404"}])
    assert "Rule #1 has no service" in err
    err = validate_error(cli, [{"hostname": "blackroad.io", "service": "http://x:1"}, {}])
    assert "Rule #2 has no service" in err
    for rules in ([], None):
        err = validate_error(cli, rules)
        assert err == "Validation failed: The config file doesn't contain any ingress rules"
    assert "must be a list" in validate_error(cli, {"service": "http_status:404"})


@pytest.mark.parametrize("service", ["http://127.0.0.1:3000/app", "http://127.0.0.1:3000/",
                                     "https://localhost/v1"])
def test_http_service_with_a_path(cli, service):
    err = validate_error(cli, [{"hostname": "blackroad.io", "service": service},
                               {"service": "http_status:404"}])
    assert err == f"Validation failed: {service} is an invalid address, {NO_PATH}"


def test_unreadable_config(cli, tmp_path):
    res = cli("tunnel", "--config", tmp_path / "absent.yml", "ingress", "validate")
    assert res.returncode == 1 and "absent.yml" in res.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("ingress: [\n  - service: x\n")
    res = cli("tunnel", "--config", broken, "ingress", "validate")
    assert res.returncode == 1 and "error parsing YAML in config file" in res.stderr


@pytest.mark.parametrize("url, number", [
    ("https://blackroad.io/", 1),                      # exact host
    ("https://BlackRoad.IO:8443/anything", 1),         # case-insensitive, port ignored
    ("https://www.blackroad.io/", 11),                 # exact means exact
    ("https://api.blackroad.io/v2/users", 2),          # path regex
    ("https://api.blackroad.io/users/v2/", 3),         # regex is anchored only where it says
    ("https://api.blackroad.io/", 3),                  # first match wins
    ("https://www.lucidia.earth/", 4),                 # wildcard
    ("https://a.b.lucidia.earth/x", 4),                # wildcard: one or more labels
    ("https://lucidia.earth/", 11),                    # wildcard needs a label in front
    ("https://notlucidia.earth/", 11),
    ("https://agents.blackroad.io/health", 5),         # earlier exact rule beats the wildcard
    ("https://x.blackroad.io/api/healthz", 6),         # unanchored path regex
    ("https://x.blackroad.io/api/status", 11),
    ("http://example.com/", 11),                       # catch-all
])
def test_ingress_rule_matching(cli, url, number):
    conf = cli.config(RULES)
    res = cli("tunnel", "--config", conf, "ingress", "rule", url)
    assert res.returncode == 0, res.stderr
    rule = RULES[number - 1]
    expected = [f"Using rules from {conf}", f"Matched rule #{number}"]
    expected += [f"\t{key}: {rule[key]}" for key in ("hostname", "path", "service") if key in rule]
    assert res.stdout.splitlines() == expected


def test_ingress_rule_errors(cli):
    conf = cli.config(RULES)
    res = cli("tunnel", "--config", conf, "ingress", "rule")
    assert res.returncode == 1
    assert "expects a single argument, the URL to test" in res.stderr
    res = cli("tunnel", "--config", conf, "ingress", "rule", "blackroad.io/x")
    assert res.returncode == 1
    assert res.stderr.strip() == "blackroad.io/x doesn't have a hostname, consider adding a scheme"
    bad = cli.config([{"hostname": "blackroad.io", "service": "http://127.0.0.1:3000"}])
    res = cli("tunnel", "--config", bad, "ingress", "rule", "https://blackroad.io/")
    assert res.returncode == 1 and res.stderr.strip() == "Validation failed: " + LAST_RULE
    assert "Matched" not in res.stdout


@pytest.mark.parametrize("args", [["tunnel", "create", "x"], ["tunnel", "login"],
                                  ["service", "install"], ["update"], ["tunnel", "route", "dns"],
                                  ["tunnel", "ingress", "check"], ["access", "tcp"]])
def test_unknown_subcommands(cli, args):
    res = cli(*args)
    assert res.returncode == 2
    assert "not implemented" in res.stderr and "implements only" in res.stderr
    assert "STAND-IN" in res.stderr


def test_unknown_and_unsupported_flags(cli):
    res = cli("tunnel", "--bogus", "run")
    assert res.returncode == 2 and "flag provided but not defined: -bogus" in res.stderr
    res = cli("tunnel", "run", "--token", "eyJh")
    assert res.returncode == 2 and "--token" in res.stderr
    # Without a subcommand, a configured tunnel is pointed at `run`, as the real one does.
    res = cli("tunnel", "--config", cli.config(RULES))
    assert res.returncode == 1
    assert res.stderr.strip() == f"Use `cloudflared tunnel run` to start tunnel {TUNNEL_ID}"


# --- the stand-in CLI: tunnel run --------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def write_creds(cli: CLI, tunnel_id=TUNNEL_ID, **extra) -> Path:
    creds = {"AccountTag": "0123456789abcdef0123456789abcdef", "TunnelSecret": SECRET,
             "TunnelID": tunnel_id, **extra}
    path = cli.home / "creds.json"
    path.write_text(json.dumps(creds))
    path.chmod(0o600)
    return path


@contextmanager
def running(cli: CLI, *args):
    """Start `cloudflared ... tunnel run`; yield (process, logs()); always stopped after."""
    log = cli.home / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(cli.script), *map(str, args)],
                                stdout=out, stderr=subprocess.STDOUT, env=cli.env)
    try:
        yield proc, log.read_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert SECRET not in log.read_text()


def wait_ready(proc, port, logs):
    deadline = time.monotonic() + 15  # bounded
    while time.monotonic() < deadline:
        assert proc.poll() is None, logs()
        try:
            return get(f"http://127.0.0.1:{port}/ready")
        except OSError:
            time.sleep(0.05)
    raise AssertionError("metrics server did not answer:\n" + logs())


def stop(proc, sig=signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=10)


def test_run_serves_metrics_and_stops_on_sigterm(cli):
    port = free_port()
    write_creds(cli)
    conf = cli.config(RULES, metrics=f"127.0.0.1:{port}")
    with running(cli, "--no-autoupdate", "tunnel", "--config", conf, "run") as (proc, logs):
        status, body = wait_ready(proc, port, logs)
        ready = json.loads(body)
        assert status == 200 and ready["status"] == 200 and ready["readyConnections"] == 1
        assert body == json.dumps(ready, separators=(",", ":"))
        assert len(ready["connectorId"]) == 36
        status, metrics = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        lines = metrics.splitlines()
        assert "cloudflared_tunnel_ha_connections 1" in lines
        assert f'cloudflared_standin_info{{version="{CF_VERSION}"}} 1' in lines
        assert any(line.startswith("build_info{") and f'version="{CF_VERSION}"' in line
                   for line in lines)
        assert sum(line.startswith("cloudflared_") for line in lines) >= 4
        assert get(f"http://127.0.0.1:{port}/healthcheck") == (200, "OK\n")
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
        # Only on the configured address.
        with socket.socket() as probe:
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", port))
        assert stop(proc) == 0
        out = logs()
    assert f"INF Starting tunnel tunnelID={TUNNEL_ID}" in out
    assert f"INF Starting metrics server on 127.0.0.1:{port}/metrics" in out
    assert f"INF Generated Connector ID: {ready['connectorId']}" in out
    assert "INF Initiating graceful shutdown due to signal terminated" in out
    assert "STAND-IN" in out and SECRET not in out
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/ready")


def test_run_by_id_with_metrics_flag_and_sigint(cli):
    port, configured = free_port(), free_port()
    write_creds(cli)
    conf = cli.config(RULES, metrics=f"127.0.0.1:{configured}")
    pidfile = cli.home / "cloudflared.pid"
    with running(cli, "tunnel", "--config", conf, "--metrics", f"127.0.0.1:{port}", "run",
                 "--pidfile", pidfile, TUNNEL_ID.upper()) as (proc, logs):
        assert wait_ready(proc, port, logs)[0] == 200
        deadline = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pidfile.read_text() == str(proc.pid)
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{configured}/ready")  # the flag wins over the config
        assert stop(proc, signal.SIGINT) == 0
        assert "due to signal interrupt" in logs()


def test_run_by_name_through_the_credentials_file(cli):
    port = free_port()
    write_creds(cli, TunnelName="pi5-alpha")
    conf = cli.config(RULES, tunnel="pi5-alpha", metrics=f"127.0.0.1:{port}")
    with running(cli, "tunnel", "--config", conf, "run") as (proc, logs):
        assert wait_ready(proc, port, logs)[0] == 200
        assert stop(proc) == 0
        assert f"tunnelID={TUNNEL_ID}" in logs()
    res = cli("tunnel", "--config", conf, "run", "some-other-name")
    assert res.returncode == 1
    assert "some-other-name is neither the ID nor the name of any of your tunnels" in res.stderr


def run_error(cli, *args, conf=None) -> str:
    res = cli("tunnel", "--config", conf or cli.config(RULES, metrics=f"127.0.0.1:{free_port()}"),
              "run", *args)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert SECRET not in out
    assert "Starting metrics server" not in out
    return res.stderr


def test_run_refuses_the_wrong_tunnel_id(cli):
    write_creds(cli, tunnel_id=OTHER_ID)
    err = run_error(cli)
    assert f"is for tunnel {OTHER_ID}, not tunnel {TUNNEL_ID}" in err
    write_creds(cli)
    err = run_error(cli, OTHER_ID)  # the command line names another tunnel
    assert f"is for tunnel {TUNNEL_ID}, not tunnel {OTHER_ID}" in err


def test_run_refuses_bad_credentials(cli):
    err = run_error(cli)  # no file at all
    assert f"Tunnel credentials file '{cli.home / 'creds.json'}' doesn't exist or is not a file" \
        in err
    path = write_creds(cli)
    path.write_text(path.read_text()[:-5])  # truncated JSON that still holds the secret
    assert "Invalid JSON when parsing tunnel credentials file" in run_error(cli)
    path.write_text(json.dumps({"AccountTag": "a", "TunnelID": TUNNEL_ID}))
    assert "has no TunnelSecret" in run_error(cli)
    path.write_text(json.dumps({"AccountTag": "a", "TunnelID": TUNNEL_ID,
                                "TunnelSecret": SECRET + "!not-base64"}))
    assert "Invalid JSON" in run_error(cli)
    if os.geteuid() != 0:  # root reads anything
        write_creds(cli).chmod(0)
        assert "couldn't read tunnel credentials" in run_error(cli)


def test_run_refuses_an_invalid_ingress_or_no_tunnel(cli):
    write_creds(cli)
    conf = cli.config([{"hostname": "blackroad.io", "service": "http://127.0.0.1:3000/app"},
                       {"service": "http_status:404"}], metrics=f"127.0.0.1:{free_port()}")
    assert NO_PATH in run_error(cli, conf=conf)
    conf = cli.config(RULES)
    conf.write_text(json.dumps({"credentials-file": str(cli.home / "creds.json"),
                                "ingress": RULES}))
    err = run_error(cli, conf=conf)
    assert err.startswith('"cloudflared tunnel run" requires the ID or name of the tunnel')
    err = run_error(cli, TUNNEL_ID, "extra", conf=conf)
    assert "accepts only one argument" in err


def test_run_refuses_a_busy_metrics_address(cli):
    write_creds(cli)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = run_error(cli, conf=cli.config(RULES, metrics=f"127.0.0.1:{port}"))
    assert f"Error opening metrics server listener: listen tcp 127.0.0.1:{port}" in err
