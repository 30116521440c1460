"""fleet.commands.llm_check against the ollama and vllm stand-ins on 127.0.0.1: what answered, and a
clear LLMCheckError (never a traceback or the API key) for each way it can fail."""

from __future__ import annotations

import pytest

from fleet.commands.llm_check import LLMCheckError, chat_completion, first_tokens
from standins.test_llm_standins import API_KEY, Ollama, Vllm, free_port, spawn  # noqa: F401 (fixture)


@pytest.fixture
def ollama_server(tmp_path, spawn):  # noqa: F811
    o = Ollama(tmp_path, spawn)
    o.start()
    assert o.cli("pull", "qwen2.5:7b").returncode == 0
    return o


def test_ollama_completion_reports_model_latency_and_first_tokens(ollama_server):
    result = chat_completion(ollama_server.server.url, "qwen2.5:7b", prompt="hello there fleet")
    assert result.model == "qwen2.5:7b"
    assert 0 < result.latency_s < 10
    assert result.first_tokens == "Stand-in reply from qwen2.5:7b: hello there fleet"


def test_model_not_pulled_is_named(ollama_server):
    with pytest.raises(LLMCheckError, match=r'HTTP 404: model "llama3:latest" not found|HTTP 404: .*llama3'):
        chat_completion(ollama_server.server.url, "llama3:latest", where="jetson-prime (ollama)")


def test_stopped_engine_is_a_clear_error(ollama_server):
    url = ollama_server.server.url
    ollama_server.server.stop()
    with pytest.raises(LLMCheckError, match=r"^jetson-prime \(ollama\): cannot connect .* Is the engine running"):
        chat_completion(url, "qwen2.5:7b", where="jetson-prime (ollama)")


def test_nothing_listening_is_a_clear_error():
    with pytest.raises(LLMCheckError, match="cannot connect"):
        chat_completion(f"http://127.0.0.1:{free_port()}", "m", timeout=5)


def test_vllm_needs_the_key_and_never_shows_it(tmp_path, spawn):  # noqa: F811
    vllm = Vllm(tmp_path, spawn)
    server = vllm.start("--served-model-name", "qwen2.5:7b",
                        env={**vllm.env, "VLLM_API_KEY": API_KEY})
    ok = chat_completion(server.url, "qwen2.5:7b", api_key=API_KEY, prompt="hi")
    assert ok.model == "qwen2.5:7b" and ok.first_tokens.startswith("Stand-in vLLM reply")
    with pytest.raises(LLMCheckError, match="HTTP 401: Unauthorized") as refused:
        chat_completion(server.url, "qwen2.5:7b", api_key="wrong-key")
    assert "wrong-key" not in str(refused.value)
    with pytest.raises(LLMCheckError, match="a newline") as bad:
        chat_completion(server.url, "qwen2.5:7b", api_key=API_KEY + "\n")
    assert API_KEY not in str(bad.value)


def test_first_tokens():
    assert first_tokens("one two three", 2) == "one two ..."
    assert first_tokens("one two", 2) == "one two"
