"""PostgreSQL on the database hosts: where it listens, who pg_hba admits, the roles and
databases of the data, its exporter, and passwords nowhere but the vault."""

import re
import shlex
import time

from deploys.postgres import client_hosts, hba_lines, login_roles, memory_settings, password_key, paths
from fleet.converge.keys import secret
from fleet.policy.graph import ServiceGraph
from specs.conftest import fleet_host, fleet_model, fleet_services, listening

# A PostgreSQL StartupMessage (protocol 3.0) for a role and database, and the first answer:
# 'R' with 10 (AuthenticationSASL) means pg_hba admitted the address and asks for the
# password; 'E' is a refusal. Run with python3 on the client host, so the connection
# really comes from that host's tailnet address. No password is needed or sent.
PROBE = r"""
import socket, struct, sys
address, port, user, db = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((address, port), timeout=5)
body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
s.sendall(struct.pack("!I", len(body) + 4) + body)
kind = s.recv(1)
rest = s.recv(4096)
if kind == b"R":
    print("auth-request", struct.unpack("!I", rest[4:8])[0])
else:
    print("refused", rest.decode("utf-8", "replace").replace("\0", " "))
"""


def psql(fh, sql: str, db: str = "postgres") -> str:
    return fh.host.check_output(f"runuser -u postgres -- psql -XAt -d {db} -c {shlex.quote(sql)}")


def probe(client, address: str, port: int, user: str, db: str) -> str:
    return client.host.check_output(f"python3 -c {shlex.quote(PROBE)} {address} {port} {user} {db}")


def test_pg01_listens_on_loopback_and_tailnet_only(fh):
    """pg-01: the cluster is enabled and running, and port 5432 listens exactly on 127.0.0.1
    and the tailnet address (the port map's `postgres` entry)."""
    unit = fh.host.service(paths(fh.data["postgres_version"])["unit"])
    assert unit.is_enabled and unit.is_running
    port = fleet_services().port("postgres")
    wanted = {e.address for e in fleet_services().binds("postgres", fh.name)}
    assert wanted == {"127.0.0.1", fh.tailnet_address}
    assert {a for a, p in listening(fh, "tcp") if p == port} == wanted


def test_pg02_hba_is_the_data_and_nothing_wider(fh):
    """pg-02: pg_hba.conf, as PostgreSQL parsed it, has no trust/md5/password method and no
    wildcard network, and is exactly the lines the data gives."""
    rows = psql(fh, "select type, array_to_string(database, ','), array_to_string(user_name, ','),"
                    " coalesce(address, ''), coalesce(netmask, ''), auth_method, coalesce(error, '')"
                    " from pg_hba_file_rules order by line_number").splitlines()
    parsed = [tuple(r.split("|")) for r in rows]
    assert all(r[6] == "" for r in parsed), parsed
    assert not [r for r in parsed if r[5] in ("trust", "md5", "password")]
    assert not [r for r in parsed if r[3] in ("0.0.0.0", "::", "all", "samenet", "samehost")
                or r[4] in ("0.0.0.0", "::")]
    live = [(t, db, user, f"{addr}/{32 if mask == '255.255.255.255' else mask}" if addr else "", method)
            for t, db, user, addr, mask, method, _ in parsed]
    wanted = [(t, db, user, addr, method) for t, db, user, addr, method in hba_lines(fh.name, fh.data, fleet_services())]
    assert live == wanted


def test_pg03_roles_and_databases_are_the_data(fh):
    """pg-03: every role of the data (and the exporter's) exists, can log in, and has a
    SCRAM-SHA-256 password; every database exists with its owner; PUBLIC cannot connect."""
    for role in login_roles(fh.data):
        found = psql(fh, f"select rolcanlogin, left(rolpassword, 14) from pg_authid where rolname = '{role}'")
        assert found == "t|SCRAM-SHA-256$", (role, found)
    for db, spec in fh.data["postgres_databases"].items():
        owner = psql(fh, f"select pg_get_userbyid(datdba) from pg_database where datname = '{db}'")
        assert owner == spec["owner"], db
        assert psql(fh, f"select has_database_privilege('public', '{db}', 'CONNECT')") == "f"


def test_pg04_clients_in_data_reach_it_others_do_not(fh):
    """pg-04: a client host of a role's data gets a password prompt over the tailnet (pg_hba
    admits its address); a host that is not a client is refused by pg_hba. The outsider is
    one the host firewall lets through (the health prober: the graph's other clients of
    postgres), so the refusal is pg_hba's; the firewall's own drops are fw-03's."""
    services = fleet_services()
    past_firewall = {h for h, addr in ((n, fleet_host(n).tailnet_address) for n in services.hosts)
                     if addr in ServiceGraph(fleet_model()).tailnet_sources("postgres", fh.name)}
    port = services.port("postgres")
    checked = 0
    for role, spec in fh.data["postgres_roles"].items():
        clients = [c for c in client_hosts(spec, services) if c != fh.name]
        for db in spec["databases"]:
            for client in clients:
                answer = probe(fleet_host(client), fh.tailnet_address, port, role, db)
                assert answer == "auth-request 10", (client, role, db, answer)
                checked += 1
            outsider = next(n for n in sorted(past_firewall) if n not in clients and n != fh.name)
            answer = probe(fleet_host(outsider), fh.tailnet_address, port, role, db)
            assert answer.startswith("refused") and "no pg_hba.conf entry" in answer, (outsider, answer)
            checked += 1
    assert checked >= 2, "the data must name at least one role with a client host"


def test_pg05_exporter_on_the_tailnet(fh):
    """pg-05: prometheus-postgres-exporter listens only on the tailnet address and reaches
    the database (pg_up 1) with its password file."""
    exporter = fleet_services().bind("postgres-exporter", fh.name)
    assert {a for a, p in listening(fh, "tcp") if p == exporter.port} == {exporter.address}
    # After a PostgreSQL restart, the exporter's first scrape finds its pooled connection
    # dead ("driver: bad connection") and reconnects for the next one, as Prometheus would
    # see it: up to three scrapes, a second apart.
    for _ in range(3):
        metrics = fh.host.check_output(f"curl -fsS http://{exporter}/metrics")
        if re.search(r"^pg_up 1$", metrics, re.M):
            break
        time.sleep(1)
    assert re.search(r"^pg_up 1$", metrics, re.M), "the exporter cannot reach PostgreSQL"


def test_pg06_passwords_nowhere_on_the_host(fh):
    """pg-06: no role's password is in a process command line, the server's log or the
    journal (they are set as verifiers; the password never reaches the host)."""
    texts = {
        "command lines": fh.host.check_output("ps -eo args"),
        "server log": fh.host.run("cat /var/log/postgresql/*.log").stdout,
        "journal": fh.host.check_output("journalctl --no-pager -o cat | tail -n 20000"),
    }
    for role in login_roles(fh.data):
        if role == fh.data["postgres_exporter_role"]:
            continue  # the exporter's password is its 0600 file (sec-01/sec-02)
        password = secret(password_key(role))
        leaks = [where for where, text in texts.items() if password in text]
        assert leaks == [], f"{role}'s password found in {leaks}"


def test_pg07_memory_sized_from_ram(fh):
    """pg-07: the running server's memory settings are the ones sized from the host's RAM
    (or the data's overrides)."""
    ram_mb = int(fh.host.check_output("awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo"))
    # pyinfra's Memory fact reads vmstat, which rounds like /proc/meminfo: allow 1 MB
    for name, value in {**memory_settings(ram_mb), **fh.data["postgres_settings"]}.items():
        live = psql(fh, f"select setting::bigint * pg_size_bytes(case when unit ~ '^[0-9]' then unit else '1' || unit end) / 1048576"
                    f" from pg_settings where name = '{name}'")
        wanted = int(str(value).removesuffix("MB"))
        assert abs(int(live) - wanted) <= 1, (name, live, value)
