"""Redis: the config and ACL rendered from the data, and the rules."""

import hashlib

from deploys.redis import render_acl, render_conf
from fleet.preflight.validate import problems


def test_config_binds_loopback_and_tailnet_with_aof_and_a_cap(data):
    fleet = data.fleet()
    conf = render_conf("pi5-gamma", fleet.hosts["pi5-gamma"].data, fleet.services).splitlines()
    assert "bind 127.0.0.1 100.100.0.3" in conf and "port 6379" in conf
    assert "protected-mode yes" in conf and "appendonly yes" in conf
    assert "maxmemory 256mb" in conf and "maxmemory-policy volatile-lru" in conf
    assert not [line for line in conf if line.startswith("requirepass")]


def test_acl_has_the_default_user_off_and_only_hashes(data):
    d = data.fleet().hosts["pi5-gamma"].data
    acl = render_acl(d, lambda user: f"pw-{user}").splitlines()
    assert acl[0].startswith("user default off")
    assert acl[1].startswith(f"user api on #{hashlib.sha256(b'pw-api').hexdigest()} ")
    assert acl[1].endswith("+@all -@dangerous")
    assert not any("pw-api" in line for line in acl)


def test_rules_name_the_key_and_the_fix(data):
    data.group_data["database"]["redis_users"] = {"default": {"clients": ["gatway"]},
                                                  "api": {"clients": ["gateway"], "commands": "+@all\nuser x"}}
    data.group_data["database"]["redis_maxmemory_policy"] = "lru"
    found = [str(p) for p in problems(data.fleet())]
    assert any("redis_users['default']: is not a usable Redis user name." in p for p in found), found
    assert any("redis_users['default'].clients: 'gatway' is not a group" in p for p in found)
    assert any("redis_users['api'].commands:" in p for p in found)
    assert any("redis_maxmemory_policy: 'lru' is not a Redis eviction policy." in p for p in found)
