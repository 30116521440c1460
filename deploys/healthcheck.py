"""Health prober (healthcheck group): a systemd timer probes, every minute and as an unprivileged user, each service of the port map that has a `probe` on every host that runs it (TCP connect, sshd's identification line answered, HTTP GET, pg_isready, one LLM chat completion), and writes node exporter textfile metrics and a JSON status file; a failing Prometheus is also logged to the journal.

The probe list is generated from data (`ServiceMap.probe_targets`), never written by hand:
a new host gets its ssh and node-exporter probes, a new service with a `probe` key its
probe, with no edit here. The deploy writes it to /etc/fleet/healthcheck/targets.json,
checked by the installed prober (`fleet-probe --check-config`) before it replaces the live
one. The prober (templates/healthcheck/usr/local/lib/fleet/healthcheck/fleet-probe) is
Python 3 standard library only and runs as the `fleet-probe` system user in a systemd
sandbox, with bounded timeouts per probe and per round and a memory cap (it stays under
64 MB). It shares the chat completion code with `python -m fleet llm-check`
(fleet/probe_llm.py, copied next to it). Outputs are written whole and renamed into place
in /var/lib/fleet/healthcheck; node exporter's textfile directory gets a link to the
metrics file, so the prober needs no write access to a directory other writers share. A
failing probe is a result (exit 0); only unwritable outputs fail the unit. A vLLM endpoint
needs its API key: the vault's `vllm_api_key` is installed for the prober (0600) when
`healthcheck_vllm_api_key` is on, which validation allows only while an llm host runs vLLM
(and the llm probe of a vLLM host fails, saying so, while it is off). Nothing here listens
on a port.
"""

from __future__ import annotations

import json
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from deploys.vllm import API_KEY
from fleet import probe_llm
from fleet.converge.component import Component, Problem, SecretFile
from fleet.converge import jobs
from fleet.converge.jobs import TimerJob, textfile_dir, whole_numbers
from fleet.converge.ops import secret_file, validated_file
from fleet.converge.render import header
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Seconds between the end of one probe round and the start of the next (the timer).
    "healthcheck_interval_seconds": 60,
    # How long each tcp, http and postgres probe may take, in seconds.
    "healthcheck_timeout_seconds": 5,
    # How long the llm probe (one short chat completion) may take, in seconds: a cold model
    # on the Jetson takes a while to load.
    "healthcheck_llm_timeout_seconds": 60,
    # How many probes run at the same time (threads; each costs little memory).
    "healthcheck_parallel_probes": 8,
    # The prober unit's memory cap (MemoryMax), in MB: a safety net above its 64 MB budget
    # (fleet_probe_memory_peak_bytes shows what a round really uses), so a runaway round is
    # stopped before it squeezes the Pi Zero's 512 MB, while the budget stays a measurement.
    "healthcheck_memory_max_mb": 96,
    # Install the vault's vllm_api_key (0600) for the llm probe: turn it on when an llm host's
    # llm_engine is "vllm" (its llm probe fails without it, saying so). Validation refuses it
    # while no llm host runs vLLM, so the key never sits on the prober for nothing.
    "healthcheck_vllm_api_key": False,
}

USER = "fleet-probe"
ETC = "/etc/fleet/healthcheck"
CONFIG = f"{ETC}/targets.json"
KEY_FILE = f"{ETC}/vllm-api-key"
STATE_DIR = "/var/lib/fleet/healthcheck"
PROM = f"{STATE_DIR}/fleet_probe.prom"
STATUS = f"{STATE_DIR}/status.json"
LIB = "/usr/local/lib/fleet/healthcheck"
SCRIPT = f"{LIB}/fleet-probe"
MODULE = f"{LIB}/probe_llm.py"
SERVICE = "fleet-probe.service"
TIMER = "fleet-probe.timer"
UNIT_DIR = jobs.UNIT_DIR
PROM_NAME = "fleet_probe.prom"
JOB = TimerJob(component="healthcheck", label="the health prober", user=USER, etc=ETC, state_dir=STATE_DIR,
               script=SCRIPT, service=SERVICE, timer=TIMER, prom=PROM, prom_name=PROM_NAME)
# Sane bounds for the numeric settings (key -> (lowest, highest), whole numbers).
BOUNDS = {
    "healthcheck_interval_seconds": (10, 3600),
    "healthcheck_timeout_seconds": (1, 60),
    "healthcheck_llm_timeout_seconds": (1, 600),
    "healthcheck_parallel_probes": (1, 64),
    "healthcheck_memory_max_mb": (32, 1024),
}


def deadline_seconds(data) -> int:
    """The bound on a whole round: the slowest probe, plus time for the pool to hand out the
    quick ones queued behind it (fleet-probe's run_all starts the slowest first)."""
    timeout, llm = data.get("healthcheck_timeout_seconds"), data.get("healthcheck_llm_timeout_seconds")
    return max(timeout, llm) + 2 * timeout


def targets(name: str, data, services: ServiceMap) -> list[dict]:
    """The probes host `name` makes, from the port map: one per (service with a probe that
    binds the tailnet, host running it). An llm probe asks for that host's model (vLLM's
    served name or Ollama's first model, from the target's own data) and, on vLLM, sends
    the API key read from KEY_FILE."""
    out = []
    for service, target, endpoint, probe in services.probe_targets(name):
        entry = {"service": service, "host": target, "address": endpoint.address, "port": endpoint.port,
                 "probe": probe, "timeout": data.get("healthcheck_timeout_seconds")}
        if probe == "llm":
            target_data = services.hosts[target].data
            engine = target_data.get("llm_engine")
            entry.update(timeout=data.get("healthcheck_llm_timeout_seconds"), engine=engine,
                         model=probe_llm.default_model(target_data),
                         api_key_file=KEY_FILE if engine == "vllm" else None)
        out.append(entry)
    return out


def probe_list(name: str, data, services: ServiceMap) -> str:
    """targets.json: what fleet-probe reads (JSON has no comments: the header is a key)."""
    config = {"managed_by": header("healthcheck").lstrip("# ").strip(), "host": name,
              "deadline_seconds": deadline_seconds(data), "workers": data.get("healthcheck_parallel_probes"),
              "probes": targets(name, data, services)}
    return json.dumps(config, indent=1) + "\n"


def vllm_hosts(services: ServiceMap) -> list[str]:
    """The llm hosts whose engine is vLLM (their endpoint wants the API key)."""
    return [name for name in services.hosts_running("llm") if services.hosts[name].data.get("llm_engine") == "vllm"]


@deploy("Health prober", data_defaults=DEFAULTS)
def healthcheck():
    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    apt.packages(name="Install Python 3 and pg_isready (postgresql-client)",
                 packages=["python3", "postgresql-client"], no_recommends=True)
    JOB.prepare()
    files.put(name="Install the chat completion check beside it", src=probe_llm.__file__, dest=MODULE,
              user="root", group="root", mode="644")

    if data.healthcheck_vllm_api_key:
        secret_file(name="Install the vLLM API key for the llm probe", key=API_KEY, dest=KEY_FILE,
                    user=USER, group=USER)
    else:
        files.file(name="Remove the vLLM API key (no llm host runs vLLM)", path=KEY_FILE, present=False)
    # the installed prober itself checks the list it is given, before it goes live
    validated_file(name="Install the probe list", content=probe_list(name, data, services), dest=CONFIG,
                   user="root", group=USER, mode="640",
                   validate=f"/usr/bin/python3 -I {SCRIPT} --check-config {{path}}")
    JOB.finish(textfile_dir=textfile_dir(data), interval=data.healthcheck_interval_seconds, output=STATUS,
               config=CONFIG, status=STATUS, timeout_start=deadline_seconds(data) + 30,
               memory_max_mb=data.healthcheck_memory_max_mb)


# Why a setting, when the llm hosts' data already says which engine they run: a component's
# secret files are computed from the host's own data alone (the vault check and the secret
# specs call this with no fleet), and the prober's data does not hold the llm hosts'. The
# rule below refuses the key where no llm host runs vLLM.
def secret_files(name: str, data) -> list[SecretFile]:
    return [SecretFile(API_KEY, KEY_FILE, USER, USER)] if data.get("healthcheck_vllm_api_key") else []


def check_settings(fleet, hosts) -> list[Problem]:
    """Whole numbers in a sane range, a probe timeout shorter than the interval, and no vLLM
    key on the prober while no llm host runs vLLM."""
    problems, wrong = whole_numbers(hosts, BOUNDS, DEFAULTS, "group_data/healthcheck.py")
    for h in hosts:
        data = h.data
        if h.name not in wrong and data["healthcheck_timeout_seconds"] >= data["healthcheck_interval_seconds"]:
            problems.append(Problem(h.name, "healthcheck_timeout_seconds",
                                    f"{data['healthcheck_timeout_seconds']} s is not shorter than the interval "
                                    f"({data['healthcheck_interval_seconds']} s).",
                                    "make it shorter than healthcheck_interval_seconds."))
    # Only one direction is a problem: switching an llm host to vLLM stays a change of that
    # host's data alone, and until the key is turned on here the llm probe fails, saying so.
    if not vllm_hosts(fleet.services):
        problems += [Problem(h.name, "healthcheck_vllm_api_key",
                             "is True, but no llm host runs vLLM: the key would sit on this host for nothing.",
                             "set healthcheck_vllm_api_key = False in group_data/healthcheck.py.")
                     for h in hosts if h.data.get("healthcheck_vllm_api_key")]
    return problems


COMPONENT = Component(
    name="healthcheck",
    deploy=healthcheck,
    defaults=DEFAULTS,
    groups=("healthcheck",),
    secrets=secret_files,
    rules=(check_settings,),
    after=("tailscale", "node_exporter"),
)
