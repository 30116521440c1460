"""LLM endpoint (llm group): the fleet's OpenAI-compatible endpoint on the port map's `llm`
service, served by the engine data names (`llm_engine`: "ollama" or "vllm").

Each engine is a component of its own (deploys/ollama.py, deploys/vllm.py) that applies to
the llm hosts whose data chose it. This component runs first on those hosts and retires the
engines not chosen (stopped and disabled, their port freed), so switching engines is a data
change. `python -m fleet llm-check` verifies the endpoint with a chat completion.
"""

import importlib

from pyinfra import host
from pyinfra.api import deploy

from fleet.converge.component import Component, Problem, component

# The engines, each the name of a component in deploys/.
ENGINES = ("ollama", "vllm")

DEFAULTS = {
    # Which engine serves the LLM port: "ollama" (systemd service) or "vllm" (container).
    "llm_engine": "ollama",
}


def engine_is(name: str):
    """An engine component's `when`: the host's data chose that engine."""
    def chosen(data) -> bool:
        return data.get("llm_engine") == name
    chosen.__doc__ = f'llm_engine is "{name}"'
    return chosen


@deploy("LLM endpoint", data_defaults=DEFAULTS)
def llm():
    for name in ENGINES:
        if name != host.data.llm_engine:
            importlib.import_module(component(name).module).retire()


def check_engine(fleet, hosts) -> list[Problem]:
    return [Problem(h.name, "llm_engine", f"{h.data.get('llm_engine')!r} is not an engine.",
                    f"set it to one of {', '.join(ENGINES)} in inventory.py.")
            for h in hosts if h.data.get("llm_engine") not in ENGINES]


COMPONENT = Component(
    name="llm",
    deploy=llm,
    defaults=DEFAULTS,
    groups=("llm",),
    rules=(check_engine,),
    after=("docker",),  # vLLM runs as a container
)
