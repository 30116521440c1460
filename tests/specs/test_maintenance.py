"""The failover droplet's maintenance page (hosts running the maintenance component)."""

from specs.conftest import fleet_services, listening


def test_mp01_maintenance_page(fh):
    """mp-01: the maintenance page answers every path (503) and /health (200) on 127.0.0.1
    only, and the failover tunnel sends the wildcard domains to it."""
    page = fleet_services().bind("maintenance", fh.name)
    port = page.port
    assert page.address == "127.0.0.1"
    assert {a for a, p in listening(fh, "tcp") if p == port} == {"127.0.0.1"}
    page = fh.host.run(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/any/path")
    assert page.stdout == "503"
    assert fh.host.run(f"curl -fsS http://127.0.0.1:{port}/health").rc == 0
    body = fh.host.check_output(f"curl -s http://127.0.0.1:{port}/")
    assert "temporarily offline" in body
