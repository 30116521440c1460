"""PostgreSQL (database group): Debian's cluster on 127.0.0.1 and the tailnet address only, roles and databases from data, pg_hba generated from the same data, and its Prometheus exporter on the tailnet.

Passwords come from the vault. The deploy never sends one to the host: it computes each
role's SCRAM-SHA-256 verifier on the operator's machine (salted per host and role, so it is
the same on every run and can be compared without reading it back) and sets it with SQL
that travels as a staged 0600 file read on psql's standard input, in a session that logs no
statements. `pg_hba.conf` is checked by PostgreSQL itself (pg_hba_file_rules) before it is
kept; a bad candidate fails the run and the running server keeps its old rules. A settings
change is reloaded; the cluster restarts only when PostgreSQL reports a changed setting
that needs it (pg_settings.pending_restart), which is state on the host, so a killed run
leaves the restart owed to the next one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shlex
from io import BytesIO, StringIO

from pyinfra import host
from pyinfra.api import FactBase, OperationError, FileUploadCommand, StringCommand, deploy, operation
from pyinfra.facts.hardware import Memory
from pyinfra.facts.files import File
from pyinfra.operations import apt, files

from fleet.converge.component import Component, Problem, Problems, SecretFile, matches
from fleet.converge.daemons import enabled_and_running, keep_running
from fleet.converge.ops import secret_file, stage_dir, validated_file
from fleet.converge.render import render, source
from fleet.converge.services import ServiceMap, Unreachable

DEFAULTS = {
    # Debian's PostgreSQL major version (bookworm ships 15); the cluster is <version>/main.
    "postgres_version": 15,
    # Databases: name -> {"owner": a role of postgres_roles}. Each gets CONNECT for its
    # owner and the roles that list it, and for no one else (PUBLIC's CONNECT is revoked).
    "postgres_databases": {},
    # Roles the apps log in as: name -> {"databases": [...], "clients": [groups]}. The
    # password is the vault secret postgres_password/<role>. pg_hba.conf gets one line per
    # (database, role, client host): the client's tailnet address/32 (127.0.0.1/32 when the
    # client is the database host itself), scram-sha-256.
    "postgres_roles": {},
    # Connections the server accepts (each costs memory: keep it small on a Pi).
    "postgres_max_connections": 50,
    # PostgreSQL settings over the ones sized from the host's RAM (shared_buffers = RAM/8 up
    # to 1 GB, effective_cache_size = RAM/2, maintenance_work_mem = RAM/32 up to 256 MB,
    # work_mem = RAM/512 up to 16 MB), e.g. {"shared_buffers": "256MB", "log_connections": "on"}.
    "postgres_settings": {},
    # The restore drill's sanity checks beyond "every database restores with all its
    # tables": database -> {table: the fewest rows it may have}, e.g.
    # {"blackroad": {"public.users": 1}}.
    "postgres_drill_checks": {},
    # The role prometheus-postgres-exporter logs in as over 127.0.0.1 (member of
    # pg_monitor); its password is the vault secret postgres_password/<role>.
    "postgres_exporter_role": "postgres_exporter",
}

CHECK = "/usr/local/lib/fleet/postgres-check"
HOOK = "/etc/fleet/backup.d/postgres"
# Where the backup hook leaves verified archives; this directory is the component's state.
DUMPS = "/var/backups/fleet/postgres"
EXPORTER_UNIT = "prometheus-postgres-exporter.service"
EXPORTER_DROPIN = f"/etc/systemd/system/{EXPORTER_UNIT}.d/fleet.conf"
EXPORTER_ENV = "/etc/fleet/postgres-exporter.env"
EXPORTER_PASSWORD = "/etc/fleet/postgres-exporter.password"
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
NAME_FIX = "use lower-case letters, digits and _ (63 at most), starting with a letter or _."
# Settings the deploy owns: listening, files and authentication are not data overrides.
OWNED = {"listen_addresses", "port", "hba_file", "ident_file", "data_directory", "config_file",
         "password_encryption", "include", "include_dir", "unix_socket_directories"}


def paths(version) -> dict[str, str]:
    conf = f"/etc/postgresql/{version}/main"
    return {"conf": conf, "fleet_conf": f"{conf}/conf.d/fleet.conf", "hba": f"{conf}/pg_hba.conf",
            "data": f"/var/lib/postgresql/{version}/main", "unit": f"postgresql@{version}-main.service",
            "bin": f"/usr/lib/postgresql/{version}/bin"}


def password_key(role: str) -> str:
    return f"postgres_password/{role}"


# --- what the files say (pure: unit tests call these) -------------------------------------

def memory_settings(ram_mb: int) -> dict[str, str]:
    """Settings sized from the host's RAM; a Pi shares it with Redis and the exporters."""
    clamp = lambda value, low, high: max(low, min(high, value))  # noqa: E731
    return {
        "shared_buffers": f"{clamp(ram_mb // 8, 32, 1024)}MB",
        "effective_cache_size": f"{clamp(ram_mb // 2, 64, 16384)}MB",
        "maintenance_work_mem": f"{clamp(ram_mb // 32, 16, 256)}MB",
        "work_mem": f"{clamp(ram_mb // 512, 1, 16)}MB",
    }


def quote_setting(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if any(ord(c) < 32 for c in text):
        raise ValueError(f"{text[:40]!r}: a control character cannot go into postgresql.conf")
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def settings(name: str, data, services: ServiceMap, ram_mb: int) -> dict[str, str]:
    listen = ",".join(e.address for e in services.binds("postgres", name))
    merged = {
        "listen_addresses": listen,
        "port": str(services.port("postgres")),
        "password_encryption": "scram-sha-256",
        "max_connections": str(data.get("postgres_max_connections")),
        **memory_settings(ram_mb),
    }
    merged.update({k: v for k, v in (data.get("postgres_settings") or {}).items() if k not in OWNED})
    return merged


def client_hosts(role: dict, services: ServiceMap) -> list[str]:
    groups = set(role.get("clients", ()))
    return [h.name for h in services.hosts.values() if "all" in groups or groups & set(h.groups)]


def hba_lines(name: str, data, services: ServiceMap) -> list[tuple[str, ...]]:
    """pg_hba.conf's rules: the admin over the local socket (peer), the exporter over
    127.0.0.1, and one line per (database, role, client host); nothing else."""
    lines = [("local", "all", "postgres", "", "peer")]
    lines.append(("host", "postgres", data.get("postgres_exporter_role"), "127.0.0.1/32", "scram-sha-256"))
    for role, spec in sorted((data.get("postgres_roles") or {}).items()):
        for database in spec.get("databases", ()):
            for client in client_hosts(spec, services):
                # where the client's connection comes from: 127.0.0.1 on this host, else
                # the client's tailnet address (the way it reaches the server's)
                server = services.reach("postgres", server=name, client=client).address
                address = server if server == "127.0.0.1" else services.address("tailnet", client)
                lines.append(("host", database, role, f"{address}/32", "scram-sha-256"))
    return lines


def render_hba(name: str, data, services: ServiceMap) -> str:
    rows = "".join(f"{kind:<7} {db:<15} {user:<20} {addr:<18} {method}\n".replace("  \n", "\n")
                   for kind, db, user, addr, method in hba_lines(name, data, services))
    return render("etc/postgresql/pg_hba.conf.j2", "postgres", rows=rows)


def scram_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677). PostgreSQL
    stores a verifier it is given as is, so the password itself never reaches the server.
    Written here because no Debian package or kept library computes a PostgreSQL verifier;
    it follows src/common/scram-common.c."""
    if not password.isascii() or not password.isprintable():
        raise ValueError("a PostgreSQL password from the vault must be printable ASCII "
                         "(PostgreSQL would SASLprep anything else)")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_verifier(host_name: str, role: str, password: str) -> str:
    # Deterministic salt, unique per host and role, derived with the password as the key:
    # the same vault value gives the same verifier, so a run compares hashes, not secrets.
    salt = hmac.new(password.encode(), f"fleet-postgres-salt:{host_name}:{role}".encode(), "sha256").digest()[:16]
    return scram_verifier(password, salt)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def login_roles(data) -> dict[str, dict]:
    """Every role the deploy manages: the data's, and the exporter's (member of pg_monitor)."""
    roles = {role: {"monitor": False} for role in (data.get("postgres_roles") or {})}
    roles[data.get("postgres_exporter_role")] = {"monitor": True}
    return roles


def catalog_sql(name: str, data, catalog: dict, password) -> str:
    """The SQL that brings roles, passwords, databases and CONNECT grants to the data; ''
    when the catalog already matches. `password(role)` reads the vault."""
    statements = []
    for role, spec in sorted(login_roles(data).items()):
        verifier = role_verifier(name, role, password(role))
        have = catalog["roles"].get(role)
        wanted_hash = hashlib.sha256(verifier.encode()).hexdigest()
        if have is None:
            statements.append(f'CREATE ROLE "{role}" LOGIN PASSWORD {sql_literal(verifier)};')
        elif not have["login"] or have["password_sha256"] != wanted_hash:
            statements.append(f'ALTER ROLE "{role}" LOGIN PASSWORD {sql_literal(verifier)};')
        if spec["monitor"] and not (have and have["monitor"]):
            statements.append(f'GRANT pg_monitor TO "{role}";')
    for database, spec in sorted((data.get("postgres_databases") or {}).items()):
        owner = spec["owner"]
        have = catalog["databases"].get(database)
        if have is None:
            statements.append(f'CREATE DATABASE "{database}" OWNER "{owner}";')
        elif have["owner"] != owner:
            statements.append(f'ALTER DATABASE "{database}" OWNER TO "{owner}";')
        allowed = {owner} | {r for r, s in (data.get("postgres_roles") or {}).items()
                             if database in s.get("databases", ())}
        if have is None or have["connect"] != allowed:
            statements.append(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{database}" FROM PUBLIC;')
            for role in sorted((have or {}).get("connect", set()) - allowed - {"postgres"}):
                statements.append(f'REVOKE CONNECT ON DATABASE "{database}" FROM "{role}";')
            for role in sorted(allowed):
                statements.append(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}";')
    if not statements:
        return ""
    # Nothing of this session reaches the server log: no statement, no statement on error.
    quiet = ("SET log_statement = 'none';\nSET log_min_duration_statement = -1;\n"
             "SET log_min_error_statement = 'panic';\n")
    return quiet + "\n".join(statements) + "\n"


# --- facts and operations -------------------------------------------------------------------

class PostgresCatalog(FactBase):
    """Roles (login, SHA-256 of the stored verifier, pg_monitor membership) and databases
    (owner, who may connect). Never a verifier itself, never a password."""

    @staticmethod
    def default():
        return {"roles": {}, "databases": {}, "running": False}

    def command(self, version) -> str:
        query = (
            "select 'role', rolname::text, rolcanlogin::text, encode(sha256(convert_to(coalesce(rolpassword, ''), 'UTF8')), 'hex'),"
            " pg_has_role(oid, 'pg_monitor', 'member')::text from pg_authid where rolname !~ '^pg_'"
            " union all select 'db', datname::text, pg_get_userbyid(datdba)::text,"
            " coalesce((select string_agg(case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee)::text end, ',')"
            " from aclexplode(coalesce(datacl, acldefault('d', datdba))) a where a.privilege_type = 'CONNECT'), ''), 'false'"
            " from pg_database where not datistemplate"
        )
        return (f"runuser -u postgres -- psql -XAt -F '|' -d postgres -c {shlex.quote(query)} 2>/dev/null"
                " && echo running || true")

    def process(self, output):
        found = self.default()
        for line in output:
            if line == "running":
                found["running"] = True
                continue
            kind, name, a, b, c = (line.split("|") + ["", "", "", ""])[:5]
            if kind == "role":
                found["roles"][name] = {"login": a == "true", "password_sha256": b, "monitor": c == "true"}
            elif kind == "db":
                found["databases"][name] = {"owner": a, "connect": set(filter(None, b.split(",")))}
        return found


@operation()
def catalog(version: int):
    """Roles, passwords, databases and CONNECT grants as the data says (see catalog_sql).

    + version: the PostgreSQL major version of the cluster

    The SQL carries verifiers, so it is staged over SFTP as a 0600 file in the admin's
    home, fed to psql on standard input by root, and removed even when psql fails.
    """
    from fleet.converge.keys import secret

    found = host.get_fact(PostgresCatalog, version=version)
    if not found["running"]:
        raise OperationError("the cluster did not answer psql as postgres over its socket: "
                             "roles and databases cannot be compared (see its journal)")
    sql = catalog_sql(host.name, host.data, found, lambda role: secret(password_key(role)))
    if not sql:
        host.noop("roles, databases and grants match the data")
        return
    stage = stage_dir()
    staged = f"{stage}/postgres-catalog.sql"
    q = shlex.quote
    yield StringCommand(f"install -d -m 700 {q(stage)}", _sudo=False)
    yield StringCommand(f"(umask 077 && : > {q(staged)})", _sudo=False)
    yield FileUploadCommand(BytesIO(sql.encode()), staged, _sudo=False)
    yield StringCommand(f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres < {q(staged)};"
                        f" rc=$?; rm -f {q(staged)}; exit $rc")


@operation()
def hba_put_back(hba: str):
    """Move back the pg_hba.conf that postgres-check set aside, if a killed run left it.

    + hba: the live pg_hba.conf
    """
    aside = f"{hba}.fleet-previous"
    if not host.get_fact(File, path=aside):
        host.noop("no pg_hba.conf set aside")
        return
    yield StringCommand(f"mv -f {shlex.quote(aside)} {shlex.quote(hba)}")


class PendingRestart(FactBase):
    """Settings the running server has read but can only apply at a restart."""

    def command(self) -> str:
        return ("runuser -u postgres -- psql -XAt -d postgres -c "
                "'select name from pg_settings where pending_restart' 2>/dev/null || true")

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip())


@operation()
def restarted_if_pending(unit: str):
    """Restart the cluster if, and only if, PostgreSQL says a setting waits for a restart.

    + unit: the cluster's systemd unit
    """
    pending = host.get_fact(PendingRestart)
    if not pending:
        host.noop("no setting waits for a restart")
        return
    yield StringCommand(f"systemctl restart {shlex.quote(unit)}")


@deploy("PostgreSQL", data_defaults=DEFAULTS)
def postgres():
    data, name = host.data, host.name
    p = paths(data.postgres_version)
    services = ServiceMap.of_pyinfra(host)
    exporter = services.bind("postgres-exporter", name)

    # The exporter's listener is set before its package starts it (the package's default is
    # every address): the drop-in reads our environment file after Debian's.
    files.directory(name="Create /etc/fleet", path="/etc/fleet", user="root", group="root", mode="755")
    dropin = files.put(name="Install the exporter's drop-in", src=StringIO(render(
        "etc/systemd/system/prometheus-postgres-exporter.service.d/fleet.conf.j2", "postgres", env=EXPORTER_ENV)),
        dest=EXPORTER_DROPIN, user="root", group="root", mode="644", create_remote_dir=True)
    env = files.put(name="Install the exporter's environment", src=StringIO(render(
        "etc/fleet/postgres-exporter.env.j2", "postgres", listen=str(exporter),
        uri=f"127.0.0.1:{services.port('postgres')}/postgres?sslmode=disable",
        user=data.postgres_exporter_role, password_file=EXPORTER_PASSWORD)),
        dest=EXPORTER_ENV, user="root", group="root", mode="644")

    apt.packages(name="Install PostgreSQL and its exporter",
                 packages=[f"postgresql-{data.postgres_version}", "prometheus-postgres-exporter"],
                 no_recommends=True)
    check = files.put(name="Install the config checker", src=source("postgres", "usr/local/lib/fleet/postgres-check"),
                      dest=CHECK, user="root", group="root", mode="755", create_remote_dir=True)
    hba_put_back(name="Put back the pg_hba.conf an interrupted check set aside", hba=p["hba"])
    enabled_and_running(name="Start the cluster", unit=p["unit"])

    ram = host.get_fact(Memory) or 1024
    conf = validated_file(name="Install the fleet's PostgreSQL settings", content=render(
        "etc/postgresql/conf.d/fleet.conf.j2", "postgres",
        settings={k: quote_setting(v) for k, v in settings(name, data, services, ram).items()}),
        dest=p["fleet_conf"], user="postgres", group="postgres", mode="644",
        validate=f"{CHECK} conf {data.postgres_version} {{path}}")
    hba = validated_file(name="Install pg_hba.conf", content=render_hba(name, data, services),
                         dest=p["hba"], user="postgres", group="postgres", mode="640",
                         validate=f"{CHECK} hba {data.postgres_version} {{path}}")
    files.put(name="Install the backup hook (dump, drill, restore)", src=StringIO(render(
        "etc/fleet/backup.d/postgres.j2", "postgres", interpreter="/bin/bash", version=data.postgres_version,
        dumps=DUMPS, unit=p["unit"], data_dir=p["data"], side_port=services.port("postgres-side"),
        drill_port=services.port("postgres-drill"), checks=drill_checks(data))), dest=HOOK,
        user="root", group="root", mode="755", create_remote_dir=True)
    files.directory(name="Create the dump directory", path=DUMPS, user="postgres", group="postgres", mode="700")
    keep_running("PostgreSQL", p["unit"], inputs=[p["fleet_conf"], p["hba"]], why="for its new settings",
                 changed=(conf, hba, check), reload=True, service="postgres")
    restarted_if_pending(name="Restart PostgreSQL for settings that need it", unit=p["unit"])
    catalog(name="Set roles, passwords, databases and grants", version=data.postgres_version)

    password = secret_file(name="Install the exporter's password", key=password_key(data.postgres_exporter_role),
                           dest=EXPORTER_PASSWORD, user="prometheus", group="prometheus")
    keep_running("the PostgreSQL exporter", EXPORTER_UNIT, inputs=[EXPORTER_DROPIN, EXPORTER_ENV, EXPORTER_PASSWORD],
                 why="for its new settings", changed=(dropin, env, password), unit_files=True,
                 service="postgres-exporter")


def drill_checks(data) -> list[tuple[str, str, int]]:
    return [(db, table, floor) for db, tables in sorted((data.get("postgres_drill_checks") or {}).items())
            for table, floor in sorted(tables.items())]


def state(name: str, data) -> list[str]:
    return [DUMPS]


def secret_files(name: str, data) -> list[SecretFile]:
    return [SecretFile(password_key(data.get("postgres_exporter_role")), EXPORTER_PASSWORD, "prometheus", "prometheus")]


def check_roles(fleet, hosts) -> list[Problem]:
    """Names are plain identifiers; owners, databases and client groups exist; the data
    cannot take over a setting the deploy owns."""
    problems = []
    groups = {g for h in fleet.hosts.values() for g in h.groups} | {"all"}
    for h in hosts:
        data = h.data
        roles, databases = data.get("postgres_roles") or {}, data.get("postgres_databases") or {}
        for kind, names in (("postgres_roles", roles), ("postgres_databases", databases)):
            for item in names:
                if not NAME.match(str(item)):
                    problems.append(Problem(h.name, f"{kind}[{item!r}]", "is not a plain PostgreSQL name.",
                                            NAME_FIX))
        for db, spec in databases.items():
            owner = spec.get("owner") if isinstance(spec, dict) else None
            if owner not in roles:
                problems.append(Problem(h.name, f"postgres_databases[{db!r}].owner", f"{owner!r} is not a role of postgres_roles.",
                                        f"set it to one of {', '.join(sorted(roles)) or '(add a role first)'}."))
        for role, spec in roles.items():
            if not isinstance(spec, dict):
                problems.append(Problem(h.name, f"postgres_roles[{role!r}]", "is not a dict.",
                                        'write it like {"databases": ["app"], "clients": ["gateway"]}.'))
                continue
            for db in spec.get("databases", ()):
                if db not in databases:
                    problems.append(Problem(h.name, f"postgres_roles[{role!r}].databases", f"{db!r} is not in postgres_databases.",
                                            "add the database or remove it from the role."))
            for group in spec.get("clients", ()):
                if group not in groups:
                    problems.append(Problem(h.name, f"postgres_roles[{role!r}].clients", f"{group!r} is not a group of the inventory.",
                                            f"use one of {', '.join(sorted(groups))}."))
            if role == data.get("postgres_exporter_role") or role == "postgres":
                problems.append(Problem(h.name, f"postgres_roles[{role!r}]", "is a role the deploy manages itself.",
                                        "choose another name."))
        for key, value in (data.get("postgres_settings") or {}).items():
            if key in OWNED:
                problems.append(Problem(h.name, f"postgres_settings[{key!r}]", "is set by the deploy from the port map and the data.",
                                        "remove it (listening is the port map's `postgres` entry)."))
            elif not re.fullmatch(r"[a-z_][a-z0-9_.]*", str(key)) or not isinstance(value, (str, int, float, bool)) \
                    or any(ord(c) < 32 for c in str(value)):
                problems.append(Problem(h.name, f"postgres_settings[{key!r}]", f"{value!r} is not a plain setting.",
                                        "use a setting name and a one-line string or number."))
        for db, tables in (data.get("postgres_drill_checks") or {}).items():
            if db not in databases or not isinstance(tables, dict):
                problems.append(Problem(h.name, f"postgres_drill_checks[{db!r}]", "names no database of postgres_databases "
                                        "or is not a dict.", 'write it like {"blackroad": {"public.users": 1}}.'))
                continue
            for table, floor in tables.items():
                if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", str(table)) \
                        or not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
                    problems.append(Problem(h.name, f"postgres_drill_checks[{db!r}][{table!r}]",
                                            f"{floor!r} rows of {table!r} is not a check.",
                                            "name a table as schema.table (plain names) with a whole number of rows, 0 or more."))
        try:
            for role, spec in roles.items():
                for client in client_hosts(spec if isinstance(spec, dict) else {}, fleet.services):
                    fleet.services.reach("postgres", server=h.name, client=client)
        except Unreachable as exc:
            problems.append(Problem(h.name, "postgres_roles", f"{exc}.", "bind postgres on the tailnet in fleet_services."))
    return problems


def check_server(fleet, hosts) -> list[Problem]:
    """The version names Debian's packages and the cluster's paths; max_connections below 1
    stops the server at its restart. (A value of the wrong type is reported by the check of
    every setting's type.)"""
    found = Problems(fleet)
    for h in hosts:
        version, connections = h.data.get("postgres_version"), h.data.get("postgres_max_connections")
        if isinstance(version, int) and not 10 <= version <= 99:
            found.add(h, "postgres_version", f"{version!r} is not a PostgreSQL major version.",
                      "use the major version Debian ships, e.g. 15 on bookworm.")
        if isinstance(connections, int) and not 1 <= connections <= 10000:
            found.add(h, "postgres_max_connections", f"{connections!r} is not a number of connections.",
                      "use a whole number from 1 (keep it small on a Pi, e.g. 50).")
    return found


COMPONENT = Component(
    name="postgres",
    deploy=postgres,
    defaults=DEFAULTS,
    groups=("database",),
    secrets=secret_files,
    state=state,
    vault_keys=lambda name, data: [password_key(role) for role in login_roles(data)],
    # the exporter's role goes into pg_hba.conf and SQL, like the roles check_roles checks
    rules=(check_roles, check_server, matches("postgres_exporter_role", NAME, "a plain PostgreSQL name", NAME_FIX)),
    after=("tailscale",),
)
