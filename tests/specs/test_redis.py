"""Redis on the database hosts: where it listens, nothing without a password, each data
user with its vault password, persistence and the memory cap, passwords nowhere."""

import socket

from deploys.redis import password_key
from fleet.converge.keys import secret
from specs.conftest import fleet_services, listening


def resp(address: str, port: int, *commands: list[str]) -> list[str]:
    """Send RESP commands over one connection (from the test runner, over the tailnet) and
    return each reply's first line. Bounded: one connection, a 5 s timeout."""
    payload = b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in c)
                       for c in commands)
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(payload)
        data = b""
        while data.count(b"\r\n") < len(commands) * 1 and len(data) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        while True:  # bulk replies: read until every reply is complete
            replies = parse(data)
            if len(replies) >= len(commands):
                return replies[:len(commands)]
            chunk = s.recv(65536)
            if not chunk:
                return replies
            data += chunk


def parse(data: bytes) -> list[str]:
    out, i = [], 0
    while i < len(data):
        end = data.find(b"\r\n", i)
        if end < 0:
            break
        line = data[i:end].decode()
        if line.startswith("$") and int(line[1:]) >= 0:
            n = int(line[1:])
            if len(data) < end + 2 + n + 2:
                break
            out.append(data[end + 2:end + 2 + n].decode())
            i = end + 2 + n + 2
        else:
            out.append(line)
            i = end + 2
    return out


def test_redis01_listens_on_loopback_and_tailnet_only(fh):
    """redis-01: redis-server is enabled and running, and its port listens exactly on
    127.0.0.1 and the tailnet address (the port map's `redis`)."""
    unit = fh.host.service("redis-server")
    assert unit.is_enabled and unit.is_running
    wanted = {e.address for e in fleet_services().binds("redis", fh.name)}
    assert wanted == {"127.0.0.1", fh.tailnet_address}
    assert {a for a, p in listening(fh, "tcp") if p == fleet_services().port("redis")} == wanted


def test_redis02_nothing_without_a_password(fh):
    """redis-02: an unauthenticated PING is refused (the default user is off) and a wrong
    password is refused."""
    port = fleet_services().port("redis")
    first = next(iter(fh.data["redis_users"]))
    assert resp(fh.tailnet_address, port, ["PING"])[0].startswith("-NOAUTH")
    assert resp(fh.tailnet_address, port, ["AUTH", first, "not-the-password"])[0].startswith("-WRONGPASS")
    assert "protected-mode yes" in fh.host.file("/etc/redis/redis.conf").content_string


def test_redis03_users_persistence_and_cap(fh):
    """redis-03: each user of the data logs in over the tailnet with its vault password and
    can write and read; dangerous commands (CONFIG, INFO) are refused to it. The running
    server has AOF on (its append-only files exist and grow) with the data's memory cap and
    policy in the config it was started with."""
    port = fleet_services().port("redis")
    for user in fh.data["redis_users"]:
        auth, whoami, setting, getting, config = resp(
            fh.tailnet_address, port, ["AUTH", user, secret(password_key(user))], ["ACL", "WHOAMI"],
            ["SET", "fleet:spec:redis03", "ok", "EX", "60"], ["GET", "fleet:spec:redis03"],
            ["CONFIG", "GET", "maxmemory"])
        assert (auth, whoami, setting, getting) == ("+OK", user, "+OK", "ok")
        assert config.startswith("-NOPERM")
    aof = fh.host.check_output("ls /var/lib/redis/appendonlydir")
    assert ".incr.aof" in aof and "appendonly.aof.manifest" in aof
    conf = fh.host.file("/etc/redis/redis.conf").content_string.splitlines()
    assert "appendonly yes" in conf
    assert f"maxmemory {fh.data['redis_maxmemory_mb']}mb" in conf
    assert f"maxmemory-policy {fh.data['redis_maxmemory_policy']}" in conf
    started = int(fh.host.check_output(
        "date -d \"$(systemctl show -p ExecMainStartTimestamp --value redis-server)\" +%s"))
    changed = int(fh.host.check_output("stat -c %Z /etc/redis/redis.conf /etc/redis/users.acl | sort -n | tail -1"))
    assert started >= changed, "redis runs an older config than the one on disk"


def test_redis04_passwords_nowhere_on_the_host(fh):
    """redis-04: no user's password is in a process command line, the config, the ACL file
    (it holds the SHA-256) or Redis's log."""
    texts = {
        "command lines": fh.host.check_output("ps -eo args"),
        "redis.conf": fh.host.file("/etc/redis/redis.conf").content_string,
        "users.acl": fh.host.file("/etc/redis/users.acl").content_string,
        "log": fh.host.run("cat /var/log/redis/*.log").stdout,
    }
    for user in fh.data["redis_users"]:
        password = secret(password_key(user))
        assert [w for w, t in texts.items() if password in t] == [], user


def test_redis05_backup_hook(fh):
    """redis-05: the backup hook that brings Redis's data back (the drill's load, a restore's
    swap) is installed, root's and not writable by others, and answers its `dump` step."""
    from deploys.redis import HOOK

    hook = fh.host.file(HOOK)
    assert (hook.user, hook.group, hook.mode) == ("root", "root", 0o755)
    assert fh.host.run(HOOK + " dump").rc == 0
