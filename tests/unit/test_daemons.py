"""Restarts decided from state on the host (fleet.converge.daemons): the parsing of what the
host reports, and the rule that a daemon is owed a restart exactly when an input changed
after its process started (or after our last reload of it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from fleet.converge import connector
from fleet.converge.daemons import DaemonState, NewestChange, owed, parse_timestamp


def state(lines: list[str]) -> dict:
    return DaemonState().process(lines)


UP = ["LoadState=loaded", "ActiveState=active", "NeedDaemonReload=no",
      "ExecMainStartTimestamp=Wed 2026-12-02 13:05:01.500000 UTC"]
STARTED = parse_timestamp("Wed 2026-12-02 13:05:01.500000 UTC")
STAMP = "/var/lib/fleet/applied/redis-server.service"


def stamp(mtime=None) -> list[str]:
    """The fact's lines for our reload stamp (mtime), or for none."""
    return [f"StampPath={STAMP}"] + ([f"Times={mtime} {mtime + 5} {STAMP}"] if mtime is not None else [])


def inputs(*ctimes) -> list[str]:
    """The fact's lines for input files changed at `ctimes` (mtimes older, to tell them apart)."""
    return [f"Times={c - 100} {c} /etc/fleet/input {i}.conf" for i, c in enumerate(ctimes)]


def test_systemd_timestamps_parse_to_epoch_seconds():
    assert STARTED == 1796216701.5
    assert parse_timestamp("") is None and parse_timestamp("n/a") is None


def test_an_input_changed_after_the_start_is_owed_a_restart():
    assert owed(state([*UP, *stamp(), *inputs(STARTED - 40, STARTED + 0.01)]))


def test_inputs_older_than_the_start_owe_nothing():
    assert not owed(state([*UP, *stamp(), *inputs(STARTED - 30)]))


def test_a_reload_stamp_newer_than_the_change_settles_it():
    assert not owed(state([*UP, *stamp(STARTED + 20), *inputs(STARTED + 10)]))
    assert owed(state([*UP, *stamp(STARTED + 20), *inputs(STARTED + 25)]))


@pytest.mark.parametrize("lines", [
    ["LoadState=loaded", "ActiveState=inactive", "NeedDaemonReload=no", "ExecMainStartTimestamp=",
     *stamp(), *inputs(1796216800.0)],  # stopped: starting it reads the current inputs
    [*UP, *stamp()],  # no input exists yet (a dry run before the first converge)
])
def test_nothing_is_owed_when_it_cannot_be_known(lines):
    assert not owed(state(lines))


def test_unit_load_state_is_read():
    s = state(["LoadState=not-found", "ActiveState=inactive", "NeedDaemonReload=yes", *stamp()])
    assert not s["loaded"] and s["needs_daemon_reload"]


def test_a_drop_in_systemd_has_not_loaded_needs_a_daemon_reload():
    # systemd 252 does not set NeedDaemonReload for a drop-in in a directory it did not know
    dropin = "/etc/systemd/system/redis-server.service.d/fleet.conf"
    assert state(UP + ["DropInPaths=", f"DropInsOnDisk={dropin} "])["needs_daemon_reload"]
    assert not state(UP + [f"DropInPaths={dropin}", f"DropInsOnDisk={dropin} "])["needs_daemon_reload"]


def test_newest_change_fact():
    assert NewestChange().process(["1796216701.250000000"]) == 1796216701.25
    assert NewestChange().process(["1796216601.5", "1796216701.250000000", "1796216651"]) == 1796216701.25
    assert NewestChange().process([""]) is None and NewestChange().process([]) is None
    assert "'/etc/a b'" in NewestChange().command(("/etc/a b",))


def test_the_facts_read_the_files_on_this_machine(tmp_path):
    """The commands themselves, run by sh here (no systemd: its part answers nothing): the
    newest ctime among the inputs, paths with spaces, a missing input and stamp ignored."""
    files = [tmp_path / "a b.conf", tmp_path / "c.conf"]
    for f in files:
        f.write_text("x")
    newest = max(os.stat(f).st_ctime for f in files)
    paths = (*map(str, files), str(tmp_path / "missing"))
    out = subprocess.run(["sh", "-c", DaemonState().command("fleet-no-such.service", paths)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    got = DaemonState().process(out)
    assert got["inputs_changed"] == pytest.approx(newest, abs=1e-6)
    assert got["applied"] is None and not got["needs_daemon_reload"]
    out = subprocess.run(["sh", "-c", NewestChange().command(paths)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert NewestChange().process(out) == pytest.approx(newest, abs=1e-6)


def test_the_stamp_is_told_from_the_inputs():
    s = state([*UP, *stamp(STARTED + 20), *inputs(STARTED + 25, STARTED + 1)])
    assert s["applied"] == STARTED + 20 and s["inputs_changed"] == STARTED + 25


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


class StateHost:
    """Answers DaemonState from fixed lines; records what the operation logs."""

    def __init__(self, lines):
        self.lines, self.logged = lines, []

    def get_fact(self, fact, **kwargs):
        assert fact is DaemonState
        return state(self.lines)

    def noop(self, text):
        self.logged.append(("noop", text))

    def log(self, text, log_func=None):
        self.logged.append(("log", text))


def commands(lines) -> tuple[list[str], list]:
    from pyinfra.context import ctx_host

    from fleet.converge.daemons import enabled_and_running
    fake = StateHost(lines)
    with ctx_host.use(fake):
        return [str(c.get_raw_value()) for c in enabled_and_running._inner(unit="node-exporter.service")], fake.logged


def test_a_unit_masked_by_hand_is_unmasked_then_started_and_enabled():
    masked = ["LoadState=masked", "ActiveState=inactive", "SubState=dead", "UnitFileState=masked", *stamp()]
    sent, logged = commands(masked)
    assert sent == ["systemctl unmask node-exporter.service", "systemctl start node-exporter.service",
                    "systemctl enable node-exporter.service"]
    assert logged == [("log", "node-exporter.service was masked; unmasking it")]


@pytest.mark.parametrize("file_state, sent", [
    ("enabled", []), ("disabled", ["systemctl enable node-exporter.service"]),
])
def test_a_running_unit_is_only_enabled_where_it_is_not(file_state, sent):
    assert commands([*UP, "SubState=running", f"UnitFileState={file_state}", *stamp()])[0] == sent


# --- a port held by another process, before a start ------------------------------------------
from fleet.converge.daemons import PortHolders, port_blockers, service_of  # noqa: E402

NODE = "prometheus-node-exporter.service"


def test_the_port_holders_fact_reads_this_machines_listeners():
    """The fact's own command, run here: a listener this test opens is found with its process
    and the cgroup the kernel gives its socket (ss -p names processes only to root, as the
    converge runs it)."""
    if os.geteuid() != 0 or not shutil.which("ss"):
        pytest.skip("needs root and ss (iproute2) to see listening processes")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = subprocess.run(["sh", "-c", PortHolders().command((port,))], capture_output=True, text=True, check=True)
        found = PortHolders().process(out.stdout.splitlines())
    assert [(a, p, pid) for a, p, _, pid, _ in found] == [("127.0.0.1", port, os.getpid())]
    own = [line.split("0::", 1)[1].strip() for line in open("/proc/self/cgroup") if line.startswith("0::")]
    assert found[0][4] == (own[0] if own else found[0][4])


def test_a_listener_whose_process_ss_cannot_see_is_still_placed_by_its_cgroup():
    line = ("LISTEN 0 4096 100.100.0.2:9100 0.0.0.0:* uid:102 ino:22061029 sk:4e89"
            " cgroup:/docker/62261ced/system.slice/prometheus-node-exporter.service <->")
    assert PortHolders().process([line]) == [("100.100.0.2", 9100, "a process of uid 102", None,
                                              "/docker/62261ced/system.slice/prometheus-node-exporter.service")]
    assert PortHolders().process(["LISTEN 0 4096 [::]:9093 [::]:* users:((\"alertmanager\",pid=7,fd=3))"
                                  " uid:111 ino:1 sk:2 cgroup:/system.slice/x.service v6only:1 <->"])[0][:4] == (
        "::", 9093, "alertmanager", 7)


@pytest.mark.parametrize("cgroup, service", [
    ("/system.slice/prometheus-node-exporter.service", NODE),
    ("/system.slice/system-postgresql.slice/postgresql@15-main.service", "postgresql@15-main.service"),
    ("/init.scope", "systemd"),
    ("/user.slice/user-1000.slice/session-3.scope", None),
    ("/", None),
    ("/system.slice/docker-0123abcd.scope", None),
    ("/docker/62261ced/system.slice/prometheus-node-exporter.service", NODE),  # a test host on cgroup v1
    ("/docker/62261ced", None),  # docker exec in a test host
    ("/docker/62261ced/init.scope", "systemd"),
])
def test_a_process_is_told_by_its_cgroup(cgroup, service):
    assert service_of(cgroup) == service


@pytest.mark.parametrize("holder, stop, warn", [
    (("100.100.0.5", 9100, "python3", 812, "/"), 1, 0),  # docker exec
    (("0.0.0.0", 9100, "nc", 9, "/user.slice/user-1000.slice/session-2.scope"), 1, 0),  # a login, any address
    (("::", 9100, "nc", 9, "/system.slice/ssh.service"), 1, 0),  # over SSH on a host without pam_systemd
    (("100.100.0.5", 9100, "alertmanager", 7, "/system.slice/prometheus-alertmanager.service"), 0, 1),
    (("0.0.0.0", 9100, "prometheus-node", 5, f"/system.slice/{NODE}"), 0, 0),  # itself
    (("127.0.0.1", 9100, "nc", 9, "/"), 0, 0),  # another address
    (("100.100.0.5", 9101, "nc", 9, "/"), 0, 0),  # another port
])
def test_who_holds_the_port_decides_between_stopping_and_a_warning(holder, stop, warn):
    found = port_blockers(NODE, ("100.100.0.5:9100",), [holder])
    assert (len(found[0]), len(found[1])) == (stop, warn)


class PortsHost(StateHost):
    def __init__(self, lines, holders):
        super().__init__(lines)
        self.holders, self.name = holders, "pi0-epsilon"

    def get_fact(self, fact, **kwargs):
        if fact is PortHolders:
            assert kwargs == {"ports": (9100,)}
            return self.holders
        return super().get_fact(fact, **kwargs)


@pytest.fixture(autouse=True)
def node_exporter_binds(monkeypatch):
    """The port map's node-exporter on this fake host (the ops read it only to start)."""
    from fleet.converge import daemons

    monkeypatch.setattr(daemons, "listens_of", lambda service: {"node-exporter": ("100.100.0.5:9100",)}[service])


def start_with(holders) -> tuple[list[str], list]:
    from pyinfra.context import ctx_host

    from fleet.converge.daemons import enabled_and_running
    fake = PortsHost(["LoadState=loaded", "ActiveState=failed", "SubState=failed", "UnitFileState=enabled",
                      *stamp()], holders)
    with ctx_host.use(fake):
        return ([str(c.get_raw_value()) for c in enabled_and_running._inner(unit=NODE, service="node-exporter")],
                fake.logged)


def test_a_port_held_by_hand_stops_the_run_before_the_start():
    sent, _ = start_with([("100.100.0.5", 9100, "python3", 812, "/")])
    assert len(sent) == 1 and sent[0].endswith(">&2; exit 1") and "systemctl" not in sent[0]
    assert ("pi0-epsilon: prometheus-node-exporter.service cannot listen: 100.100.0.5:9100 is held by python3, "
            "pid 812 (on 100.100.0.5:9100, in no service: cgroup /)") in sent[0]


def test_a_port_another_service_holds_is_a_warning_and_the_start_goes_on():
    sent, logged = start_with([("0.0.0.0", 9100, "alertmanager", 7, "/system.slice/prometheus-alertmanager.service")])
    assert sent == [f"systemctl reset-failed {NODE}", f"systemctl start {NODE}"]
    assert logged == [("log", f"{NODE} may not start: 100.100.0.5:9100 is held by prometheus-alertmanager.service "
                              "(alertmanager, pid 7, on 0.0.0.0:9100)")]


def test_a_free_port_starts_as_before():
    assert start_with([])[0] == [f"systemctl reset-failed {NODE}", f"systemctl start {NODE}"]


def test_a_failed_unit_has_its_start_limit_reset_before_the_start():
    """systemd refuses starts for a while after a unit failed too often ("Start request
    repeated too quickly"), even once the cause is gone; a merely stopped one is just started."""
    assert commands(["LoadState=loaded", "ActiveState=failed", "SubState=failed", "UnitFileState=enabled",
                     *stamp()])[0] == ["systemctl reset-failed node-exporter.service",
                                       "systemctl start node-exporter.service"]
    assert commands(["LoadState=loaded", "ActiveState=inactive", "SubState=dead", "UnitFileState=enabled",
                     *stamp()])[0] == ["systemctl start node-exporter.service"]


def test_a_restart_onto_a_port_held_by_hand_stops_the_run_instead():
    """A restart owed for new inputs (the port moved in the data) onto a port held by hand."""
    from pyinfra.context import ctx_host

    from fleet.converge.daemons import applied
    owed_lines = ["LoadState=loaded", "ActiveState=active", "SubState=running", "UnitFileState=enabled",
                  "ExecMainStartTimestamp=Wed 2026-12-02 13:05:01.000000 UTC", *stamp(),
                  "Times=1700000000.0 1900000000.0 /etc/fleet/node-exporter.env"]
    fake = PortsHost(owed_lines, [("100.100.0.5", 9100, "nc", 40, "/")])
    with ctx_host.use(fake):
        sent = [str(c.get_raw_value()) for c in applied._inner(unit=NODE, inputs=["/etc/fleet/node-exporter.env"],
                                                               service="node-exporter")]
    assert len(sent) == 1 and "cannot listen" in sent[0] and sent[0].endswith("exit 1")
    fake.holders = []
    with ctx_host.use(fake):
        assert [str(c.get_raw_value()) for c in applied._inner(unit=NODE, inputs=["/etc/fleet/node-exporter.env"],
                                                               service="node-exporter")] == [
            f"systemctl restart {NODE}"]
