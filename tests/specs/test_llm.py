"""LLM endpoint baseline (llm group): the engine data names serves the port map's `llm` port
on the tailnet address only, with its models, and answers a chat completion that another
fleet host sends over the tailnet. The other engine is stopped and holds no port."""

import json
import shlex

from deploys.vllm import API_KEY
from fleet.commands.llm_check import check_host, default_model
from fleet.converge.keys import secret
from specs.conftest import WILDCARDS, fleet_entries, fleet_services, listening

# The guide's client: a Pi calling the Jetson over the tailnet ("Calling LLM from Pi").
CLIENT = "pi5-alpha"
OLLAMA_DEFAULT_PORT = 11434


def container(fh) -> dict | None:
    out = fh.host.run(f"docker container inspect {shlex.quote(fh.data['vllm_container'])}")
    return json.loads(out.stdout)[0] if out.rc == 0 else None


def api_key(fh) -> str | None:
    return secret(API_KEY) if fh.data["llm_engine"] == "vllm" else None


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


def test_llm02_listens_on_tailnet_only(fh):
    """llm-02: the LLM port is bound on the tailnet address only; nothing on Ollama's default
    port; neither port on a wildcard."""
    port = fleet_services().bind("llm", fh.name, "tailnet").port
    sockets = listening(fh, "tcp")
    assert [a for a, p in sockets if p == port] == [fh.tailnet_address], \
        f"{fh.name}: port {port} listeners: {[a for a, p in sockets if p == port]}"
    assert not [a for a, p in sockets if p == OLLAMA_DEFAULT_PORT], f"{fh.name}: something listens on 11434"
    assert not [(a, p) for a, p in sockets if p in (port, OLLAMA_DEFAULT_PORT) and a in WILDCARDS]
    if fh.data["llm_engine"] == "vllm":
        published = fh.host.check_output(f"docker port {shlex.quote(fh.data['vllm_container'])}")
        assert published.split() == ["8000/tcp", "->", f"{fh.tailnet_address}:{port}"], published


def test_llm03_chat_completion_from_a_pi(fh):
    """llm-03: a chat completion sent from pi5-alpha over the tailnet gets the model's reply."""
    endpoint = fleet_services().reach("llm", server=fh.name)
    result = check_host(fh.name, fleet_entries(), fh.data, endpoint, via=CLIENT, api_key=api_key(fh), timeout=60)
    assert result.model == default_model(fh.data)
    assert result.first_tokens, f"{fh.name}: empty reply"
