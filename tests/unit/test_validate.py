"""Each validation rule rejects bad data with a message naming the host, the key and a fix."""

import pytest

from fleet.preflight.validate import InventoryError, problems, validate


def only(found, key_fragment):
    hits = [p for p in found if key_fragment in p.key]
    assert hits, f"no problem about {key_fragment!r} in: {[str(p) for p in found]}"
    return hits


def test_real_data_is_valid(data):
    assert problems(data.fleet()) == []


def test_port_used_twice_on_one_host(data):
    data.all_data["fleet_services"]["grafana"]["port"] = 9090  # prometheus's port
    [p] = only(problems(data.fleet()), "fleet_services")
    assert p.host == "pi400-delta"
    assert "port 9090 is used by both 'prometheus' and 'grafana'" in p.message
    assert "another port" in p.fix


def test_same_port_on_different_hosts_is_fine(data):
    # web (gateway) and grafana (monitoring) both use 3000 on different hosts
    assert data.all_data["fleet_services"]["web"]["port"] == data.all_data["fleet_services"]["grafana"]["port"]
    assert problems(data.fleet()) == []


def test_domain_routed_to_a_service_that_does_not_exist(data):
    data.all_data["fleet_domains"]["agents.blackroad.io"]["service"] = "agent"
    [p] = only(problems(data.fleet()), "fleet_domains")
    assert p.host == "pi5-beta"
    assert p.key == "fleet_domains['agents.blackroad.io'].service"
    assert "'agent' is not a service of the port map" in p.message and "agents" in p.fix


def test_domain_naming_a_port_is_refused(data):
    data.all_data["fleet_domains"]["agents.blackroad.io"] = {"host": "pi5-beta", "port": 8001, "tunnel": "pi5-alpha"}
    [p] = only(problems(data.fleet()), "fleet_domains")
    assert p.key == "fleet_domains['agents.blackroad.io'].port" and "name a service" in p.message


def test_domain_routed_to_a_host_without_the_service(data):
    data.all_data["fleet_domains"]["llm.blackroad.io"]["host"] = "pi5-beta"
    [p] = only(problems(data.fleet()), "fleet_domains")
    assert p.host == "pi5-beta" and "routes to 'llm', but pi5-beta does not run it" in p.message
    assert "agents" in p.message  # what it does run


def test_domain_routed_to_unknown_host(data):
    data.all_data["fleet_domains"]["api.blackroad.io"]["host"] = "pi5-omega"
    [p] = only(problems(data.fleet()), "fleet_domains")
    assert "unknown host 'pi5-omega'" in p.message


@pytest.mark.parametrize("address", ["192.168.1.50", "100.128.0.1", "10.0.0.1"])
def test_tailnet_address_outside_cgnat(data, address):
    data.hosts["pi5-beta"]["tailnet_address"] = address
    [p] = only(problems(data.fleet()), "tailnet_address")
    assert p.host == "pi5-beta" and "outside Tailscale's 100.64.0.0/10" in p.message


def test_tailnet_address_not_an_address(data):
    data.hosts["pi5-beta"]["tailnet_address"] = "pi5-beta.tail1234.ts.net"
    [p] = only(problems(data.fleet()), "tailnet_address")
    assert "not an IP address" in p.message


def test_tailnet_address_used_twice(data):
    data.hosts["pi5-gamma"]["tailnet_address"] = data.hosts["pi5-alpha"]["tailnet_address"]
    [p] = only(problems(data.fleet()), "tailnet_address")
    assert p.host == "pi5-gamma" and "also the tailnet address of pi5-alpha" in p.message


def test_docker_pool_overlapping_a_lan(data):
    data.all_data["docker_address_pools"] = [{"base": "192.168.0.0/16", "size": 24}]
    found = only(problems(data.fleet()), "docker_address_pools")
    # one line for one mistake: the pool every Docker host gets overlaps the Pis' shared LAN
    [p] = found
    assert p.host == "all"
    assert p.message.startswith("pool 192.168.0.0/16 overlaps the LAN 192.168.1.0/24 of pi5-alpha, pi5-beta")


def test_docker_pool_overlapping_the_droplet_vpc_only(data):
    data.all_data["docker_address_pools"] = [{"base": "10.116.0.0/24", "size": 24}]
    found = only(problems(data.fleet()), "docker_address_pools")
    assert all("droplet-failover" in p.message for p in found)


def test_docker_pool_overlapping_the_tailnet(data):
    data.all_data["docker_address_pools"] = [{"base": "100.100.0.0/16", "size": 24}]
    found = only(problems(data.fleet()), "docker_address_pools")
    assert any("overlaps the tailnet" in p.message for p in found)


def test_docker_pool_overlapping_the_test_lan(data):
    # the test fleet's LAN addresses are data too: a pool over them is caught the same way
    for name, lan in data.test_fleet["lan_addresses"].items():
        data.hosts[name]["lan_address"] = lan
    data.all_data["docker_address_pools"] = [{"base": "100.101.0.0/16", "size": 24}]
    found = only(problems(data.fleet()), "docker_address_pools")
    assert any("overlaps the LAN 100.101.0.0/16" in p.message for p in found)


def test_unknown_group(data):
    data.hosts["pi5-beta"]["groups"] = ["pis", "agent"]
    [p] = only(problems(data.fleet()), "groups")
    assert p.host == "pi5-beta" and "unknown group 'agent'" in p.message
    assert "group_data/agent.py" in p.fix and "agents" in p.fix


def test_unknown_group_in_port_map(data):
    data.all_data["fleet_services"]["web"]["groups"] = ["gateways"]
    [p] = only(problems(data.fleet()), "fleet_services['web'].groups")
    assert "unknown group 'gateways'" in p.message


def test_bind_scope_must_not_be_a_wildcard(data):
    data.all_data["fleet_services"]["api"]["bind"] = ["0.0.0.0"]
    [p] = only(problems(data.fleet()), "fleet_services['api'].bind")
    assert "never a wildcard" in p.fix


@pytest.mark.parametrize("key", ["lan_address", "tailnet_address", "ssh_user", "arch"])
def test_missing_host_fact(data, key):
    del data.hosts["jetson-prime"][key]
    found = [p for p in problems(data.fleet()) if p.key == key]
    assert found and found[0].host == "jetson-prime" and "missing" in found[0].message


def test_lan_address_needs_a_prefix(data):
    data.hosts["pi5-alpha"]["lan_address"] = "192.168.1.11"
    [p] = only(problems(data.fleet()), "lan_address")
    assert p.host == "pi5-alpha" and "192.168.1.11/24" in p.fix


def test_unknown_arch(data):
    data.hosts["pi0-epsilon"]["arch"] = "aarch64"
    [p] = only(problems(data.fleet()), "arch")
    assert p.host == "pi0-epsilon" and "arm64" in p.fix


def test_root_ssh_user_would_lock_out(data):
    data.hosts["droplet-failover"]["ssh_user"] = "root"
    [p] = only(problems(data.fleet()), "ssh_user")
    assert p.host == "droplet-failover" and "refuse root logins" in p.message


def test_no_admin_keys_would_lock_out(data):
    data.all_data["base_admin_ssh_keys"] = []
    found = only(problems(data.fleet()), "base_admin_ssh_keys")
    assert len(found) == len(data.hosts) and "key-only" in found[0].message


def test_admin_key_must_be_a_public_key(data):
    data.all_data["base_admin_ssh_keys"] = ["-----BEGIN OPENSSH PRIVATE KEY-----"]
    found = only(problems(data.fleet()), "base_admin_ssh_keys")
    assert "not an OpenSSH public key" in found[0].message


def test_key_set_differently_by_two_groups(data):
    data.group_data["gateway"]["agents_bind"] = "tailnet"
    data.group_data["agents"]["agents_bind"] = "loopback"
    [p] = only(problems(data.fleet()), "agents_bind")
    assert p.host == "pi5-alpha" and "gateway, agents" in p.message


def test_validate_reports_every_problem_at_once(data):
    data.hosts["pi5-beta"]["groups"] = ["pis", "agents", "agent"]
    data.hosts["pi5-gamma"]["tailnet_address"] = "10.0.0.3"
    with pytest.raises(InventoryError) as err:
        validate(data.fleet())
    text = str(err.value)
    assert "no host was touched" in text
    assert "pi5-beta: groups: unknown group 'agent'." in text
    assert "pi5-gamma: tailnet_address: 10.0.0.3 is outside" in text
    assert text.count("Fix:") == 2


def test_operator_key_missing_from_admin_keys_would_lock_out(data):
    mine = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperatorKeyNotListed operator@laptop"
    found = problems(data.fleet(), offered={"pi5-alpha": {mine}})
    [p] = only(found, "base_admin_ssh_keys")
    assert p.host == "pi5-alpha" and "lock yourself out" in p.message


def test_operator_key_listed_passes_whatever_its_comment(data):
    from unit.conftest import ADMIN_KEY

    same_key_other_comment = " ".join(ADMIN_KEY.split()[:2]) + " me@elsewhere"
    assert problems(data.fleet(), offered={"pi5-alpha": {same_key_other_comment}}) == []


def test_unknown_operator_keys_are_not_guessed(data):
    assert problems(data.fleet(), offered={"pi5-alpha": set()}) == []


def test_tailscale_tag_must_be_an_acl_tag(data):
    data.all_data["tailscale_tags_by_group"]["gateway"] = ["gateway"]
    [p] = only(problems(data.fleet()), "tailscale_tags_by_group")
    assert "'gateway' is not a Tailscale ACL tag" in p.message and "tag:gateway" in p.fix


def test_tailscale_tags_for_unknown_group(data):
    data.all_data["tailscale_tags_by_group"]["gatway"] = ["tag:gateway"]
    [p] = only(problems(data.fleet()), "tailscale_tags_by_group")
    assert "unknown group 'gatway'" in p.message


def test_domain_on_a_host_without_cloudflared(data):
    data.all_data["fleet_domains"]["agents.blackroad.io"]["tunnel"] = "pi5-beta"
    [p] = only(problems(data.fleet()), "tunnel")
    assert p.host == "pi5-beta"
    assert "is not a host that runs cloudflared" in p.message and "pi5-alpha" in p.fix


def test_tunnel_that_cannot_reach_a_loopback_service(data):
    # api binds 127.0.0.1 on pi5-alpha: the jetson's tunnel cannot reach it
    data.all_data["fleet_domains"]["api.blackroad.io"]["tunnel"] = "jetson-prime"
    [p] = only(problems(data.fleet()), "tunnel")
    assert p.host == "jetson-prime" and "cannot reach 'api' on pi5-alpha (it binds loopback)" in p.message


def test_llm_engine_must_be_known(data):
    data.hosts["jetson-prime"]["llm_engine"] = "llamacpp"
    [p] = only(problems(data.fleet()), "llm_engine")
    assert p.host == "jetson-prime" and "'llamacpp' is not an engine" in p.message and "ollama, vllm" in p.fix


def test_ollama_without_a_checksum_is_refused(data):
    data.group_data["llm"]["ollama_sha256"] = {}
    [p] = only(problems(data.fleet()), "ollama_sha256")
    assert p.host == "jetson-prime"
    assert "no SHA-256 for ollama-linux-arm64.tar.zst" in p.message and "sha256sum.txt" in p.fix


def test_ollama_models_must_be_names(data):
    data.group_data["llm"]["ollama_models"] = "qwen2.5:7b"
    [p] = only(problems(data.fleet()), "ollama_models")
    assert p.host == "jetson-prime"
    assert p.message == "'qwen2.5:7b' is a str, but it must be a list (default: ['qwen2.5:7b'])."
    assert p.fix == "correct it in group_data/llm.py."


def test_vllm_archive_needs_its_checksum_and_context_is_positive(data):
    data.hosts["jetson-prime"].update(llm_engine="vllm", vllm_image_archive_url="http://mirror/v.tar",
                                      vllm_max_model_len="4k")
    found = problems(data.fleet())
    assert only(found, "vllm_image_archive_sha256")[0].host == "jetson-prime"
    [p] = only(found, "vllm_max_model_len")
    assert p.message == "'4k' is a str, but it must be an int (default: 4096)."
    assert p.fix == "correct it in its entry in inventory.py."
    # a vLLM host needs no Ollama checksum
    data.group_data["llm"]["ollama_sha256"] = {}
    data.hosts["jetson-prime"].update(vllm_image_archive_url="", vllm_max_model_len=4096)
    assert problems(data.fleet()) == []


RULE = {"ref": "fleet-r", "description": "d", "expression": "true", "action": "block"}


@pytest.mark.parametrize("key, value, where, message", [
    ("edge_waf_rules", ["not", "a", "dict"], "edge_waf_rules", "must be a dict of zone -> list of rules"),
    ("edge_waf_rules", {"example.org": [RULE]}, "edge_waf_rules['example.org']", "not one of edge_zones"),
    ("edge_waf_rules", {"blackroad.io": ["block"]}, "edge_waf_rules['blackroad.io'][0]", "a rule is a dict"),
    ("edge_waf_rules", {"blackroad.io": [{**RULE, "action": "nuke"}]}, "edge_waf_rules['blackroad.io'][0]",
     "action 'nuke' is not one of"),
    ("edge_waf_rules", {"blackroad.io": [{**RULE, "ref": "by-hand"}]}, "edge_waf_rules['blackroad.io'][0]",
     "must start with 'fleet-'"),
    ("edge_rate_limits", {"blackroad.io": [RULE]}, "edge_rate_limits['blackroad.io'][0]",
     "a rate limit needs ratelimit with characteristics, period"),
    ("edge_waf_rules", {"blackroad.io": [{**RULE, "expression": ["true"]}]}, "edge_waf_rules['blackroad.io'][0]",
     "ref, description, expression and action must be text"),
    ("edge_api_keys_namespace", 7, "edge_api_keys_namespace", "7 is an int, not text"),
    ("edge_zones", ["blackroad.io", 7], "edge_zones", "is not a list of zone names"),
    ("edge_zones", "blackroad.io", "edge_zones", "is not a list of zone names"),
    ("edge_waf_rules", {7: [RULE], "blackroad.io": [RULE]}, "edge_waf_rules[7]", "not one of edge_zones"),
])
def test_bad_edge_data_is_refused(data, key, value, where, message):
    data.all_data[key] = value
    [p] = only(problems(data.fleet()), key)
    assert p.host == "all" and p.key == where and message in p.message and "group_data/all.py" in p.fix
    assert "\n" not in str(p)


def test_good_edge_data_passes(data):
    limit = {**RULE, "ratelimit": {"characteristics": ["ip.src"], "period": 10, "requests_per_period": 5,
                                   "mitigation_timeout": 10}}
    data.all_data.update(edge_waf_rules={"lucidia.earth": [RULE]}, edge_rate_limits={"blackroad.io": [limit]},
                         edge_api_keys_namespace="KEYS")
    assert problems(data.fleet()) == []


def test_checklist_public_https_must_be_a_bool(data):
    data.hosts["pi5-alpha"]["checklist_public_https"] = "no"
    [p] = only(problems(data.fleet()), "checklist_public_https")
    assert p.host == "pi5-alpha" and p.message == "'no' is a str, not True or False."
    assert p.fix == "set it to True or False in its entry in inventory.py."


@pytest.mark.parametrize("reason", ["", "  ", None, 3])
def test_checklist_public_https_off_needs_a_reason(data, reason):
    data.hosts["pi5-alpha"].update(checklist_public_https=False, checklist_public_https_reason=reason)
    [p] = only(problems(data.fleet()), "checklist_public_https")
    assert p.host == "pi5-alpha" and p.key == "checklist_public_https_reason"
    assert "checklist_public_https is False" in p.message and "its entry in inventory.py" in p.fix


def test_checklist_public_https_off_with_a_reason_passes(data):
    data.all_data.update(checklist_public_https=False, checklist_public_https_reason="no public DNS yet")
    assert problems(data.fleet()) == []


@pytest.mark.parametrize("value,message", [(0, "0 is not a whole number of seconds from 1 to 3600."),
                                           (7200, "7200 is not a whole number of seconds from 1 to 3600."),
                                           ("15", "'15' is a str, but it must be an int"),
                                           (True, "True is a bool, but it must be an int")])
def test_journal_upload_retry_must_be_seconds(data, value, message):
    data.all_data["journal_upload_retry_seconds"] = value
    [p] = only(problems(data.fleet()), "journal_upload_retry_seconds")[:1]
    assert message in p.message


@pytest.mark.parametrize("key, value, message", [
    # a keep list written as text would be read letter by letter: --delete-unlisted would delete everything
    ("edge_workers_keep", "blackroad-auth", "'blackroad-auth' is not a list of names"),
    ("edge_kv_keep", "AUTH", "'AUTH' is not a list of names"),
    ("edge_kv_keep", None, "None is not a list of names"),
    ("edge_kv_keep", ["AUTH", ""], "is not a list of names"),
    ("edge_account_id", 123, "123 is not a Cloudflare account ID"),
    ("edge_account_id", "acct\nid", "is not a Cloudflare account ID"),
    ("net_udp_wildcard_allowlist", [41641], "is not a map of UDP port -> reason"),
    ("net_udp_wildcard_allowlist", {"41641": "tailscaled"}, "is not a map of UDP port -> reason"),
    ("net_udp_wildcard_allowlist", {41641: ""}, "is not a map of UDP port -> reason"),
    ("edge_failover_domains", "*.blackroad.io", "is not a list of hostnames"),
    ("edge_failover_domains", None, "None is not a list of hostnames"),
    ("edge_failover_domains", ["*.blackroad.io", "x\ny.io"], "is not a list of hostnames"),
    ("ollama_version", 0.34, "0.34 is not an Ollama release version"),
    ("tailnet_policy_tailnet", "my tailnet", "is not a tailnet name"),
])
def test_fleet_wide_values_of_the_wrong_shape_are_one_line(data, key, value, message):
    data.all_data[key] = value
    [p] = only(problems(data.fleet()), key)
    assert p.host == "all" and p.key == key and message in p.message and "\n" not in str(p)


@pytest.mark.parametrize("path", [["/boot/firmware/cmdline.txt"], "boot/cmdline.txt", 7])
def test_pi_cmdline_file_must_be_a_path(data, path):
    data.group_data["pis"]["pis_boot_cmdline_file"] = path
    found = only(problems(data.fleet()), "pis_boot_cmdline_file")
    assert found and all("is not the absolute path of a file" in p.message for p in found)


@pytest.mark.parametrize("domain", ["api blackroad.io", "api.blackroad.io\n", "localhost", "api.blackroad.io."])
def test_domain_map_keys_must_be_hostnames(data, domain):
    routes = data.all_data["fleet_domains"]
    routes[domain] = routes.pop(next(iter(routes)))
    [p] = only(problems(data.fleet()), "fleet_domains")
    assert p.key == f"fleet_domains[{domain!r}]" and p.message == "is not a hostname."


def test_good_fleet_wide_values_pass(data):
    data.all_data.update(edge_workers_keep=[], edge_kv_keep=["AUTH"], edge_account_id="0123456789abcdef" * 2,
                         edge_failover_domains=[], net_udp_wildcard_allowlist={68: "DHCP client"})
    data.group_data["pis"]["pis_boot_cmdline_file"] = ""
    assert problems(data.fleet()) == []


@pytest.mark.parametrize("group, key, value", [
    # `$` in a pattern also matches before a final newline: each of these was taken
    ("monitoring", "prometheus_retention_time", "15d\n"),
    ("monitoring", "journal_remote_max_use", "1G\n"),
    ("monitoring", "grafana_version", "11.2.0\n"),
])
def test_a_trailing_newline_is_refused(data, group, key, value):
    data.group_data[group][key] = value
    assert only(problems(data.fleet()), key)


def test_an_app_memory_limit_with_a_newline_is_refused(data):
    data.all_data["apps_definitions"]["web"]["memory"] = "256m\n"
    [p] = only(problems(data.fleet()), "memory")
    assert p.message == "'256m\\n' is not a memory limit."
