"""inventory.py as pyinfra sees it: groups, targets, and bad data stopping the CLI early."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.converge import keys
from fleet.preflight.inventory import (FleetConfigError, apply_target, extra_test_hosts, prepare, pyinfra_groups,
                                      read_inventory_data)

REPO = Path(__file__).resolve().parents[2]
BUILT = {"ollama_sha256": {f"ollama-linux-{arch}.tar.zst": "ab" * 32 for arch in ("amd64", "arm64")},
         "vllm_image_archive_sha256": "cd" * 32,
         # and what tests/mirror/app_release.py adds: the stand-in app images' releases
         "apps_releases": {app: {"image": "fleet-test/app@sha256:" + "ef" * 32,
                                 "archive_url": "http://100.100.0.250/apps/app-1.0.0.tar", "archive_sha256": "01" * 32}
                           for app in ("web", "api", "lucidia", "agents")}}


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the repository's data with a test SSH key, as fleet-up would leave it."""
    for item in ("inventory.py", "group_data", "deploys", "config.py", "templates", "fleet", "secrets"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    key_dir = tmp_path / ".state" / "testfleet"
    key_dir.mkdir(parents=True)
    (key_dir / "id_ed25519").write_text("not used by these tests\n")
    (key_dir / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFleetTestKey test\n")
    # what tests/mirror/llm_release.py writes at fleet-up: the stand-in artifacts' checksums
    (key_dir / "mirror").mkdir()
    (key_dir / "mirror" / "built-data.json").write_text(json.dumps(BUILT))
    return tmp_path


def test_groups_match_the_spec(fake_repo, monkeypatch):
    monkeypatch.setenv("FLEET_TARGET", "test")
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    groups = pyinfra_groups(hosts, test_fleet, str(fake_repo / "inventory.py"))
    # `all`: every host, with the components' DEFAULTS as the lowest data layer
    every, defaults = groups.pop("all")
    # every host goes through the fleet's SSH connector, and keeps its name
    assert sorted(every) == sorted(f"@fleet/{name}" for name in hosts)
    assert defaults["docker_enabled"] is True and defaults["llm_engine"] == "ollama"
    members = {g: sorted(name.removeprefix("@fleet/") for name, _ in hosts_) for g, hosts_ in groups.items()}
    assert members == {
        "pis": ["pi0-epsilon", "pi400-delta", "pi5-alpha", "pi5-beta", "pi5-gamma"],
        "gateway": ["pi5-alpha"],
        "agents": ["pi5-alpha", "pi5-beta"],
        "database": ["pi5-gamma"],
        "monitoring": ["pi400-delta"],
        "healthcheck": ["pi0-epsilon"],
        "gpu": ["jetson-prime"],
        "llm": ["jetson-prime"],
        "cloud": ["droplet-failover"],
        "failover": ["droplet-failover"],
    }


def test_test_target_swaps_only_addresses_connection_and_vendor_sources(fake_repo):
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    test = apply_target(hosts, test_fleet, fake_repo, "test")
    # the vendor sources point at the offline mirror; docker comes from Debian
    # and the LLM engines' release files and image at the test suite's stand-in builds
    # and timesyncd's running state is left alone (systemd skips it in a container)
    # and Redis runs without PrivateUsers (the test hosts cannot create user namespaces)
    # and monitoring's intervals are shorter (a stopped service alerts within a test's wait),
    # the dead man's switch's too, with a webhook on the droplet's loopback,
    # and a new app version that never gets healthy is given up on sooner,
    # and the firewall lets the Docker host (converge, specs) reach every service,
    # and the checklist sends no request to the internet (there is none)
    assert set(test_fleet["data"]) == {"checklist_public_https", "checklist_public_https_reason","tailscale_apt", "nvidia_apt", "cloudflared_apt", "docker_source",
                                       "ollama_release_url", "vllm_image", "vllm_image_archive_url",
                                       "base_time_sync_running", "redis_private_users",
                                       "prometheus_scrape_interval", "prometheus_evaluation_interval",
                                       "prometheus_alert_thresholds", "healthcheck_interval_seconds",
                                       "grafana_apt", "deadman_interval_seconds", "deadman_stale_seconds",
                                       "deadman_webhook_url_key", "apps_health_timeout_seconds",
                                       "firewall_operator_sources"}
    for name, entry in hosts.items():
        changed = {k for k in test[name] if test[name][k] != entry.get(k)}
        assert changed <= {"lan_address", "base_admin_ssh_keys", "ssh_key", "ssh_known_hosts_file",
                           "ssh_strict_host_key_checking", "ssh_hostname", "fleet_prefetch_file",
                           *test_fleet["data"], *BUILT}
        assert test[name]["ollama_sha256"] == BUILT["ollama_sha256"]
        assert test[name]["ssh_hostname"] == entry["tailnet_address"]
        assert test[name]["lan_address"].startswith("100.101.")


def test_missing_built_data_is_a_clear_error(fake_repo):
    (fake_repo / ".state" / "testfleet" / "mirror" / "built-data.json").unlink()
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    with pytest.raises(FleetConfigError, match="built-data.json does not exist. Fix: run `make fleet-up` first"):
        apply_target(hosts, test_fleet, fake_repo, "test")


def test_connect_over_lan(fake_repo, monkeypatch):
    monkeypatch.setenv("FLEET_CONNECT", "lan")
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    entries = apply_target(hosts, test_fleet, fake_repo, "fleet")
    assert entries["pi5-alpha"]["ssh_hostname"] == "192.168.1.11"


@pytest.mark.parametrize("var,value", [("FLEET_TARGET", "prod"), ("FLEET_CONNECT", "wifi")])
def test_bad_environment_is_a_clear_error(fake_repo, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    with pytest.raises(FleetConfigError, match=f"{var}={value!r} is not"):
        prepare(hosts, test_fleet, str(fake_repo / "inventory.py"))


def test_real_target_without_admin_keys_is_refused(fake_repo, monkeypatch):
    monkeypatch.setenv("FLEET_TARGET", "fleet")
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    with pytest.raises(FleetConfigError, match="pi5-alpha: base_admin_ssh_keys: is empty"):
        prepare(hosts, test_fleet, str(fake_repo / "inventory.py"))


def test_pyinfra_stops_before_touching_any_host(fake_repo):
    """The real CLI on bad data: a clear error, non-zero exit, no connection attempted."""
    inv = fake_repo / "inventory.py"
    inv.write_text(inv.read_text().replace('"tailnet_address": "100.100.0.2"',
                                           '"tailnet_address": "100.100.0.1"'))
    pyinfra = Path(sys.executable).with_name("pyinfra")
    run = subprocess.run([str(pyinfra), "-y", "inventory.py", "deploys/site.py"], cwd=fake_repo,
                         env={"PATH": "/usr/bin:/bin", "FLEET_TARGET": "test"},
                         text=True, capture_output=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "pi5-beta: tailnet_address: 100.100.0.1 is also the tailnet address of pi5-alpha" in out
    assert "no host was touched" in out
    assert "Connecting" not in out and "Traceback" not in out


def test_emulated_arm64_host_gets_the_arm64_data_and_only_it(fake_repo, monkeypatch):
    monkeypatch.setenv("FLEET_TEST_ARM64", "pi5-gamma")
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    assert test_fleet["arm64_data"], "TEST_FLEET['arm64_data'] lists what an emulated host cannot do"
    assert set(test_fleet["arm64_data"]) == set(test_fleet["arm64_waivers"]), "every arm64 data key has its reason"
    test = apply_target(hosts, test_fleet, fake_repo, "test")
    for key, value in test_fleet["arm64_data"].items():
        assert test["pi5-gamma"][key] == value
        assert test["pi5-alpha"].get(key) == {**hosts["pi5-alpha"], **test_fleet["data"]}.get(key)


def test_extra_test_hosts_never_replace_a_host_or_leave_the_test_networks(fake_repo, monkeypatch):
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    monkeypatch.setenv("FLEET_TEST_EXTRA_HOSTS", "pi0-epsilon:2")
    taken = {**hosts, "pi0-epsilon-x2": hosts["pi5-beta"]}
    with pytest.raises(FleetConfigError, match="pi0-epsilon-x2 is already a host of inventory.py"):
        extra_test_hosts(taken, test_fleet, "test")
    with pytest.raises(FleetConfigError, match=re.escape("100.100.200.1 / 100.101.200.1 is outside the test networks")):
        extra_test_hosts(hosts, {**test_fleet, "tailnet_network": "100.100.0.0/24"}, "test")


@pytest.mark.parametrize("variable,target,value,message", [
    ("FLEET_TEST_ARM64", "test", "pi9-nope", "FLEET_TEST_ARM64='pi9-nope': pi9-nope is not a host in inventory.py. Fix: "),
    ("FLEET_TEST_ARM64", "fleet", "pi5-gamma", "FLEET_TEST_ARM64 is set, but the target is the real fleet (fleet)"),
    ("FLEET_TEST_EXTRA_HOSTS", "test", "pi9-nope:2",
     "FLEET_TEST_EXTRA_HOSTS='pi9-nope:2' is not <host>:<count>. Fix: name a host"),
    ("FLEET_TEST_EXTRA_HOSTS", "test", "pi0-epsilon", "FLEET_TEST_EXTRA_HOSTS='pi0-epsilon' is not <host>:<count>."),
    ("FLEET_TEST_EXTRA_HOSTS", "test", "pi0-epsilon:0", "a count from 1 to 20"),
    ("FLEET_TEST_EXTRA_HOSTS", "test", "pi0-epsilon:21", "a count from 1 to 20"),
    ("FLEET_TEST_EXTRA_HOSTS", "test", "pi0-epsilon:\u00b3", "a count from 1 to 20"),  # a digit, not ASCII
    ("FLEET_TEST_EXTRA_HOSTS", "fleet", "pi0-epsilon:2",
     "FLEET_TEST_EXTRA_HOSTS is set, but the target is the real fleet (fleet)"),
])
def test_bad_test_fleet_selection_is_a_clear_error(fake_repo, monkeypatch, variable, target, value, message):
    monkeypatch.setenv(variable, value)
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    with pytest.raises(FleetConfigError, match=re.escape(message)):
        prepare(hosts, test_fleet, str(fake_repo / "inventory.py"), target)


def test_extra_test_hosts_are_copies_of_a_host_on_their_own_addresses(fake_repo, monkeypatch):
    hosts, test_fleet = read_inventory_data(fake_repo / "inventory.py")
    monkeypatch.delenv("FLEET_TEST_EXTRA_HOSTS", raising=False)
    assert extra_test_hosts(hosts, test_fleet, "test") == (hosts, test_fleet)
    monkeypatch.setenv("FLEET_TEST_EXTRA_HOSTS", "pi0-epsilon:2")
    before = json.dumps([hosts, test_fleet], sort_keys=True)
    more, more_test = extra_test_hosts(hosts, test_fleet, "test")
    assert json.dumps([hosts, test_fleet], sort_keys=True) == before, "the inventory's own data is not changed"
    assert list(more) == [*hosts, "pi0-epsilon-x1", "pi0-epsilon-x2"]
    # applied again (the harness reads the inventory with them, then prepares it): the same
    assert extra_test_hosts(more, more_test, "test") == (more, more_test)
    for index in (1, 2):
        name = f"pi0-epsilon-x{index}"
        assert more[name] == {**hosts["pi0-epsilon"], "tailnet_address": f"100.100.200.{index}", "tailnet_name": name}
        assert more_test["lan_addresses"][name] == f"100.101.200.{index}/16"
    # the vault must hold their host keys, and the error says so (one problem per host)
    monkeypatch.setenv("FLEET_TARGET", "test")
    with pytest.raises(FleetConfigError) as missing:
        prepare(hosts, test_fleet, str(fake_repo / "inventory.py"))
    for name in ("pi0-epsilon-x1", "pi0-epsilon-x2"):
        assert (f"{name}: vault['ssh_host_ed25519_key/{name}']: is missing from" in str(missing.value)
                and "python -m fleet vault hostkeys" in str(missing.value))
    # with them, pyinfra gets them in the copied host's groups
    run = subprocess.run([sys.executable, "-m", "fleet", "vault", "hostkeys"], cwd=fake_repo, text=True,
                         capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(fake_repo)})
    assert run.returncode == 0, run.stderr
    assert "generated host keys for: pi0-epsilon-x1, pi0-epsilon-x2" in run.stderr
    keys._open.cache_clear()  # this process decrypted the vault before the keys were added
    groups = pyinfra_groups(hosts, test_fleet, str(fake_repo / "inventory.py"))
    assert sorted(n for n, _ in groups["healthcheck"]) == ["@fleet/pi0-epsilon", "@fleet/pi0-epsilon-x1",
                                                          "@fleet/pi0-epsilon-x2"]


def test_a_bootstrap_hosts_earlier_first_contact_is_forgotten_on_the_real_fleet(tmp_path):
    """bootstrap_known_hosts keeps the key of a card's first contact; the next card at that
    address (or the same card, its vault key on, in a rebuild run again) would be refused
    as a changed key. For the hosts named in FLEET_BOOTSTRAP, their addresses' lines go,
    hashed ones too; every other host's stay."""
    import subprocess
    from types import SimpleNamespace

    from fleet.preflight.inventory import forget_first_contacts

    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0bHf8q0k1Xq3bq9Yk9mO2W7cQ1c1zv8y3Jt9m2rYQx"
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKc9v4o3x3n1uV3kq1q7cU4d6x2aB5mQ9c8Yt1r2s3t4"
    path = tmp_path / "bootstrap_known_hosts"
    path.write_text(f"192.168.1.13 {key}\n100.64.0.3 {key}\n192.168.1.11 {other}\n")
    hashed = tmp_path / "hashed"
    hashed.write_text(f"192.168.1.13 {key}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    path.write_text(path.read_text() + hashed.read_text())
    assert path.read_text().count("|1|") == 1
    fleet = SimpleNamespace(hosts={
        "pi5-gamma": SimpleNamespace(lan_address="192.168.1.13", tailnet_address="100.64.0.3"),
        "pi5-alpha": SimpleNamespace(lan_address="192.168.1.11", tailnet_address="100.64.0.1")})
    forget_first_contacts(fleet, {"pi5-gamma"}, tmp_path)
    assert path.read_text().splitlines() == [f"192.168.1.11 {other}"]
    forget_first_contacts(fleet, set(), tmp_path)  # nobody bootstrapped: nothing changes
    assert path.read_text().splitlines() == [f"192.168.1.11 {other}"]


def test_a_reader_that_went_away_stops_a_command_quietly():
    # `python -m fleet backups | head`: the pipe is closed while the command still prints
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "fleet", "--help"], cwd=REPO, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == ""


def test_ctrl_c_ends_a_command_with_one_line_and_130(monkeypatch, capsys):
    """Ctrl-C: no traceback. A command with its own word on what it leaves says it (backup's
    unit goes on on the host); any other gets the entry point's one line."""
    import fleet.__main__ as entry
    from fleet.commands import backup

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(backup, "cmd_backup", interrupted)
    assert backup.main(["backup", "pi5-gamma"]) == 130
    assert capsys.readouterr().err == ("backup: interrupted here; the backup goes on on the host "
                                       "(journalctl -u fleet-backup.service there)\n")
    monkeypatch.setattr(entry, "main", interrupted)
    assert entry.run(["check"]) == 130
    assert capsys.readouterr().err == "fleet check: interrupted\n"
