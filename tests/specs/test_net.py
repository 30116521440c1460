"""Network exposure baseline: nothing listens where the port map does not say."""

from specs.conftest import WILDCARDS, listening


def test_net01_no_tcp_wildcard(fh):
    """net-01: no TCP listener on 0.0.0.0 or :: (services bind loopback, LAN or tailnet)."""
    wild = [f"{a or '*'}:{p}" for a, p in listening(fh, "tcp") if a in WILDCARDS]
    assert not wild, f"{fh.name}: TCP listeners on a wildcard address: {', '.join(wild)}"


def test_net02_udp_wildcard_allowlisted(fh):
    """net-02: UDP wildcard listeners only from the commented allowlist in group data."""
    allowed = fh.data["net_udp_wildcard_allowlist"]
    wild = sorted({p for a, p in listening(fh, "udp") if a in WILDCARDS} - set(allowed))
    assert not wild, (
        f"{fh.name}: UDP ports on a wildcard address not in net_udp_wildcard_allowlist: {wild}"
    )
