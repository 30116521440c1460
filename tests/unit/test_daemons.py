"""Restarts decided from state on the host (fleet.converge.daemons): the parsing of what the
host reports, and the rule that a daemon is owed a restart exactly when an input changed
after its process started (or after our last reload of it)."""

from __future__ import annotations

import socket

import pytest

from fleet.converge import connector
from fleet.converge.daemons import DaemonState, NewestChange, owed, parse_timestamp


def state(lines: list[str]) -> dict:
    return DaemonState().process(lines)


UP = ["LoadState=loaded", "ActiveState=active", "NeedDaemonReload=no",
      "ExecMainStartTimestamp=Wed 2026-12-02 13:05:01.500000 UTC"]
STARTED = parse_timestamp("Wed 2026-12-02 13:05:01.500000 UTC")


def test_systemd_timestamps_parse_to_epoch_seconds():
    assert STARTED == 1796216701.5
    assert parse_timestamp("") is None and parse_timestamp("n/a") is None


def test_an_input_changed_after_the_start_is_owed_a_restart():
    assert owed(state([*UP, "Stamp=", f"Inputs={STARTED + 0.01}"]))


def test_inputs_older_than_the_start_owe_nothing():
    assert not owed(state([*UP, "Stamp=", f"Inputs={STARTED - 30}"]))


def test_a_reload_stamp_newer_than_the_change_settles_it():
    assert not owed(state([*UP, f"Stamp={STARTED + 20}", f"Inputs={STARTED + 10}"]))
    assert owed(state([*UP, f"Stamp={STARTED + 20}", f"Inputs={STARTED + 25}"]))


@pytest.mark.parametrize("lines", [
    ["LoadState=loaded", "ActiveState=inactive", "NeedDaemonReload=no", "ExecMainStartTimestamp=",
     "Stamp=", "Inputs=1796216800.0"],  # stopped: starting it reads the current inputs
    [*UP, "Stamp=", "Inputs="],  # no input exists yet (a dry run before the first converge)
])
def test_nothing_is_owed_when_it_cannot_be_known(lines):
    assert not owed(state(lines))


def test_unit_load_state_is_read():
    s = state(["LoadState=not-found", "ActiveState=inactive", "NeedDaemonReload=yes", "Stamp=", "Inputs="])
    assert not s["loaded"] and s["needs_daemon_reload"]


def test_a_drop_in_systemd_has_not_loaded_needs_a_daemon_reload():
    # systemd 252 does not set NeedDaemonReload for a drop-in in a directory it did not know
    dropin = "/etc/systemd/system/redis-server.service.d/fleet.conf"
    assert state(UP + ["DropInPaths=", f"DropInsOnDisk={dropin} "])["needs_daemon_reload"]
    assert not state(UP + [f"DropInPaths={dropin}", f"DropInsOnDisk={dropin} "])["needs_daemon_reload"]


def test_newest_change_fact():
    assert NewestChange().process(["1796216701.250000000"]) == 1796216701.25
    assert NewestChange().process([""]) is None
    assert "'/etc/a b'" in NewestChange().command(("/etc/a b",))


def test_the_connector_sets_keepalive_timeout_and_nodelay():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    try:
        connector.tune(client)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == connector.IDLE
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == connector.USER_TIMEOUT * 1000
    finally:
        client.close()
        server.close()


def test_the_connector_keeps_the_inventory_name():
    assert list(connector.FleetSSHConnector.make_names_data("pi5-alpha")) == [("pi5-alpha", {}, [])]
