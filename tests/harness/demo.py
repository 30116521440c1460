"""`make demo`: the whole fleet as local Docker test hosts, with each stage shown as it runs.

    python tests/harness/demo.py

Stages: (1) the engine, the base image, the mirror and the hosts (testfleet up, which logs
each step with its elapsed time, debootstrap's phases included); (2) the converge, one line
per operation as it starts (the full pyinfra log goes to .state/testfleet/converge.log);
(3) the specs, pytest's progress as it goes; (4) the spec results per host. Each stage's
header and the closing line carry the time since the start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `harness` importable

from harness import testfleet  # noqa: E402

REPO = testfleet.REPO
T0 = time.monotonic()


def stage(number: int, what: str) -> None:
    print(f"\n==> [{time.monotonic() - T0:6.1f}s] stage {number}/4: {what}", flush=True)


def main() -> int:
    os.environ["FLEET_TARGET"] = "test"
    stage(1, "Docker engine, base image, package mirror, 7 test hosts")
    testfleet.up()
    stage(2, "converge every host (pyinfra inventory.py deploys/site.py)")
    result = testfleet.converge([], on_line=testfleet.progress_printer())
    print(f"converge: {result['changed']} changed operation(s), {result['errors']} error(s), "
          f"{result['seconds']}s (full log {result['log']})", flush=True)
    if result["returncode"] != 0:
        print("the converge failed: see the log above", file=sys.stderr)
        return result["returncode"] or 1
    stage(3, "the specs on every host (tests/specs)")
    junit = REPO / ".state" / "junit-demo.xml"
    specs = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=",
                            "-q", "-n", "4", f"--junitxml={junit}", "tests/specs"], cwd=REPO)
    stage(4, "spec results per host (make fleet-down removes the hosts)")
    subprocess.run([sys.executable, "tests/report.py", "--per-host", str(junit)], cwd=REPO, check=False)
    print(f"\ndemo: {'passed' if specs.returncode == 0 else 'specs failed'} in {time.monotonic() - T0:.0f}s",
          flush=True)
    return specs.returncode


if __name__ == "__main__":
    sys.exit(main())
