"""`make demo`: the whole fleet as local Docker test hosts, with each stage shown as it runs.

    python3 tests/harness/demo.py [VENV]      (VENV: the virtualenv `make setup` makes, .venv)

It starts on the system's python3, before the virtualenv exists: stage 1 runs `make setup`
(the locked dependencies, ~40 s of pip) in the background while it starts the Docker engine
and builds the base image (harness/image.py needs only the standard library). Once both are
done it carries on in the virtualenv's python, the same process (exec), to bring up the
mirror and the hosts (testfleet up). Then (2) the converge, one line per operation as it
starts (the full pyinfra log goes to .state/testfleet/converge.log); (3) the specs, pytest's
progress as it goes; (4) the spec results per host. Each stage's header and the closing line
carry the time since the start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# run as a script by either python: `harness` and (before the virtualenv exists) `fleet` importable
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from fleet.converge.paths import state_root  # noqa: E402 (standard library only)
from harness import image  # noqa: E402 (standard library only)

T0 = image.T0  # the process that carries on in the virtualenv counts from the same start


def stage(number: int, what: str) -> None:
    print(f"\n==> [{time.monotonic() - T0:6.1f}s] stage {number}/4: {what}", flush=True)


def prepare(venv: Path) -> int:
    """Stage 1's first half, on the system's python3: the virtualenv beside the engine and
    the base image. Returns make setup's exit status."""
    stage(1, "virtualenv (make setup) beside the Docker engine and base image; package mirror, 7 test hosts")
    log = image.STATE / "setup.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []

    def start_setup() -> None:
        image.log(f"make setup: creating {venv} in the background (log: {log})")
        with open(log, "wb") as out:
            # its own process group, so that a failed image build or Ctrl-C stops pip too, not make alone
            started.append(subprocess.Popen(["make", "-C", str(REPO), "setup", f"VENV={venv}"], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True))

    # pip's ~40 s runs beside apt installing docker.io and mmdebstrap where they are missing
    # (started once the package lists are fresh: setup's `apt-get download` reads them), then
    # beside the engine's start and the image build
    try:
        image.ensure_tools(updated=start_setup)
        image.ensure_engine()
        image.ensure_image()
        setup = started[0]
        if setup.poll() is None:
            image.log("base image ready; waiting for make setup")
        status = setup.wait()
    except BaseException:
        for setup in started:
            os.killpg(setup.pid, signal.SIGTERM)
            setup.wait()
        raise
    if status:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        print(f"demo: make setup failed (exit {status}); its log is {log}", file=sys.stderr)
        return status
    image.log("make setup: done")
    return 0


def main(argv: list[str]) -> int:
    venv = Path(argv[0]) if argv else REPO / ".venv"
    python = (venv if venv.is_absolute() else REPO / venv) / "bin" / "python"
    # the system's python3 prepares the virtualenv; its own python carries on (the exec below)
    if Path(sys.prefix).resolve() != python.parent.parent.resolve():
        status = prepare(venv)
        if status:
            return status
        os.environ[image.T0_ENV] = repr(T0)
        os.execv(python, [str(python), __file__, *argv])

    from harness import testfleet

    os.environ["FLEET_TARGET"] = "test"
    testfleet.up()
    stage(2, "converge every host (pyinfra inventory.py deploys/site.py)")
    result = testfleet.converge([], on_line=testfleet.progress_printer())
    print(f"converge: {result['changed']} changed operation(s), {result['errors']} error(s), "
          f"{result['seconds']}s (full log {result['log']})", flush=True)
    if result["returncode"] != 0:
        print("the converge failed: see the log above", file=sys.stderr)
        return result["returncode"] or 1
    stage(3, "the specs on every host (tests/specs)")
    from fleet.commands.phase import SPEC_WORKERS  # in the virtualenv by now

    junit = state_root(REPO) / "junit-demo.xml"
    specs = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "testpaths=",
                            "-q", "-n", str(SPEC_WORKERS), f"--junitxml={junit}", "tests/specs"], cwd=REPO)
    stage(4, "spec results per host (make fleet-down removes the hosts)")
    subprocess.run([sys.executable, "tests/report.py", "--per-host", str(junit)], cwd=REPO, check=False)
    print(f"\ndemo: {'passed' if specs.returncode == 0 else 'specs failed'} in {time.monotonic() - T0:.0f}s",
          flush=True)
    return specs.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
