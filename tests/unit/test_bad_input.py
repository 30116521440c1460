"""Bad input gets one line naming the host (or file), the key and the fix, before any host is
touched; never a traceback. Each case is one the project was seen to mishandle, or a
neighbour of one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploys import tailscale, vllm
from fleet.converge.render import dquote, systemd_env
from fleet.preflight.inventory import FleetConfigError, check_patterns, read_inventory_data
from fleet.preflight.model import DataFileError, load_group_data
from fleet.preflight.validate import problems

REPO = Path(__file__).resolve().parents[2]


def one_line(found) -> list[str]:
    lines = [str(p) for p in found]
    assert all("\n" not in line and "Fix:" in line for line in lines), lines
    return lines


def test_a_port_given_as_a_string_names_the_service(data):
    data.all_data["fleet_services"]["llm"]["port"] = "8080"
    assert one_line(problems(data.fleet())) == [
        "all: fleet_services['llm'].port: '8080' is not a TCP port. Fix: use an integer 1-65535."]


def test_an_empty_inventory_is_one_line(data):
    data.hosts = {}
    assert one_line(problems(data.fleet())) == [
        "inventory.py: HOSTS: is empty: there is no host to converge. Fix: add your hosts to HOSTS in "
        "inventory.py (name -> groups, addresses, ssh_user, arch)."]


def test_a_docker_pool_overlapping_every_lan_is_one_line(data):
    data.all_data["docker_address_pools"] = [{"base": "0.0.0.0/0", "size": 24}]
    found = one_line(p for p in problems(data.fleet()) if p.key == "docker_address_pools")
    # one line per LAN network it overlaps (the Pis and the Jetson share one), plus the tailnet
    assert len(found) == 3, found
    assert all(line.startswith("all: docker_address_pools: pool 0.0.0.0/0 overlaps") for line in found)


@pytest.mark.parametrize("key, value, message", [
    ("docker_log_max_file", "3", "'3' is a str, but it must be an int (default: 3)."),
    ("docker_enabled", "yes", "'yes' is a str, but it must be a bool (default: True)."),
    ("base_time_sync_running", 1, "1 is an int, but it must be a bool or None (default: True)."),
    ("ollama_models", "qwen2.5:7b", "'qwen2.5:7b' is a str, but it must be a list (default: ['qwen2.5:7b'])."),
])
def test_a_setting_of_the_wrong_type_is_one_line_per_host(data, key, value, message):
    data.hosts["jetson-prime"][key] = value
    [line] = one_line(p for p in problems(data.fleet()) if p.key == key)
    assert line == f"jetson-prime: {key}: {message} Fix: correct it in its entry in inventory.py."


def test_a_group_set_value_names_its_file(data):
    data.group_data["gpu"]["docker_log_max_size"] = 10
    [line] = one_line(p for p in problems(data.fleet()) if p.key == "docker_log_max_size")
    assert line.endswith("Fix: correct it in group_data/gpu.py.")


@pytest.mark.parametrize("entry, message", [
    ("pi5-zeta", "the entry is a str, not a dict of the host's facts."),
    ({"groups": "pis", "lan_address": "192.168.1.30/24", "tailnet_address": "100.100.0.30",
      "ssh_user": "pi", "arch": "arm64"}, "groups is 'pis', not a list of group names."),
])
def test_a_malformed_host_entry_is_one_line(data, entry, message):
    data.hosts["pi5-zeta"] = entry
    [line] = one_line(problems(data.fleet()))
    assert line.startswith(f"pi5-zeta: HOSTS: {message}")


def test_host_facts_must_be_text(data):
    data.hosts["pi5-beta"]["tailnet_address"] = 100
    found = one_line(p for p in problems(data.fleet()) if p.key == "tailnet_address")
    assert found[0].startswith("pi5-beta: tailnet_address: 100 is an int, not text.")


def test_domains_must_name_hosts_and_services(data):
    data.all_data["fleet_domains"]["x.blackroad.io"] = {"host": "pi5-alpha", "service": 3000, "tunnel": "pi5-alpha"}
    [line] = one_line(p for p in problems(data.fleet()) if p.key.startswith("fleet_domains"))
    assert line.startswith("all: fleet_domains['x.blackroad.io'].service: 3000 is not a name.")


@pytest.mark.parametrize("key, value", [
    ("docker_cmdline_tokens", ["cgroup_memory=1'; reboot; '"]),
    ("cloudflared_user", "cloud flared"),
])
def test_values_that_would_reach_a_shell_or_unit_are_refused(data, key, value):
    data.group_data["gateway"][key] = value
    found = one_line(p for p in problems(data.fleet()) if p.key == key)
    assert found and found[0].startswith("pi5-alpha: " + key)


def test_an_apt_source_with_a_quote_is_refused(data):
    spec = dict(tailscale.DEFAULTS["tailscale_apt"])
    spec["uris"] = "http://mirror/x' y"
    data.all_data["tailscale_apt"] = spec
    found = one_line(p for p in problems(data.fleet()) if p.key == "tailscale_apt")
    # all.py gives it to every host: one line, not one per host
    assert len(found) == 1 and found[0].startswith("all: tailscale_apt: ")
    assert "must be one line of text without quotes" in found[0]


@pytest.mark.parametrize("key, value", [
    ("tailscale_version", "1.102.4; rm -rf /"), ("tailscale_version", None), ("cloudflared_version", " 2026.7.1"),
    ("nvidia_container_toolkit_version", 1.2), ("cloudflared_version", "latest"),
])
def test_a_package_pin_that_is_not_a_debian_version_is_one_line(data, key, value):
    data.all_data[key] = value
    assert one_line(p for p in problems(data.fleet()) if p.key == key) == [
        f"all: {key}: {value!r} is not a Debian package version. Fix: pin the version as `apt-cache policy` "
        "shows it (e.g. '1.2.3-1'), in group_data/all.py."]


@pytest.mark.parametrize("pin", ["1.102.4", "5:29.8.2-1~debian.12~bookworm", "1.20.1-1", "2026.7.1+ds1"])
def test_a_debian_version_pin_passes(data, pin):
    data.all_data["tailscale_version"] = pin
    assert not [p for p in problems(data.fleet()) if p.key == "tailscale_version"]


def test_a_pin_set_for_one_host_names_that_host(data):
    data.hosts["jetson-prime"]["nvidia_container_toolkit_version"] = "1.20.1 -1"
    assert one_line(p for p in problems(data.fleet()) if p.key == "nvidia_container_toolkit_version") == [
        "jetson-prime: nvidia_container_toolkit_version: '1.20.1 -1' is not a Debian package version. Fix: pin the "
        "version as `apt-cache policy` shows it (e.g. '1.2.3-1'), in its entry in inventory.py."]


def fleet_wide(data, key, value) -> list[str]:
    """The problems about `key` when group_data/all.py sets it to `value` for every host."""
    data.all_data[key] = value
    for layer in (*data.group_data.values(), *data.hosts.values()):
        layer.pop(key, None)
    return one_line(p for p in problems(data.fleet()) if p.key == key)


@pytest.mark.parametrize("key", ["backup_repository_dir", "grafana_data_dir", "grafana_logs_dir", "journal_remote_dir",
                                 "node_exporter_textfile_dir", "prometheus_data_dir", "ollama_home"])
@pytest.mark.parametrize("value", ["/", "/etc", "/var/../etc", "relative/dir", "", "/srv/my data"])
def test_a_directory_a_service_owns_is_never_a_system_one(data, key, value):
    # each is created and chowned to the service's account: `/` or `/etc` would be given away
    assert fleet_wide(data, key, value) == [
        f"all: {key}: {value!r} is not a directory a service may own. Fix: use an absolute path two or more "
        "levels deep, of letters, digits, '.', '_' and '-' (e.g. /var/lib/<service>)."]


@pytest.mark.parametrize("key", ["backup_repository_user", "cloudflared_user", "ollama_user"])
@pytest.mark.parametrize("value", ["", "root;id", "Backup"])
def test_a_service_account_is_a_plain_name(data, key, value):
    [line] = fleet_wide(data, key, value)
    assert line.startswith(f"all: {key}: {value!r} is not a system account name. Fix:")


@pytest.mark.parametrize("key", ["backup_repository_user", "ollama_home", "tailscale_port", "postgres_version"])
def test_a_value_of_the_wrong_type_is_one_line_not_two(data, key):
    [line] = fleet_wide(data, key, None)
    assert line.startswith(f"all: {key}: None is a NoneType, but it must be")


@pytest.mark.parametrize("key, value, message", [
    ("tailscale_port", -1, "-1 is not a UDP port."), ("tailscale_port", 70000, "70000 is not a UDP port."),
    ("tailscale_daemon_flags", "verbose=1", "'verbose=1' is not a tailscaled flag."),
    ("tailscale_daemon_flags", "--verbose=1 ; reboot", "';', 'reboot' is not a tailscaled flag."),
    ("base_timezone", "../../../etc/shadow", "'../../../etc/shadow' is not a timezone name."),
    ("base_timezone", "", "'' is not a timezone name."),
    ("postgres_version", -1, "-1 is not a PostgreSQL major version."),
    ("postgres_max_connections", 0, "0 is not a number of connections."),
    ("postgres_exporter_role", "exporter; drop", "'exporter; drop' is not a plain PostgreSQL name."),
    ("docker_log_max_size", "10 m", "'10 m' is not a log file size."),
    ("docker_log_max_file", -1, "-1 is not a number of log files."),
    ("backup_repository_check_subset", "all", "'all' is not a restic data subset."),
    ("backup_repository_prune_schedule", "", "'' is not one line of a schedule."),
    ("ollama_version", "latest", "'latest' is not an Ollama release version."),
    ("ollama_release_url", "ftp://x/{version}", "'ftp://x/{version}' is not a release URL."),
    ("ollama_release_url", "https://example.org/ollama", "'https://example.org/ollama' is not a release URL."),
])
def test_a_value_that_would_fail_on_the_host_is_one_line_first(data, key, value, message):
    # each would stop a daemon at its restart (tailscaled: the tailnet the operator may use)
    # or fail in a command mid-converge
    [line] = fleet_wide(data, key, value)
    assert line.startswith(f"all: {key}: {message} Fix:")


@pytest.mark.parametrize("value", [None, "", "0"])
def test_the_good_values_pass(data, value):
    for key, good in (("tailscale_port", 0), ("tailscale_daemon_flags", "--verbose=1 --no-logs-no-support"),
                      ("base_timezone", "America/Argentina/Buenos_Aires"), ("base_timezone", "Etc/GMT-3"),
                      ("backup_repository_check_subset", "1/5"), ("backup_repository_check_subset", "2.5%"),
                      ("backup_repository_dir", "/mnt/ssd-1/backup.d")):
        assert fleet_wide(data, key, good) == [], (key, good)


def test_a_vllm_cache_volume_given_as_a_path_is_refused(data):
    # `docker run --volume /:/root/.cache/huggingface` would hand the host's root to the container
    data.hosts["jetson-prime"]["llm_engine"] = "vllm"
    data.group_data["llm"]["vllm_image"] = "vllm/vllm-openai@sha256:" + "ab" * 32
    for key, value in (("vllm_cache_volume", "/"), ("vllm_container", "x;y")):
        data.hosts["jetson-prime"][key] = value
        assert any(line.startswith(f"jetson-prime: {key}: {value!r} is not a Docker") for line in
                   one_line(p for p in problems(data.fleet()) if p.key == key))
    for key, value in (("vllm_image", ""), ("vllm_model", "Qwen/Qwen2.5 7B")):
        data.hosts["jetson-prime"][key] = value
        assert one_line(p for p in problems(data.fleet()) if p.key == key) == [
            f"jetson-prime: {key}: {value!r} is empty or has a space. Fix: write one word, e.g. "
            f"{vllm.DEFAULTS[key]!r}."]


@pytest.mark.parametrize("sysctls", [{"a": 1}, {"vm.swappiness": "10\nkernel.panic = 1"}, {"vm.swappiness": True},
                                     {"net.ipv4.*": 1}, {"vm.swappiness": "1; reboot"}])
def test_a_sysctl_is_a_dotted_name_and_a_plain_value(data, sysctls):
    [line] = fleet_wide(data, "base_sysctls", sysctls)
    assert "is not a kernel parameter and its value." in line and line.startswith("all: base_sysctls: ")


@pytest.mark.parametrize("name", ["vim; touch /tmp/x", "-oAPT::Get::AllowUnauthenticated=1", "Vim", "v",
                                  "curl=1.0 wget", "", 7])
def test_a_base_package_is_one_debian_package_name(data, name):
    # each is an argument of apt-get install as root: a shell word or an apt option is refused
    [line] = fleet_wide(data, "base_packages", ["curl", name])
    assert line.startswith(f"all: base_packages: {name!r} is not a Debian package name. Fix: ")


def test_package_names_apt_takes_pass(data):
    assert fleet_wide(data, "base_packages", ["curl", "g++", "libstdc++6", "python3.11", "libc6:arm64",
                                              "curl=7.88.1-10+deb12u8", "tzdata=2024a-0+deb12u1"]) == []


@pytest.mark.parametrize("extra", [{"hosts": ["tcp://0.0.0.0:2375"]}, {"ip": "0.0.0.0"},
                                   {"default-address-pools": [{"base": "192.168.1.0/24", "size": 24}]},
                                   {"log-opts": {"max-size": "1g"}}, {"runtimes": {}}])
def test_docker_daemon_extra_cannot_undo_what_the_fleet_checks(data, extra):
    # merged last into daemon.json: a TCP API, publishing on every address, a pool over the LAN
    [line] = fleet_wide(data, "docker_daemon_extra", {"debug": True, **extra})
    key = next(iter(extra))
    assert line.startswith(f"all: docker_daemon_extra: {key!r} cannot be set through docker_daemon_extra. Fix: ")


def test_other_daemon_json_keys_pass(data):
    assert fleet_wide(data, "docker_daemon_extra", {"debug": True, "max-concurrent-downloads": 2}) == []


@pytest.mark.parametrize("args, flag", [(["--api-key", "sk-x"], "--api-key"), (["--port=9000"], "--port"),
                                        (["--host", "0.0.0.0"], "--host"), (["--served-model-name", "m"], "--served-model-name")])
def test_vllm_extra_args_leave_the_fleets_own_arguments_alone(data, args, flag):
    data.hosts["jetson-prime"]["llm_engine"] = "vllm"
    data.group_data["llm"]["vllm_image"] = "vllm/vllm-openai@sha256:" + "ab" * 32
    data.hosts["jetson-prime"]["vllm_extra_args"] = ["--gpu-memory-utilization", "0.8", *args]
    assert one_line(p for p in problems(data.fleet()) if p.key == "vllm_extra_args") == [
        f"jetson-prime: vllm_extra_args: {flag!r} is the fleet's own vLLM argument. Fix: leave it out: "
        f"{vllm.FLEET_FLAGS[flag]}."]


@pytest.mark.parametrize("model", ["qwen; curl evil", "--insecure", "qwen 7b", "", "a:b:c"])
def test_an_ollama_model_is_a_name_ollama_pull_takes(data, model):
    data.hosts["jetson-prime"]["ollama_models"] = ["qwen2.5:7b", model]
    assert [p.key for p in problems(data.fleet()) if p.key == "ollama_models"] == ["ollama_models"]
    data.hosts["jetson-prime"]["ollama_models"] = ["qwen2.5:7b", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"]
    assert not [p for p in problems(data.fleet()) if p.key == "ollama_models"]


@pytest.mark.parametrize("setting, message", [
    ({"PasswordAuthentication": "yes"}, "would undo key-only logins without root"),
    ({"permitrootlogin": "prohibit-password"}, "would undo key-only logins without root"),
    ({"ListenAddress": "0.0.0.0"}, "is written by the deploy"),
    ({"Match": "User bob"}, "is written by the deploy"),
    ({"AllowUsers": "bob"}, "decides whether the admin's key logs in"),
    ({"AuthorizedKeysFile": "none"}, "decides whether the admin's key logs in"),
    ({"AuthenticationMethods": "publickey,password"}, "decides whether the admin's key logs in"),
    ({"KexAlgorithms": "sntrup761x25519-sha512@openssh.com"}, "leaves none the converge's SSH client speaks"),
    ({"Ciphers": "-aes*"}, "leaves none the converge's SSH client speaks"),
    ({"HostKeyAlgorithms": "rsa-sha2-512"}, "leaves none the converge's SSH client speaks"),
    ({"PubkeyAcceptedAlgorithms": "rsa-sha2-512"}, "does not accept the admin key type ssh-ed25519"),
])
def test_sshd_settings_that_weaken_or_lock_out_are_refused(data, setting, message):
    # `sshd -t` passes every one of these; the next converge (or anyone with a password) would not
    [line] = fleet_wide(data, "base_sshd_settings", {"ClientAliveInterval": "300", **setting})
    assert line.startswith(f"all: base_sshd_settings: {next(iter(setting))!r}") and message in line and "Fix: " in line


def test_sshd_settings_that_keep_the_admin_in_pass(data):
    assert fleet_wide(data, "base_sshd_settings", {
        "PasswordAuthentication": "no", "MaxAuthTries": "3", "KexAlgorithms": "+diffie-hellman-group14-sha1",
        "Ciphers": "-aes128-cbc,3des-cbc", "MACs": "hmac-sha2-512,umac-128@openssh.com",
        "PubkeyAcceptedAlgorithms": "ssh-ed25519,rsa-sha2-512", "AllowTcpForwarding": "no"}) == []


def test_sysctls_of_every_kind_pass(data):
    assert fleet_wide(data, "base_sysctls", {"net.ipv4.tcp_rmem": "4096 87380 6291456", "vm.swappiness": 10,
                                             "net.ipv4.conf.eth0-1.forwarding": "1", "kernel.sem": [250, 256000]}) == []


@pytest.mark.parametrize("value, message", [
    (None, "None is not a tailnet machine name."), ("", "'' is not a tailnet machine name."),
    ("Pi5 Beta", "'Pi5 Beta' is not a tailnet machine name."), ("pi5-alpha", "'pi5-alpha' is also pi5-alpha's."),
])
def test_a_tailnet_name_is_a_dns_label_of_its_own(data, value, message):
    data.hosts["pi5-beta"]["tailnet_name"] = value
    [line] = one_line(p for p in problems(data.fleet()) if p.key == "tailnet_name")
    assert line.startswith(f"pi5-beta: tailnet_name: {message} Fix:")


def test_a_host_without_a_tailnet_name_joins_under_its_inventory_name(data):
    from fleet.preflight.inventory import apply_target
    del data.hosts["pi5-beta"]["tailnet_name"]
    assert data.fleet().hosts["pi5-beta"].data["tailnet_name"] == "pi5-beta"  # what the commands read
    entries = apply_target(data.hosts, data.test_fleet, REPO, "fleet")  # what pyinfra's hosts get
    assert entries["pi5-beta"]["tailnet_name"] == "pi5-beta" and entries["pi5-alpha"]["tailnet_name"] == "pi5-alpha"


@pytest.mark.parametrize("user", ["pi admin", "Pi", "pi;id"])
def test_the_ssh_user_is_an_account_name(data, user):
    data.hosts["pi5-beta"]["ssh_user"] = user
    assert one_line(p for p in problems(data.fleet()) if p.key == "ssh_user") == [
        f"pi5-beta: ssh_user: {user!r} is not an account name. Fix: use the admin user's login, e.g. 'pi' "
        "(lower-case letters, digits, '_', '-')."]


def test_tailnet_admins_of_the_wrong_type_is_one_line_not_a_traceback(data):
    assert fleet_wide(data, "tailnet_policy_admins", -1) == [
        "all: tailnet_policy_admins: -1 is not a list of names. Fix: write it like ['alice@example.com'] in "
        "group_data/all.py."]


def test_a_negative_apt_lock_timeout_is_one_line(data):
    data.hosts["pi5-beta"]["base_apt_lock_timeout"] = -5
    assert one_line(p for p in problems(data.fleet()) if p.key == "base_apt_lock_timeout") == [
        "pi5-beta: base_apt_lock_timeout: -5 is not 0 to 3600 seconds. Fix: set how long apt waits for the "
        "package lock, e.g. 120."]


def test_sshd_settings_cannot_inject_lines(data):
    """Set in group_data/all.py for every host: one line, as host `all`, not one per host."""
    found = fleet_wide(data, "base_sshd_settings", {"PasswordAuthentication": "no\nPermitRootLogin yes"})
    assert found == ["all: base_sshd_settings: 'PasswordAuthentication': 'no\\nPermitRootLogin yes' is not one "
                     "sshd_config setting. Fix: use sshd's keyword and a one-line value."]


def test_a_bad_sshd_setting_of_one_host_names_that_host(data):
    data.hosts["pi5-beta"]["base_sshd_settings"] = {"Port 22": "2222"}
    found = one_line(p for p in problems(data.fleet()) if p.key == "base_sshd_settings")
    assert len(found) == 1 and found[0].startswith("pi5-beta: base_sshd_settings: 'Port 22': '2222'")


def test_a_syntax_error_in_group_data_is_file_and_line(tmp_path):
    shutil.copytree(REPO / "group_data", tmp_path / "group_data")
    with open(tmp_path / "group_data" / "llm.py", "a") as f:
        f.write("\nollama_models = ['qwen2.5:7b'\n")
    with pytest.raises(DataFileError) as err:
        load_group_data(tmp_path / "group_data")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}/group_data/llm.py:")
    assert "invalid Python" in message and "Fix:" in message


def test_an_error_raised_in_group_data_is_file_and_line(tmp_path):
    shutil.copytree(REPO / "group_data", tmp_path / "group_data")
    (tmp_path / "group_data" / "pis.py").write_text("x = 1\ny = undefined_name\n")
    with pytest.raises(DataFileError, match=r"pis\.py:2: NameError: name 'undefined_name' is not defined"):
        load_group_data(tmp_path / "group_data")


def test_inventory_syntax_error_is_file_and_line(tmp_path):
    bad = tmp_path / "inventory.py"
    bad.write_text("HOSTS = {\nTEST_FLEET = {}\n")
    with pytest.raises(FleetConfigError, match=r"inventory\.py:\d+: invalid Python"):
        read_inventory_data(bad)


def test_the_cli_prints_one_line_for_bad_group_data(tmp_path):
    """End to end through pyinfra's own CLI: the problem, no traceback, no host touched."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv", ".state", "__pycache__"))
    (repo / "group_data" / "all.py").write_text((repo / "group_data" / "all.py").read_text().replace(
        '"llm": {"port": 8080,', '"llm": {"port": "8080",'))
    pyinfra = Path(sys.executable).with_name("pyinfra")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "FLEET_TARGET": "fleet",
           "FLEET_VAULT_PASSPHRASE": "unused", "HOME": str(tmp_path)}
    proc = subprocess.run([str(pyinfra), "-y", "inventory.py", "deploys/site.py"], cwd=repo, env=env,
                          text=True, capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "all: fleet_services['llm'].port: '8080' is not a TCP port. Fix: use an integer 1-65535." in out
    assert "Connecting" not in out


@pytest.mark.parametrize("value, quoted", [
    ("", '""'), ("--verbose 2", '"--verbose 2"'), ('say "hi" $HOME `x` \\', '"say \\"hi\\" \\$HOME \\`x\\` \\\\"'),
])
def test_dquote_for_environment_files(value, quoted):
    assert dquote(value) == quoted


@pytest.mark.parametrize("value, rendered", [
    ("OLLAMA_HOST=100.100.0.10:8080", "OLLAMA_HOST=100.100.0.10:8080"),
    ('MESSAGE=Back "soon" 100%', '"MESSAGE=Back \\"soon\\" 100%%"'),
])
def test_systemd_env_quotes_only_what_needs_it(value, rendered):
    assert systemd_env(value) == rendered


@pytest.mark.parametrize("bad", ["two\nlines", "bell\x07"])
def test_control_characters_never_reach_a_file(bad):
    with pytest.raises(ValueError, match="control character"):
        dquote(bad)
    with pytest.raises(ValueError, match="control character"):
        systemd_env(bad)


def test_the_maintenance_message_with_a_quote_renders_a_valid_unit():
    from fleet.converge.render import render

    unit = render("etc/systemd/system/maintenance-page.service.j2", "maintenance", script="/s", address="127.0.0.1",
                  port=8080, message='Back "soon"')
    assert 'Environment="MAINTENANCE_MESSAGE=Back \\"soon\\""' in unit


@pytest.mark.parametrize("value", ["s3cr3t-canary\n", "s3cr3t-canary\nLD_PRELOAD=/tmp/x.so", 's3cr3t-"canary'])
def test_a_secret_written_inside_an_env_file_must_fit_in_one_line(data, tmp_path, monkeypatch, value):
    # vLLM's key goes into /etc/fleet/vllm.env as VLLM_API_KEY=<value>: a line break would end
    # the line (`echo` adds one), and what follows would be another variable
    from fakes.operator import use_vault
    from fleet.converge import component as registry
    from fleet.preflight.inventory import check_vault
    from fleet.preflight.validate import InventoryError

    data.hosts["jetson-prime"]["llm_engine"] = "vllm"
    fleet = data.fleet()
    values = {k: "x" for h in fleet.hosts.values() for k in registry.vault_keys(h.name, h.groups, h.data)}
    use_vault(tmp_path / "ok.vault", "pp", values, monkeypatch)
    check_vault(fleet)  # one-line values: nothing to say
    use_vault(tmp_path / "bad.vault", "pp", {**values, "vllm_api_key": value}, monkeypatch)
    with pytest.raises(InventoryError) as refused:
        check_vault(fleet)
    lines = one_line(refused.value.problems)
    assert lines == ["all: vault['vllm_api_key']: has a line break, control character, quote or backslash, and it "
                     "is written inside /etc/fleet/vllm.env (e.g. a trailing newline from `echo`). Fix: store it as "
                     "one line: `printf %s \"$VALUE\" | python -m fleet vault set vllm_api_key`."]
    assert "canary" not in str(refused.value)


@pytest.mark.parametrize("option, pattern", [("limit", "pi5-alpah"), ("exclude", "pi0-*x"), ("limit", "gpus")])
def test_a_limit_or_exclude_that_matches_nothing_is_one_line(option, pattern):
    """pyinfra itself only warns: a mistyped --limit ran on no host and exited 0, and a
    mistyped --exclude ran on the host it was meant to leave out."""
    hosts, groups = ["pi5-alpha", "pi0-epsilon"], ["all", "gpu", "pis"]
    with pytest.raises(FleetConfigError) as exc:
        check_patterns({"limit": ("pis",), option: (pattern,)}, hosts, groups)
    assert one_line([exc.value]) and str(exc.value).startswith(f"--{option} {pattern!r} matches no host and no group")


def test_a_comma_separated_limit_says_how_pyinfra_takes_several():
    with pytest.raises(FleetConfigError) as exc:
        check_patterns({"limit": ("pi5-alpha,pis",)}, ["pi5-alpha", "pi0-epsilon"], ["all", "gpu", "pis"])
    assert one_line([exc.value]) and str(exc.value).endswith(
        "pyinfra takes one name per --limit: --limit pi5-alpha --limit pis.")


@pytest.mark.parametrize("patterns", [{}, {"limit": ("pi5-alpha",)}, {"limit": ("gpu", "pi0-*"), "exclude": ("pis",)},
                                      {"limit": ("all",), "exclude": ("pi?-alpha",)}])
def test_limits_that_name_hosts_groups_or_patterns_pass(patterns):
    check_patterns(patterns, ["pi5-alpha", "pi0-epsilon"], ["all", "gpu", "pis"])


def test_the_cli_refuses_a_mistyped_limit_before_connecting(tmp_path):
    """End to end: pyinfra's own --limit, read from its command line by the inventory."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv", ".state", "__pycache__", "tests"))
    pyinfra = Path(sys.executable).with_name("pyinfra")
    # the real fleet's data, whose keys and pins are not filled in: the command line is named first
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "FLEET_TARGET": "fleet",
           "FLEET_VAULT_PASSPHRASE": "unused", "HOME": str(tmp_path)}
    proc = subprocess.run([str(pyinfra), "-y", "inventory.py", "deploys/site.py", "--limit", "pi5-alpah"], cwd=repo,
                          env=env, text=True, capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert "--limit 'pi5-alpah' matches no host and no group; nothing was run. Fix: use names" in out
    assert "Connecting" not in out and "base_admin_ssh_keys" not in out


@pytest.mark.parametrize("command, argv", [("check", ["extra"]), ("docs", ["--chek"])])
def test_a_command_without_arguments_refuses_stray_ones(command, argv, capsys):
    """`docs --chek` regenerated the docs it was meant to compare; `check extra` ignored it."""
    from fleet.__main__ import main

    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"unknown arguments {argv[0]!r}" in err


@pytest.mark.parametrize("argv, wanted", [
    (["phase", "x"], "python -m fleet phase: argument phase: invalid int value: 'x'"),
    (["phase"], "python -m fleet phase: the following arguments are required: phase"),
    (["backup"], "python -m fleet backup: the following arguments are required: host"),
    (["restore", "pi5-gamma", "--snapshot"], "python -m fleet restore: argument --snapshot: expected one argument"),
    (["rebuild"], "python -m fleet rebuild: the following arguments are required: host"),
    (["rollback", "web", "--hots", "x"], "python -m fleet rollback: unrecognized arguments: --hots x"),
    (["vault", "bogus"], "python -m fleet vault: argument command: invalid choice: 'bogus'"),
    (["llm-check", "--bogus"], "python -m fleet llm-check: unrecognized arguments: --bogus"),
    (["edge"], "python -m fleet edge: the following arguments are required: command"),
    (["tailnet", "apply", "--forse"], "python -m fleet tailnet: unrecognized arguments: --forse"),
    (["llm-check", "--timeout", "-1"], "python -m fleet llm-check: argument --timeout: invalid positive float value"),
    (["llm-check", "--timeout", "nan"], "python -m fleet llm-check: argument --timeout: invalid positive float value"),
    (["llm-check", "--max-tokens", "0"], "python -m fleet llm-check: argument --max-tokens: invalid positive int"),
    (["vault", "set", "k", "--generate", "-5"], "python -m fleet vault set: argument --generate: invalid positive int"),
])
def test_bad_usage_of_every_command_is_one_line_with_the_fix(argv, wanted, capsys):
    """argparse printed its usage block before the error; the fix is where the usage is."""
    from fleet.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(wanted), err
    assert err.rstrip().endswith(f"Fix: see `{wanted.split(':')[0]} --help`."), err


@pytest.mark.parametrize("option, value, wanted", [
    ("--snapshot", ";rm -rf /", "SNAPSHOT=';rm -rf /' is not a snapshot ID"),
    ("--snapshot", "abc", "SNAPSHOT='abc' is not a snapshot ID"),
    ("--database", "x;y", "DATABASE='x;y' is not a PostgreSQL database name"),
    ("--database", "app.*", "DATABASE='app.*' is not a PostgreSQL database name"),
])
def test_a_restores_arguments_are_refused_before_any_host_is_touched(option, value, wanted, capsys, monkeypatch):
    """They reached the host's fleet-restore over SSH first (quoted, so nothing ran), which
    refused them there; `app.*` matched every database name as a grep pattern."""
    from fleet.commands import backup

    monkeypatch.setattr(backup, "load", lambda: pytest.fail("the inventory was loaded to reach a host"))
    assert backup.main(["restore", "pi5-gamma", option, value]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"restore: {wanted}") and "Fix:" in err, err


@pytest.mark.parametrize("snapshot", ["latest", "4f0e1c2a", "4f0e1c2a" * 8])
def test_snapshot_ids_as_restic_prints_them_pass(snapshot):
    from argparse import Namespace

    from fleet.commands import backup

    backup.restore_arguments(Namespace(snapshot=snapshot, database="blackroad"))


def _with_cli(params: dict):
    """A click context holding what pyinfra's command line parsed (`params`)."""
    import click

    ctx = click.Context(click.Command("pyinfra"))
    ctx.params = params
    return ctx


def test_data_given_on_the_command_line_is_parsed_as_pyinfra_parses_it():
    """In a process of its own: cli_data uses pyinfra_cli's parser, and importing pyinfra_cli
    monkey-patches the interpreter for gevent (under pyinfra's CLI it is imported already)."""
    script = """if True:
        import json, click
        from fleet.preflight.inventory import cli_data
        assert cli_data() == {}  # not under pyinfra's command line (the API, tests)
        ctx = click.Context(click.Command("pyinfra"))
        ctx.params = {"data": ("a=abc", "b=3", "c=true", 'd={"x": [1]}', "e=", "f=x=y"), "ssh_port": 2222}
        with ctx:
            print(json.dumps(cli_data()))
    """
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"a": "abc", "b": 3, "c": True, "d": {"x": [1]}, "e": "", "f": "x=y",
                                      "ssh_port": 2222}


@pytest.mark.parametrize("arg", ["llm_engine", "=vllm", " =1"])
def test_a_data_argument_without_a_key_and_value_is_one_line(arg):
    """pyinfra splits --data at "=" before the inventory is read: one without it was a traceback."""
    from fleet.preflight.inventory import check_cli_data

    with _with_cli({"data": (arg,)}), pytest.raises(FleetConfigError) as exc:
        check_cli_data()
    assert one_line([exc.value]) and str(exc.value).startswith(f"--data {arg!r} is not KEY=VALUE")


@pytest.mark.parametrize("given, wanted", [
    ({"base_apt_lock_timeout": "abc"}, "--data: base_apt_lock_timeout: 'abc' is a str, but it must be an int"),
    ({"ssh_user": "root;rm"}, "--data: ssh_user: 'root;rm' is not an account name."),
    ({"llm_engine": "bogus"}, "--data: llm_engine: 'bogus' is not an engine."),
])
def test_a_bad_value_given_with_data_is_named_once_before_any_host(given, wanted, data):
    """`--data base_apt_lock_timeout=abc` reached a deploy and ended in its traceback; it is
    checked with the rest of the data, once for every host it is put over."""
    from fleet.preflight.inventory import override, once_for_cli

    fleet = data.fleet()
    override(fleet, {name: {} for name in fleet.hosts}, given)
    found = once_for_cli(problems(fleet), given)
    assert one_line(found) and [str(p) for p in found if p.host == "--data"] == [
        next(str(p) for p in found if str(p).startswith(wanted))]
    assert all(h.data[k] == v for h in fleet.hosts.values() for k, v in given.items())


def test_a_good_value_given_with_data_passes(data):
    from fleet.preflight.inventory import override

    fleet = data.fleet()
    override(fleet, {name: {} for name in fleet.hosts}, {"llm_engine": "vllm"})
    assert problems(fleet) == []


def test_the_cli_refuses_data_without_a_value_before_the_inventory(tmp_path):
    """End to end: config.py, which pyinfra runs before it splits --data."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv", ".state", "__pycache__", "tests"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "FLEET_TARGET": "fleet",
           "FLEET_VAULT_PASSPHRASE": "unused", "HOME": str(tmp_path)}
    proc = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "-y", "inventory.py", "deploys/site.py",
                           "--data", "llm_engine"], cwd=repo, env=env, text=True, capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    assert "--data 'llm_engine' is not KEY=VALUE. Fix:" in out and "Loading inventory" not in out
