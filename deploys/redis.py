"""Redis (database group): Debian's redis-server on 127.0.0.1 and the tailnet address only, an ACL user per client from data, AOF persistence and a memory cap sized for a Pi; its data directory is state the backups include, and their hook (templates/redis/etc/fleet/backup.d/redis.j2) loads in each day's drill and puts back in a restore or rebuild.

The whole redis.conf is the fleet's (Debian's unit reads it). Nothing is reachable without a
password: the `default` user is off, protected mode is on. Each user's password is the vault
secret `redis_password/<user>`; the ACL file holds only its SHA-256 (Redis's `#<hash>`
form), so the password itself never lands on the host, in a command line or a config.
Redis has no configuration dry run: the values that go into the file are checked by the
rules below before any host is touched, and the daemon restarts only when its config or
ACL file changed after it started (crash-safe, fleet.converge.daemons).
"""

from __future__ import annotations

import hashlib
import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from deploys.backup import HOOKS
from fleet.converge.component import Component, Problem
from fleet.converge.daemons import keep_running
from fleet.converge.ops import validated_file
from fleet.converge.render import render
from fleet.converge.services import ServiceMap

DEFAULTS = {
    # Clients: user name -> {"clients": [groups], "keys": "~*", "channels": "&*",
    # "commands": "+@all -@dangerous"} (all but clients optional, these are the defaults).
    # The password is the vault secret redis_password/<user>.
    "redis_users": {},
    # The most memory Redis may use for data, in MB (a Pi shares its RAM with PostgreSQL).
    "redis_maxmemory_mb": 256,
    # What Redis evicts at that cap. volatile-lru evicts only keys with a TTL (cache, rate
    # limits), so sessions stored without one are never dropped silently: writes fail instead.
    "redis_maxmemory_policy": "volatile-lru",
    # systemd's PrivateUsers= for redis-server (Debian's unit turns it on). A host that
    # cannot create user namespaces (a container without them) needs it off.
    "redis_private_users": True,
}

CONF = "/etc/redis/redis.conf"
ACL = "/etc/redis/users.acl"
DROPIN = "/etc/systemd/system/redis-server.service.d/fleet.conf"
DATA = "/var/lib/redis"
UNIT = "redis-server.service"
HOOK = f"{HOOKS}/redis"
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
            "volatile-lfu", "volatile-random", "volatile-ttl")
USER_DEFAULTS = {"keys": "~*", "channels": "&*", "commands": "+@all -@dangerous"}
RULE = re.compile(r"^[~&%+\-@*:a-zA-Z0-9_|.{}()-]+\Z")


def password_key(user: str) -> str:
    return f"redis_password/{user}"


def render_conf(name: str, data, services: ServiceMap) -> str:
    return render("etc/redis/redis.conf.j2", "redis",
                  bind=" ".join(e.address for e in services.binds("redis", name)),
                  port=services.port("redis"), acl=ACL, data_dir=DATA,
                  maxmemory=data.get("redis_maxmemory_mb"), policy=data.get("redis_maxmemory_policy"))


def render_acl(data, password) -> str:
    """`user default off`, then one line per user: on, the SHA-256 of its password, its rules."""
    lines = ["user default off resetkeys resetchannels -@all"]
    for user, spec in sorted((data.get("redis_users") or {}).items()):
        rules = {**USER_DEFAULTS, **{k: v for k, v in spec.items() if k != "clients"}}
        digest = hashlib.sha256(password(user).encode()).hexdigest()
        lines.append(f"user {user} on #{digest} resetkeys {rules['keys']} resetchannels {rules['channels']} "
                     f"{rules['commands']}")
    return "".join(f"{line}\n" for line in lines)


@deploy("Redis", data_defaults=DEFAULTS)
def redis():
    from fleet.converge.keys import secret

    data, name = host.data, host.name
    services = ServiceMap.of_pyinfra(host)
    apt.packages(name="Install Redis", packages=["redis-server"], no_recommends=True)
    # every line must be a `user` rule: anything else would stop Redis from starting
    acl = validated_file(name="Install the Redis users (ACL, password hashes only)",
                         content=render_acl(data, lambda user: secret(password_key(user))),
                         dest=ACL, user="redis", group="redis", mode="640",
                         validate="! grep -qv '^user [a-z][a-z0-9_-]* ' {path}")
    conf = validated_file(name="Install redis.conf", content=render_conf(name, data, services), dest=CONF,
                          user="root", group="redis", mode="640",
                          validate="grep -q '^aclfile ' {path}")
    dropin = files.put(name="Install the redis-server drop-in", src=StringIO(render(
        "etc/systemd/system/redis-server.service.d/fleet.conf.j2", "redis", private_users=data.redis_private_users)),
        dest=DROPIN, user="root", group="root", mode="644", create_remote_dir=True)
    keep_running("Redis", UNIT, inputs=[CONF, ACL, DROPIN], why="for its new config",
                 changed=(acl, conf, dropin), unit_files=True, service="redis")
    # what brings the data back: the backups' drill loads each snapshot's copy, and a restore
    # (the rebuild's included) puts it in place; without it a snapshot held Redis's files
    # that nothing restored
    files.put(name="Install the backup hook (drill, restore)", src=StringIO(render(
        "etc/fleet/backup.d/redis.j2", "redis", interpreter="/bin/bash", data_dir=DATA, unit=UNIT)), dest=HOOK,
        user="root", group="root", mode="755", create_remote_dir=True)


def state(name: str, data) -> list[str]:
    return [DATA]


def check_users(fleet, hosts) -> list[Problem]:
    """User names and rules are plain, client groups exist, the policy and cap are Redis's."""
    problems = []
    groups = {g for h in fleet.hosts.values() for g in h.groups} | {"all"}
    for h in hosts:
        data = h.data
        for user, spec in (data.get("redis_users") or {}).items():
            key = f"redis_users[{user!r}]"
            if not NAME.match(str(user)) or user == "default":
                problems.append(Problem(h.name, key, "is not a usable Redis user name.",
                                        "use lower-case letters, digits, _ and - (not 'default', which stays off)."))
            if not isinstance(spec, dict):
                problems.append(Problem(h.name, key, "is not a dict.", 'write it like {"clients": ["gateway"]}.'))
                continue
            for group in spec.get("clients", ()):
                if group not in groups:
                    problems.append(Problem(h.name, f"{key}.clients", f"{group!r} is not a group of the inventory.",
                                            f"use one of {', '.join(sorted(groups))}."))
            for rule in ("keys", "channels", "commands"):
                value = spec.get(rule, USER_DEFAULTS[rule])
                if not isinstance(value, str) or not value.strip() or any(ord(c) < 32 for c in value) \
                        or not all(RULE.match(word) for word in value.split()):
                    problems.append(Problem(h.name, f"{key}.{rule}", f"{value!r} is not a list of Redis ACL rules.",
                                            f"write them like {USER_DEFAULTS[rule]!r} (one line, no '#' or '>')."))
        policy = data.get("redis_maxmemory_policy")
        if policy not in POLICIES:
            problems.append(Problem(h.name, "redis_maxmemory_policy", f"{policy!r} is not a Redis eviction policy.",
                                    f"use one of {', '.join(POLICIES)}."))
        cap = data.get("redis_maxmemory_mb")
        if not isinstance(cap, int) or isinstance(cap, bool) or not 16 <= cap <= 65536:
            problems.append(Problem(h.name, "redis_maxmemory_mb", f"{cap!r} is not a memory cap in MB.",
                                    "use a whole number from 16 to 65536."))
    return problems


COMPONENT = Component(
    name="redis",
    deploy=redis,
    defaults=DEFAULTS,
    groups=("database",),
    state=state,
    vault_keys=lambda name, data: [password_key(user) for user in (data.get("redis_users") or {})],
    rules=(check_users,),
    after=("tailscale",),
)
