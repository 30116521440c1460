"""`make bench`: where a converge's time goes on the Docker test fleet, as figures and ratios.

    python tests/harness/bench.py [--out bench.json] [--runs 3] [--fresh] [--keep]

From one run it prints and writes to JSON (medians of --runs where repeated):
- the floor: SSH connections to every host at once (paramiko, as pyinfra connects) and one
  command on each: what any run over SSH costs at least;
- the no-op converge of the whole site, and of the base component only (FLEET_COMPONENTS);
- the cost of one more host (the issue's per-host marginal cost): --extra-hosts hosts like
  --extra-like (its groups and data; FLEET_TEST_EXTRA_HOSTS) are added to the test fleet and
  converged once; then the no-op converge of the whole site is timed with 0, 1, ... of them,
  and the slope (least squares) of its time, and of the operator's and the hosts' CPU, is
  what each added host of that group costs. The floor is timed after each of those runs, with
  the same hosts, and its own slope is what one more host costs any run over SSH: the added
  host's cost is also given as a ratio to that, and each round of the interleaved runs' own
  slope shows how far the machine's noise moves the figure; its CPU (operator and hosts) over
  the machine's cores is the wall time it must add while a run keeps them busy, and how busy
  the site's no-op keeps them is given beside it. The added hosts are removed at
  the end, and the fleet is converged back to its own hosts (the monitoring host's targets,
  the firewalls' sources);
- the slope of the no-op converge's time over --limit 1, 3 and every host of the fleet as
  it is: what its (unlike) hosts cost one by one, pi5-gamma's repository check included;
- the specs' time (tests/specs, every host);
- the vault's opening time (scrypt at its real cost, then decryption), and with the key
  kept beside its passphrase file (what a run does after its first);
- the CPU seconds the no-op converges and the specs cost the operator and the test hosts
  (read from the containers' cgroups; also host by host), which move far less than wall times
  on shared cores, and the number of processes the test hosts started meanwhile (each host's
  last PID);
- the test hosts' CPU while nothing is run on them (their own timers, health probes and
  scrapes, which every timed run carries), and each added host's: how much of an added
  host's CPU per no-op is its own periodic work rather than the converge's;
- the share of this machine's CPU time its hypervisor gave to others meanwhile (steal, from
  /proc/stat), over the whole run and in the timed runs: on a shared cloud machine it moves
  every figure, and no CPU seconds read in the cgroups show it;
- with --fresh, also fleet-up from no hosts, the first converge, and the second (the first
  no-op after it, which the make test idempotence check runs too).
Each time is also given as a ratio to the floor. Figures, not assertions: nothing here
fails because a number is high, only because a run failed or changed something.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `harness` importable

import paramiko  # noqa: E402

from fleet.commands.phase import SPEC_WORKERS  # noqa: E402
from fleet.converge import component as registry  # noqa: E402
from fleet.converge import keys  # noqa: E402
from fleet.converge.vault import Vault, params_of  # noqa: E402
from fleet.preflight.inventory import EXTRA_ENV, EXTRA_MAX, FleetConfigError, prepare, select_vault  # noqa: E402
from harness import testfleet  # noqa: E402

REPO = testfleet.REPO
CORES = len(os.sched_getaffinity(0))  # the cores the operator and the test hosts share


def floor_once(entries: dict) -> float:
    """Seconds to connect to every host at once and run `true` on each."""
    errors: list[str] = []

    def one(entry: dict) -> None:
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(entry["ssh_known_hosts_file"])
            client.connect(entry["ssh_hostname"], username=entry["ssh_user"], key_filename=entry.get("ssh_key"),
                           timeout=10, allow_agent=False, look_for_keys=False)
            _, out, _ = client.exec_command("true")
            if out.channel.recv_exit_status() != 0:
                errors.append(entry["ssh_hostname"])
        except Exception as exc:  # noqa: BLE001 - reported, not raised from a thread
            errors.append(f"{entry['ssh_hostname']}: {exc}")
        finally:
            client.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(e,)) for e in entries.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    seconds = time.monotonic() - t0
    if errors:
        raise SystemExit(f"bench: the floor's SSH connections failed: {errors}")
    return seconds


def noop(extra: list[str], env: dict | None, label: str, hosts: int, window=None) -> float:
    """A no-op converge's wall time (`window`: CpuMeter.window, around pyinfra's run alone)."""
    result = testfleet.converge(extra, log_name=f"bench-{label}", env=env, window=window)
    if result["returncode"] != 0 or result["changed"] or len(result["hosts"]) != hosts:
        raise SystemExit(f"bench: the {label} converge was not a clean no-op on {hosts} host(s) "
                         f"(exit {result['returncode']}, {result['changed']} changed, {len(result['hosts'])} host(s) "
                         f"ran); log {result['log']}")
    return result["seconds"]


def median_of(runs: int, fn) -> tuple[float, list[float]]:
    values = [round(fn(), 3) for _ in range(runs)]
    return round(statistics.median(values), 3), values


# CPU seconds, beside the wall times: on a machine whose cores the operator and every test
# host share, the wall time of a run moves with whatever else runs (timers on the hosts), while
# the CPU it costs does not; a change that removes work shows here first.
_CGROUP_CPU = (  # (path pattern, file's unit in seconds, the key in a cpu.stat file or None)
    ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", 1e-6, "usage_usec"),  # cgroup v2, systemd
    ("/sys/fs/cgroup/docker/{id}/cpu.stat", 1e-6, "usage_usec"),  # cgroup v2, cgroupfs driver
    ("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", 1e-9, None),  # cgroup v1
)


def operator_cpu() -> float:
    """CPU seconds of this process's finished children (pyinfra, pytest and their workers)."""
    t = os.times()
    return t.children_user + t.children_system


def hosts_cpu_each(names: list[str]) -> dict[str, float] | None:
    """CPU seconds each test host's container has used so far; None where the cgroup files
    cannot be read (then no CPU figure for the hosts is given)."""
    ids = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", *names], capture_output=True, text=True).stdout.split()
    if len(ids) != len(names):
        return None
    used = {}
    for name, cid in zip(names, ids):
        for pattern, unit, key in _CGROUP_CPU:
            try:
                text = Path(pattern.format(id=cid)).read_text()
            except OSError:
                continue
            value = (int(text) if key is None else
                     next((int(line.split()[1]) for line in text.splitlines() if line.startswith(key + " ")), None))
            if value is not None:
                used[name] = value * unit
                break
        else:
            return None
    return used


# How long the test hosts are watched doing nothing the benchmark asked: the test fleet's own
# periodic work (health probes and the dead man's switch every 15 s, Prometheus scrapes every
# 10 s, in its data) comes round at least twice in it.
IDLE_SECONDS = 30


def idle_cpu(names: list[str], seconds: float = IDLE_SECONDS) -> dict | None:
    """The test hosts' CPU seconds per second while nothing is run on them: what each timed
    run also carries (its hosts' CPU includes it) and what an added host brings with it.
    {"total": ..., "by_host": {name: ...}}, or None where the cgroup files cannot be read."""
    before, t = hosts_cpu_each(names), time.monotonic()
    time.sleep(seconds)
    after, elapsed = hosts_cpu_each(names), time.monotonic() - t
    if before is None or after is None:
        return None
    rates = {name: round((after[name] - before[name]) / elapsed, 4) for name in names}
    return {"total": round(sum(rates.values()), 4), "by_host": rates}


def machine_ticks() -> tuple[int, int] | None:
    """(steal, all) clock ticks of this machine's CPUs so far (/proc/stat), or None where
    there is no such file. Steal is time a virtual machine's CPUs were ready to run but the
    hypervisor ran something else: on a shared cloud machine it moves every figure here, and
    the CPU seconds read in the cgroups do not show it."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if fields[:1] != ["cpu"] or len(fields) < 9:
        return None
    ticks = [int(value) for value in fields[1:]]
    # guest and guest_nice (fields 9 and 10) are already counted in user and nice
    return ticks[7], sum(ticks[:8])


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen between two readings (machine_ticks)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def hosts_last_pid(names: list[str]) -> list[int] | None:
    """Each test host's last process ID (its own PID namespace); None where it cannot be read."""
    found = []
    for name in names:
        done = subprocess.run(["docker", "exec", name, "cat", "/proc/sys/kernel/ns_last_pid"],
                              capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip().isdigit():
            return None
        found.append(int(done.stdout))
    return found


def processes_started(before: list[int] | None, after: list[int] | None) -> int | None:
    """Processes the test hosts started between two readings, less the reading's own `cat`
    on each; None when unknown (a reading failed, or a host's PIDs wrapped around)."""
    if before is None or after is None:
        return None
    counts = [b - a - 1 for a, b in zip(before, after)]
    return sum(counts) if all(c >= 0 for c in counts) else None


class CpuMeter:
    """Operator and test-host CPU seconds of each measured run, and the processes the test
    hosts started (a count: load elsewhere on the machine does not move it, only the hosts' own
    timers do, a little), for medians."""

    def __init__(self, names: list[str]):
        self.names = names
        # (operator, test hosts, processes started, {host: its CPU}, steal %) per run
        self.runs: dict[str, list[tuple[float, float | None, int | None, dict | None, float | None]]] = {}

    @contextlib.contextmanager
    def window(self, label: str):
        """One run of `label`: what the operator's processes and the test hosts used inside
        it. Its own readings (a `docker inspect`, a `docker exec` per host) are taken outside:
        the operator's CPU is read after the hosts' first reading and before their second,
        and the hosts' last PIDs before and after both."""
        pids0 = hosts_last_pid(self.names)
        host0 = hosts_cpu_each(self.names)
        op0, ticks0 = operator_cpu(), machine_ticks()
        yield
        op1, ticks1 = operator_cpu(), machine_ticks()
        host1 = hosts_cpu_each(self.names)
        each = None if host0 is None or host1 is None else {n: host1[n] - host0[n] for n in self.names}
        self.runs.setdefault(label, []).append(
            (op1 - op0, None if each is None else sum(each.values()),
             processes_started(pids0, hosts_last_pid(self.names)), each, steal_percent(ticks0, ticks1)))

    def wrap(self, label: str, fn):
        def measured():
            with self.window(label):
                return fn()
        return measured

    def medians(self, label: str) -> dict:
        runs = self.runs.get(label, [])

        def median(column: int, digits: int | None):
            values = [run[column] for run in runs if run[column] is not None]
            return round(statistics.median(values), digits) if runs and len(values) == len(runs) else None

        by_host = None
        if runs and all(run[3] is not None for run in runs):
            by_host = {name: round(statistics.median(run[3][name] for run in runs), 2) for name in self.names}
        return {"operator": median(0, 2), "test_hosts": median(1, 2), "host_processes": median(2, None),
                "by_host": by_host, "steal_percent": median(4, 1)}


def slope(points: list[tuple[int, float]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python tests/harness/bench.py")
    parser.add_argument("--out", default="bench.json", help="where to write the figures")
    parser.add_argument("--runs", type=int, default=3, help="repeats of each timed run (median)")
    parser.add_argument("--fresh", action="store_true", help="also time fleet-up from no hosts and the first converge")
    parser.add_argument("--keep", action="store_true", help="with --fresh: leave the test fleet up")
    parser.add_argument("--spec-workers", type=int, default=SPEC_WORKERS, help="pytest-xdist workers for the specs (0: none)")
    parser.add_argument("--extra-hosts", type=int, default=3,
                        help="hosts added for the per-added-host cost (0: not measured)")
    parser.add_argument("--extra-like", default="pi0-epsilon",
                        help="the inventory host the added hosts copy (its groups and data)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be 1 or more")
    if args.spec_workers < 0:
        parser.error("--spec-workers must be 0 (none) or more")
    if not 0 <= args.extra_hosts <= EXTRA_MAX:
        parser.error(f"--extra-hosts must be 0 to {EXTRA_MAX}")
    if os.environ.get(EXTRA_ENV):
        parser.error(f"{EXTRA_ENV} is set: unset it (the benchmark adds its own hosts: --extra-hosts)")

    os.environ["FLEET_TARGET"] = "test"
    figures: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                              capture_output=True, text=True).stdout.strip()}
    step = lambda what: print(f"[bench {time.monotonic() - t0:6.1f}s] {what}", flush=True)  # noqa: E731
    t0, ticks0 = time.monotonic(), machine_ticks()

    hosts, test_fleet = testfleet.load_inventory()
    if args.extra_hosts and args.extra_like not in hosts:
        parser.error(f"--extra-like {args.extra_like!r} is not a host of inventory.py ({', '.join(hosts)})")
    select_vault(REPO, test_fleet)
    opens = []
    for _ in range(3):
        t = time.monotonic()
        Vault(keys.vault_path(), keys.passphrase()).load()
        opens.append(time.monotonic() - t)
    figures["vault_open_seconds"] = round(min(opens), 3)
    cached = []
    for _ in range(4):  # the first one writes the key file if it is not there yet
        t = time.monotonic()
        keys.vault().load()
        cached.append(time.monotonic() - t)
    figures["vault_open_cached_seconds"] = round(min(cached[1:]), 3)
    figures["vault_kdf"] = {"n": params_of(keys.vault_path()).n, "r": params_of(keys.vault_path()).r}

    if args.fresh:
        step("fleet-up from no hosts")
        testfleet.ensure_engine()
        figures["image_build_or_cache_seconds"] = round(_timed(testfleet.ensure_image), 1)
        testfleet.down()
        figures["fleet_up_seconds"] = round(_timed(testfleet.up), 1)
        step("first converge")
        first = testfleet.converge([], log_name="bench-first")
        figures["first_converge_seconds"] = first["seconds"]
        figures["first_converge_changed"] = first["changed"]
    else:
        testfleet.up()  # a no-op when the fleet is up
    step("settling converge (the runs below must change nothing)")
    settle = testfleet.converge([], log_name="bench-settle")
    if settle["returncode"] != 0:
        raise SystemExit(f"bench: the settling converge failed; log {settle['log']}")
    if args.fresh:  # the first no-op after a converge that created everything: CI's idempotence run
        figures["second_converge_seconds"] = settle["seconds"]
        figures["second_converge_changed"] = settle["changed"]

    entries, _ = prepare(hosts, test_fleet, str(REPO / "inventory.py"), "test")
    names = list(entries)
    if args.extra_hosts:
        step(f"{args.extra_hosts} host(s) like {args.extra_like} to add later: host keys, inventory check")
        added_env = added_hosts_env(args.extra_like, args.extra_hosts, names, test_fleet)
    cpu = CpuMeter(names)
    step(f"the test hosts idle, {IDLE_SECONDS} s: their own periodic work, which every timed run carries")
    figures["idle_cpu_per_second"] = idle_cpu(names)
    step(f"floor: {len(names)} parallel SSH connections + one command, x{args.runs + 2}")
    figures["floor_seconds"], figures["floor_runs"] = median_of(args.runs + 2, lambda: floor_once(entries))
    step(f"no-op converge, whole site, x{args.runs}")
    figures["noop_site_seconds"], figures["noop_site_runs"] = median_of(
        args.runs, lambda: noop([], None, "noop", len(names), cpu.window("noop_site")))
    if hasattr(registry, "selected"):  # FLEET_COMPONENTS (absent from older commits: no figure)
        step(f"no-op converge, base only, x{args.runs}")
        figures["noop_base_seconds"], figures["noop_base_runs"] = median_of(
            args.runs, lambda: noop([], {"FLEET_COMPONENTS": "base"}, "noop-base", len(names), cpu.window("noop_base")))
    points = []
    for count in sorted({1, min(3, len(names)), len(names)}):
        limit = [arg for name in names[:count] for arg in ("--limit", name)]
        step(f"no-op converge, --limit {count} host(s), x{args.runs}")
        seconds, _ = median_of(args.runs, lambda: noop(limit, None, f"noop-limit{count}", count))
        points.append((count, seconds))
    figures["noop_by_host_count"] = {str(c): s for c, s in points}
    figures["per_host_marginal_seconds"] = round(slope(points), 3) if len(points) > 1 else None
    step("specs, every host")
    t = time.monotonic()
    workers = ["-n", str(args.spec_workers)] if args.spec_workers else []
    specs = cpu.wrap("specs", lambda: subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=", "-q", *workers, "tests/specs"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, FLEET_TARGET="test")))()
    figures["specs_seconds"] = round(time.monotonic() - t, 1)
    figures["cpu_seconds"] = {label: cpu.medians(label) for label in ("noop_site", "noop_base", "specs")}
    figures["cores"] = CORES
    site = figures["cpu_seconds"]["noop_site"]
    if site["operator"] is not None and site["test_hosts"] is not None:
        figures["noop_site_cores_busy"] = round((site["operator"] + site["test_hosts"])
                                                / (figures["noop_site_seconds"] * CORES), 2)
    # last: the converge back to the fleet's own hosts restarts the monitoring host's daemons,
    # whose start would weigh on whatever is timed next
    if args.extra_hosts:
        figures.update(added_hosts(args.extra_like, args.extra_hosts, max(args.runs, EXTRA_RUNS), names,
                                   added_env, step))
    figures["spec_workers"] = args.spec_workers
    figures["steal_percent"] = steal_percent(ticks0, machine_ticks())
    figures["specs_summary"] = (specs.stdout.strip().splitlines() or [""])[-1]
    if args.fresh and not args.keep:
        testfleet.down()

    floor = figures["floor_seconds"]
    ratio = lambda v: round(v / floor, 1) if v is not None and floor else None  # noqa: E731
    figures["ratios_to_floor"] = {k: ratio(figures[k]) for k in
                                  ("noop_site_seconds", "noop_base_seconds", "per_added_host_seconds",
                                   "per_host_marginal_seconds", "specs_seconds", "first_converge_seconds",
                                   "second_converge_seconds")
                                  if figures.get(k) is not None}
    if figures.get("floor_per_added_host_seconds"):  # like for like: what one more host adds to each
        figures["per_added_host_x_floor_per_added_host"] = round(
            figures["per_added_host_seconds"] / figures["floor_per_added_host_seconds"], 1)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")

    print(f"\n{'figure':<44} {'seconds':>9} {'x floor':>8}")
    rows = [("floor: parallel SSH connect + one command", "floor_seconds"),
            ("no-op converge, whole site", "noop_site_seconds"),
            ("no-op converge, base only", "noop_base_seconds"),
            ("per added host (no-op, slope)", "per_added_host_seconds"),
            ("  operator CPU-s per added host", "per_added_host_operator_cpu"),
            ("  test hosts' CPU-s per added host", "per_added_host_hosts_cpu"),
            ("    of which its idle background", "added_host_idle_cpu_per_noop"),
            ("  floor per added host (slope)", "floor_per_added_host_seconds"),
            (f"  (operator + hosts) CPU-s / {CORES} cores", "per_added_host_cpu_over_cores"),
            ("slope over --limit 1/3/all (unlike hosts)", "per_host_marginal_seconds"),
            ("specs, every host", "specs_seconds"),
            ("vault open (scrypt + decrypt)", "vault_open_seconds"),
            ("vault open, key kept (passphrase file)", "vault_open_cached_seconds"),
            ("fleet-up from no hosts", "fleet_up_seconds"),
            ("first converge", "first_converge_seconds"),
            ("second converge (the first no-op after it)", "second_converge_seconds")]
    no_ratio = ("floor_per_added_host_seconds", "added_host_idle_cpu_per_noop")  # a part of another figure
    for label, key in rows:
        if figures.get(key) is not None:
            r = ratio(figures[key]) if key not in no_ratio else None
            print(f"{label:<44} {figures[key]:>9.3f} {r if r is not None else '':>8}")
    print(f"\n{'CPU seconds and host processes (medians)':<44} {'operator':>9} {'test hosts':>11} {'processes':>10}")
    for label, key in (("no-op converge, whole site", "noop_site"), ("no-op converge, base only", "noop_base"),
                       ("specs, every host", "specs")):
        used = figures["cpu_seconds"][key]
        if used["operator"] is not None:
            hosts_text = f"{used['test_hosts']:.2f}" if used["test_hosts"] is not None else "n/a (no cgroup CPU file)"
            procs = used["host_processes"]
            print(f"{label:<44} {used['operator']:>9.2f} {hosts_text:>11} {procs if procs is not None else 'n/a':>10}")
    if figures.get("noop_site_cores_busy") is not None:
        print(f"the site's no-op kept {figures['noop_site_cores_busy']:.0%} of this machine's {CORES} cores busy "
              "(operator and test hosts' CPU over its wall time)")
    steals = [(label, figures["cpu_seconds"][key].get("steal_percent")) for label, key in
              (("site no-op", "noop_site"), ("base no-op", "noop_base"), ("specs", "specs"))]
    if figures["steal_percent"] is not None:
        print(f"CPU time this machine's hypervisor gave to others (steal): {figures['steal_percent']:.1f}% over "
              "the whole benchmark; " + ", ".join(f"{label} {value:.1f}%" for label, value in steals
                                                 if value is not None) + " (medians)")
    idle = figures.get("idle_cpu_per_second")
    if idle is not None:
        busiest = sorted(idle["by_host"].items(), key=lambda item: -item[1])[:3]
        print(f"the test hosts idle: {idle['total']:.3f} CPU-s per second of their own (timers, probes, scrapes), "
              f"{idle['total'] * figures['noop_site_seconds']:.2f} CPU-s over the site's no-op; most: "
              + ", ".join(f"{name} {rate:.3f}" for name, rate in busiest))
    for label, key in (("site no-op", "noop_site"), ("specs", "specs")):
        each = figures["cpu_seconds"][key].get("by_host")
        if each:
            print(f"test hosts' CPU-s by host, {label} (median): "
                  + ", ".join(f"{name} {used:.2f}" for name, used in each.items()))
    print("no-op converge by host count: " + ", ".join(f"{c} host(s) {s:.2f}s" for c, s in points))
    if figures.get("noop_by_added_hosts"):
        print(f"no-op converge of the site with added hosts like {args.extra_like}: "
              + ", ".join(f"+{k} {s:.2f}s" for k, s in figures["noop_by_added_hosts"].items()))
        if figures.get("per_added_host_x_floor_per_added_host") is not None:
            print(f"per added host: {figures['per_added_host_seconds']:.3f}s, "
                  f"{figures['per_added_host_x_floor_per_added_host']} x the floor's own per added host "
                  f"({figures['floor_per_added_host_seconds']:.4f}s; floor +0..+{args.extra_hosts}: "
                  + ", ".join(f"{s:.3f}s" for s in figures["floor_by_added_hosts"].values()) + ")")
        rounds = figures["per_added_host_round_slopes"]
        print(f"per added host, each round's own slope: {rounds[0]:.3f} to {rounds[-1]:.3f}s "
              f"(median {statistics.median(rounds):.3f}s, {len(rounds)} rounds)")
    print(f"specs: {figures['specs_summary']}")
    print(f"figures written to {args.out}")
    return 0 if specs.returncode == 0 else 1


# Floors timed after each no-op of the added-host line (a floor is ~0.2 s and moves by a few ms)
FLOOR_REPEATS = 3

# Runs of each point of the added-host line (at least): its slope over a few tenths of a second
# needs more than the 3 runs a single figure gets on a machine whose runs move by ±0.2 s.
EXTRA_RUNS = 5


@contextlib.contextmanager
def environment(env: dict):
    """os.environ with `env` over it, for what reads the test-fleet settings from it (the
    harness's inventory, the vault's selection), and as it was afterwards."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def added_hosts_env(like: str, count: int, names: list[str], test_fleet: dict) -> dict:
    """The environment in which the test fleet has `count` more hosts like `like`: their host
    keys generated into a copy of the demo vault (.state/bench/extra.vault), and the whole
    inventory checked with them, before anything is timed (a copied host may need more of
    its own secrets than a host key: backups, a tunnel)."""
    vault = testfleet.STATE.parent / "bench" / "extra.vault"
    env = {EXTRA_ENV: f"{like}:{count}", "FLEET_VAULT": str(vault),
           # the passphrase the vault was opened with above: its file, or FLEET_VAULT_PASSPHRASE as set
           "FLEET_VAULT_PASSPHRASE_FILE": os.environ.get("FLEET_VAULT_PASSPHRASE_FILE")
           or str(REPO / test_fleet["vault_passphrase_file"])}
    remove_added(names)  # a bench run that was stopped left them: their host keys are not these
    vault.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keys.vault_path(), vault)
    with environment(env):
        made = subprocess.run([sys.executable, "-m", "fleet", "vault", "hostkeys"], cwd=REPO,
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"bench: host keys for the added hosts: {made.stderr.strip()}")
        try:
            prepare(*testfleet.load_inventory(), str(REPO / "inventory.py"), "test")
        except FleetConfigError as exc:
            raise SystemExit(f"bench: hosts like {like} cannot be added (--extra-like): {exc}") from None
    return env


def added_hosts(like: str, count: int, runs: int, names: list[str], env: dict, step) -> dict:
    """The cost of one more host like `like`: `count` such hosts (added_hosts_env) are started
    and converged once, and the no-op converge of the site is timed with 0..count of them (each
    count `runs` times, interleaved); the slopes of its wall time and of the operator's and
    the test hosts' CPU over the count. The added hosts are then removed and the fleet is
    converged back to its own hosts."""
    extra = [f"{like}-x{i}" for i in range(1, count + 1)]
    try:
        with environment(env):
            step(f"{count} added host(s) like {like}: start, first converge")
            testfleet.up()
            first = testfleet.converge([], log_name="bench-added-settle")
            if first["returncode"] != 0:
                raise SystemExit(f"bench: the converge with the added hosts failed; log {first['log']}")
            every = names + extra
            step(f"the added host(s) idle, {IDLE_SECONDS} s: what each brings with it between runs")
            added_idle = idle_cpu(extra)
            entries, _ = prepare(*testfleet.load_inventory(), str(REPO / "inventory.py"), "test")
            cpu = CpuMeter(every)
            base = [arg for name in names for arg in ("--limit", name)]
            walls: dict[int, list[float]] = {}
            floors: dict[int, list[float]] = {}
            step(f"no-op converge and floor, site + 0..{count} added host(s), x{runs} each (interleaved)")
            # Each round runs the counts in the other order than the one before (0..count, then
            # count..0). A drift over the series, or a background load whose period is near a
            # round's length, then weighs on each count alike instead of always landing on the
            # same one: each health prober (every added host like pi0-epsilon is one) runs a round
            # every healthcheck_interval_seconds, 15 s in the test fleet's data.
            for run in range(runs):
                for k in (range(count + 1) if run % 2 == 0 else range(count, -1, -1)):
                    limit = base + [arg for name in extra[:k] for arg in ("--limit", name)]
                    walls.setdefault(k, []).append(
                        noop(limit, None, f"noop-added{k}", len(names) + k, cpu.window(f"added{k}")))
                    hosts = {name: entries[name] for name in names + extra[:k]}
                    floors.setdefault(k, []).extend(round(floor_once(hosts), 3) for _ in range(FLOOR_REPEATS))
    finally:
        step("removing the added hosts; converging the fleet back to its own hosts")
        remove_added(names)
        back = testfleet.converge([], log_name="bench-added-back")
    if back["returncode"] != 0:
        raise SystemExit(f"bench: the converge back to the fleet's own hosts failed; log {back['log']}")
    medians = {k: statistics.median(v) for k, v in walls.items()}
    per = {k: cpu.medians(f"added{k}") for k in walls}
    figures = {"added_like": like, "noop_by_added_hosts": {str(k): round(v, 3) for k, v in medians.items()},
               "noop_by_added_hosts_runs": {str(k): v for k, v in walls.items()},
               "cpu_by_added_hosts": {str(k): v for k, v in per.items()},
               "added_first_converge_seconds": first["seconds"], "added_first_converge_changed": first["changed"],
               "added_back_changed": back["changed"]}
    if added_idle is not None:
        # each added host's own periodic work (a health prober's rounds, for hosts like
        # pi0-epsilon) runs during the timed no-ops too: part of its CPU per added host below
        figures["added_host_idle_cpu_per_second"] = round(statistics.median(added_idle["by_host"].values()), 4)
        figures["added_host_idle_cpu_per_noop"] = round(
            figures["added_host_idle_cpu_per_second"] * statistics.median(medians.values()), 3)
    figures["per_added_host_seconds"] = round(slope(list(medians.items())), 3)
    # each round of the interleaved runs (0..count added hosts, a few seconds apart) has a slope
    # of its own: their spread is how far this machine's noise moves the figure
    figures["per_added_host_round_slopes"] = sorted(
        round(slope([(k, v[i]) for k, v in walls.items()]), 3) for i in range(runs))
    floor_medians = {k: statistics.median(v) for k, v in floors.items()}
    figures["floor_by_added_hosts"] = {str(k): round(v, 3) for k, v in floor_medians.items()}
    figures["floor_per_added_host_seconds"] = round(slope(list(floor_medians.items())), 4)
    for key, column in (("per_added_host_operator_cpu", "operator"), ("per_added_host_hosts_cpu", "test_hosts")):
        points = [(k, v[column]) for k, v in per.items() if v[column] is not None]
        figures[key] = round(slope(points), 3) if len(points) == len(per) else None
    if figures["per_added_host_operator_cpu"] is not None and figures["per_added_host_hosts_cpu"] is not None:
        # the operator and the test hosts share this machine's cores: while a run keeps them
        # busy, each added host's CPU spread over all of them is wall time the run cannot hide
        figures["per_added_host_cpu_over_cores"] = round(
            (figures["per_added_host_operator_cpu"] + figures["per_added_host_hosts_cpu"]) / CORES, 3)
    return figures


def added_names(own: list[str], names: list[str]) -> list[str]:
    """Those of `names` that are added test hosts: `<host>-x<n>` of an inventory host."""
    added = re.compile("^(" + "|".join(re.escape(name) for name in own) + r")-x[0-9]+$")
    return [name for name in names if added.match(name)]


def remove_added(own: list[str]) -> None:
    """The added test hosts' containers (any `<host>-x<n>` of the inventory's hosts: a bench
    run that was stopped may have left them, whatever it copied) and the harness's records
    of them."""
    present = testfleet.docker("ps", "-a", "--filter", f"label={testfleet.LABEL}",
                               "--format", "{{.Names}}").stdout.split()
    gone = added_names(own, present)
    if gone:
        testfleet.docker("rm", "-f", "-v", *gone)
    for path in (testfleet.STATE / "facts").glob("*.json"):  # <host>.json, <host>--<components>.json
        if added_names(own, [path.stem.split("--")[0]]):
            path.unlink(missing_ok=True)


def _timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
