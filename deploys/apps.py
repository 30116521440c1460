"""The team's apps (the services the domain map routes to): containers from data, pinned by digest, rolled out behind a health gate with the previous images kept for a rollback.

An app is defined once in `apps_definitions` (which port-map service it serves, its
container port, health path, memory limit, environment, secrets, volumes, extra arguments)
and released in `apps_releases` (its image pinned by digest, and optionally an archive to
load it from). It runs on every host that runs its service (the port map's groups), and
the port map says where it is served: 127.0.0.1 for what only the local tunnel reaches, the
tailnet address for what other hosts reach. A digest is the only way to name an image: a
tag alone is refused, so what runs is what was tested.

Serving goes through a small nginx of the fleet's own (fleet-apps-proxy), listening only on
those addresses, in front of two loopback slot ports per app (the service's port plus each
of `apps_slot_offsets`). A changed app starts in the free slot, must answer its health path
with 200 within `apps_health_timeout_seconds`, and only then does the proxy switch to it
with a graceful reload, so no request fails during a rollout; if it never becomes healthy,
it is removed, its last log lines are printed, the old one keeps serving and the run fails
naming the app. A fixed port cannot change hands between two containers without a moment
where nothing listens: that is why the proxy exists. The host-side logic is
templates/apps/usr/local/lib/fleet/apps/fleet-app (Python standard library), which decides
everything from the host's state, so a killed converge is finished by the next one.

Images come from a registry (`docker pull <image>@sha256:...`; credentials, if any, from
the vault into root's Docker config, 0600) or from an archive checked against its SHA-256
before `docker load` (for an archive the digest is the image ID, since a loaded image has no
registry digest). An image built for another architecture than the host's is refused
before it starts, in one line. The last `apps_keep_images` images of each app stay on the
host; `make rollback APP=<name>` switches back to the previous one through the same gate.

Secrets: `secrets` are mounted read-only as files at /run/secrets/<NAME>, with
<NAME>_FILE=/run/secrets/<NAME> in the environment (the `_FILE` convention); `secret_env`
puts a value in the environment through a 0600 env file, for apps that read only their
environment: `docker inspect` shows such a value to whoever can run it (root), so prefer
`secrets`. Neither is ever on a command line.
"""

from __future__ import annotations

import json
import re
import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra import state as pyinfra_state
from pyinfra.operations import apt, files

from fleet.converge import docker
from fleet.converge.component import Component, Problem, SecretFile
from fleet.converge.daemons import keep_running
from fleet.converge.jobs import whole_numbers
from fleet.converge.ops import secret_file, validated_file, verified_download
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # The apps: name -> {"service": a port-map service the app serves, "port": the port it
    # listens on inside its container, "health": the path that answers 200 when it is ready,
    # "memory": its memory limit ("256m", "1g"; required on a Pi), and optionally "env"
    # {NAME: value} (never a secret), "secrets" {NAME: vault key} (a read-only file at
    # /run/secrets/NAME and NAME_FILE pointing at it), "secret_env" {NAME: vault key} (an env
    # file; visible to `docker inspect`), "volumes" ["volume-or-/host/path:/path[:ro]"],
    # "args" [further `docker run` arguments] and "command" [arguments after the image]}.
    # An app runs on every host that runs its service.
    "apps_definitions": {},
    # What each app runs: name -> {"image": "<repository>@sha256:<64 hex>"}, plus
    # "archive_url" and "archive_sha256" to `docker load` it from a checked archive instead of
    # pulling it (then the digest is the image ID: `docker inspect --format '{{.Id}}'`).
    "apps_releases": {},
    # A private registry: {"host": "ghcr.io", "auth_key": "<vault key>"}, the key holding
    # base64("user:token") as `docker login` stores it; or None (public images).
    "apps_registry": None,
    # How many images of each app stay on the host for a rollback (the running one included).
    "apps_keep_images": 3,
    # How long a new container may take to answer its health path with 200, in seconds.
    "apps_health_timeout_seconds": 60,
    # How long the proxy's old workers may take to finish open requests after a switch, in seconds.
    "apps_drain_timeout_seconds": 30,
    # The two loopback slot ports of an app: its service's port plus each offset.
    "apps_slot_offsets": [10000, 20000],
    # RAM (MB) kept for the system and the other services: the apps' memory limits on a
    # host must fit in its `ram_mb` (inventory.py) minus this.
    "apps_memory_reserve_mb": 1024,
    # The proxy's worker processes (nginx's worker_processes).
    "apps_proxy_workers": 1,
    # Connections each proxy worker may hold open (nginx's worker_connections).
    "apps_proxy_connections": 512,
}

SCRIPT = "/usr/local/lib/fleet/apps/fleet-app"
SPECS = "/etc/fleet/apps"
PROXY_DIR = "/etc/fleet/apps-proxy"
SITES = f"{PROXY_DIR}/sites"
MAIN_CONF = f"{PROXY_DIR}/nginx.conf"
UNIT = "fleet-apps-proxy.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
STATE = "/var/lib/fleet/apps"
CACHE = "/var/cache/fleet/apps"
DOCKER_CONFIG = "/root/.docker/config.json"

DIGEST = re.compile(r"^(?P<repo>[a-z0-9]+(?:[._/:-][a-z0-9]+)*)@sha256:(?P<hex>[0-9a-f]{64})\Z")
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
MEMORY = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>[mg])\Z")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")
APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}\Z")
# `docker run` arguments that would undo what the deploy guarantees (where the app listens,
# its isolation, its limits): refused in `args`.
FORBIDDEN_ARGS = ("-p", "--publish", "-P", "--publish-all", "--network", "--net", "--privileged",
                  "--name", "--restart", "--memory", "-m", "--env-file", "--label", "-l", "--rm")
REQUIRED = ("service", "port", "health")
# The whole-number settings and their sensible ranges (fleet.converge.jobs.whole_numbers).
BOUNDS = {"apps_keep_images": (2, 20), "apps_health_timeout_seconds": (1, 3600),
          "apps_drain_timeout_seconds": (1, 600), "apps_memory_reserve_mb": (0, 1 << 20),
          "apps_proxy_workers": (1, 64), "apps_proxy_connections": (16, 65536)}


# --- what a host runs -------------------------------------------------------------------------

def hosts_apps(groups, data) -> list[str]:
    """The apps a host with these groups runs: those whose service runs on one of its groups."""
    services = data.get("fleet_services") or {}
    out = []
    for name, spec in sorted((data.get("apps_definitions") or {}).items()):
        svc = services.get(spec.get("service")) if isinstance(spec, dict) else None
        wanted = set((svc or {}).get("groups", ()))
        if "all" in wanted or wanted & set(groups):
            out.append(name)
    return out


def run_ref(release: dict) -> str:
    """What `docker run` is given: the registry reference, or for an archive the image ID."""
    if release.get("archive_url"):
        return "sha256:" + DIGEST.match(release["image"]).group("hex")
    return release["image"]


def archive_path(release: dict) -> str:
    return f"{CACHE}/{release['archive_sha256']}.tar" if release.get("archive_url") else ""


def secret_path(app: str, env: str) -> str:
    return f"{SPECS}/{app}/secrets/{env}"


def env_path(app: str, env: str) -> str:
    return f"{SPECS}/{app}/env/{env}.env"


def memory_mb(text: str) -> int:
    m = MEMORY.match(str(text))
    return int(m["n"]) * (1024 if m["unit"] == "g" else 1)


def run_arguments(app: str, spec: dict) -> list[str]:
    """`docker run` arguments besides name, labels, published slot and image (no secret:
    secret files and env files are named, never read)."""
    args = ["--restart", "unless-stopped", "--log-opt", "max-size=10m", "--log-opt", "max-file=3"]
    if spec.get("memory"):
        args += ["--memory", spec["memory"], "--memory-swap", spec["memory"]]
    for key, value in sorted((spec.get("env") or {}).items()):
        args += ["--env", f"{key}={value}"]
    for key in sorted(spec.get("secrets") or {}):
        args += ["--volume", f"{secret_path(app, key)}:/run/secrets/{key}:ro", "--env", f"{key}_FILE=/run/secrets/{key}"]
    for key in sorted(spec.get("secret_env") or {}):
        args += ["--env-file", env_path(app, key)]
    for volume in spec.get("volumes") or []:
        args += ["--volume", volume]
    return args + [str(a) for a in spec.get("args") or []]


def app_spec(app: str, name: str, data, services: ServiceMap) -> dict:
    """What fleet-app on the host reads for one app (no secret in it)."""
    spec = data.apps_definitions[app]
    release = data.apps_releases[app]
    port = services.port(spec["service"])
    return {
        "name": app,
        "image": run_ref(release),
        "archive": archive_path(release),
        "listen": [str(e) for e in services.binds(spec["service"], name)],
        "slots": [port + offset for offset in data.apps_slot_offsets],
        "container_port": spec["port"],
        "health": spec["health"],
        "health_timeout": data.apps_health_timeout_seconds,
        "drain_timeout": data.apps_drain_timeout_seconds,
        "keep": data.apps_keep_images,
        "run": run_arguments(app, spec),
        "command": [str(a) for a in spec.get("command") or []],
        "inputs": [secret_path(app, k) for k in sorted(spec.get("secrets") or {})]
                  + [env_path(app, k) for k in sorted(spec.get("secret_env") or {})],
    }


# --- the host's state, and the operation that converges it ---------------------------------------

class AppStatus(FactBase):
    """fleet-app's view of one app ({"in_sync", "why"}) and the orphans (apps that run here
    but are no longer in the data), or None before fleet-app is installed."""

    def command(self, app: str) -> str:
        return f"test -x {SCRIPT} && {SCRIPT} status || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text.startswith("{") else None


@operation()
def app_running(app: str, changed=()):
    """`app` runs what its spec says, through fleet-app's health gate when it changed.

    + app: the app's name
    + changed: operations that write its spec or inputs in this run (only so a dry run shows it)
    """
    status = host.get_fact(AppStatus, app=app)
    state = (status or {}).get("apps", {}).get(app)
    planned = not pyinfra_state.is_executing and any(op.changed for op in changed)
    if state and state["in_sync"] and not planned:
        host.noop(f"app {app} runs its release" + (f" ({state['why']})" if state["why"] else ""))
        return
    yield StringCommand(f"{SCRIPT} apply {shlex.quote(app)}")


@operation()
def apps_only(apps: tuple[str, ...]):
    """No app runs here but `apps`: others (removed from the data) are stopped and their
    proxy sites and state removed.

    + apps: the apps the data gives this host
    """
    status = host.get_fact(AppStatus, app="")
    orphans = [o for o in (status or {}).get("orphans", []) if o not in apps]
    if not orphans:
        host.noop("no app runs here that the data does not name")
        return
    for orphan in orphans:
        yield StringCommand(f"{SCRIPT} remove {shlex.quote(orphan)}")


@deploy("Apps", data_defaults=DEFAULTS)
def apps():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    mine = hosts_apps(host.groups, data)
    # Debian's nginx.service would start its default site on 0.0.0.0:80 when the package is
    # installed: masked first, it never starts; the apps' proxy is a unit of its own.
    files.link(name="Mask Debian's nginx.service (its default site listens on a wildcard)",
               path="/etc/systemd/system/nginx.service", target="/dev/null")
    apt.packages(name="Install nginx (the apps' proxy)", packages=["nginx"], no_recommends=True)
    for path, mode in ((SPECS, "755"), (PROXY_DIR, "755"), (SITES, "755"), (STATE, "700"), (CACHE, "755"),
                       ("/usr/local/lib/fleet/apps", "755")):
        files.directory(name=f"Create {path}", path=path, user="root", group="root", mode=mode)
    script = files.put(name="Install fleet-app (rollout, health gate, rollback)",
                       src=source("apps", "usr/local/lib/fleet/apps/fleet-app"), dest=SCRIPT,
                       user="root", group="root", mode="755")
    conf = validated_file(name="Install the proxy's nginx.conf", dest=MAIN_CONF, validate="nginx -t -q -c {path}",
                          content=render("etc/fleet/apps-proxy/nginx.conf.j2", "apps",
                                         workers=data.apps_proxy_workers, connections=data.apps_proxy_connections,
                                         max_body="16m", read_timeout=120))
    unit = files.put(name="Install the proxy's unit", dest=UNIT_FILE, user="root", group="root", mode="644",
                     src=StringIO(render("etc/systemd/system/fleet-apps-proxy.service.j2", "apps", conf=MAIN_CONF)))
    keep_running("the apps' proxy", UNIT, inputs=[UNIT_FILE], why="for its new unit", changed=(unit,), unit_files=True)
    keep_running("the apps' proxy", UNIT, inputs=[MAIN_CONF], why="for its new nginx.conf", changed=(conf,), reload=True)
    if data.apps_registry:
        files.directory(name="Create root's Docker config directory", path="/root/.docker",
                        user="root", group="root", mode="700")
        registry = data.apps_registry["host"]
        secret_file(name=f"Install the {registry} credentials (root's Docker config)", key=data.apps_registry["auth_key"],
                    dest=DOCKER_CONFIG, user="root", group="root",
                    fmt=json.dumps({"auths": {registry: {"auth": "@@"}}}).replace("{", "{{").replace("}", "}}")
                    .replace("@@", "{value}") + "\n")
    for app in mine:
        spec, release = data.apps_definitions[app], data.apps_releases[app]
        archive = archive_path(release)
        if archive:
            verified_download(name=f"Download {app}'s image archive (checksum verified)", src=release["archive_url"],
                              dest=archive, sha256=release["archive_sha256"], mode="600")
        image = docker.image(name=f"Provide {app}'s image {release['image']}", ref=run_ref(release), archive=archive)
        inputs = []
        for kind, keys, path, fmt in (("secret", spec.get("secrets") or {}, secret_path, "{value}"),
                                      ("env", spec.get("secret_env") or {}, env_path, None)):
            if keys:
                files.directory(name=f"Create {app}'s {kind} directory", path=path(app, "x").rsplit("/", 1)[0],
                                user="root", group="root", mode="700")
            for env, key in sorted(keys.items()):
                inputs.append(secret_file(name=f"Install {app}'s {env} ({kind} file)", key=key, dest=path(app, env),
                                          user="root", group="root", fmt=fmt or f"{env}={{value}}\n"))
        written = files.put(name=f"Write {app}'s spec", dest=f"{SPECS}/{app}/app.json",
                            user="root", group="root", mode="644",
                            create_remote_dir=True,
                            src=StringIO(json.dumps(app_spec(app, name, data, services), indent=1, sort_keys=True) + "\n"))
        app_running(name=f"Run {app} (health-gated rollout when it changed)", app=app,
                    changed=(written, image, script, *inputs))
    apps_only(name="Remove apps no longer in the data", apps=tuple(mine))


def secret_files(name: str, groups: tuple, data) -> list[SecretFile]:
    out = []
    for app in hosts_apps(groups, data):
        spec = data.get("apps_definitions")[app]
        for env, key in sorted((spec.get("secrets") or {}).items()):
            out.append(SecretFile(key, secret_path(app, env), "root", "root"))
        for env, key in sorted((spec.get("secret_env") or {}).items()):
            out.append(SecretFile(key, env_path(app, env), "root", "root", fmt=f"{env}={{value}}\n"))
    return out


def registry_keys(name: str, data) -> list[str]:
    registry = data.get("apps_registry")
    return [registry["auth_key"]] if isinstance(registry, dict) and registry.get("auth_key") else []


# --- validation ----------------------------------------------------------------------------------

def where(key: str) -> str:
    return f"group_data/all.py {key}"


def check_definitions(fleet, hosts) -> list[Problem]:
    """Each app's definition and release is complete and safe, before any host is touched.
    Checked in every host's effective data (a host or group may override them); a problem
    of the fleet-wide value is reported once, as "all"."""
    found: dict[str, Problem] = {}
    keys = ("apps_definitions", "apps_releases", "apps_registry", "apps_slot_offsets")
    for h in [None, *hosts]:
        data = fleet.all_data if h is None else h.data
        same = h is None or all(data.get(k) == fleet.all_data.get(k) for k in keys)
        # all.py's layer: the definitions; each host: the releases of the apps it runs too
        running = [] if h is None else hosts_apps(h.groups, data)
        for p in _definition_problems(data, "all" if same else h.name, running):
            found.setdefault(str(p), p)
    return list(found.values())


def _definition_problems(data, who: str, running: list[str] | None) -> list[Problem]:
    """`running`: the apps whose releases must be complete (those the host runs)."""
    problems = []
    services = data.get("fleet_services") or {}
    definitions = data.get("apps_definitions") or {}
    releases = data.get("apps_releases") or {}
    if not isinstance(definitions, dict) or not isinstance(releases, dict):
        return [Problem(who, "apps_definitions", "apps_definitions and apps_releases must be dicts keyed by app name.",
                        f"write them like the examples in {where('apps_definitions')}.")]
    for app, spec in definitions.items():
        key = f"apps_definitions[{app!r}]"
        if not APP_NAME.match(str(app)):
            problems.append(Problem(who, key, "is not an app name.", "use lowercase letters, digits and '-' (up to 31)."))
            continue
        if not isinstance(spec, dict) or any(k not in spec for k in REQUIRED):
            problems.append(Problem(who, key, f"needs {', '.join(REQUIRED)}.",
                                    "write it like {'service': 'web', 'port': 8080, 'health': '/health', 'memory': '256m'}."))
            continue
        unknown = set(spec) - {"service", "port", "health", "memory", "env", "secrets", "secret_env", "volumes", "args", "command"}
        if unknown:
            problems.append(Problem(who, key, f"unknown keys {sorted(unknown)}.",
                                    "use service, port, health, memory, env, secrets, secret_env, volumes, args, command."))
        svc = services.get(spec["service"])
        if svc is None:
            problems.append(Problem(who, f"{key}.service", f"{spec['service']!r} is not a service of the port map.",
                                    f"use one of {', '.join(services)} or add it to fleet_services."))
        elif "component" in svc:
            problems.append(Problem(who, f"{key}.service", f"{spec['service']!r} is served by the {svc['component']} component.",
                                    "give the app a port-map service of its own."))
        if not isinstance(spec["port"], int) or isinstance(spec["port"], bool) or not 0 < spec["port"] < 65536:
            problems.append(Problem(who, f"{key}.port", f"{spec['port']!r} is not a port.", "use the port the app listens on in its container."))
        if not str(spec["health"]).startswith("/") or any(c.isspace() for c in str(spec["health"])):
            problems.append(Problem(who, f"{key}.health", f"{spec['health']!r} is not a path.", "write it like '/health'."))
        if "memory" in spec and not MEMORY.match(str(spec["memory"])):
            problems.append(Problem(who, f"{key}.memory", f"{spec['memory']!r} is not a memory limit.", "write it like '256m' or '1g'."))
        for field in ("env", "secrets", "secret_env"):
            values = spec.get(field) or {}
            if not isinstance(values, dict) or not all(ENV_NAME.match(str(k)) and isinstance(v, str) for k, v in values.items()):
                problems.append(Problem(who, f"{key}.{field}", "must map variable names (A-Z, 0-9, _) to text.",
                                        f"write it like {{'NAME': '{'value' if field == 'env' else 'vault key'}'}}."))
        for field in ("volumes", "args", "command"):
            values = spec.get(field) or []
            if not isinstance(values, list) or not all(isinstance(v, (str, int)) for v in values):
                problems.append(Problem(who, f"{key}.{field}", "must be a list of strings.", "write it like ['--read-only']."))
        for arg in spec.get("args") or []:
            flag = str(arg).split("=", 1)[0]
            if flag in FORBIDDEN_ARGS:
                problems.append(Problem(who, f"{key}.args", f"{flag} is set by the deploy (where the app listens, its limits).",
                                        "remove it: the port map says where the app is served, 'memory' sets the limit."))
        if app not in running:
            continue
        release = releases.get(app)
        rkey = f"apps_releases[{app!r}]"
        image = release.get("image", "") if isinstance(release, dict) else ""
        if not image:
            problems.append(Problem(who, rkey, "has no image: an app runs only an image pinned by digest.",
                                    f"set {{'image': '<repository>@sha256:<64 hex>'}} for {app} in {where('apps_releases')} "
                                    "(`docker buildx imagetools inspect <image>:<tag>` prints the digest)."))
        elif not DIGEST.match(image):
            why = "names a tag, not a digest" if "@" not in image else "has no 64-hex sha256 digest"
            problems.append(Problem(who, f"{rkey}.image", f"{image!r} {why}: a tag can change under the same name.",
                                    "pin it: <repository>@sha256:<64 hex> (`docker buildx imagetools inspect` prints it)."))
        elif release.get("archive_url") and not SHA256.match(str(release.get("archive_sha256", ""))):
            problems.append(Problem(who, f"{rkey}.archive_sha256", "is missing or not a SHA-256, but archive_url is set.",
                                    "add the archive's sha256sum next to its URL."))
    for app in releases:
        if app not in definitions:
            problems.append(Problem(who, f"apps_releases[{app!r}]", "releases an app that apps_definitions does not define.",
                                    "define it in apps_definitions or remove the release."))
    registry = data.get("apps_registry")
    if registry is not None and not (isinstance(registry, dict) and set(registry) == {"host", "auth_key"}):
        problems.append(Problem(who, "apps_registry", f"{registry!r} is not a registry login.",
                                "write {'host': 'ghcr.io', 'auth_key': '<vault key>'} or None."))
    offsets = data.get("apps_slot_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o > 0 for o in offsets)
            and offsets[0] != offsets[1]):
        problems.append(Problem(who, "apps_slot_offsets", f"{offsets!r} is not two distinct positive offsets.",
                                "write it like [10000, 20000]."))
    return problems


def check_hosts(fleet, hosts) -> list[Problem]:
    """Per host: the whole-number settings in range, memory limits (required on a Pi, and
    fitting its RAM), slot ports free."""
    problems, wrong = whole_numbers(hosts, BOUNDS, DEFAULTS, "group_data/all.py")
    if check_definitions(fleet, hosts):
        return problems  # the definitions' problems are reported once by check_definitions
    services = fleet.services
    for h in hosts:
        if h.name in wrong:
            continue
        data = h.data
        mine = hosts_apps(h.groups, data)
        total = 0
        for app in mine:
            spec = data["apps_definitions"][app]
            if "memory" not in spec:
                if "pis" in h.groups:
                    problems.append(Problem(h.name, f"apps_definitions[{app!r}].memory",
                                            "is missing, and a Pi has 4-8 GB for everything it runs.",
                                            "give the app a memory limit, e.g. 'memory': '256m'."))
                continue
            total += memory_mb(spec["memory"])
        ram = data.get("ram_mb")
        if mine and (not isinstance(ram, int) or isinstance(ram, bool) or ram <= 0):
            problems.append(Problem(h.name, "ram_mb", f"{ram!r} is not the host's RAM in MB, and the host runs apps "
                                    "with memory limits.",
                                    "set 'ram_mb' (the host's RAM in MB) in its entry in inventory.py."))
        elif mine and total > ram - data.get("apps_memory_reserve_mb", 0):
            problems.append(Problem(h.name, "apps_definitions", f"the apps' memory limits add up to {total} MB, more than "
                                    f"the host's {ram} MB minus {data.get('apps_memory_reserve_mb')} MB kept for the rest.",
                                    "lower the apps' 'memory' or run fewer apps on this host."))
        used = {services.port(s): s for s in services.on(h.name)}
        for app in mine:
            base = services.port(data["apps_definitions"][app]["service"])
            for offset in data.get("apps_slot_offsets"):
                slot = base + offset
                if slot > 65535 or slot in used:
                    problems.append(Problem(h.name, "apps_slot_offsets", f"{app}'s slot port {slot} is "
                                            + ("not a port." if slot > 65535 else f"the port of {used[slot]!r}."),
                                            "choose offsets that give free ports below 65536."))
                used[slot] = f"{app} (slot)"
    return problems


def check_domains(fleet, hosts) -> list[Problem]:
    """Every service the domain map routes to is served by exactly one app or component on its host."""
    problems = []
    if check_definitions(fleet, hosts):
        return problems
    data = fleet.all_data
    for domain, route in fleet.domains.items():
        target, service = route.get("host"), route.get("service")
        h = fleet.hosts.get(target)
        svc = (data.get("fleet_services") or {}).get(service)
        if h is None or svc is None:
            continue  # the core rules report these
        serving = [f"app {a}" for a in hosts_apps(h.groups, h.data) if h.data["apps_definitions"][a]["service"] == service]
        if "component" in svc:
            serving.append(f"component {svc['component']}")
        if len(serving) != 1:
            what = "nothing serves it" if not serving else f"{' and '.join(serving)} both serve it"
            problems.append(Problem(target, f"fleet_domains[{domain!r}]", f"routes to {service!r} on {target}, but {what}.",
                                    f"define exactly one app with 'service': {service!r} in {where('apps_definitions')}."))
    return problems


COMPONENT = Component(
    name="apps",
    deploy=apps,
    defaults=DEFAULTS,
    applies_to=lambda groups, data: bool(hosts_apps(groups, data)),
    group_secrets=secret_files,
    vault_keys=registry_keys,
    rules=(check_definitions, check_hosts, check_domains),
    types={"apps_registry": (dict, type(None))},
    after=("docker",),
    before=("cloudflared",),  # serve before the tunnel routes to it
)
