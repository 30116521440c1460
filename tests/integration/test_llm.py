"""The LLM endpoint on the test fleet's jetson-prime: both engines converged (each followed
by a no-change converge and the llm specs), switching between them, the completion check
from pi5-alpha (and its clean failure with the engine stopped), models pulled once, and a
wrong Ollama checksum stopping the run before anything is installed. Each test puts the
fleet back (Ollama, the inventory's engine) and shows the converge settles."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import testfleet
from integration.conftest import REPO, docker_exec, run_specs, settle, wait_until

HOST = "jetson-prime"
CLIENT = "pi5-alpha"
VLLM = ["--data", 'llm_engine="vllm"']


def converge(*args: str, log: str) -> dict:
    run = testfleet.converge(["--limit", HOST, *args], log_name=log)
    assert run["returncode"] == 0, run["output"][-4000:]
    return run


def llm_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet", "llm-check", HOST, "--via", CLIENT, *args],
                          cwd=REPO, env={**os.environ, "FLEET_TARGET": "test"}, text=True,
                          capture_output=True, timeout=120)


def pulls() -> int:
    """How many pull requests the Ollama server has answered since it was installed."""
    log = docker_exec(HOST, "journalctl", "-u", "ollama.service", "-o", "cat", "--no-pager").stdout
    return log.count('"/api/pull"')


def listeners(port: int = 8080) -> str:
    return docker_exec(HOST, "ss", "-Htln", f"sport = :{port}").stdout


def serving() -> str | None:
    """Which engine holds the LLM port: "ollama", "vllm" or None. (ss cannot name the owner
    of another user's socket in a test host: it lacks CAP_SYS_PTRACE.)"""
    if "100.100.0.10:8080" not in listeners():
        return None
    if docker_exec(HOST, "systemctl", "is-active", "ollama.service", check=False).stdout.strip() == "active":
        return "ollama"
    published = docker_exec(HOST, "docker", "port", "vllm", check=False).stdout
    return "vllm" if "100.100.0.10:8080" in published else "unknown"


def container_id() -> str | None:
    out = docker_exec(HOST, "docker", "container", "inspect", "--format", "{{.Id}}", "vllm", check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def test_models_pulled_once_and_check_from_a_pi():
    before = pulls()
    assert before >= 1, "the first converge pulled the models"
    again = converge(log="converge-llm-noop")
    assert again["changed"] == 0, again["output"][-3000:]
    assert pulls() == before, "a converge with the models present pulled again"

    ok = llm_check()
    assert ok.returncode == 0, ok.stderr
    assert "LLM check OK: jetson-prime (ollama) http://100.100.0.10:8080 from pi5-alpha" in ok.stdout
    assert "model:        qwen2.5:7b" in ok.stdout and "first tokens: Stand-in reply" in ok.stdout
    print(ok.stdout)

    docker_exec(HOST, "systemctl", "stop", "ollama.service")
    try:
        failed = llm_check()
        print(failed.stderr)
        assert failed.returncode == 1
        assert failed.stderr.startswith("LLM check FAILED: jetson-prime (ollama) at http://100.100.0.10:8080 via pi5-alpha:")
        assert "pi5-alpha could not connect to 100.100.0.10:8080" in failed.stderr and "Connection refused" in failed.stderr
        assert "Traceback" not in failed.stderr and failed.stdout == ""
    finally:
        converge(log="converge-llm-restart")  # the converge starts it again
    assert serving() == "ollama"
    settle("converge-llm-check-settled")


def test_switch_to_vllm_and_back():
    pulled = pulls()
    first = converge(*VLLM, log="converge-vllm")
    assert first["changed"] > 0
    second = converge(*VLLM, log="converge-vllm-noop")
    assert second["changed"] == 0, second["output"][-3000:]
    assert serving() == "vllm"
    specs = run_specs("llm or sec", HOST, data={"llm_engine": "vllm"})
    assert specs.returncode == 0, specs.stdout[-4000:]
    print(specs.stdout.strip().splitlines()[-1])

    ok = llm_check("--engine", "vllm")
    assert ok.returncode == 0, ok.stderr
    assert "LLM check OK: jetson-prime (vllm)" in ok.stdout and "first tokens: Stand-in vLLM reply" in ok.stdout
    print(ok.stdout)

    # Recreated only when settings change; a changed setting recreates it, the cache stays.
    same = container_id()
    converge(*VLLM, log="converge-vllm-same")
    assert container_id() == same
    converge(*VLLM, "--data", "vllm_max_model_len=2048", log="converge-vllm-maxlen")
    recreated = container_id()
    assert recreated and recreated != same
    logs = docker_exec(HOST, "docker", "logs", "vllm").stdout
    assert "Using cached" in logs and "--max-model-len" not in logs

    # Stopped engine: the check fails cleanly; "unless-stopped" means the converge starts it.
    docker_exec(HOST, "docker", "stop", "vllm")
    failed = llm_check("--engine", "vllm")
    print(failed.stderr)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("LLM check FAILED: jetson-prime (vllm) at http://100.100.0.10:8080 via pi5-alpha:")
    restarted = converge(*VLLM, "--data", "vllm_max_model_len=2048", log="converge-vllm-start")
    assert restarted["changed"] == 1 and container_id() == recreated

    # Back to the inventory's engine: vLLM removed, Ollama serves the port, nothing pulled again.
    back = converge(log="converge-llm-back-to-ollama")
    assert back["changed"] > 0
    assert container_id() is None
    wait_until(lambda: serving() == "ollama", "ollama on the LLM port", timeout=30)
    assert docker_exec(HOST, "test", "-e", "/etc/fleet/vllm.env", check=False).returncode == 1
    assert pulls() == pulled
    specs = run_specs("llm or sec", HOST)
    assert specs.returncode == 0, specs.stdout[-4000:]
    settle("converge-llm-switch-settled")


OLLAMA_STATE = ["/opt/ollama", "/var/cache/fleet/ollama", "/etc/systemd/system/ollama.service",
                "/etc/systemd/system/ollama.service.d", "/usr/local/bin/ollama", "/var/lib/ollama"]


def test_wrong_ollama_checksum_installs_nothing():
    # A host that never had Ollama: remove everything the deploy made.
    docker_exec(HOST, "systemctl", "disable", "--now", "ollama.service")
    docker_exec(HOST, "rm", "-rf", *OLLAMA_STATE)
    docker_exec(HOST, "userdel", "ollama")
    docker_exec(HOST, "systemctl", "daemon-reload")
    try:
        data = json.loads((REPO / ".state/testfleet/mirror/built-data.json").read_text())["ollama_sha256"]
        wrong = {**data, "ollama-linux-amd64.tar.zst": "0" * 64}
        bad = testfleet.converge(["--limit", HOST, "--data", f"ollama_sha256={json.dumps(wrong)}"],
                                 log_name="converge-ollama-bad-checksum")
        assert bad["returncode"] != 0
        assert "checksum or download failed for http://100.100.0.250/ollama/v" in bad["output"]
        assert "Unpack Ollama" not in bad["output"].split("checksum or download failed", 1)[1]
        for path in OLLAMA_STATE:
            if path == "/var/cache/fleet/ollama":  # the download's directory may exist, empty
                files = docker_exec(HOST, "find", path, "-type", "f", check=False).stdout
                assert files == "", f"downloaded files kept: {files}"
            else:
                assert docker_exec(HOST, "test", "-e", path, check=False).returncode == 1, f"{path} exists"
        assert docker_exec(HOST, "id", "ollama", check=False).returncode != 0, "the ollama user was created"
        assert listeners() == ""
    finally:
        restored = converge(log="converge-ollama-restored")
    assert pulls() >= 1
    assert restored["changed"] > 0
    settle("converge-ollama-checksum-settled")
