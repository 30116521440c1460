"""Journal forwarding: the monitoring host receives on its tailnet address only, every other
host sends to it and never listens, and a line logged on each host arrives."""

import time
import uuid

import pytest

from specs.conftest import fleet_entries, fleet_host, fleet_services, listening


def receivers():
    return fleet_services().hosts_running("journal-remote")


@pytest.mark.fleet_hosts(lambda groups, data: "monitoring" in groups)
def test_journal01_remote_listens_on_the_tailnet_only(fh):
    """journal-01: journal-remote's socket is enabled and listens only on the tailnet address."""
    socket = fh.host.service("systemd-journal-remote.socket")
    assert socket.is_enabled and socket.is_running
    port = fleet_services().port("journal-remote")
    assert {a for a, p in listening(fh, "tcp") if p == port} == {fh.tailnet_address}


@pytest.mark.fleet_hosts(lambda groups, data: "monitoring" not in groups)
def test_journal02_senders_upload_and_never_listen(fh):
    """journal-02: journal-upload runs towards the monitoring host and keeps retrying while
    that host is away (no start limit, the data's delay); the receiving side is masked here,
    so nothing listens on the journal port."""
    upload = fh.host.service("systemd-journal-upload")
    assert upload.is_enabled and upload.is_running
    shown = dict(line.split("=", 1) for line in fh.host.check_output(
        "systemctl show -p StartLimitIntervalUSec -p RestartUSec systemd-journal-upload").splitlines())
    assert shown == {"StartLimitIntervalUSec": "0", "RestartUSec": f"{fh.data['journal_upload_retry_seconds']}s"}
    assert fh.host.file("/etc/systemd/system/systemd-journal-remote.socket").linked_to == "/dev/null"
    port = fleet_services().port("journal-remote")
    assert not [a for a, p in listening(fh, "tcp") if p == port]


@pytest.mark.fleet_hosts(lambda groups, data: "monitoring" in groups)
def test_journal03_a_line_logged_on_every_host_arrives(fh):
    """journal-03: a marker logged on each other host shows up in the received journals
    within a bounded wait (journal-upload follows the journal live)."""
    marker = f"fleet-spec-{uuid.uuid4().hex[:12]}"
    senders = [name for name in fleet_entries() if name not in receivers()]
    for name in senders:
        fleet_host(name).host.run(f"logger -t fleet-spec {marker}-{name}")
    directory = fh.data["journal_remote_dir"]
    deadline, missing = time.monotonic() + 60, senders
    while missing and time.monotonic() < deadline:
        seen = fh.host.run(f"journalctl -D {directory} -t fleet-spec -o cat --no-pager").stdout
        missing = [n for n in senders if f"{marker}-{n}" not in seen]
        if missing:
            time.sleep(0.5)  # the upload follows the journal live: a line arrives within ~1 s
    assert not missing, f"no line from {missing} reached {fh.name} within 60 s"
