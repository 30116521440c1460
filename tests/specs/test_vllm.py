"""vLLM (llm hosts whose llm_engine is "vllm"): the served model and its cache, and the API
key kept off every command line. Skipped ("got empty parameter set") while the llm host
runs Ollama; tests/integration/test_llm.py converges it with vLLM and runs these."""

import json
import shlex

from deploys.vllm import API_KEY, ENV_FILE
from fleet.converge.keys import secret
from specs.conftest import fleet_services
from specs.test_llm import api_key, container


def test_llm04_vllm_model_served_and_cached(fh):
    """llm-04: vLLM serves the model under its served name, and the model sits in the cache volume."""
    port = fleet_services().bind("llm", fh.name, "tailnet").port
    header = shlex.quote(f"Authorization: Bearer {api_key(fh)}")
    models = json.loads(fh.host.check_output(
        f"curl -fsS --max-time 10 -H {header} http://{fh.tailnet_address}:{port}/v1/models"))
    assert [m["id"] for m in models["data"]] == [fh.data["vllm_served_model_name"]]
    volume = fh.host.check_output(f"docker volume inspect --format '{{{{.Mountpoint}}}}' {fh.data['vllm_cache_volume']}")
    cached = f"{volume}/hub/models--{fh.data['vllm_model'].replace('/', '--')}"
    assert fh.host.file(cached).is_directory, f"{fh.name}: {cached} is missing"


def test_llm05_vllm_key_from_env_file_only(fh):
    """llm-05: vLLM's API key reaches it through the env file, never its command line, and
    requests without it are refused."""
    running = container(fh)
    key = secret(API_KEY)
    argv = [running["Path"], *running["Args"]]
    assert key not in " ".join(argv), f"{fh.name}: the API key is on vLLM's command line"
    cmdline = fh.host.check_output(f"tr '\\0' ' ' < /proc/{running['State']['Pid']}/cmdline")
    assert "serve" in cmdline and key not in cmdline, f"{fh.name}: the API key is in the process's cmdline"
    assert fh.host.file(ENV_FILE).mode == 0o600
    port = fleet_services().bind("llm", fh.name, "tailnet").port
    code = fh.host.check_output(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 http://{fh.tailnet_address}:{port}/v1/models")
    assert code == "401", f"{fh.name}: an unauthenticated request got HTTP {code}"
