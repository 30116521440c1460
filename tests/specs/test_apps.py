"""The team's apps (hosts that run an app's port-map service): each runs the digest its
release names, is served only where the port map says (its container only on a loopback
slot port), has its memory limit and restart policy, keeps its secrets off command lines,
answers its health path, and every domain a tunnel on the host carries reaches it."""

import json

from deploys.apps import SCRIPT, hosts_apps, run_ref, secret_path
from fleet.converge.keys import secret
from specs.conftest import fleet_services, listening
from specs.test_cloudflared import CONFIG, rule_for


def apps_of(fh) -> list[str]:
    return hosts_apps(fh.groups, fh.data)


# Every app container of a host, by app, read once per host per run (one `docker ps`, one
# `docker container inspect` of them all): the specs here only read them, and each docker CLI
# call costs the host ~25 ms of CPU (four specs asked twice per app: ~30 calls on pi5-alpha).
_CONTAINERS: dict[str, dict[str, list[dict]]] = {}


def containers(fh) -> dict[str, list[dict]]:
    if fh.name not in _CONTAINERS:
        names = fh.host.check_output("docker ps -a --filter label=fleet.app --format '{{.Names}}'").split()
        inspected = json.loads(fh.host.check_output(f"docker container inspect {' '.join(names)}")) if names else []
        by_app: dict[str, list[dict]] = {}
        for info in inspected:
            by_app.setdefault(info["Config"]["Labels"]["fleet.app"], []).append(info)
        _CONTAINERS[fh.name] = by_app
    return _CONTAINERS[fh.name]


def live(fh, app: str) -> dict:
    """The one container of `app` (docker inspect), asserting there is exactly one."""
    found = containers(fh).get(app, [])
    names = [info["Name"].lstrip("/") for info in found]
    assert len(names) == 1, f"{app}: containers {names} (one expected: a rollout left one behind?)"
    return found[0]


def test_app01_runs_the_release_digest(fh):
    """app-01: each app's only container runs the image its release pins (the image ID for
    an archive, the registry digest otherwise), and fleet-app sees every app in sync."""
    status = json.loads(fh.host.check_output(f"{SCRIPT} status"))
    for app in apps_of(fh):
        release = fh.data["apps_releases"][app]
        info = live(fh, app)
        assert info["State"]["Running"], app
        ref = run_ref(release)
        if ref.startswith("sha256:"):
            assert info["Image"] == ref, app
        else:
            digests = json.loads(fh.host.check_output(f"docker image inspect --format '{{{{json .RepoDigests}}}}' {info['Image']}"))
            assert ref in digests, app
        assert status["apps"][app] == {"in_sync": True, "why": ""}, app
    assert status["orphans"] == []


def test_app02_served_only_where_the_port_map_says(fh):
    """app-02: the proxy listens on exactly the port map's addresses for each app's service
    (never a wildcard) and each container is published only on a 127.0.0.1 slot port."""
    services = fleet_services()
    tcp = listening(fh, "tcp")
    for app in apps_of(fh):
        service = fh.data["apps_definitions"][app]["service"]
        port = services.port(service)
        assert {a for a, p in tcp if p == port} == {e.address for e in services.binds(service, fh.name)}, app
        bindings = live(fh, app)["HostConfig"]["PortBindings"]
        published = [(b["HostIp"], int(b["HostPort"])) for spec in bindings.values() for b in spec]
        slots = [port + o for o in fh.data["apps_slot_offsets"]]
        assert len(published) == 1 and published[0][0] == "127.0.0.1" and published[0][1] in slots, (app, published)
    proxy = fh.host.service("fleet-apps-proxy")
    assert proxy.is_enabled and proxy.is_running
    # Debian's own nginx unit (default site on 0.0.0.0:80) never runs
    assert fh.host.check_output("systemctl is-enabled nginx.service || true") == "masked"
    assert not fh.host.service("nginx").is_running


def test_app03_memory_limit_and_restart_policy(fh):
    """app-03: each container has its definition's memory limit (no swap beyond it) and
    restarts unless stopped."""
    for app in apps_of(fh):
        spec = fh.data["apps_definitions"][app]
        host_config = live(fh, app)["HostConfig"]
        assert host_config["RestartPolicy"]["Name"] == "unless-stopped", app
        if "memory" in spec:
            n, unit = int(spec["memory"][:-1]), spec["memory"][-1]
            wanted = n * (1 << 30 if unit == "g" else 1 << 20)
            assert host_config["Memory"] == wanted and host_config["MemorySwap"] == wanted, app


def test_app04_secrets_never_on_a_command_line(fh):
    """app-04: no secret of an app is in its container's command (docker inspect Path, Args,
    Cmd) or in any process's command line on the host; secret files are root's, 0600, and
    the app reads them (its health answer counts the *_FILE secrets it could read)."""
    cmdlines = fh.host.check_output("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    for app in apps_of(fh):
        spec = fh.data["apps_definitions"][app]
        info = live(fh, app)
        command = json.dumps([info["Path"], info["Args"], info["Config"]["Cmd"], info["Config"]["Entrypoint"]])
        for env, key in {**(spec.get("secrets") or {}), **(spec.get("secret_env") or {})}.items():
            value = secret(key)
            assert value not in command and value not in cmdlines, f"{app}: {env} is on a command line"
        for env in spec.get("secrets") or {}:
            f = fh.host.file(secret_path(app, env))
            assert (f.user, f.group, f.mode) == ("root", "root", 0o600), (app, env)
            assert f"{env}=" not in json.dumps(info["Config"]["Env"]), f"{app}: {env} is in the environment"
        if spec.get("secrets"):
            port = fleet_services().bind(spec["service"], fh.name)
            health = json.loads(fh.host.check_output(f"curl -fsS --max-time 5 http://{port}{spec['health']}"))
            assert health["secrets"] == len(spec["secrets"]), app


def test_app05_answers_its_health_path(fh):
    """app-05: each app answers its health path with 200 on every address it is served on."""
    services = fleet_services()
    for app in apps_of(fh):
        spec = fh.data["apps_definitions"][app]
        for endpoint in services.binds(spec["service"], fh.name):
            code = fh.host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{endpoint}{spec['health']}")
            assert code == "200", (app, str(endpoint))


def test_app06_every_domain_reaches_its_app(fh):
    """app-06: for each domain a tunnel on this host carries to an app, the service URL that
    `cloudflared tunnel ingress rule https://<domain>` names answers the app's health path
    with 200 from here (over loopback or the tailnet, as the maps say)."""
    if not fh.host.exists("cloudflared") or not fh.host.file(CONFIG).exists:
        return  # no tunnel on this host: its domains are checked on their tunnel host
    definitions = fh.data["apps_definitions"]
    by_service = {spec["service"]: spec for spec in definitions.values()}
    checked = []
    for domain, route in fh.data["fleet_domains"].items():
        if route["tunnel"] != fh.name or route["service"] not in by_service:
            continue
        url = rule_for(fh, f"https://{domain}")
        health = by_service[route["service"]]["health"]
        code = fh.host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {url}{health}")
        assert code == "200", (domain, url)
        checked.append(domain)
    assert checked or not any(r["tunnel"] == fh.name and r["service"] in by_service for r in fh.data["fleet_domains"].values())


def test_app07_history_keeps_the_running_image(fh):
    """app-07: each app's history ends with the image it runs and keeps at most
    apps_keep_images images, each of them still on the host (a rollback needs it)."""
    for app in apps_of(fh):
        kept = fh.host.check_output(f"{SCRIPT} history {app}").split()
        assert kept and kept[-1] == run_ref(fh.data["apps_releases"][app]), (app, kept)
        assert len(kept) <= fh.data["apps_keep_images"], (app, kept)
        if fh.host.run(f"docker image inspect --format '{{{{.Id}}}}' {' '.join(kept)}").rc != 0:  # one call for all
            missing = [image for image in kept if fh.host.run(f"docker image inspect {image}").rc != 0]
            assert not missing, (app, missing)
