"""Off-site dead man's switch (cloud group: the droplet): a systemd timer checks, over the tailnet, that every health prober's last round is recent, and when one goes stale says so in the journal, as a metric, and to a webhook from the vault, without going through the monitoring host.

The prober on the healthcheck host watches the fleet and logs when Prometheus stops
answering; Prometheus's ProberStale alert watches the prober. Both live at home: when the
home network, its power or the monitoring Pi is down, neither can alert. The droplet is
off-site, so it closes the loop: it reads each prober's fleet_probe_last_run_timestamp_seconds
from that host's node exporter (the port map's node-exporter service, over the tailnet),
and a prober older than `deadman_stale_seconds`, or one it cannot reach, is stale. The watch
list is generated from the inventory (every host the healthcheck component applies to) and
checked by the installed script (`fleet-deadman --check-config`) before it goes live.

The script (templates/deadman/usr/local/lib/fleet/deadman/fleet-deadman) is Python 3
standard library only and runs as the `fleet-deadman` system user in a systemd sandbox.
With `deadman_webhook_url_key` set, the webhook URL (a secret: it often carries a token)
is installed 0600 for that user and read from the file, never put on a command line; the
POST is in Alertmanager's webhook format, sent when a prober goes stale, when it is fresh
again and every `deadman_repeat_seconds` while it stays stale; a failed POST is retried at
the next check. Nothing here listens on a port.
"""

from __future__ import annotations

import json
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from fleet.converge import jobs
from fleet.converge.component import Component, Problem, SecretFile, component
from fleet.converge.jobs import TimerJob, textfile_dir, whole_numbers
from fleet.converge.ops import secret_file, validated_file
from fleet.converge.render import header
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Seconds between the end of one check and the start of the next (the timer).
    "deadman_interval_seconds": 60,
    # A prober whose last round is older than this (seconds) is stale: 5 rounds at the
    # prober's default 60 s interval, so one slow or missed round never alerts.
    "deadman_stale_seconds": 300,
    # While a prober stays stale, the webhook is told again this often (seconds).
    "deadman_repeat_seconds": 14400,
    # How long one request (reading a node exporter, posting to the webhook) may take, in seconds.
    "deadman_timeout_seconds": 10,
    # The vault key of the webhook URL the switch posts to (Alertmanager's webhook format, so
    # the receiver of the fleet's alerts takes it), or None: the journal and the metric only.
    "deadman_webhook_url_key": None,
}

USER = "fleet-deadman"
ETC = "/etc/fleet/deadman"
CONFIG = f"{ETC}/watch.json"
WEBHOOK_FILE = f"{ETC}/webhook-url"
STATE_DIR = "/var/lib/fleet/deadman"
PROM = f"{STATE_DIR}/fleet_deadman.prom"
STATE = f"{STATE_DIR}/state.json"
SCRIPT = "/usr/local/lib/fleet/deadman/fleet-deadman"
SERVICE = "fleet-deadman.service"
TIMER = "fleet-deadman.timer"
UNIT_DIR = jobs.UNIT_DIR
PROM_NAME = "fleet_deadman.prom"
JOB = TimerJob(component="deadman", label="the dead man's switch", user=USER, etc=ETC, state_dir=STATE_DIR,
               script=SCRIPT, service=SERVICE, timer=TIMER, prom=PROM, prom_name=PROM_NAME)
# The prober's component, and the service its metrics are read from.
PROBER = "healthcheck"
READ_FROM = "node-exporter"
BOUNDS = {
    "deadman_interval_seconds": (10, 3600),
    "deadman_stale_seconds": (30, 86400),
    "deadman_repeat_seconds": (60, 604800),
    "deadman_timeout_seconds": (1, 60),
}


def probers(services: ServiceMap) -> list[str]:
    """The hosts whose health prober this switch watches (the healthcheck component's)."""
    prober = component(PROBER)
    return [name for name, h in services.hosts.items() if prober.applies(h.groups, h.data)]


def watch(name: str, services: ServiceMap) -> list[dict]:
    out = []
    for prober in probers(services):
        path = services.metrics_path(READ_FROM, prober) or "/metrics"
        out.append({"prober": prober, "url": services.url(READ_FROM, prober, client=name) + path})
    return out


def watch_list(name: str, data, services: ServiceMap) -> str:
    """watch.json: what fleet-deadman reads (JSON has no comments: the header is a key)."""
    config = {"managed_by": header("deadman").lstrip("# ").strip(), "host": name,
              "stale_seconds": data.get("deadman_stale_seconds"),
              "repeat_seconds": data.get("deadman_repeat_seconds"),
              "timeout": data.get("deadman_timeout_seconds"),
              "webhook_url_file": WEBHOOK_FILE if data.get("deadman_webhook_url_key") else None,
              "watch": watch(name, services)}
    return json.dumps(config, indent=1) + "\n"


@deploy("Dead man's switch", data_defaults=DEFAULTS)
def deadman():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    apt.packages(name="Install Python 3", packages=["python3"], no_recommends=True)
    JOB.prepare()
    if data.deadman_webhook_url_key:
        secret_file(name="Install the webhook URL", key=data.deadman_webhook_url_key, dest=WEBHOOK_FILE,
                    user=USER, group=USER)
    else:
        files.file(name="Remove the webhook URL (none in data)", path=WEBHOOK_FILE, present=False)
    validated_file(name="Install the watch list", content=watch_list(name, data, services), dest=CONFIG,
                   user="root", group=USER, mode="640",
                   validate=f"/usr/bin/python3 -I {SCRIPT} --check-config {{path}}")
    timeout = data.deadman_timeout_seconds
    JOB.finish(textfile_dir=textfile_dir(data), interval=data.deadman_interval_seconds, output=STATE,
               config=CONFIG, state=STATE, timeout=timeout,
               # a read per prober, then a POST per prober at most
               timeout_start=2 * timeout * max(1, len(probers(services))) + 30)


def secret_files(name: str, data) -> list[SecretFile]:
    key = data.get("deadman_webhook_url_key")
    return [SecretFile(key, WEBHOOK_FILE, USER, USER)] if key else []


def check_settings(fleet, hosts) -> list[Problem]:
    """Whole numbers in a sane range; a prober to watch; a stale limit longer than the
    prober's own interval (else every round would look late); a timeout below the interval."""
    problems, wrong = whole_numbers(hosts, BOUNDS, DEFAULTS, "group_data/cloud.py")
    watched = fleet.hosts_with(PROBER)
    for h in hosts:
        data = h.data
        key = data.get("deadman_webhook_url_key")
        if key is not None and (not isinstance(key, str) or not key):
            problems.append(Problem(h.name, "deadman_webhook_url_key", f"{key!r} is not a vault key name.",
                                    "set it to the name of the vault secret that holds the URL, or None."))
        if not watched:
            problems.append(Problem(h.name, "groups", "the dead man's switch has no health prober to watch "
                                    "(no host is in a group the healthcheck component applies to).",
                                    "put a host in the healthcheck group in inventory.py."))
        if h.name in wrong:
            continue
        if data["deadman_timeout_seconds"] >= data["deadman_interval_seconds"]:
            problems.append(Problem(h.name, "deadman_timeout_seconds",
                                    f"{data['deadman_timeout_seconds']} s is not shorter than the interval "
                                    f"({data['deadman_interval_seconds']} s).",
                                    "make it shorter than deadman_interval_seconds."))
        for p in watched:
            interval = p.data.get("healthcheck_interval_seconds")
            if isinstance(interval, int) and data["deadman_stale_seconds"] < 2 * interval:
                problems.append(Problem(h.name, "deadman_stale_seconds",
                                        f"{data['deadman_stale_seconds']} s is less than 2 rounds of the prober "
                                        f"on {p.name} (healthcheck_interval_seconds = {interval}): every late "
                                        "round would alert.",
                                        f"set it to at least {2 * interval} (the default is "
                                        f"{DEFAULTS['deadman_stale_seconds']})."))
    return problems


COMPONENT = Component(
    name="deadman",
    deploy=deadman,
    defaults=DEFAULTS,
    groups=("cloud",),
    secrets=secret_files,
    rules=(check_settings,),
    types={"deadman_webhook_url_key": (str, type(None))},
    after=("tailscale", "node_exporter", "healthcheck"),
)
