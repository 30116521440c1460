"""daemon.json: the model, and the checker that stands in for `dockerd --validate` on
engines older than Docker 23 (Debian 12's docker.io)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploys.docker import DEFAULTS, daemon_config, render_daemon_json

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "templates/docker/usr/local/lib/fleet/check-daemon-json"


class Data(dict):
    __getattr__ = dict.__getitem__


def data(**over):
    return Data({**DEFAULTS, "docker_address_pools": [{"base": "172.30.0.0/16", "size": 24}], **over})


def check(tmp_path, config) -> subprocess.CompletedProcess:
    path = tmp_path / "daemon.json"
    path.write_text(config if isinstance(config, str) else render_daemon_json(config))
    return subprocess.run([sys.executable, str(CHECKER), str(path)], capture_output=True, text=True)


def test_model_publishes_on_loopback_and_rotates_logs():
    config = daemon_config(data(), ("pis", "agents"))
    assert config["ip"] == "127.0.0.1" and config["live-restore"] is True
    assert config["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert "runtimes" not in config


def test_gpu_hosts_get_the_nvidia_runtime_in_the_same_file():
    config = daemon_config(data(), ("gpu", "llm"))
    assert config["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "args": []}}


def test_model_passes_the_checker(tmp_path):
    run = check(tmp_path, daemon_config(data(), ("pis",)))
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("extra,message", [
    ({"live-restore": "maybe"}, "live-restore: must be true or false"),
    ({"not-a-setting": 1}, "not-a-setting: is not a daemon.json setting"),
    ({"ip": "localhost"}, "ip: 'localhost' is not an IP address"),
    ({"log-level": "loud"}, "log-level: must be one of"),
    ({"default-address-pools": [{"base": "172.30.0.0/16"}]}, "default-address-pools[0]"),
    ({"runtimes": {"nvidia": {"path": "/nonexistent/runtime"}}}, "runtimes.nvidia.path"),
])
def test_checker_rejects(tmp_path, extra, message):
    run = check(tmp_path, daemon_config(data(docker_daemon_extra=extra), ("pis",)))
    assert run.returncode == 1 and message in run.stderr


def test_checker_rejects_broken_json(tmp_path):
    run = check(tmp_path, '{"ip": "127.0.0.1",')
    assert run.returncode == 1 and "not valid JSON" in run.stderr


def test_rendering_is_stable():
    a = render_daemon_json(daemon_config(data(), ("pis",)))
    assert a == render_daemon_json(json.loads(a))
