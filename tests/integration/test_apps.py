"""The app layer on the test fleet's pi5-alpha (web on 127.0.0.1:3000): a digest change
rolls with no failed request under load; a version that never gets healthy leaves the old
one serving and fails the run naming the app; `make rollback` goes back through the health
gate and holds; an image for another architecture is refused in one line. The stand-in
images are tests/mirror/app_release.py's. The fleet is put back and settles."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import testfleet
from integration.conftest import REPO, docker_exec, run_specs, settle

HOST = "pi5-alpha"
APP = "web"
URL = "http://127.0.0.1:3000/health"  # web's bind address (the port map: loopback)
RELEASES = json.loads((testfleet.STATE / "mirror" / "apps" / "releases.json").read_text())
BUILT = json.loads((testfleet.STATE / "mirror" / "built-data.json").read_text())["apps_releases"]

# Requests from inside the host, one after another, until a stop file appears: bounded to
# 1500 requests and 150 s. Prints one "code version" line per request.
LOOP = r"""
import json, os, time, urllib.request, urllib.error
deadline, out = time.monotonic() + 150, []
for _ in range(1500):
    if os.path.exists("/tmp/stop-loop") or time.monotonic() > deadline:
        break
    try:
        with urllib.request.urlopen("%s", timeout=5) as r:
            out.append(f"{r.status} {json.loads(r.read())['version']}")
    except urllib.error.HTTPError as e:
        out.append(f"{e.code} -")
    except Exception as e:
        out.append(f"ERR {type(e).__name__}")
    time.sleep(0.02)
print("\n".join(out))
""" % URL


def releases(web: str) -> list[str]:
    data = dict(BUILT)
    data[APP] = RELEASES[web]
    return ["--data", f"apps_releases={json.dumps(data)}"]


def converge(web: str, log: str) -> dict:
    return testfleet.converge(["--limit", HOST, *releases(web)], log_name=log)


def version() -> str:
    return json.loads(docker_exec(HOST, "curl", "-fsS", "--max-time", "5", URL).stdout)["version"]


def containers() -> list[str]:
    return docker_exec(HOST, "docker", "ps", "-a", "--filter", f"label=fleet.app={APP}",
                       "--format", "{{.Names}}").stdout.split()


def test_digest_change_rolls_with_no_failed_request():
    assert version() == "1.0.0"
    before = containers()
    docker_exec(HOST, "rm", "-f", "/tmp/stop-loop")
    loop = subprocess.Popen(["docker", "exec", HOST, "python3", "-c", LOOP], stdout=subprocess.PIPE, text=True)
    try:
        run = converge("2.0.0", log="converge-apps-rollout")
    finally:
        docker_exec(HOST, "sh", "-c", "sleep 2; touch /tmp/stop-loop")
        out, _ = loop.communicate(timeout=180)
    assert run["returncode"] == 0, run["output"][-4000:]
    answers = out.splitlines()
    codes = {line.split()[0] for line in answers}
    seen = [line.split()[1] for line in answers]
    print(f"{len(answers)} requests during the rollout: codes {sorted(codes)}; "
          f"{seen.count('1.0.0')} answered by 1.0.0, then {seen.count('2.0.0')} by 2.0.0")
    assert len(answers) >= 200
    assert codes == {"200"}, [line for line in answers if not line.startswith("200")][:5]
    # nginx's graceful reload lets its old workers finish what they accepted, so for a
    # moment both versions answer; every answer after the run is the new one
    assert seen[0] == "1.0.0" and seen[-1] == "2.0.0"
    assert set(seen[-20:]) == {"2.0.0"}
    after = containers()
    assert len(after) == 1 and after != before, (before, after)  # the old container is gone
    specs = run_specs("app0", HOST, {"apps_releases": json.loads(releases("2.0.0")[1].split("=", 1)[1])})
    assert specs.returncode == 0, specs.stdout[-3000:]


def test_unhealthy_version_leaves_the_old_one_serving():
    assert version() == "2.0.0"
    before = containers()
    run = converge("2.0.1-broken", log="converge-apps-broken")
    assert run["returncode"] != 0
    assert "app web: the new container" in run["output"] and "did not answer /health with 200" in run["output"]
    print(next(line.strip() for line in run["output"].splitlines() if "app web: the new container" in line))
    assert version() == "2.0.0" and containers() == before
    again = converge("2.0.0", log="converge-apps-good-again")
    assert again["returncode"] == 0, again["output"][-4000:]
    assert version() == "2.0.0"


def test_rollback_goes_back_through_the_gate_and_holds():
    assert version() == "2.0.0"
    proc = subprocess.run(["make", "-s", "rollback", f"APP={APP}", f"HOST={HOST}"], cwd=REPO, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "FLEET_TARGET": "test"})
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "healthy; switching the proxy" in proc.stdout
    assert version() == "1.0.0"
    # the data still names 2.0.0: the rollback holds
    held = converge("2.0.0", log="converge-apps-held")
    assert held["returncode"] == 0 and held["changed"] == 0, held["output"][-3000:]
    assert version() == "1.0.0"
    # nothing older than 1.0.0 is kept: a second rollback is refused, 1.0.0 keeps serving
    again = subprocess.run([sys.executable, "-m", "fleet", "rollback", APP, "--host", HOST], cwd=REPO, text=True,
                           capture_output=True, timeout=300, env={**os.environ, "FLEET_TARGET": "test"})
    assert again.returncode != 0 and "no image older than" in again.stderr, again.stderr
    assert version() == "1.0.0"


def test_image_for_another_architecture_is_refused_in_one_line():
    run = converge("1.0.0-arm64", log="converge-apps-arm64")
    assert run["returncode"] != 0
    line = next(line.strip() for line in run["output"].splitlines() if "is built for linux/arm64" in line)
    print(line)
    assert "this host is linux/amd64" in line and "Fix:" in line
    assert version() == "1.0.0"


def test_fleet_settles():
    # the inventory's release (1.0.0, already serving since the rollback) is recorded as the
    # newest image again; then nothing is left to change anywhere
    back = testfleet.converge(["--limit", HOST], log_name="converge-apps-back")
    assert back["returncode"] == 0, back["output"][-3000:]
    settle("converge-apps-settle")
    assert version() == "1.0.0"
    assert docker_exec(HOST, "/usr/local/lib/fleet/apps/fleet-app", "history", APP).stdout.split()[-1] \
        == "sha256:" + BUILT[APP]["image"].rsplit(":", 1)[1]
