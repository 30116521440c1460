"""Node exporter on every host: the tailnet address only, the fleet's textfile directory,
and metrics that Prometheus can read (from the test runner over the tailnet)."""

import urllib.request

from specs.conftest import fleet_services, listening


def test_node01_listens_on_the_tailnet_only(fh):
    """node-01: prometheus-node-exporter is enabled and running, and its port listens on the
    tailnet address only (Debian's default, every address, is replaced)."""
    unit = fh.host.service("prometheus-node-exporter")
    assert unit.is_enabled and unit.is_running
    port = fleet_services().port("node-exporter")
    assert {a for a, p in listening(fh, "tcp") if p == port} == {fh.tailnet_address}


def test_node02_serves_metrics_with_the_textfile_collector(fh):
    """node-02: /metrics over the tailnet answers with node metrics, and the textfile
    collector reads the fleet's directory without error (the backups' and the prober's
    metrics go there)."""
    endpoint = fleet_services().bind("node-exporter", fh.name, "tailnet")
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    assert "node_load1 " in body
    assert 'node_scrape_collector_success{collector="textfile"} 1' in body
    assert "node_textfile_scrape_error 0" in body
    textfile = fh.data["node_exporter_textfile_dir"]
    assert fh.host.file(textfile).is_directory
    assert f"--collector.textfile.directory={textfile}" in fh.host.check_output("ps -o args= -C prometheus-node-exporter")
