"""The backup repository host: forced-command keys only, its own retention and checks."""

from deploys.backup import ssh_key_name
from deploys.backup_repository import authorized_keys, backed_up_hosts
from fleet.converge.keys import secret
from specs.conftest import fleet_services


def test_br01_keys_run_append_only_rclone_only(fh):
    """br-01: the repository user's authorized_keys is exactly one restricted, forced-command
    line per backed-up host: rclone serve restic --append-only on that host's directory."""
    clients = backed_up_hosts(fleet_services())
    assert clients
    home = fh.data["backup_repository_dir"]
    live = fh.host.file(f"{home}/.ssh/authorized_keys").content_string
    assert live == authorized_keys(fh.data, clients, secret)
    for line in live.splitlines():
        assert line.startswith('restrict,command="rclone serve restic --stdio --append-only ')


def test_br02_retention_and_check_run_here(fh):
    """br-02: retention (forget --prune) and the integrity check are timers on this host, run
    as the repository user; each backed-up host's repository exists and is that user's."""
    user = fh.data["backup_repository_user"]
    for timer in ("fleet-backup-prune.timer", "fleet-backup-check.timer"):
        unit = fh.host.service(timer)
        assert unit.is_enabled and unit.is_running, timer
    for kind in ("prune", "check"):
        shown = fh.host.check_output(f"systemctl show -p User fleet-backup-{kind}.service")
        assert shown == f"User={user}"
    for client in backed_up_hosts(fleet_services()):
        config = fh.host.file(f"{fh.data['backup_repository_dir']}/{client}/config")
        assert config.exists and config.user == user, client
    assert ssh_key_name("x")  # the key names come from the backup component


def test_br03_retention_runs(fh):
    """br-03: a retention run succeeds against every repository (forget --prune as the repository user)."""
    fh.host.check_output("systemctl start fleet-backup-prune.service")
    assert "Result=success" in fh.host.check_output("systemctl show -p Result fleet-backup-prune.service")
