"""The app layer's data and its host-side script: which hosts run which app, what
validation refuses (a tag, a missing digest, an archive without its checksum, a Pi app
without a memory limit, limits beyond the RAM, a domain nothing or two things serve,
arguments that undo the deploy's guarantees), that no secret reaches the `docker run`
arguments, and fleet-app's proxy site, settings hash and rollback hold."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest

from deploys import apps
from fleet.converge import component as registry
from fleet.converge.keys import secret
from fleet.preflight.validate import problems

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "templates" / "apps" / apps.SCRIPT.lstrip("/")
DIGEST = "ab" * 32


def app_problems(data) -> list[str]:
    return [str(p) for p in problems(data.fleet()) if p.key.startswith(("apps_", "ram_mb", "fleet_domains"))]


# --- which hosts run which app ---------------------------------------------------------------------

def test_each_app_runs_where_its_service_runs(data):
    fleet = data.fleet()
    running = {name: apps.hosts_apps(h.groups, h.data) for name, h in fleet.hosts.items()}
    assert running["pi5-alpha"] == ["agents", "api", "lucidia", "web"]
    assert running["pi5-beta"] == ["agents"]
    assert all(not running[h] for h in running if h not in ("pi5-alpha", "pi5-beta"))
    assert sorted(h.name for h in fleet.hosts_with("apps")) == ["pi5-alpha", "pi5-beta"]


def test_the_data_as_is_is_valid_once_digests_are_filled_in(data):
    assert app_problems(data) == []


# --- what validation refuses ---------------------------------------------------------------------

def test_an_empty_release_says_where_to_put_the_digest(data):
    data.all_data["apps_releases"]["web"] = {"image": ""}
    [line] = app_problems(data)
    assert line.startswith("all: apps_releases['web']: has no image")
    assert "group_data/all.py apps_releases" in line and "Fix:" in line


@pytest.mark.parametrize("image, why", [
    ("ghcr.io/blackroad/web:1.4", "names a tag, not a digest"),
    ("ghcr.io/blackroad/web@sha256:abc", "has no 64-hex sha256 digest"),
])
def test_a_tag_or_a_short_digest_is_refused(data, image, why):
    data.all_data["apps_releases"]["web"] = {"image": image}
    [line] = app_problems(data)
    assert f"apps_releases['web'].image: {image!r} {why}" in line


def test_an_archive_needs_its_checksum(data):
    data.all_data["apps_releases"]["api"] = {"image": f"x/api@sha256:{DIGEST}", "archive_url": "http://h/a.tar"}
    [line] = app_problems(data)
    assert "apps_releases['api'].archive_sha256: is missing" in line


def test_a_pi_app_needs_a_memory_limit(data):
    del data.all_data["apps_definitions"]["agents"]["memory"]
    found = app_problems(data)
    assert sorted(line.split(":")[0] for line in found) == ["pi5-alpha", "pi5-beta"]
    assert all("apps_definitions['agents'].memory: is missing, and a Pi has 4-8 GB" in line for line in found)


def test_memory_limits_must_fit_the_hosts_ram(data):
    data.hosts["pi5-beta"]["ram_mb"] = 1024
    [line] = app_problems(data)
    assert line.startswith("pi5-beta: apps_definitions: the apps' memory limits add up to 512 MB")


def test_a_domain_needs_exactly_one_server(data):
    data.all_data["apps_definitions"]["web2"] = {**data.all_data["apps_definitions"]["web"]}
    data.all_data["apps_releases"]["web2"] = {"image": f"x/web2@sha256:{DIGEST}"}
    found = app_problems(data)
    assert any("fleet_domains['blackroad.io']: routes to 'web' on pi5-alpha, but app web and app web2 both serve it"
               in line for line in found), found
    del data.all_data["apps_definitions"]["web2"], data.all_data["apps_releases"]["web2"]
    del data.all_data["apps_definitions"]["lucidia"], data.all_data["apps_releases"]["lucidia"]
    found = app_problems(data)
    assert any("fleet_domains['lucidia.earth']: routes to 'lucidia' on pi5-alpha, but nothing serves it" in line
               for line in found), found


@pytest.mark.parametrize("arg", ["--publish=0.0.0.0:80:80", "--network", "--privileged", "-p"])
def test_arguments_that_undo_the_deploy_are_refused(data, arg):
    data.all_data["apps_definitions"]["web"]["args"] = [arg]
    [line] = app_problems(data)
    assert "apps_definitions['web'].args:" in line and "is set by the deploy" in line


def test_an_app_cannot_take_a_components_service(data):
    data.all_data["apps_definitions"]["web"]["service"] = "llm"
    found = app_problems(data)
    assert any("apps_definitions['web'].service: 'llm' is served by the llm component" in line for line in found)


def test_a_release_for_an_undefined_app_is_refused(data):
    data.all_data["apps_releases"]["ghost"] = {"image": f"x/ghost@sha256:{DIGEST}"}
    [line] = app_problems(data)
    assert "apps_releases['ghost']: releases an app that apps_definitions does not define" in line


@pytest.mark.parametrize("key, value", [("apps_keep_images", 0), ("apps_health_timeout_seconds", -5),
                                        ("apps_proxy_workers", 0), ("apps_memory_reserve_mb", -1)])
def test_whole_number_settings_out_of_range_are_refused(data, key, value):
    data.all_data[key] = value
    found = app_problems(data)
    assert found and all(f"{key}: {value!r} is not a whole number from" in line and "Fix:" in line for line in found)


def test_a_ram_that_is_not_a_number_is_refused(data):
    data.hosts["pi5-beta"]["ram_mb"] = "lots"
    [line] = app_problems(data)
    assert line.startswith("pi5-beta: ram_mb: 'lots' is not the host's RAM in MB") and "inventory.py" in line


def test_slot_ports_must_not_collide(data):
    data.all_data["apps_slot_offsets"] = [1, 2]  # web 3000 -> 3001, lucidia's port
    found = app_problems(data)
    assert any("slot port 3001 is the port of 'lucidia'" in line for line in found), found


# --- what reaches the host -----------------------------------------------------------------------

def test_no_secret_in_the_run_arguments_and_every_secret_file_is_declared(data):
    from fleet.converge import keys
    from fleet.preflight.inventory import select_vault, read_inventory_data

    _, test_fleet = read_inventory_data(REPO / "inventory.py")
    select_vault(REPO, test_fleet, "test")
    fleet = data.fleet()
    h = fleet.hosts["pi5-alpha"]
    spec = h.data["apps_definitions"]["api"]
    args = apps.run_arguments("api", spec)
    for key in spec["secrets"].values():
        assert secret(key) not in json.dumps(args)
    assert "--env" in args and "DATABASE_PASSWORD_FILE=/run/secrets/DATABASE_PASSWORD" in args
    assert f"{apps.secret_path('api', 'DATABASE_PASSWORD')}:/run/secrets/DATABASE_PASSWORD:ro" in args
    assert ["--memory", "512m", "--memory-swap", "512m"] == args[args.index("--memory"):args.index("--memory") + 4]
    files = {s.path for s in registry.secret_files("pi5-alpha", h.groups, h.data)}
    assert {apps.secret_path("api", "DATABASE_PASSWORD"), apps.secret_path("api", "REDIS_PASSWORD")} <= files
    assert not any(p.startswith(apps.SPECS) for p in
                   (s.path for s in registry.secret_files("pi5-beta", fleet.hosts["pi5-beta"].groups,
                                                          fleet.hosts["pi5-beta"].data)))
    del keys


def test_an_archive_release_runs_by_image_id():
    release = {"image": f"fleet-test/app@sha256:{DIGEST}", "archive_url": "http://m/a.tar", "archive_sha256": "cd" * 32}
    assert apps.run_ref(release) == f"sha256:{DIGEST}"
    assert apps.archive_path(release) == f"{apps.CACHE}/{'cd' * 32}.tar"
    assert apps.run_ref({"image": f"ghcr.io/x/web@sha256:{DIGEST}"}) == f"ghcr.io/x/web@sha256:{DIGEST}"


# --- fleet-app, the host-side script -------------------------------------------------------------

@pytest.fixture
def fleet_app(tmp_path, monkeypatch):
    loader = importlib.machinery.SourceFileLoader("fleet_app", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("fleet_app", loader))
    loader.exec_module(module)
    monkeypatch.setattr(module, "SITES", tmp_path / "sites")
    monkeypatch.setattr(module, "STATE", tmp_path / "state")
    return module


SPEC = {"name": "web", "image": f"sha256:{DIGEST}", "listen": ["127.0.0.1:3000", "100.100.0.1:3000"],
        "slots": [13000, 23000], "container_port": 8080, "health": "/health", "run": ["--memory", "256m"]}


def test_the_proxy_site_listens_where_the_spec_says_and_names_the_live_slot(fleet_app):
    text = fleet_app.site(SPEC, 1)
    assert "    listen 127.0.0.1:3000;\n    listen 100.100.0.1:3000;\n" in text
    assert "server 127.0.0.1:23000;" in text and "0.0.0.0" not in text and "[::]" not in text
    fleet_app.write_atomic(fleet_app.site_path("web"), text)
    assert fleet_app.live_slot(SPEC) == 1
    fleet_app.write_atomic(fleet_app.site_path("web"), fleet_app.site(SPEC, 0))
    assert fleet_app.live_slot(SPEC) == 0


def test_the_settings_hash_follows_image_and_arguments_only(fleet_app):
    same = fleet_app.settings(SPEC, SPEC["image"])
    assert same == fleet_app.settings({**SPEC, "listen": ["127.0.0.1:3999"]}, SPEC["image"])
    assert same != fleet_app.settings(SPEC, "sha256:" + "cd" * 32)
    assert same != fleet_app.settings({**SPEC, "run": ["--memory", "512m"]}, SPEC["image"])


def test_a_rollback_holds_until_the_data_names_another_image(fleet_app):
    old = "sha256:" + "cd" * 32
    fleet_app.write_atomic(fleet_app.STATE / "web" / "hold.json", json.dumps({"from": SPEC["image"], "to": old}))
    assert fleet_app.effective_image(SPEC) == old
    assert fleet_app.effective_image({**SPEC, "image": "sha256:" + "ef" * 32}) == "sha256:" + "ef" * 32


def test_the_history_keeps_the_newest_images(fleet_app, monkeypatch):
    removed = []
    monkeypatch.setattr(fleet_app, "run", lambda *args, check=True: removed.append(args))
    spec = {**SPEC, "keep": 2, "archive": ""}
    for n in range(4):
        fleet_app.record({**spec, "image": f"sha256:{n}"}, f"sha256:{n}")
    assert [e["image"] for e in fleet_app.history("web")] == ["sha256:2", "sha256:3"]
    assert [a[-1] for a in removed] == ["sha256:0", "sha256:1"]
    fleet_app.record({**spec, "image": "sha256:2"}, "sha256:2")  # deployed again: newest
    assert [e["image"] for e in fleet_app.history("web")] == ["sha256:3", "sha256:2"]


def test_the_script_without_arguments_prints_its_usage(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "fleet-app apply APP" in proc.stderr


# --- fleet-app status: the engine's API on its socket, the docker CLI where that fails ------------

CONTAINERS = [{"Names": ["/app-web-b"], "Labels": {"fleet.app": "web"}},
              {"Names": ["/app-web-a"], "Labels": {"fleet.app": "web"}},
              {"Names": ["/app-api-a"], "Labels": {"fleet.app": "api"}}]


def inspected(name: str, running: bool = True) -> dict:
    return {"Name": f"/{name}", "Created": "2026-12-05T15:20:34.557601515Z", "State": {"Running": running},
            "Config": {"Labels": {"fleet.app": name.split("-")[1], "fleet.settings": "s1", "fleet.image": "sha256:i1"}}}


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """A unix socket answering as the engine does, from `replies`: {path: (status line, body)};
    every path asked is recorded in `asked`."""
    import socket
    import threading

    path = str(tmp_path / "docker.sock")
    state = {"replies": {}, "asked": []}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(10)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                target = request.split(b" ")[1].decode()
                state["asked"].append(target)
                status, body = state["replies"].get(target, ("HTTP/1.0 404 Not Found", b'{"message": "no such"}'))
                length = "" if "Content-Length" in status else f"Content-Length: {len(body)}\r\n"
                conn.sendall(f"{status}\r\nContent-Type: application/json\r\n{length}\r\n".encode() + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield state
    server.close()


def listing_path(fleet_app) -> str:
    return "/containers/json?all=1&filters=" + fleet_app.quote(json.dumps({"label": ["fleet.app"]}))


def test_status_reads_the_containers_from_the_engines_socket(fleet_app, engine, monkeypatch):
    monkeypatch.setattr(fleet_app, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    engine["replies"][listing_path(fleet_app)] = ("HTTP/1.0 200 OK", json.dumps(CONTAINERS).encode())
    for name in ("app-web-a", "app-api-a"):  # app-web-b went away between the listing and its inspect
        engine["replies"][f"/containers/{name}/json"] = ("HTTP/1.0 200 OK", json.dumps(inspected(name)).encode())
    monkeypatch.setattr(fleet_app, "proxy_active", lambda: True)
    fleet_app.take_snapshot()
    assert fleet_app._SNAPSHOT["by_app"] == {"web": ["app-web-b", "app-web-a"], "api": ["app-api-a"]}
    assert fleet_app._SNAPSHOT["inspected"] == {name: fleet_app.described(inspected(name))
                                                for name in ("app-web-a", "app-api-a")}
    assert engine["asked"][0] == listing_path(fleet_app)


@pytest.mark.parametrize("status, body", [
    ("HTTP/1.0 500 Internal Server Error", b'{"message": "boom"}'),
    ("HTTP/1.0 200 OK", b"not json"),
    ("HTTP/1.0 200 OK", b'{"not": "a list"}'),
    ("HTTP/1.0 200 OK", b'[{"Labels": {}}]'),  # no Names
])
def test_an_engine_answer_out_of_shape_goes_to_the_cli(fleet_app, engine, monkeypatch, status, body):
    engine["replies"][listing_path(fleet_app)] = (status, body)
    ran = []

    def cli(*args, check=True):
        ran.append(args[:2])
        out = "app-web-a web\n" if args[1] == "ps" else json.dumps([inspected("app-web-a")])
        return type("Done", (), {"stdout": out, "returncode": 0})()

    monkeypatch.setattr(fleet_app, "run", cli)
    monkeypatch.setattr(fleet_app, "proxy_active", lambda: True)
    fleet_app.take_snapshot()
    assert ran == [("docker", "ps"), ("docker", "container")]
    assert fleet_app._SNAPSHOT["by_app"] == {"web": ["app-web-a"]}
    assert fleet_app._SNAPSHOT["inspected"] == {"app-web-a": fleet_app.described(inspected("app-web-a"))}


@pytest.mark.parametrize("docker_host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:2375"])
def test_no_engine_socket_goes_to_the_cli(fleet_app, monkeypatch, docker_host):
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    with pytest.raises(fleet_app.EngineUnavailable):
        fleet_app.engine_snapshot()


def test_a_reply_cut_short_or_chunked_is_not_taken(fleet_app, engine):
    engine["replies"]["/short"] = ("HTTP/1.0 200 OK", b"[1, 2]")
    assert fleet_app.engine_get("/short") == [1, 2]
    engine["replies"]["/cut"] = ("HTTP/1.0 200 OK\r\nContent-Length: 9", b"[1, 2]")  # valid JSON, but not all of it
    with pytest.raises(fleet_app.EngineUnavailable):
        fleet_app.engine_get("/cut")
    engine["replies"]["/chunked"] = ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"[1]")
    with pytest.raises(fleet_app.EngineUnavailable):
        fleet_app.engine_get("/chunked")
    assert fleet_app.engine_get("/missing") is None
