"""The repository's inventory.py, except that values given with `--data` are not validated.

Test-only, and only for the integration tests that prove a host's own validator refuses a bad
config and keeps the live one (PostgreSQL's check of a pg_hba.conf candidate, cloudflared's
ingress check). The operator's validation refuses those values before any host is touched,
also when they come with --data (fleet/preflight/inventory.py, cli_data), so those tests reach
the host's check the one way the product leaves no way to: past that validation. Everything
else (group_data/, the inventory, the vault, --limit) is checked as in inventory.py.
"""

import runpy
from pathlib import Path

from fleet.preflight import inventory as preflight

preflight.cli_data = lambda: {}
globals().update({name: value for name, value in
                  runpy.run_path(str(Path(__file__).resolve().parents[2] / "inventory.py")).items()
                  if not name.startswith("__")})
