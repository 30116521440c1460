"""LLM inference (llm group): the fleet's OpenAI-compatible endpoint on the port map's `llm`
port, served by the engine host data names (`llm_engine`: "ollama" or "vllm").

Switching engines is a data change: the engine no longer wanted is stopped and disabled
first (its port freed), then the wanted one is converged. `python -m fleet.llm_check`
verifies the endpoint with a chat completion.
"""

from pyinfra import host
from pyinfra.api import OperationError, deploy

from deploys import ollama, vllm

ENGINES = {"ollama": ollama, "vllm": vllm}

DEFAULTS = {
    # Which engine serves the LLM port: "ollama" (systemd service) or "vllm" (container).
    "llm_engine": "ollama",
}


# Both engines' defaults: the one being retired reads its own names (container, unit).
@deploy("LLM engine", data_defaults={**ollama.DEFAULTS, **vllm.DEFAULTS, **DEFAULTS})
def llm():
    engine = host.data.llm_engine
    if engine not in ENGINES:
        raise OperationError(f"llm_engine {engine!r} is not an engine. Fix: use one of {', '.join(ENGINES)}.")
    for name, module in ENGINES.items():
        if name != engine:
            module.retire()
    getattr(ENGINES[engine], engine)()
