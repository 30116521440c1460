"""LLM endpoint baseline (llm group): the engine data names serves the port map's `llm` port
on the tailnet address only, with its models, and answers a chat completion that another
fleet host sends over the tailnet. The other engine is stopped and holds no port."""

import json
import shlex

import pytest

from deploys.ollama import model_name
from fleet.llm_check import check_host, default_model
from fleet.secrets import VLLM_API_KEY, VLLM_ENV_FILE, secret
from specs.conftest import WILDCARDS, fleet_entries, listening

# The guide's client: a Pi calling the Jetson over the tailnet ("Calling LLM from Pi").
CLIENT = "pi5-alpha"
OLLAMA_DEFAULT_PORT = 11434

llm_hosts = pytest.mark.fleet_hosts(lambda groups, data: "llm" in groups)
ollama_hosts = pytest.mark.fleet_hosts(lambda groups, data: "llm" in groups and data["llm_engine"] == "ollama")
vllm_hosts = pytest.mark.fleet_hosts(lambda groups, data: "llm" in groups and data["llm_engine"] == "vllm")


def container(fh) -> dict | None:
    out = fh.host.run(f"docker container inspect {shlex.quote(fh.data['vllm_container'])}")
    return json.loads(out.stdout)[0] if out.rc == 0 else None


def api_key(fh) -> str | None:
    return secret(VLLM_API_KEY) if fh.data["llm_engine"] == "vllm" else None


@llm_hosts
def test_llm01_engine_running(fh):
    """llm-01: the engine in data runs (enabled / restart unless-stopped); the other one is stopped."""
    ollama = fh.host.service("ollama.service")
    running = container(fh)
    if fh.data["llm_engine"] == "ollama":
        assert ollama.is_running and ollama.is_enabled, f"{fh.name}: ollama.service is not enabled and running"
        assert running is None, f"{fh.name}: the vLLM container still exists"
    else:
        assert running is not None and running["State"]["Running"], f"{fh.name}: the vLLM container is not running"
        assert running["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert running["HostConfig"]["Runtime"] == "nvidia"
        assert not ollama.is_running and not ollama.is_enabled, f"{fh.name}: ollama.service still runs or is enabled"


@llm_hosts
def test_llm02_listens_on_tailnet_only(fh):
    """llm-02: the LLM port is bound on the tailnet address only; nothing on Ollama's default
    port; neither port on a wildcard."""
    port = fh.data["fleet_services"]["llm"]["port"]
    sockets = listening(fh, "tcp")
    assert [a for a, p in sockets if p == port] == [fh.tailnet_address], \
        f"{fh.name}: port {port} listeners: {[a for a, p in sockets if p == port]}"
    assert not [a for a, p in sockets if p == OLLAMA_DEFAULT_PORT], f"{fh.name}: something listens on 11434"
    assert not [(a, p) for a, p in sockets if p in (port, OLLAMA_DEFAULT_PORT) and a in WILDCARDS]
    if fh.data["llm_engine"] == "vllm":
        published = fh.host.check_output(f"docker port {shlex.quote(fh.data['vllm_container'])}")
        assert published.split() == ["8000/tcp", "->", f"{fh.tailnet_address}:{port}"], published


@llm_hosts
def test_llm03_chat_completion_from_a_pi(fh):
    """llm-03: a chat completion sent from pi5-alpha over the tailnet gets the model's reply."""
    result = check_host(fh.name, fleet_entries(), fh.data, via=CLIENT, api_key=api_key(fh), timeout=60)
    assert result.model == default_model(fh.data)
    assert result.first_tokens, f"{fh.name}: empty reply"


@ollama_hosts
def test_llm04_ollama_models_present(fh):
    """llm-04: every model in ollama_models is pulled."""
    port = fh.data["fleet_services"]["llm"]["port"]
    tags = json.loads(fh.host.check_output(f"curl -fsS --max-time 10 http://{fh.tailnet_address}:{port}/api/tags"))
    present = {m["name"] for m in tags["models"]}
    missing = [m for m in fh.data["ollama_models"] if model_name(m) not in present]
    assert not missing, f"{fh.name}: models not pulled: {missing}"


@vllm_hosts
def test_llm04_vllm_model_served_and_cached(fh):
    """llm-04: vLLM serves the model under its served name, and the model sits in the cache volume."""
    port = fh.data["fleet_services"]["llm"]["port"]
    header = shlex.quote(f"Authorization: Bearer {api_key(fh)}")
    models = json.loads(fh.host.check_output(
        f"curl -fsS --max-time 10 -H {header} http://{fh.tailnet_address}:{port}/v1/models"))
    assert [m["id"] for m in models["data"]] == [fh.data["vllm_served_model_name"]]
    volume = fh.host.check_output(f"docker volume inspect --format '{{{{.Mountpoint}}}}' {fh.data['vllm_cache_volume']}")
    cached = f"{volume}/hub/models--{fh.data['vllm_model'].replace('/', '--')}"
    assert fh.host.file(cached).is_directory, f"{fh.name}: {cached} is missing"


@ollama_hosts
def test_llm05_ollama_cli_for_the_admin(fh):
    """llm-05: the admin user's `ollama list` reaches the server on the tailnet address."""
    out = fh.user_host.run("ollama list")
    assert out.rc == 0, f"{fh.name}: ollama list: {out.stderr}"
    for model in fh.data["ollama_models"]:
        assert model_name(model) in out.stdout


@ollama_hosts
def test_llm06_ollama_bound_by_override_after_tailscaled(fh):
    """llm-06: the unit starts after tailscaled and the override sets OLLAMA_HOST to the tailnet address."""
    port = fh.data["fleet_services"]["llm"]["port"]
    show = fh.host.check_output("systemctl show -p After -p Environment ollama.service")
    assert "tailscaled.service" in show
    assert f"OLLAMA_HOST={fh.tailnet_address}:{port}" in show
    assert fh.host.sysctl("net.ipv4.ip_nonlocal_bind") == 1, "the bind must not wait for tailscale0"


@vllm_hosts
def test_llm05_vllm_key_from_env_file_only(fh):
    """llm-05: vLLM's API key reaches it through the env file, never its command line, and
    requests without it are refused."""
    running = container(fh)
    key = secret(VLLM_API_KEY)
    argv = [running["Path"], *running["Args"]]
    assert key not in " ".join(argv), f"{fh.name}: the API key is on vLLM's command line"
    cmdline = fh.host.check_output(f"tr '\\0' ' ' < /proc/{running['State']['Pid']}/cmdline")
    assert "serve" in cmdline and key not in cmdline, f"{fh.name}: the API key is in the process's cmdline"
    assert fh.host.file(VLLM_ENV_FILE).mode == 0o600
    port = fh.data["fleet_services"]["llm"]["port"]
    code = fh.host.check_output(
        f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 http://{fh.tailnet_address}:{port}/v1/models")
    assert code == "401", f"{fh.name}: an unauthenticated request got HTTP {code}"
