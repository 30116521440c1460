"""fleet.commands.rebuild's Tailscale part against the fake API on 127.0.0.1: the dead node is
found by its name (also as <name>-N), deleted, and a new node's address pinned."""

from __future__ import annotations

import pytest

from fakes.tailscale_api import FakeTailscale
from fleet.commands import rebuild


class _Fleet:
    all_data = {"tailnet_policy_tailnet": "-"}


@pytest.fixture
def api(monkeypatch):
    fake = FakeTailscale(api_key="tskey-api-unit")
    monkeypatch.setenv("TAILSCALE_API_KEY", fake.api_key)
    monkeypatch.setenv("TAILSCALE_API_BASE_URL", fake.url)
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    yield fake
    fake.stop()
    assert not fake.unhandled, fake.unhandled


def test_the_dead_node_and_its_suffixed_twins_are_found_and_deleted(api):
    dead = api.add_device("pi5-gamma", "100.100.0.3")
    twin = api.add_device("pi5-gamma-1", "100.100.0.77")
    other = api.add_device("pi5-beta", "100.100.0.2")
    ts = rebuild.Tailscale(_Fleet())
    found = {d["id"] for d in ts.devices("pi5-gamma")}
    assert found == {dead, twin}
    for device_id in found:
        ts.delete(device_id)
    assert list(api.devices) == [other]
    # a node named like a suffixed twin that is another inventory host is never taken
    real = api.add_device("pi5-gamma-2", "100.100.0.8")
    assert [d["id"] for d in ts.devices("pi5-gamma", keep=("pi5-gamma-2",))] == []
    assert real in api.devices


def test_an_address_is_pinned_and_a_bad_key_is_one_clear_error(api, monkeypatch):
    node = api.add_device("pi5-gamma", "100.100.0.99")
    ts = rebuild.Tailscale(_Fleet())
    ts.pin(node, "100.100.0.3")
    assert api.devices[node]["addresses"] == ["100.100.0.3"]
    monkeypatch.setenv("TAILSCALE_API_KEY", "tskey-api-wrong")
    with pytest.raises(rebuild.RebuildError, match=r"refused GET /api/v2/tailnet/-/devices \(HTTP 401"):
        rebuild.Tailscale(_Fleet()).devices("pi5-gamma")


def test_no_api_key_says_where_to_put_one(monkeypatch, tmp_path):
    monkeypatch.delenv("TAILSCALE_API_KEY", raising=False)
    monkeypatch.setenv("FLEET_VAULT", str(tmp_path / "none.vault"))
    with pytest.raises(rebuild.RebuildError, match="no Tailscale API key"):
        rebuild.Tailscale(_Fleet())
