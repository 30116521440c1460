"""The LLM deploys' pure parts: Ollama asset choice and names, the vLLM container's
arguments (tailnet-only port, env file, no secret), and the stand-in release builder."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from deploys import ollama, vllm
from fleet.converge import docker
from fleet.converge.services import Endpoint
from mirror import llm_release


def test_assets_follow_upstream_names():
    assert ollama.assets("arm64", "jetpack6") == ["ollama-linux-arm64.tar.zst", "ollama-linux-arm64-jetpack6.tar.zst"]
    assert ollama.assets("amd64", None) == ["ollama-linux-amd64.tar.zst"]
    assert ollama.DEFAULTS["ollama_jetpack_addons"]["R36"] == "jetpack6"


@pytest.mark.parametrize("line, release", [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", "R36"),
    ("# R35 (release), REVISION: 5.0", "R35"),
    ("", None),
])
def test_l4t_release_fact(line, release):
    assert ollama.L4TRelease().process([line]) == release


def test_model_names_get_ollamas_default_tag():
    assert ollama.model_name("qwen2.5:7b") == "qwen2.5:7b"
    assert ollama.model_name("nomic-embed-text") == "nomic-embed-text:latest"
    assert ollama.model_name("acme/tool") == "acme/tool:latest"


def vllm_data(**over):
    return SimpleNamespace(**{**vllm.DEFAULTS, **over})


PUBLISH = Endpoint("100.100.0.10", 8080)


def test_vllm_publishes_on_the_tailnet_only_and_reads_the_key_from_a_file():
    args = vllm.run_arguments(vllm_data(), PUBLISH)
    assert args[args.index("--publish") + 1] == "100.100.0.10:8080:8000"
    assert args[args.index("--env-file") + 1] == vllm.ENV_FILE
    assert args[args.index("--runtime") + 1] == "nvidia"
    assert args[args.index("--restart") + 1] == "unless-stopped"
    assert args[args.index("--volume") + 1] == "vllm-cache:/root/.cache/huggingface"
    assert not any("api-key" in a or "API_KEY" in a for a in args)
    image = args.index(vllm.DEFAULTS["vllm_image"])
    assert args[image + 1:image + 4] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ"]
    assert args[args.index("--max-model-len") + 1] == "4096"


def test_vllm_settings_change_changes_the_arguments():
    assert vllm.run_arguments(vllm_data(), PUBLISH) != vllm.run_arguments(vllm_data(vllm_max_model_len=2048), PUBLISH)
    assert vllm.run_arguments(vllm_data(), PUBLISH) == vllm.run_arguments(vllm_data(), PUBLISH)


def test_container_fact_parses_labels():
    fact = docker.DockerContainer()
    assert fact.process(['true "2026-12-02T13:05:01.5Z" {"fleet.settings":"abc"}']) == {
        "running": True, "created": 1796216701.5, "settings": "abc"}
    assert fact.process(['false "2026-12-02T13:05:01Z" null']) == {
        "running": False, "created": 1796216701.0, "settings": None}
    assert fact.process([""]) is None


def test_ollama_release_is_deterministic_and_distinct_per_asset():
    first, second = llm_release.ollama_assets("1.2.3"), llm_release.ollama_assets("1.2.3")
    assert first == second
    assert len({hashlib.sha256(v).digest() for v in first.values()}) == len(first)
    assert "ollama-linux-arm64-jetpack6.tar.zst" in first


@pytest.mark.skipif(not shutil.which("zstd"), reason="zstd is not installed (.ci/run installs it)")
def test_ollama_bundle_unpacks_with_real_zstd_and_tar(tmp_path):
    for name, data in llm_release.ollama_assets("1.2.3").items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "prefix"
    out.mkdir()
    for name in ("ollama-linux-amd64.tar.zst", "ollama-linux-amd64-jetpack6.tar.zst"):
        subprocess.run(["tar", "--zstd", "-xf", str(tmp_path / name), "-C", str(out)], check=True)
    cli = (out / "bin" / "ollama").read_text()
    assert cli.splitlines()[1].startswith("# STAND-IN for tests") and 'VERSION = "1.2.3"' in cli
    assert (out / "lib" / "ollama" / "cuda_jetpack6" / "README.stand-in").exists()


def test_zstd_frames_span_blocks():
    data = bytes(range(256)) * 1500  # > one 128 KiB block
    frame = llm_release.zstd_stored(data)
    assert frame[:4] == b"\x28\xb5\x2f\xfd" and len(frame) == 4 + 1 + 8 + len(data) + 3 * 3
