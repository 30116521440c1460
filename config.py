"""pyinfra settings for every run of this repository's deploys."""

from pyinfra import config

# The deploys are written against this pyinfra; anything else stops before connecting.
config.REQUIRE_PYINFRA_VERSION = "==3.10.0"
# The admin account connects over SSH and escalates with sudo (root login is disabled).
config.SUDO = True
