"""pyinfra settings for every run of this repository's deploys."""

from pyinfra import config

# The deploys are written against this pyinfra; anything else stops before connecting.
config.REQUIRE_PYINFRA_VERSION = "==3.10.0"
# The admin account connects over SSH and escalates with sudo (root login is disabled).
config.SUDO = True

# pyinfra splits each `--data KEY=VALUE` before it reads the inventory, and one without "=" ends
# it in a traceback; this file runs first, so it is refused here in one line.
from fleet.preflight.inventory import check_cli_data  # noqa: E402

check_cli_data()
