"""Docker baseline: the engine, its effective settings, and where published ports land."""

import json

import pytest

from deploys.docker import COMPONENT, daemon_config

# The other specs here run where the docker component applies (the file's name says so).
without_docker = pytest.mark.fleet_hosts(lambda groups, data: not COMPONENT.applies(groups, data))


def docker_info(fh) -> dict:
    return json.loads(fh.host.check_output("docker info --format '{{json .}}'"))


class Data(dict):
    __getattr__ = dict.__getitem__


@without_docker
def test_dk00_no_docker_where_disabled(fh):
    """dk-00: hosts with docker_enabled false (the 512 MB Pi Zero) have no engine at all."""
    assert not fh.host.exists("dockerd")


def test_dk01_running(fh):
    """dk-01: docker is enabled and running."""
    svc = fh.host.service("docker")
    assert svc.is_enabled and svc.is_running


def test_dk02_daemon_json_is_the_model(fh):
    """dk-02: daemon.json is exactly the deploy's model for this host."""
    live = json.loads(fh.host.file("/etc/docker/daemon.json").content_string)
    assert live == daemon_config(Data(fh.data), fh.groups)


def test_dk03_effective_settings(fh):
    """dk-03: the running engine applies them (docker info: logging, live-restore, runtimes)."""
    info = docker_info(fh)
    assert info["LoggingDriver"] == "json-file"
    assert info["LiveRestoreEnabled"] is True
    assert ("nvidia" in info["Runtimes"]) == ("gpu" in fh.groups)


def test_dk04_published_ports_on_loopback(fh):
    """dk-04: a container published with -p PORT:80 listens on 127.0.0.1 only (no pulls:
    the image is imported from a tarball made on the host)."""
    h = fh.host
    image, name, port = "fleet-spec-dk04", "fleet-spec-dk04", 8081
    h.check_output(
        "deps=$(ldd /usr/bin/sleep | grep -o '/[^ ]*'); "
        f"tar -ch /usr/bin/sleep $deps 2>/dev/null | docker import - {image} >/dev/null"
    )
    run = f"docker run -d --name {name} -p {port}:80 {image} /usr/bin/sleep 120"
    try:
        if h.run(run).rc != 0:  # a container left by a killed spec run holds the name or the port
            h.run(f"docker rm -f {name}")
            h.check_output(run)
        out = h.check_output(f"ss -H -tln 'sport = :{port}'")
        addresses = sorted(line.split()[3] for line in out.splitlines() if line.strip())
        assert addresses == [f"127.0.0.1:{port}"], f"published on {addresses}"
    finally:
        h.run(f"docker rm -f {name}")
        h.run(f"docker rmi {image}")


def test_dk05_admin_in_docker_group(fh):
    """dk-05: the admin user can drive docker without sudo."""
    assert "docker" in fh.host.user(fh.data["ssh_user"]).groups
