"""Ollama (llm hosts whose llm_engine is "ollama"): its models, the admin's CLI, and the
bind to the tailnet address that does not wait for tailscale0."""

import json

from deploys.ollama import model_name
from specs.conftest import fleet_services


def test_llm04_ollama_models_present(fh):
    """llm-04: every model in ollama_models is pulled."""
    port = fleet_services().bind("llm", fh.name, "tailnet").port
    tags = json.loads(fh.host.check_output(f"curl -fsS --max-time 10 http://{fh.tailnet_address}:{port}/api/tags"))
    present = {m["name"] for m in tags["models"]}
    missing = [m for m in fh.data["ollama_models"] if model_name(m) not in present]
    assert not missing, f"{fh.name}: models not pulled: {missing}"


def test_llm05_ollama_cli_for_the_admin(fh):
    """llm-05: the admin user's `ollama list` reaches the server on the tailnet address."""
    out = fh.user_host.run("ollama list")
    assert out.rc == 0, f"{fh.name}: ollama list: {out.stderr}"
    for model in fh.data["ollama_models"]:
        assert model_name(model) in out.stdout


def test_llm06_ollama_bound_by_override_after_tailscaled(fh):
    """llm-06: the unit starts after tailscaled and the override sets OLLAMA_HOST to the tailnet address."""
    port = fleet_services().bind("llm", fh.name, "tailnet").port
    show = fh.host.check_output("systemctl show -p After -p Environment ollama.service")
    assert "tailscaled.service" in show
    assert f"OLLAMA_HOST={fh.tailnet_address}:{port}" in show
    assert fh.host.sysctl("net.ipv4.ip_nonlocal_bind") == 1, "the bind must not wait for tailscale0"
