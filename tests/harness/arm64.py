"""`make test-arm64`: the disaster rebuild proven on an arm64 test host (the Pis' architecture).

    python tests/harness/arm64.py [--host pi5-gamma] [--keep]

The test hosts are amd64 containers; this one runs as arm64 under qemu-user emulation
(Debian's qemu-user-static through binfmt_misc, TESTING.md's path), the rest of the fleet
stays native. Stages, each timed and shown as it runs:
  1. binfmt + the arm64 base image (mmdebstrap --arch=arm64), then fleet-up, which starts the
     host afresh as arm64 (FLEET_TEST_ARM64=<host>)
  2. the converge of the whole fleet (the arm64 host gets TEST_FLEET["arm64_data"]: what an
     emulated host cannot do, listed in the waivers table below), then a second converge of
     that host, which must change nothing
  3. the host's specs
  4. tests/integration/test_rebuild.py, the same test `make test` runs on amd64: rows in
     PostgreSQL and a backup on the droplet, a rebuild of the healthy host refused, the host
     destroyed and flashed blank (arm64 again), `make rebuild` bringing it back with its rows
It ends with the architecture the host reported, the rebuild report (RTO by step), the
waivers table and the wall time, also written to .state/arm64-report.txt. Without --keep,
the host goes back to amd64 afterwards (fleet-up starts it afresh), so `make test` finds the
fleet as it expects.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `harness` importable

from harness import testfleet  # noqa: E402
from fleet.converge.paths import state_root  # noqa: E402
from fleet.preflight.inventory import ARM64_ENV  # noqa: E402

REPO = testfleet.REPO
REPORT = state_root(REPO) / "arm64-report.txt"
T0 = time.monotonic()
STAGES = 4


def stage(number: int, what: str, times: dict) -> None:
    times[number] = time.monotonic()
    print(f"\n==> [{time.monotonic() - T0:6.1f}s] stage {number}/{STAGES}: {what}", flush=True)


def waivers_table(arm64_data: dict) -> list[str]:
    """One row per TEST_FLEET["arm64_data"] key: the value and why (its comment in inventory.py)."""
    reasons = testfleet.load_inventory()[1].get("arm64_waivers", {})
    rows = ["| data key | value on the emulated host | why |", "| --- | --- | --- |"]
    for key, value in sorted(arm64_data.items()):
        why = reasons.get(key, "(no reason given in TEST_FLEET['arm64_waivers'])")
        rows.append(f"| {key} | {value!r} | {why} |")
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make test-arm64", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="pi5-gamma", help="the host run as arm64 (default pi5-gamma, "
                                                            "the one the rebuild test rebuilds)")
    parser.add_argument("--keep", action="store_true", help="leave the host on arm64 afterwards")
    args = parser.parse_args(argv)
    hosts, test_fleet = testfleet.load_inventory()
    if args.host not in hosts:
        print(f"make test-arm64: --host {args.host!r} is not in inventory.py. Fix: one of {', '.join(hosts)}.",
              file=sys.stderr)
        return 2
    os.environ.update(FLEET_TARGET="test", **{ARM64_ENV: args.host})
    times: dict[int, float] = {}
    lines: list[str] = []

    stage(1, f"qemu-user binfmt, the arm64 base image, fleet-up with {args.host} on arm64", times)
    testfleet.ensure_binfmt()
    testfleet.up()
    machine = testfleet.docker("exec", args.host, "uname", "-m").stdout.strip()
    dpkg_arch = testfleet.docker("exec", args.host, "dpkg", "--print-architecture").stdout.strip()
    lines.append(f"{args.host}: uname -m {machine}, dpkg architecture {dpkg_arch} (under qemu-user on "
                 f"{os.uname().machine})")
    print(lines[-1], flush=True)
    if dpkg_arch != "arm64":
        print(f"make test-arm64: {args.host} runs {dpkg_arch}, not arm64", file=sys.stderr)
        return 1

    stage(2, "converge the fleet, then the arm64 host again (must change nothing)", times)
    first = testfleet.converge([], log_name="converge-arm64", on_line=testfleet.progress_printer())
    mine = first["hosts"].get(args.host, {})
    lines.append(f"converge: {first['changed']} changed operation(s) ({mine.get('changed', 0)} on {args.host}), "
                 f"{first['errors']} error(s), {first['seconds']}s")
    print(lines[-1], flush=True)
    if first["returncode"] != 0:
        print(f"make test-arm64: the converge failed: see {first['log']}", file=sys.stderr)
        return 1
    second = testfleet.converge(["--limit", args.host], log_name="converge-arm64-again")
    lines.append(f"second converge of {args.host}: {second['changed']} changed, {second['errors']} error(s), "
                 f"{second['seconds']}s")
    print(lines[-1], flush=True)
    if second["returncode"] != 0 or second["changed"]:
        print(f"make test-arm64: the second converge was not a no-op: see {second['log']}", file=sys.stderr)
        return 1

    stage(3, f"the specs of {args.host}", times)
    specs = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=", "-q",
                            "-rs", "tests/specs"], cwd=REPO, env=dict(os.environ, FLEET_SPEC_HOSTS=args.host),
                           text=True, capture_output=True, timeout=1800)
    print(specs.stdout[-3000:], flush=True)
    summary = [line for line in specs.stdout.splitlines() if " passed" in line or " failed" in line]
    lines.append(f"specs of {args.host}: {summary[-1].strip('= ') if summary else 'no summary'}")
    skipped = [line for line in specs.stdout.splitlines() if line.startswith("SKIPPED")]
    lines += [f"  {line}" for line in skipped]
    if specs.returncode != 0:
        print("make test-arm64: specs failed (above)", file=sys.stderr)
        return 1

    stage(4, f"the rebuild test (tests/integration/test_rebuild.py) with {args.host} on arm64", times)
    rebuild = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=", "-q",
                              "-x", "tests/integration/test_rebuild.py"], cwd=REPO, text=True, timeout=3600)
    report = state_root(REPO) / "rebuild-report.txt"
    lines.append("rebuild report:")
    lines += [f"  {line}" for line in (report.read_text().splitlines() if report.exists() else ["(none written)"])]
    stamps = sorted(times.items()) + [(STAGES + 1, time.monotonic())]
    split = ", ".join(f"stage {n} {int(stamps[i + 1][1] - t)}s" for i, (n, t) in enumerate(stamps[:-1]))
    lines.append(f"wall time: {time.monotonic() - T0:.0f}s ({split})")
    lines.append("")
    lines.append("What the emulated host does not do (TEST_FLEET['arm64_data'], applied to it only):")
    lines += waivers_table(test_fleet.get("arm64_data", {}))
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines), flush=True)
    if not args.keep:
        os.environ.pop(ARM64_ENV)
        print(f"\n==> [{time.monotonic() - T0:6.1f}s] {args.host} back to amd64 (fleet-up starts it afresh; "
              "a converge then gives it its role)", flush=True)
        testfleet.up()
    print(f"\ntest-arm64: {'passed' if rebuild.returncode == 0 else 'FAILED'} in {time.monotonic() - T0:.0f}s "
          f"(report {REPORT.relative_to(REPO)})", flush=True)
    return rebuild.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
