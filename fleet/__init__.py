"""Provisioning for a self-hosted fleet on pyinfra 3, in three layers:

  fleet.converge   what the deploys use at converge time (operations, vault, services, registry)
  fleet.preflight  what runs before any host is touched (target selection, model, validation)
  fleet.commands   the operator's commands (`python -m fleet COMMAND`)

Each layer imports only the layers above it in this list; docs/architecture.md explains.
"""
