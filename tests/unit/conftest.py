"""A valid fleet built from the real inventory.py and group_data/, for rules to break."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fleet.preflight.inventory import read_inventory_data
from fleet.preflight.model import build_fleet, load_group_data

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0tW0vL7n3p7yB0Zy1hPqNnB8lP2r3s4t5u6v7w8x9y admin@test"


class FleetData:
    """Mutable copies of HOSTS, all.py and the group files; .fleet() builds the model."""

    def __init__(self):
        self.hosts, self.test_fleet = read_inventory_data(REPO / "inventory.py")
        self.all_data, self.group_data = load_group_data(REPO / "group_data")
        self.all_data["base_admin_ssh_keys"] = [ADMIN_KEY]
        # what an operator copies from the Ollama release's sha256sum.txt
        self.group_data["llm"]["ollama_sha256"] = {"ollama-linux-arm64.tar.zst": "0123abcd" * 8}
        # what an operator fills in after each app's build pushed its image
        self.all_data["apps_releases"] = {app: {"image": f"ghcr.io/blackroad/{app}@sha256:" + "89abcdef" * 8}
                                          for app in self.all_data["apps_definitions"]}
        self.group_data["monitoring"]["grafana_apt"] = {**__import__("deploys.grafana", fromlist=["DEFAULTS"]).DEFAULTS["grafana_apt"], "key_sha256": "4567cdef" * 8}  # the operator's reviewed pin

    def fleet(self):
        return build_fleet(copy.deepcopy(self.hosts), copy.deepcopy(self.all_data),
                           copy.deepcopy(self.group_data))


@pytest.fixture
def data() -> FleetData:
    return FleetData()
