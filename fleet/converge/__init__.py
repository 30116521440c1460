"""Converge time: what the deploys in deploys/ use while pyinfra runs them (operations,
facts, templates, the vault's secrets, services by name, the component registry).
Imports nothing from fleet.preflight or fleet.commands."""
