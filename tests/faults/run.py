"""The fault suite: break a converged test fleet on purpose, then show the converge copes.

    python tests/faults/run.py [--only NAME[,NAME]] [--seed N] [--junit FILE]   (make faults)

Each scenario injects one fault on the Docker test fleet, then:
  1. runs a converge (or the interrupted runs the scenario makes): it must recover, or fail
     with a clear message that names the host (no traceback);
  2. reruns a plain converge until it succeeds (at most twice): the reruns needed;
  3. runs one more: it must change nothing;
  4. runs the host's specs: they must pass; and the scenario's own checks (e.g. exactly one
     restart of the daemon whose config was edited).
Scenarios on different hosts run in parallel; those that need the whole fleet run alone.
The suite prints a table and ends with `faults: N recovered, M failed`. It needs a
converged test fleet (make fleet-up, then a converge; molecule's verify step has one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

from harness import testfleet  # noqa: E402
from integration.conftest import wait_until  # noqa: E402

REPO = testfleet.REPO
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_RERUNS = 2
print_lock = threading.Lock()
# Hosts with a fault in flight (injected, not yet through their final converge), and how many
# faults have been injected so far. A host's specs can depend on another host's services (the
# prober on pi0-epsilon probes the llm endpoint on jetson-prime; the droplet's dead man's
# switch reads pi0-epsilon's prober), so a spec failure that overlapped a fault on another
# host is checked once more after every other lane has recovered: a failure that stays is
# still a failure, and the table says when a recheck was needed.
# The recheck runs with no fault in flight anywhere else: while one is pending, lanes wait
# before injecting their next fault (CI once saw a recheck of pi5-gamma's specs, whose
# pg-04 connects from pi5-alpha, start just as pi5-alpha's lane began rebooting it).
broken: set[str] = set()
# When each host's last fault ended: the dead man's switch and the probers report what their
# last round saw, up to recheck_delay() old, so a fault that ended just before a host's specs
# can still show in them (CI saw the droplet's dm-03 read pi0-epsilon's node exporter as
# refused, from a round taken while daemon-masked had it stopped).
ended: dict[str, float] = {}
injected = [0]
rechecks = [0]
broken_lock = threading.Lock()
OTHERS_RECOVER_WAIT = 900  # seconds a recheck waits for the other lanes


def recheck_delay() -> int:
    """Seconds after the other lanes recover before the recheck: two rounds of the test
    fleet's timers (the prober's and the dead man's switch's), so their results are new."""
    data = testfleet.load_inventory()[1]["data"]
    return 2 * max(data.get("healthcheck_interval_seconds", 60), data.get("deadman_interval_seconds", 60)) + 5


def faults_elsewhere(host: str, window: float = 0.0) -> tuple[frozenset, int]:
    """Other hosts with a fault in flight, or (window > 0) whose fault ended less than
    `window` seconds ago; and the number of faults injected so far."""
    now = time.monotonic()
    with broken_lock:
        recent = {h for h, t in ended.items() if now - t < window}
        return frozenset((broken | recent) - {host}), injected[0]


def fault_over(host: str) -> None:
    with broken_lock:
        broken.discard(host)
        ended[host] = time.monotonic()


def say(msg: str) -> None:
    with print_lock:
        print(msg, flush=True)


def sh(host: str, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell script inside a test host (the fault's injection, never the converge)."""
    proc = subprocess.run(["docker", "exec", host, "sh", "-c", script], text=True, capture_output=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{host}: `{script}` failed: {proc.stderr.strip()[-300:]}")
    return proc


def main_pid(host: str, unit: str) -> str:
    return sh(host, f"systemctl show -p MainPID --value {unit}").stdout.strip()


def converge(log: str, host: str | None = None, **kw) -> dict:
    extra = ["--limit", host] if host else []
    return testfleet.converge(extra + kw.pop("extra", []), log_name=f"faults-{log}", **kw)


def specs(host: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLEET_TARGET="test", FLEET_SPEC_HOSTS=host, FLEET_SPEC_DATA="{}")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "testpaths=",
                           "tests/specs"], cwd=REPO, env=env, text=True, capture_output=True, timeout=600)


def error_lines(output: str, host: str) -> list[str]:
    """The lines of a failed run that say what went wrong."""
    text = ANSI.sub("", output)
    keep = [line.strip() for line in text.splitlines()
            if re.search(r"error|failed|refus|no host was touched|cannot|timed out", line, re.I)]
    return [line for line in keep if line][-4:]


@dataclass
class Scenario:
    name: str
    host: str | None  # None: needs the whole fleet, runs alone
    inject: Callable[[], None]
    first: Callable[["Scenario"], dict] | None = None  # default: a converge of the host
    restore: Callable[[], None] | None = None  # undo a test-only condition before the reruns
    check: Callable[["Scenario"], None] | None = None  # after the final run
    must_fail_first: bool = False
    note: dict = field(default_factory=dict)  # what a scenario's steps tell its check
    spec_hosts: list[str] | None = None  # whose specs prove it (default: its host)


@dataclass
class Result:
    name: str
    host: str
    first: str = ""
    reruns: int | str = "-"
    final_changes: int | str = "-"
    specs: str = "-"
    ok: bool = False
    why: str = ""
    seconds: float = 0.0


def run_scenario(s: Scenario) -> Result:
    label = s.host or "all hosts"
    result = Result(s.name, label)
    t0 = time.monotonic()
    try:
        wait_until(lambda: not rechecks[0], "a recheck on another lane to finish",
                   timeout=OTHERS_RECOVER_WAIT + 600, interval=1)
        say(f"[faults] {s.name} ({label}): injecting")
        with broken_lock:
            broken.add(s.host or "*")
            injected[0] += 1
        s.inject()
        try:
            first = s.first(s) if s.first else converge(f"{s.name}-1", s.host)
        finally:
            if s.restore:  # whatever the first run did, the test-only condition ends here
                s.restore()
        result.first = describe(first, s)
        if first.get("killed") is None and first["returncode"] != 0:
            if not clear_failure(first["output"], s.host):
                raise AssertionError(f"the first run failed without a clear message naming the host: "
                                     f"{first['output'][-800:]}")
        elif s.must_fail_first and first["returncode"] == 0:
            raise AssertionError("the first run succeeded, but this fault must stop it")
        rc, reruns, last = (first["returncode"] if first.get("killed") is None else 1), 0, first
        while rc != 0:
            if reruns == MAX_RERUNS:
                raise AssertionError(f"still failing after {MAX_RERUNS} reruns: {last['output'][-800:]}")
            reruns += 1
            last = converge(f"{s.name}-rerun{reruns}", s.host)
            rc = last["returncode"]
        result.reruns = reruns
        final = converge(f"{s.name}-final", s.host)
        result.final_changes = final["changed"]
        if final["returncode"] != 0 or final["changed"]:
            raise AssertionError(f"the run after recovery changed {final['changed']} operation(s) "
                                 f"(rc {final['returncode']}): {changed_ops(final['output'])}")
        fault_over(s.host or "*")
        hosts = s.spec_hosts if s.spec_hosts is not None else [s.host]
        if not hosts:
            result.specs = "n/a: no host touched"
        for host in hosts:
            rechecked = ""
            before, count = faults_elsewhere(host, window=recheck_delay())
            run = specs(host)
            after, count_after = faults_elsewhere(host)
            if run.returncode != 0 and (before or after or count_after != count):
                overlapped = ", ".join(sorted(before | after)) or "another host"
                say(f"[faults] {s.name}: specs of {host} failed while {overlapped} had a fault; "
                    "checking again once every other lane has recovered")
                with broken_lock:
                    rechecks[0] += 1  # no lane injects a new fault until this recheck is done
                try:
                    wait_until(lambda: not faults_elsewhere(host)[0], "the other lanes to recover",
                               timeout=OTHERS_RECOVER_WAIT, interval=2)
                    time.sleep(recheck_delay())
                    run = specs(host)
                finally:
                    with broken_lock:
                        rechecks[0] -= 1
                rechecked = " (rechecked after faults on other hosts)"
            tail = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-200:]
            if run.returncode != 0:
                result.specs = f"{host}: FAILED"
                raise AssertionError(f"specs of {host}{rechecked}: {run.stdout[-1500:]}")
            result.specs = (re.sub(r" in [\d.]+s.*", "", tail.strip("= ")) if len(hosts) == 1 else "all pass") \
                + rechecked
        if s.check:
            s.check(s)
        result.ok = True
    except Exception as exc:  # noqa: BLE001 - a scenario's failure is reported in the table
        fault_over(s.host or "*")
        result.why = f"{type(exc).__name__}: {exc}"
        say(f"[faults] {s.name}: FAILED: {result.why[:2000]}")
        say(traceback.format_exc(limit=3))
    result.seconds = round(time.monotonic() - t0, 1)
    say(f"[faults] {s.name} ({label}): {'recovered' if result.ok else 'FAILED'} in {result.seconds}s")
    return result


def clear_failure(output: str, host: str | None) -> bool:
    """A failed run is clear when an error line names the host (the whole fleet: any error
    line). pyinfra ends a run whose last host failed while loading a fact with gevent's
    traceback of `PyinfraError: No hosts remaining!` after its own error lines; that one is
    pyinfra's way to stop, not a crash of ours. Any other traceback is not clear."""
    text = ANSI.sub("", output)
    named = re.search(rf"\[{re.escape(host)}\].*(error|Error|failed)" if host else r"(error|Error)", text)
    tracebacks = text.count("Traceback (most recent call last)")
    pyinfras = len(re.findall(r"PyinfraError: No hosts remaining!", text))
    return bool(named) and tracebacks <= pyinfras


def describe(run: dict, s: Scenario) -> str:
    if s.note.get("first"):
        return s.note["first"]
    if run.get("killed"):
        return run["killed"]
    if run["returncode"] == 0:
        return "recovered"
    text = ANSI.sub("", run["output"])
    own = [line.strip() for line in text.splitlines() if s.host and line.strip().startswith(f"[{s.host}]")
           and "executed 0 commands" not in line]
    cause = [line for line in own if re.search(r"E: |cannot|refused|timed out|no interface|lost|error", line, re.I)]
    line = (cause[:1] or error_lines(run["output"], s.host or "")[-1:] or [f"rc {run['returncode']}"])[0]
    return "failed: " + re.sub(r"^\[[^\]]+\]\s*", "", line)[:90]


def changed_ops(output: str) -> list[str]:
    text = ANSI.sub("", output)
    ops, current = [], None
    for line in text.splitlines():
        m = re.match(r"--> Starting operation: (.*)", line)
        if m:
            current = m.group(1)
        elif re.match(r"\s*\[[^\]]+\]\s+Success", line) and current:
            ops.append(current)
    return ops


# --- the scenarios ---------------------------------------------------------------------------

def killed_runs(host: str, points: list[tuple[str, float]], prefix: str) -> dict:
    """Converge `host` repeatedly, each run SIGKILLed at the next point; return the last."""
    run = None
    for i, (op, delay) in enumerate(points, 1):
        when = "before" if delay == 0 else f"{delay}s after"
        say(f"[faults]   {host}: converge {i}, SIGKILL {when} it starts {op!r}")
        # no delay: pyinfra kills itself before the operation's first command (killpoint.py),
        # since a kill from outside can land after that command (the restart it should owe)
        kill = dict(kill_before=op) if delay == 0 else dict(kill_at=f"Starting operation: {op}", kill_delay=delay)
        run = converge(f"{prefix}-kill{i}", host, timeout=900, **kill)
        if not run.get("killed"):
            raise AssertionError(f"kill point {op!r} was not reached: {run['output'][-600:]}")
    run["killed"] = f"killed {len(points)}x"
    return run


SSHD_RESTART = "Base | Restart sshd on its own listeners (if it holds a wildcard one)"
FRESH_POINTS = [  # in the order a fresh host's converge reaches them; no delay: the exact name
    ("Base | Install base packages", (0.5, 3.0)),
    ("Base | Create the admin user", (0.0, 0.5)),
    (SSHD_RESTART, (0.0, 0.0)),  # sshd_config replaced, its restart owed
    ("Tailscale | Install Tailscale (pinned)", (0.5, 2.5)),
    ("Tailscale | Join the tailnet / converge hostname and tags", (0.0, 0.3)),
    ("Docker | Install Debian's docker.io", (1.0, 4.0)),
    ("Docker | Enable docker", (0.0, 0.0)),  # daemon.json replaced, restart owed
]
MANDATORY = (SSHD_RESTART, "Docker | Enable docker")


def fresh_host_points(seed: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    optional = [p for p in FRESH_POINTS if p[0] not in MANDATORY]
    chosen = set(MANDATORY) | {p[0] for p in rng.sample(optional, 3)}
    return [(op, round(rng.uniform(*span), 2)) for op, span in FRESH_POINTS if op in chosen]


def scenarios(seed: int) -> list[Scenario]:
    out: list[Scenario] = []

    # 1. a fresh host, its converge SIGKILLed at seeded points (two of them between a
    #    config's replacement and its daemon's restart/reload)
    fresh = "pi5-beta"

    def reflash():
        subprocess.run(["docker", "rm", "-f", "-v", fresh], check=True, capture_output=True)
        testfleet.up()

    points = fresh_host_points(seed)
    out.append(Scenario(
        "kill-fresh-host", fresh, reflash,
        first=lambda s: dict(killed_runs(fresh, points, "kill-fresh-host"),
                             killed=f"killed at {len(points)} points (seed {seed})"),
        check=lambda s: docker_runs_its_config(fresh)))

    # 2. finding 1: daemon.json replaced, the run killed before docker's restart
    gamma = "pi5-gamma"

    def docker_defaults():
        sh(gamma, "printf '{}\\n' > /etc/docker/daemon.json && systemctl restart docker")

    def killed_after_daemon_json(s):
        run = converge("docker-restart-owed-1", gamma, kill_before="Docker | Enable docker", timeout=600)
        if not run.get("killed"):
            raise AssertionError(f"the run was not killed before 'Docker | Enable docker': {run['output'][-600:]}")
        live = sh(gamma, "docker info --format '{{json .LiveRestoreEnabled}}'").stdout.strip()
        s.note["pid"] = main_pid(gamma, "docker.service")
        if live != "false":
            raise AssertionError(f"docker already has the new config (live-restore {live}) although the run died"
                                 " before the operation that restarts it")
        return run

    def restarted_once(s):
        docker_runs_its_config(gamma)
        if s.note["pid"] == main_pid(gamma, "docker.service"):
            raise AssertionError("docker was not restarted by the rerun")

    out.append(Scenario("docker-restart-owed", gamma, docker_defaults, first=killed_after_daemon_json,
                        check=restarted_once))

    # 3. the apt/dpkg lock held by another process while the converge needs apt
    alpha = "pi5-alpha"
    holder = {}

    def hold_lock():
        sh(alpha, "apt-get remove -y -qq apt-listchanges >/dev/null")
        holder["p"] = subprocess.Popen(
            ["docker", "exec", alpha, "python3", "-c",
             "import fcntl,time\nf=open('/var/lib/dpkg/lock-frontend','w')\nfcntl.lockf(f,fcntl.LOCK_EX)\n"
             "print('locked',flush=True)\ntime.sleep(25)"], stdout=subprocess.PIPE, text=True)
        assert holder["p"].stdout.readline().strip() == "locked"

    def lock_released():
        holder["p"].wait(timeout=60)

    out.append(Scenario("apt-lock-held", alpha, hold_lock, restore=lock_released))

    # 4. dpkg interrupted mid-install (`dpkg --configure -a` needed before apt works)
    delta = "pi400-delta"

    def interrupt_dpkg():
        sh(delta, "apt-get remove -y -qq apt-listchanges >/dev/null && apt-get install -y -qq --download-only "
                  "apt-listchanges >/dev/null && dpkg --unpack /var/cache/apt/archives/apt-listchanges_*.deb "
                  ">/dev/null 2>&1 && dpkg --audit | grep -q apt-listchanges")

    out.append(Scenario("dpkg-interrupted", delta, interrupt_dpkg))

    # 5. the vendor mirror unreachable while a vendor package must be installed
    droplet = "droplet-failover"
    mirror = testfleet.load_inventory()[1]["mirror_address"]

    def mirror_gone():
        sh(droplet, f"systemctl stop cloudflared && apt-get remove -y -qq cloudflared >/dev/null"
                    f" && ip route add blackhole {mirror}/32")

    def mirror_back():
        sh(droplet, f"ip route del blackhole {mirror}/32", check=False)

    def cloudflared_absent_after_first(s):
        run = converge("mirror-unreachable-1", droplet)
        state = sh(droplet, "dpkg-query -W -f '${Status}' cloudflared 2>/dev/null || true").stdout
        if "installed" in state and "not-installed" not in state:
            raise AssertionError(f"cloudflared is half there after the failed run: {state!r}")
        if sh(droplet, "systemctl is-active cloudflared", check=False).stdout.strip() == "active":
            raise AssertionError("cloudflared runs without its package")
        return run

    out.append(Scenario("mirror-unreachable", droplet, mirror_gone, first=cloudflared_absent_after_first,
                        restore=mirror_back, must_fail_first=True))

    # 6. a truncated Ollama download in the cache, and its unpacked release gone
    jetson = "jetson-prime"

    def truncate_ollama():
        sh(jetson, "f=$(ls /var/cache/fleet/ollama/*/ollama-linux-*.tar.zst | head -n1) && "
                   "truncate -s 100000 \"$f\" && systemctl stop ollama && rm -rf /opt/ollama/*")

    out.append(Scenario("ollama-download-truncated", jetson, truncate_ollama))

    # 7. each owned daemon killed (SIGKILL; some come back through systemd's Restart=)
    for name, host, unit in (("kill-sshd", "pi0-epsilon", "ssh.service"),
                             ("kill-tailscaled", "pi400-delta", "tailscaled.service"),
                             ("kill-docker", "pi5-alpha", "docker.service"),
                             ("kill-cloudflared", "droplet-failover", "cloudflared.service"),
                             ("kill-maintenance-page", "droplet-failover", "maintenance-page.service"),
                             ("kill-ollama", "jetson-prime", "ollama.service"),
                             ("kill-postgres", "pi5-gamma", "postgresql@15-main.service")):
        out.append(Scenario(name, host, (lambda h=host, u=unit: kill_daemon(h, u))))

    # 8. each owned config edited by hand: restored, and exactly one restart (or reload)
    for name, host, unit, path, reload in (
            ("edit-sshd-config", "pi0-epsilon", "ssh.service", "/etc/ssh/sshd_config", True),
            ("edit-tailscaled-defaults", "pi5-gamma", "tailscaled.service", "/etc/default/tailscaled", False),
            ("edit-daemon-json", "pi400-delta", "docker.service", "/etc/docker/daemon.json", False),
            ("edit-cloudflared-config", "pi5-alpha", "cloudflared.service", "/etc/cloudflared/config.yml", False),
            ("edit-maintenance-unit", "droplet-failover", "maintenance-page.service",
             "/etc/systemd/system/maintenance-page.service", False),
            ("edit-ollama-override", "jetson-prime", "ollama.service",
             "/etc/systemd/system/ollama.service.d/fleet.conf", False),
            ("edit-pg-hba", "pi5-gamma", "postgresql@15-main.service", "/etc/postgresql/15/main/pg_hba.conf", True)):
        out.append(edited_config(name, host, unit, path, reload))

    # 9. stale .fleet-candidate files left by a killed run: beside a validated config, and
    #    beside a script an upload was installing
    candidates = ("/etc/docker/daemon.json.fleet-candidate", "/usr/local/sbin/fleet-backup.fleet-candidate")

    def stale_candidate():
        for path in candidates:
            sh("pi5-gamma", f"printf 'half-written\\n' > {path}")

    def candidate_gone(s):
        left = [path for path in candidates if sh("pi5-gamma", f"test -e {path}", check=False).returncode == 0]
        if left:
            raise AssertionError(f"stale candidates are still there: {left}")

    out.append(Scenario("stale-candidate", "pi5-gamma", stale_candidate, check=candidate_gone))

    # 9a. FIFOs put by hand where a secret file and a verified download were: the fact batch,
    #     which checksums the secret every run, must not wait on it (a reader of a FIFO waits
    #     for a writer), nor must the download's own check; the converge puts regular files
    #     back, and no process of the run is left on the host
    from fleet.converge.connector import BATCH_TIMEOUT, GAVE_UP

    fifo_host = "pi0-epsilon"
    fifo_files = {"/etc/tailscale/authkey": "600", "/etc/apt/keyrings/tailscale-archive-keyring.gpg": "644"}

    def fifo_in_place():
        for path, mode in fifo_files.items():
            sh(fifo_host, f"rm -f {path} && mkfifo -m {mode} {path}")

    def fifo_first(s):
        run = converge("fifo-in-place-1", fifo_host, timeout=300)
        s.note["seconds"] = run["seconds"]
        s.note["batch gave up"] = GAVE_UP in run["output"]
        return run

    def fifo_replaced(s):
        # waiting on a FIFO shows as the batch's reader giving up at BATCH_TIMEOUT, or as a run
        # that never ends (killed at its timeout); either takes longer than BATCH_TIMEOUT. A
        # run slow for any other reason (CI's parallel lanes) is not this fault
        if s.note["batch gave up"] or s.note["seconds"] >= BATCH_TIMEOUT:
            raise AssertionError(f"the run over the FIFOs took {s.note['seconds']} s and its fact batch "
                                 f"{'gave up' if s.note['batch gave up'] else 'ended'}: something waited on one")
        for path, mode in fifo_files.items():
            kind = sh(fifo_host, f"stat -c '%F %a %U' {path}").stdout.strip()
            if kind != f"regular file {mode} root":
                raise AssertionError(f"{path} is now: {kind}")
        left = sh(fifo_host, "pgrep -a -x sha256sum || true").stdout.strip()
        if left:
            raise AssertionError(f"left running on the host: {left}")

    out.append(Scenario("fifo-in-place", fifo_host, fifo_in_place, first=fifo_first, check=fifo_replaced))

    # 9b. an app's rollout SIGKILLed while its new container waits for the health gate (the
    #     live container was removed, so the converge must roll web out again); and an
    #     app's proxy site edited by hand: restored with a reload, the container untouched
    web = "pi5-alpha"

    def web_containers() -> list[str]:
        return sh(web, "docker ps -a --filter label=fleet.app=web --format '{{.Names}}'").stdout.split()

    def web_gone():
        sh(web, "docker rm -f $(docker ps -aq --filter label=fleet.app=web) >/dev/null")

    def killed_in_rollout(s):
        return converge("kill-app-rollout-1", web, kill_at="Starting operation: Apps | Run web", kill_delay=1.5,
                        timeout=600)

    def one_web_serving(s):
        names = web_containers()
        if len(names) != 1:
            raise AssertionError(f"web containers after the rerun: {names} (one expected)")
        sh(web, "curl -fsS --max-time 5 http://127.0.0.1:3000/health >/dev/null")

    out.append(Scenario("kill-app-rollout", web, web_gone, first=killed_in_rollout, check=one_web_serving))

    def edit_site():
        sh(web, "sed -i 's/^    listen 127.0.0.1:3000;/    listen 127.0.0.1:3999;/' /etc/fleet/apps-proxy/sites/web.conf"
                " && systemctl reload fleet-apps-proxy && sleep 1 && ss -Htln 'sport = :3999' | grep -q 3999")
        s_site.note["containers"] = web_containers()

    def site_back_container_kept(s):
        sh(web, "curl -fsS --max-time 5 http://127.0.0.1:3000/health >/dev/null")
        if sh(web, "ss -Htln 'sport = :3999'").stdout.strip():
            raise AssertionError("the hand-edited listener on :3999 is still open")
        if web_containers() != s.note["containers"]:
            raise AssertionError(f"web's container changed ({s.note['containers']} -> {web_containers()}): "
                                 "a site edit needs a proxy reload only")

    s_site = Scenario("edit-app-site", web, edit_site, check=site_back_container_kept)
    out.append(s_site)

    # 9c. the firewall's table deleted by hand (`nft flush ruleset`, a package's script): the
    #     next converge loads it again
    out.append(Scenario("firewall-table-deleted", "pi400-delta",
                        lambda: sh("pi400-delta", "nft delete table inet fleet_firewall")))

    # 9d. a daemon the deploys own, stopped and masked by hand (`systemctl mask`, which links
    #     its unit to /dev/null): the converge unmasks, starts and enables it
    masked_host, masked_unit = "pi0-epsilon", "prometheus-node-exporter.service"

    def unit_masked():
        sh(masked_host, f"systemctl stop {masked_unit} && systemctl mask {masked_unit}")

    def unit_back(s):
        states = sh(masked_host, f"systemctl is-enabled {masked_unit}; systemctl is-active {masked_unit}",
                    check=False).stdout.split()
        if states != ["enabled", "active"]:
            raise AssertionError(f"{masked_unit} is {' and '.join(states)}, not enabled and active")

    out.append(Scenario("daemon-masked", masked_host, unit_masked, check=unit_back))

    # 9d'. files the converge installs for root given to the admin user by hand (a unit file, a
    #     script root's timer runs, a config directory, an apt setting): whoever owns them can
    #     make root run anything, so the converge gives them back to root
    owned_host = "pi0-epsilon"
    owned = ("/etc/systemd/system/fleet-probe.service", "/usr/local/lib/fleet/healthcheck/fleet-probe",
             "/etc/fleet", "/etc/fleet/node-exporter.env", "/etc/apt/apt.conf.d/52fleet-unattended-upgrades")

    def owner_changed():
        sh(owned_host, f"chown pi:pi {' '.join(owned)}")

    def owners_back(s):
        found = sh(owned_host, f"stat -c '%U:%G %n' {' '.join(owned)}").stdout.splitlines()
        wrong = [line for line in found if not line.startswith("root:root ")]
        if wrong or len(found) != len(owned):
            raise AssertionError(f"not given back to root: {wrong or found}")

    out.append(Scenario("owner-changed-by-hand", owned_host, owner_changed, check=owners_back))

    # 9d''. links left by hand where the converge installs files: a symlink at a plain file
    #     (files.put), at a validated config and at a secret file, and a hard link at a unit
    #     file, each to a file of its own in /root. The converge replaces each link with its
    #     file and never writes through one: the linked files keep their content, owner and mode
    linked_host = "pi0-epsilon"
    linked = {"/etc/fleet/node-exporter.env": "-s", "/etc/fleet/healthcheck/targets.json": "-s",
              "/etc/tailscale/authkey": "-s", "/etc/systemd/system/fleet-probe.timer": ""}

    def links_in_place():
        for i, (path, kind) in enumerate(linked.items()):
            sh(linked_host, f"echo 'not the fleet {i}' > /root/linked-{i} && chown nobody:nogroup /root/linked-{i}"
                            f" && chmod 640 /root/linked-{i} && rm -f {path} && ln {kind} /root/linked-{i} {path}")

    def links_replaced(s):
        found = sh(linked_host, "stat -c '%U:%G %a %h %F' " + " ".join(f"/root/linked-{i}" for i in range(len(linked)))
                   + "; cat " + " ".join(f"/root/linked-{i}" for i in range(len(linked)))
                   + "; stat -c '%h %F %n' " + " ".join(linked)).stdout.splitlines()
        n = len(linked)
        if found[:n] != ["nobody:nogroup 640 1 regular file"] * n:
            raise AssertionError(f"a linked file's owner, mode or links changed: {found[:n]}")
        if found[n:2 * n] != [f"not the fleet {i}" for i in range(n)]:
            raise AssertionError(f"the converge wrote through a link: {found[n:2 * n]}")
        if [line.split(" ", 2)[:2] for line in found[2 * n:]] != [["1", "regular"]] * n:
            raise AssertionError(f"a link is still in place: {found[2 * n:]}")
        sh(linked_host, "rm -f /root/linked-*")

    out.append(Scenario("links-in-place", linked_host, links_in_place, check=links_replaced))

    # 9e. a process started by hand holds a daemon's address:port while the daemon is down:
    #     the run stops before the start, naming the port and the process, instead of reporting
    #     the daemon started while it fails to bind over and over; once the process is gone,
    #     a plain rerun starts it
    held_host, held_unit, rogue = "pi5-beta", "prometheus-node-exporter.service", "fleet-rogue-listener"

    def port_held():
        sh(held_host, f"systemctl stop {held_unit}")
        address = testfleet.load_inventory()[0][held_host]["tailnet_address"]
        subprocess.run(["docker", "exec", "-d", held_host, "python3", "-c",
                        "import socket, sys, time; s = socket.socket();"  # reuse: scrapes leave TIME_WAIT
                        " s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 9100));"
                        " s.listen(); time.sleep(900)", address, rogue], check=True, timeout=30)
        wait_until(lambda: ":9100 " in sh(held_host, "ss -Htln", check=False).stdout + " ",
                   "the rogue listener", timeout=20)

    def refused_start(s):
        run = converge(f"{s.name}-1", held_host)
        text = ANSI.sub("", run["output"])
        if run["returncode"] == 0 or "cannot listen" not in text or "held by python3" not in text:
            raise AssertionError(f"the held port was not reported: {text[-800:]}")
        if sh(held_host, f"systemctl is-active {held_unit}", check=False).stdout.strip() == "active":
            raise AssertionError(f"{held_unit} was started while its port was held")
        s.note["first"] = "failed: node exporter's port held by python3, not started"
        return run

    def rogue_gone():
        sh(held_host, f"pkill -f '[{rogue[0]}]{rogue[1:]}'; true", check=False)  # not this shell

    def listening_again(s):
        if sh(held_host, f"systemctl is-active {held_unit}", check=False).stdout.strip() != "active":
            raise AssertionError(f"{held_unit} is not active after the rerun")

    out.append(Scenario("port-held-by-hand", held_host, port_held, first=refused_start, restore=rogue_gone,
                        check=listening_again, must_fail_first=True))

    # 10. a host rebooted in the middle of its converge; its container comes back
    def with_a_container():
        sh("pi5-alpha", "deps=$(ldd /usr/bin/sleep | grep -o '/[^ ]*'); tar -ch /usr/bin/sleep $deps 2>/dev/null"
                        " | docker import - fleet-fault-app >/dev/null && docker rm -f fleet-fault-app >/dev/null 2>&1;"
                        " docker run -d --name fleet-fault-app --restart unless-stopped fleet-fault-app"
                        " /usr/bin/sleep infinity >/dev/null")

    def container_back(s):
        running = sh("pi5-alpha", "docker inspect -f '{{.State.Running}}' fleet-fault-app", check=False).stdout.strip()
        sh("pi5-alpha", "docker rm -f fleet-fault-app >/dev/null; docker rmi fleet-fault-app >/dev/null", check=False)
        if running != "true":
            raise AssertionError("the container did not come back after the reboot")

    def reboot_mid_run(s):
        host = "pi5-alpha"
        sh(host, "printf '# hand edit\\n' >> /etc/default/tailscaled")
        rebooted = []

        def on_line(line):
            if not rebooted and "Starting operation: Tailscale" in ANSI.sub("", line):
                rebooted.append(True)
                subprocess.run(["docker", "restart", "-t", "1", host], capture_output=True)
        run = converge("reboot-mid-run-1", host, on_line=on_line, timeout=600)
        wait_until(lambda: sh(host, "systemctl is-system-running", check=False).stdout.strip()
                   in ("running", "degraded"), f"{host} to boot", timeout=120)
        s.note["first"] = ("rebooted mid-run: " + ("recovered" if run["returncode"] == 0 else "failed, host named"
                           if host in ANSI.sub("", run["output"]) else "failed"))
        return run

    out.append(Scenario("host-rebooted-mid-run", "pi5-alpha", with_a_container, first=reboot_mid_run,
                        check=container_back))

    # a lan_address the host does not hold: stopped before anything changes, sshd untouched
    beta = "pi5-beta"

    def phantom_lan_address(s):
        before = sh(beta, "stat -c %Z /etc/ssh/sshd_config; systemctl show -p MainPID --value ssh").stdout
        run = converge("lan-address-mistyped-1", beta, extra=["--data", "lan_address=100.101.0.99/16"])
        text = ANSI.sub("", run["output"])
        if run["returncode"] == 0 or "has no interface with 100.101.0.99" not in text:
            raise AssertionError(f"the phantom address was not refused: {text[-800:]}")
        if changed_ops(run["output"]):
            raise AssertionError(f"the run changed {changed_ops(run['output'])} before stopping")
        if sh(beta, "stat -c %Z /etc/ssh/sshd_config; systemctl show -p MainPID --value ssh").stdout != before:
            raise AssertionError("sshd's config or process changed")
        s.note["first"] = "failed: no interface with 100.101.0.99, nothing changed"
        return run

    out.append(Scenario("lan-address-mistyped", beta, lambda: None, first=phantom_lan_address,
                        must_fail_first=True))

    # 11. a host that stops answering mid-run: the others finish, the run names it. The run
    # must have something to do on that host after it goes: a no-op converge reads every
    # fact in one batch at connect time and sends nothing more (the fact prefetch), so it
    # would finish without noticing. docker's daemon.json is edited first; the Docker
    # component, after Tailscale's, has to put it back.
    def stop_answering(s):
        host = "pi5-gamma"
        gone = []
        sh(host, "printf '{}\\n' > /etc/docker/daemon.json")

        def on_line(line):
            if not gone and "Starting operation: Tailscale" in ANSI.sub("", line):
                gone.append(True)
                sh(host, "ip route save > /run/fleet-routes && ip link set eth0 down")
        run = converge("host-stops-answering-1", None, on_line=on_line, timeout=600)
        s.note["out"] = run
        finished = [h for h, c in run["hosts"].items() if h != host and c["error"] == 0]
        if run["returncode"] == 0 or host not in ANSI.sub("", run["output"]).split("--> Results")[0]:
            raise AssertionError("the run did not fail naming the host that stopped answering")
        if len(finished) < 6:
            raise AssertionError(f"the other hosts did not finish: {run['hosts']}")
        s.note["first"] = f"failed: {host} named, 6 others finished"
        return run

    def answer_again():
        sh("pi5-gamma", "ip link set eth0 up; ip route restore < /run/fleet-routes 2>/dev/null; true", check=False)
        address = testfleet.load_inventory()[0]["pi5-gamma"]["tailnet_address"]
        wait_until(lambda: testfleet.tcp_open(address, 22), "pi5-gamma to answer again", timeout=60)

    out.append(Scenario("host-stops-answering", None, lambda: None, first=stop_answering, restore=answer_again,
                        must_fail_first=True, spec_hosts=["pi5-gamma"]))

    # 12. a wrong vault passphrase: refused before any host is touched
    def wrong_passphrase(s):
        clocks = host_clocks()
        before = fleet_fingerprint()
        # pyinfra itself, as an operator runs it (the harness would validate first)
        env = dict(os.environ, FLEET_TARGET="test", FLEET_VAULT_PASSPHRASE="not the passphrase")
        proc = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "-y", "inventory.py",
                               "deploys/site.py"], cwd=REPO, env=env, text=True, capture_output=True, timeout=300)
        run = {"returncode": proc.returncode, "output": proc.stdout + proc.stderr, "killed": None}
        text = ANSI.sub("", run["output"])
        if run["returncode"] == 0 or "wrong passphrase" not in text.lower() or "Traceback" in text:
            raise AssertionError(f"no clear refusal: {text[-600:]}")
        # Touching a host means an SSH session on it: pyinfra has no other way in. A change
        # under /etc or /var/lib/fleet with no session is a background service's (a timer,
        # a daemon reconnecting after the previous scenario), named in the note, not a failure.
        logins = ssh_logins_since(clocks)
        if "Starting operation" in text or logins:
            raise AssertionError(f"a host was touched: {logins or 'an operation started'}")
        after = fleet_fingerprint()
        moved = {h: changed_since(h, clocks[h]) for h in after if after[h] != before[h]}
        if moved:
            print(f"[faults] wrong-vault-passphrase: changed without an SSH session: {moved}", flush=True)
        s.note["first"] = "refused: wrong passphrase, no SSH session on any host" + (
            f" (background changes without a session: {moved})" if moved else "")
        return run

    out.append(Scenario("wrong-vault-passphrase", None, lambda: None, first=wrong_passphrase, must_fail_first=True,
                        spec_hosts=[]))
    return out


def host_clocks() -> dict[str, str]:
    """Each host's clock now (seconds since the epoch), to ask its journal what came after."""
    return {h: sh(h, "date +%s").stdout.strip() for h in testfleet.load_inventory()[0]}


def ssh_logins_since(clocks: dict[str, str]) -> dict[str, list[str]]:
    """Per host, the SSH sessions sshd accepted since its clock read `clocks[host]` (only
    hosts that had any)."""
    found = {}
    for h, since in clocks.items():
        out = sh(h, f"journalctl -t sshd -t sshd-session --since @{since} -o cat --no-pager 2>/dev/null"
                    " | grep '^Accepted ' || true", check=False).stdout.split("\n")
        if [line for line in out if line.strip()]:
            found[h] = [line for line in out if line.strip()]
    return found


def changed_since(host: str, since: str) -> list[str]:
    return sh(host, f"find /etc /usr/local /var/lib/fleet -newermt @{since} -printf '%p\\n' 2>/dev/null | head -n 5",
              check=False).stdout.split()


def fleet_fingerprint() -> dict[str, str]:
    """Per host, the newest change under the paths a converge writes (nothing may move)."""
    hosts, _ = testfleet.load_inventory()
    return {h: sh(h, "find /etc /usr/local /var/lib/fleet -newer /etc/hostname -printf '%C@\\n' 2>/dev/null"
                     " | sort -n | tail -n 1", check=False).stdout for h in hosts}


def docker_runs_its_config(host: str) -> None:
    """dk-03's point, checked directly: docker runs with daemon.json's live-restore and 127.0.0.1."""
    info = json.loads(sh(host, "docker info --format '{{json .}}'").stdout)
    if info.get("LiveRestoreEnabled") is not True:
        raise AssertionError(f"{host}: docker runs without its daemon.json (live-restore off)")


def kill_daemon(host: str, unit: str) -> None:
    sh(host, f"systemctl kill --signal=KILL {unit}")
    time.sleep(1)


def edited_config(name: str, host: str, unit: str, path: str, reload: bool) -> Scenario:
    def edit():
        if path.endswith(".json"):
            sh(host, f"python3 -c \"import json;p='{path}';d=json.load(open(p));d['debug']=True;"
                     f"json.dump(d,open(p,'w'))\"")
        else:
            sh(host, f"printf '\\n# edited by hand\\n' >> {path}")
        s.note["pid"] = main_pid(host, unit)
        s.note["stamp"] = stamp(host, unit)

    def exactly_one(s):
        first = s.note["after_first"]
        if reload:
            if first["stamp"] == s.note["stamp"]:
                raise AssertionError(f"{unit} was not reloaded after its config was restored")
        elif first["pid"] == s.note["pid"]:
            raise AssertionError(f"{unit} was not restarted after its config was restored")
        now = {"pid": main_pid(host, unit), "stamp": stamp(host, unit)}
        if now != first:
            raise AssertionError(f"{unit} was restarted or reloaded again by a later run ({first} -> {now})")

    def first_run(s):
        run = converge(f"{name}-1", host)
        s.note["after_first"] = {"pid": main_pid(host, unit), "stamp": stamp(host, unit)}
        restored = sh(host, f"grep -c 'edited by hand\\|\"debug\"' {path} || true").stdout.strip()
        if restored not in ("", "0"):
            raise AssertionError(f"{path} still holds the hand edit")
        return run

    s = Scenario(name, host, edit, first=first_run, check=exactly_one)
    return s


def stamp(host: str, unit: str) -> str:
    return sh(host, f"stat -c %Y.%y /var/lib/fleet/applied/{unit} 2>/dev/null || true", check=False).stdout.strip()


def table(results: list[Result]) -> str:
    head = ("scenario", "host", "first run", "reruns", "final changes", "specs")
    rows = [(r.name, r.host, r.first[:58], str(r.reruns), str(r.final_changes), r.specs if r.ok or r.specs != "-"
             else "-") for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def junit(results: list[Result], path: str) -> None:
    suite = ET.Element("testsuite", name="faults", tests=str(len(results)),
                       failures=str(sum(not r.ok for r in results)))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="faults", name=f"{r.name}[{r.host}]", time=str(r.seconds))
        if not r.ok:
            ET.SubElement(case, "failure", message=r.why[:500]).text = r.why
    ET.ElementTree(suite).write(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python tests/faults/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FLEET_FAULT_SEED", "11")),
                        help="picks the fresh host's kill points (default 11, or FLEET_FAULT_SEED)")
    parser.add_argument("--junit", help="write a JUnit XML report here")
    args = parser.parse_args(argv)
    if testfleet.status() != 0:
        print("faults: the test fleet is not up. Fix: run `make fleet-up` and a converge first.", file=sys.stderr)
        return 2
    chosen = scenarios(args.seed)
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {s.name for s in chosen}
        if unknown:
            print(f"faults: no scenario {', '.join(sorted(unknown))}. Fix: use one of "
                  f"{', '.join(s.name for s in chosen)}.", file=sys.stderr)
            return 2
        chosen = [s for s in chosen if s.name in names]
    t0 = time.monotonic()
    say(f"[faults] {len(chosen)} scenarios, seed {args.seed}")
    results: dict[str, Result] = {}
    # the whole-fleet scenarios first, on a converged fleet, then the re-flashed host
    alone = [s for s in chosen if s.host is None] + [s for s in chosen if s.name == "kill-fresh-host"]
    for s in alone:
        results[s.name] = run_scenario(s)
    by_host: dict[str, list[Scenario]] = {}
    for s in chosen:
        if s not in alone:
            by_host.setdefault(s.host, []).append(s)
    with ThreadPoolExecutor(max_workers=len(by_host) or 1) as pool:
        for done in pool.map(lambda group: [run_scenario(s) for s in group], by_host.values()):
            for r in done:
                results[r.name] = r
    ordered = [results[s.name] for s in chosen]
    print()
    print(table(ordered))
    for r in ordered:
        if not r.ok:
            print(f"\n{r.name} ({r.host}) failed: {r.why[:1500]}")
    if args.junit:
        junit(ordered, args.junit)
    ok = sum(r.ok for r in ordered)
    print(f"\nwall time {time.monotonic() - t0:.0f}s")
    print(f"faults: {ok} recovered, {len(ordered) - ok} failed")
    return 0 if ok == len(ordered) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
