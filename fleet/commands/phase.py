"""python -m fleet phase N [--limit HOSTS] [--check-only]: one phase of the guide's setup
checklist (fleet/checklist.py), converged and then verified item by item.

  1. earlier phases: their last reports (.state/<target>/phases/phaseK.json) are read; an
     earlier item that is failing, or an earlier phase never run on these hosts, is printed
     as blocking this one (the run goes on: what it finds is still worth knowing)
  2. converge (skipped with --check-only): pyinfra on deploys/site.py, limited to the
     components (FLEET_COMPONENTS) and hosts the phase's items name, its output live; and
     `python -m fleet edge apply` when an item names the edge (adds and changes only)
  3. verify: the items' specs in one pytest run (hosts in parallel), then the machine checks
     (fleet/commands/phase_checks.py); manual items print their reason and steps
  4. one line per item (done | failing | manual), the evidence under a failing one, a
     summary line, and the JSON report for automation

--limit takes host and group names (comma-separated), like pyinfra's. Exit status: 0 when
no item fails and nothing blocks the phase, 1 otherwise, 2 for bad usage or bad data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from fleet.checklist import PHASES, phase_items
from fleet.commands import cli, phase_checks
from fleet.converge.vault import VaultError
from fleet.preflight.inventory import (FleetConfigError, hosts_named, prepare, read_inventory_data, state_dir,
                                      target_from_env)

REPO = Path(__file__).resolve().parents[2]
EDGE = "edge"
# Spec workers (pytest-xdist), each taking whole hosts (tests/specs/conftest.py): 4 was the
# fastest on the 2-core CI machine (docs/performance.md); 0 runs the specs in one process.
# The Makefile's SPEC_WORKERS default is this number (tests/unit/test_checklist.py checks).
SPEC_WORKERS = 4


class PhaseError(Exception):
    pass


def _say(text: str = "") -> None:
    print(text, flush=True)


def item_hosts(fleet, item: dict, limit: list[str]) -> list[str]:
    wanted = item.get("hosts") or ()
    return [h.name for h in fleet.hosts.values() if h.name in limit
            and (not wanted or h.name in wanted or set(h.groups) & set(wanted))]


def report_path(repo: Path, target: str, phase: int) -> Path:
    return state_dir(repo, target) / "phases" / f"phase{phase}.json"


def blockers(repo: Path, target: str, phase: int, hosts: list[str]) -> list[str]:
    found = []
    for earlier in range(1, phase):
        path = report_path(repo, target, earlier)
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            found.append(f"phase {earlier} has not been run (no report at {path.relative_to(repo)}): "
                         f"run `make phase{earlier}` first")
            continue
        missing = [h for h in hosts if h not in report.get("hosts", [])]
        if missing:
            found.append(f"phase {earlier} was last run without {', '.join(missing)}: run `make phase{earlier}`")
        for item in report.get("items", []):
            if item["status"] == "failing":
                found.append(f"{item['id']} {item['text']}: failing in the phase {earlier} report of "
                             f"{report.get('finished', '?')}")
    return found


# --- converge ------------------------------------------------------------------------------

def converge(repo: Path, items: list[dict], hosts_of: dict[str, list[str]]) -> list[str]:
    """Run what the items need; returns a problem line per step that failed."""
    problems = []
    components = sorted({c for item in items for c in item["converge"] if c != EDGE})
    hosts = sorted({h for item in items if set(item["converge"]) - {EDGE} for h in hosts_of[item["id"]]})
    if components and hosts:
        _say(f"converge: {', '.join(components)} on {', '.join(hosts)}")
        cmd = [str(Path(sys.executable).parent / "pyinfra"), "-y", "inventory.py", "deploys/site.py"]
        for host in hosts:
            cmd += ["--limit", host]
        started = time.monotonic()
        rc = subprocess.run(cmd, cwd=repo, env={**os.environ, "FLEET_COMPONENTS": ",".join(components)}).returncode
        _say(f"converge: pyinfra exit {rc} after {time.monotonic() - started:.1f} s")
        if rc:
            problems.append(f"converge: pyinfra exit {rc} (its output is above)")
    if any(EDGE in item["converge"] for item in items):
        _say("converge: python -m fleet edge apply")
        rc = subprocess.run([sys.executable, "-m", "fleet", "edge", "--repo", str(repo), "apply"],
                            cwd=repo).returncode
        if rc:
            problems.append(f"converge: edge apply exit {rc} (its output is above)")
    return problems


# --- verify ----------------------------------------------------------------------------------

def spec_host(case_name: str, hosts: list[str]) -> str | None:
    param = case_name.partition("[")[2].rstrip("]")
    for host in sorted(hosts, key=len, reverse=True):
        if param == host or param.startswith(host + "-"):
            return host
    return None


def run_specs(repo: Path, items: list[dict], hosts_of: dict[str, list[str]], all_hosts: list[str],
              workers: int) -> dict[tuple[str, str], tuple[str, str]]:
    """(spec id, host) -> (outcome, message) for every spec case the items name."""
    ids = sorted({i for item in items for kind, *rest in item["verify"] if kind == "specs" for i in rest[0]})
    hosts = sorted({h for item in items if any(v[0] == "specs" for v in item["verify"]) for h in hosts_of[item["id"]]})
    if not ids or not hosts:
        return {}
    _say(f"verify: specs {', '.join(ids)} on {', '.join(hosts)}")
    with tempfile.TemporaryDirectory(prefix="fleet-phase-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=", "-q",
               "--no-header", "-rN", "--tb=no", f"--junitxml={junit}", "-k", " or ".join(f"test_{i}_" for i in ids)]
        if workers:
            cmd += ["-n", str(workers)]
        cmd.append("tests/specs")
        env = {**os.environ, "FLEET_SPEC_HOSTS": ",".join(hosts)}
        subprocess.run(cmd, cwd=repo, env=env)
        if not junit.exists():
            raise PhaseError("the specs did not run (pytest wrote no report; its output is above)")
        results = {}
        for case in ET.parse(junit).iter("testcase"):
            name = case.get("name", "")
            spec_id = name[len("test_"):].split("_", 1)[0] if name.startswith("test_") else ""
            host = spec_host(name, all_hosts)
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = "skipped" if tag == "skipped" else "failed"
                    message = (node.get("message") or node.text or tag).strip().splitlines()[0][:300]
                    break
            results.setdefault((spec_id, host), []).append((outcome, f"{name}: {message}" if message else name))
        return results


def spec_result(ids: list[str], hosts: list[str], results: dict) -> phase_checks.Result:
    cases = [c for i in ids for h in hosts for c in results.get((i, h), [])]
    failed = [m for o, m in cases if o == "failed"]
    skipped = [m for o, m in cases if o == "skipped"]
    passed = sum(1 for o, _ in cases if o == "passed")
    if failed:
        return phase_checks.Result("failing", failed)
    if not passed:
        return phase_checks.Result("n/a", [f"no spec of {', '.join(ids)} applies to {', '.join(hosts)}" if hosts
                                    else f"{', '.join(ids)}: the item is for none of this run's hosts"]
                                   + [f"skipped {m}" for m in skipped])
    on = sorted({h for i in ids for h in hosts if results.get((i, h))})
    return phase_checks.Result("done", [f"{passed} specs passed on {len(on)} host(s) ({', '.join(ids)})"]
                               + [f"skipped {m}" for m in skipped])


def verify_item(item: dict, ctx: phase_checks.Context, hosts: list[str], results: dict) -> dict:
    parts = []
    for kind, *rest in item["verify"]:
        if kind == "manual":
            reason, steps = rest
            return {"status": "manual", "reason": reason, "steps": steps, "evidence": [], "detail": []}
        if kind == "specs":
            parts.append(spec_result(rest[0], hosts, results))
        else:
            ctx.hosts = hosts
            parts.append(phase_checks.CHECKS[rest[0]](ctx))
    statuses = [p.status for p in parts]
    status = "failing" if "failing" in statuses else "done" if "done" in statuses else "n/a"
    if status == "failing":
        evidence = [line for p in parts if p.status == "failing" for line in p.evidence]
    else:
        evidence = [("not applicable: " if p.status == "n/a" else "") + line for p in parts for line in p.evidence]
    return {"status": status, "evidence": evidence, "detail": [line for p in parts for line in p.detail]}


def render(item: dict, outcome: dict) -> list[str]:
    lines = [f"{item['id']}  {outcome['status']:<8} {item['text']}"]
    if outcome["status"] == "manual":
        lines.append(f"         reason: {outcome['reason']}")
        lines += [f"         step {n}: {step}" for n, step in enumerate(outcome["steps"], 1)]
        return lines
    lines += [f"         {line}" for line in outcome["detail"]]
    if outcome["status"] != "done" or len(outcome["evidence"]) <= 3:
        lines += [f"         {line}" for line in outcome["evidence"]]
    else:
        lines += [f"         {line}" for line in outcome["evidence"][:3]] + [f"         (+{len(outcome['evidence']) - 3} more in the report)"]
    return lines


def spec_workers(given: int | None, env: str | None) -> int:
    """--workers, else $SPEC_WORKERS, else SPEC_WORKERS; a whole number, or a PhaseError."""
    if given is not None:
        if given < 0:
            raise PhaseError(f"--workers {given} is not a number of spec workers. "
                             "Fix: a whole number (0 runs the specs in-process).")
        return given
    if not env:
        return SPEC_WORKERS
    if not env.strip().isdigit():
        raise PhaseError(f"SPEC_WORKERS={env} is not a number of spec workers. "
                         f"Fix: a whole number (SPEC_WORKERS={SPEC_WORKERS}; 0 runs the specs in-process).")
    return int(env)


def run(args) -> int:
    repo = Path(args.repo)
    target = target_from_env()
    if args.phase not in PHASES:
        raise PhaseError(f"phase {args.phase} does not exist. Fix: use one of {', '.join(map(str, PHASES))}.")
    args.workers = spec_workers(args.workers, os.environ.get("SPEC_WORKERS"))
    started = time.monotonic()
    hosts, test_fleet = read_inventory_data(repo / "inventory.py")
    entries, fleet = prepare(hosts, test_fleet, str(repo / "inventory.py"))
    limit = hosts_named(fleet, args.limit)
    items = phase_items(args.phase)
    hosts_of = {item["id"]: item_hosts(fleet, item, limit) for item in items}
    _say(f"phase {args.phase} ({PHASES[args.phase]}) on the {target} fleet: {len(items)} items, "
         f"hosts {', '.join(limit)}{' (check only)' if args.check_only else ''}")
    blocked = blockers(repo, target, args.phase, limit)
    for line in blocked:
        _say(f"blocked by: {line}")
    problems = [] if args.check_only else converge(repo, items, hosts_of)
    results = run_specs(repo, items, hosts_of, list(fleet.hosts), args.workers)
    ctx = phase_checks.Context(repo=repo, entries=entries, fleet=fleet, hosts=limit)
    _say("")
    outcomes = []
    for item in items:
        outcome = verify_item(item, ctx, hosts_of[item["id"]], results)
        outcomes.append({"id": item["id"], "text": item["text"], "hosts": hosts_of[item["id"]], **outcome})
        for line in render(item, outcome):
            _say(line)
    counts = {s: sum(1 for o in outcomes if o["status"] == s) for s in ("done", "failing", "manual", "n/a")}
    path = report_path(repo, target, args.phase)
    report = {"phase": args.phase, "name": PHASES[args.phase], "target": target, "hosts": limit,
              "check_only": args.check_only, "converge_problems": problems, "blocked_by": blocked,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.monotonic() - started, 1), "counts": counts, "items": outcomes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    for line in problems:
        _say(line)
    _say(f"phase {args.phase} ({PHASES[args.phase]}): {counts['done']} done, {counts['failing']} failing, "
         f"{counts['manual']} manual, {counts['n/a']} not applicable"
         + (f", blocked by {len(blocked)} earlier item(s)" if blocked else "")
         + f" in {report['seconds']:.0f} s; report {path.relative_to(repo)}")
    return 1 if counts["failing"] or blocked else 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog="python -m fleet phase", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("phase", type=int, help="1-4")
    parser.add_argument("--limit", help="hosts and/or groups, comma-separated (default: every host)")
    parser.add_argument("--check-only", action="store_true", help="verify without converging")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"spec workers (pytest-xdist); 0 runs them in-process (default: $SPEC_WORKERS, "
                             f"else {SPEC_WORKERS})")
    parser.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    args = cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    return cli.report("phase", run, args, {PhaseError: 2, FleetConfigError: 2, VaultError: 2},
                      interrupted="interrupted (what the converge printed above was applied)", every_line=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
