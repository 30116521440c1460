"""The operator's commands (`python -m fleet COMMAND`): vault, edge, llm-check, docs.
The top layer: it may import fleet.preflight and fleet.converge, nothing imports it."""
