"""Benchmark the converge loop on the Docker test fleet; print figures and write JSON.

    python tests/harness/bench.py [--out bench.json] [--keep]

Measures: opening the demo vault (scrypt at its real cost, then decryption), fleet-up from no test hosts (the base image is built first and timed apart, so
a cached image does not hide or inflate the figure), the first converge, a no-op converge
(wall time and changed operations per host: all should be 0). Leaves no hosts behind
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `harness` importable

from fleet.converge import keys  # noqa: E402
from fleet.converge.vault import Vault, params_of  # noqa: E402
from fleet.preflight.inventory import select_vault  # noqa: E402
from harness import testfleet  # noqa: E402


def timed(fn):
    t0 = time.monotonic()
    value = fn()
    return round(time.monotonic() - t0, 1), value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python tests/harness/bench.py")
    parser.add_argument("--out", default="bench.json", help="where to write the figures")
    parser.add_argument("--keep", action="store_true", help="leave the test fleet up")
    args = parser.parse_args(argv)

    os.environ["FLEET_TARGET"] = "test"
    select_vault(testfleet.REPO, testfleet.load_inventory()[1])
    opens = []
    for _ in range(3):
        t0 = time.monotonic()
        Vault(keys.vault_path(), keys.passphrase()).load()
        opens.append(time.monotonic() - t0)
    vault_seconds = round(min(opens), 3)
    testfleet.ensure_engine()
    image_seconds, _ = timed(testfleet.ensure_image)
    testfleet.down()
    up_seconds, _ = timed(testfleet.up)
    first = testfleet.converge([], log_name="bench-first")
    noop = testfleet.converge([], log_name="bench-noop")
    if not args.keep:
        testfleet.down()

    failed = first["returncode"] != 0 or noop["returncode"] != 0
    figures = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "vault_open_seconds": vault_seconds,
        "vault_kdf": {"n": params_of(keys.vault_path()).n, "r": params_of(keys.vault_path()).r},
        "image_build_or_cache_seconds": image_seconds,
        "fleet_up_seconds": up_seconds,
        "first_converge_seconds": first["seconds"],
        "first_converge_changed": {h: c["changed"] for h, c in sorted(first["hosts"].items())},
        "noop_converge_seconds": noop["seconds"],
        "noop_converge_changed": {h: c["changed"] for h, c in sorted(noop["hosts"].items())},
        "errors": first["errors"] + noop["errors"],
    }
    with open(args.out, "w") as fh:
        json.dump(figures, fh, indent=2)

    print(f"vault open (scrypt + decrypt)    {vault_seconds:>7.3f} s  (best of 3)")
    print(f"base image (build or cache hit)  {image_seconds:>7.1f} s")
    print(f"fleet-up (7 hosts)               {up_seconds:>7.1f} s")
    print(f"first converge                   {first['seconds']:>7.1f} s")
    print(f"no-op converge                   {noop['seconds']:>7.1f} s")
    print(f"{'host':<18} {'first: changed ops':>18} {'no-op: changed ops':>19}")
    for host in sorted(first["hosts"]):
        print(f"{host:<18} {first['hosts'][host]['changed']:>18} "
              f"{noop['hosts'].get(host, {}).get('changed', '?'):>19}")
    print(f"figures written to {args.out}")
    if failed:
        print("a converge failed: see the logs in .state/testfleet/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
