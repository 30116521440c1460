"""The PostgreSQL component's pure parts: pg_hba from the data, the SCRAM verifier, the
catalog SQL (and that a matching catalog needs none), memory sizing, validation."""

import base64
import hashlib
import hmac

from deploys.postgres import (catalog_sql, hba_lines, login_roles, memory_settings, quote_setting,
                              render_hba, role_verifier, scram_verifier)
from fleet.preflight.validate import problems

DB_HOST = "pi5-gamma"


def gamma(data):
    fleet = data.fleet()
    return fleet, fleet.hosts[DB_HOST].data


def test_hba_is_admin_exporter_and_one_line_per_client(data):
    fleet, d = gamma(data)
    lines = hba_lines(DB_HOST, d, fleet.services)
    assert lines[0] == ("local", "all", "postgres", "", "peer")
    assert ("host", "postgres", "postgres_exporter", "127.0.0.1/32", "scram-sha-256") in lines
    # the api role's client group is the gateway: pi5-alpha's tailnet address, not the server's
    assert ("host", "blackroad", "api", "100.100.0.1/32", "scram-sha-256") in lines
    assert len(lines) == 3
    text = render_hba(DB_HOST, d, fleet.services)
    for word in ("trust", "md5", "0.0.0.0", "::/0"):
        assert word not in text.split("\n", 6)[-1]


def test_client_on_the_database_host_uses_loopback(data):
    data.group_data["database"]["postgres_roles"]["api"]["clients"] = ["database"]
    fleet, d = gamma(data)
    assert ("host", "blackroad", "api", "127.0.0.1/32", "scram-sha-256") in hba_lines(DB_HOST, d, fleet.services)


def test_scram_verifier_follows_rfc_5802():
    salt = b"0123456789abcdef"
    verifier = scram_verifier("pencil", salt)
    head, keys = verifier.split("$", 1)[1].split("$")
    iterations, salt_b64 = head.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    assert iterations == "4096" and base64.b64decode(salt_b64) == salt
    assert stored == hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    assert server == hmac.new(salted, b"Server Key", "sha256").digest()


def test_verifier_is_stable_per_host_and_role_and_secret():
    assert role_verifier("h", "api", "pw") == role_verifier("h", "api", "pw")
    assert role_verifier("h", "api", "pw") != role_verifier("h2", "api", "pw")
    assert role_verifier("h", "api", "pw") != role_verifier("h", "api", "pw2")


def test_catalog_sql_creates_then_needs_nothing(data):
    fleet, d = gamma(data)
    empty = {"roles": {}, "databases": {}, "running": True}
    sql = catalog_sql(DB_HOST, d, empty, lambda role: f"secret-{role}")
    assert "SET log_statement = 'none';" in sql and "SET log_min_error_statement = 'panic';" in sql
    assert 'CREATE ROLE "api" LOGIN PASSWORD \'SCRAM-SHA-256$4096:' in sql
    assert 'CREATE DATABASE "blackroad" OWNER "api";' in sql
    assert 'GRANT pg_monitor TO "postgres_exporter";' in sql
    assert "secret-api" not in sql, "the password itself never goes into SQL"
    # the catalog as PostgreSQL would then report it
    roles = {role: {"login": True, "monitor": spec["monitor"],
                    "password_sha256": hashlib.sha256(role_verifier(DB_HOST, role, f"secret-{role}").encode()).hexdigest()}
             for role, spec in login_roles(d).items()}
    done = {"roles": roles, "databases": {"blackroad": {"owner": "api", "connect": {"api"}}}, "running": True}
    assert catalog_sql(DB_HOST, d, done, lambda role: f"secret-{role}") == ""
    # a rotated password changes only that role
    rotated = catalog_sql(DB_HOST, d, done, lambda role: "new" if role == "api" else f"secret-{role}")
    assert 'ALTER ROLE "api"' in rotated and "postgres_exporter" not in rotated


def test_memory_is_sized_for_a_pi():
    assert memory_settings(8192) == {"shared_buffers": "1024MB", "effective_cache_size": "4096MB",
                                     "maintenance_work_mem": "256MB", "work_mem": "16MB"}
    assert memory_settings(512)["shared_buffers"] == "64MB"
    assert quote_setting("it's") == "'it''s'"


def test_rules_name_the_key_and_the_fix(data):
    data.group_data["database"]["postgres_roles"]["api"]["clients"] = ["gatway"]
    data.group_data["database"]["postgres_databases"]["Bad-Name"] = {"owner": "nobody"}
    data.group_data["database"]["postgres_settings"] = {"listen_addresses": "*"}
    data.group_data["database"]["postgres_drill_checks"] = {"blackroad": {"users; drop": 1}}
    found = [str(p) for p in problems(data.fleet())]
    assert any("postgres_roles['api'].clients: 'gatway' is not a group" in p for p in found), found
    assert any("postgres_databases['Bad-Name']: is not a plain PostgreSQL name." in p for p in found)
    assert any("postgres_databases['Bad-Name'].owner: 'nobody' is not a role" in p for p in found)
    assert any("postgres_settings['listen_addresses']: is set by the deploy" in p for p in found)
    assert any("postgres_drill_checks['blackroad']['users; drop']" in p for p in found)
    assert all(p.startswith("pi5-gamma: ") and " Fix: " in p for p in found)
