"""Canary: converge the test fleet with fresh secret values at pyinfra's highest verbosity
(-vvv --debug --diff) while sampling every process command line on every host; then search
pyinfra's output, every host's journal, /etc/systemd, /tmp, the admin's upload staging
directory and the process samples. Not one canary may appear anywhere.

Afterwards the fleet is put back on the demo vault and shown to be converged (no changes).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import uuid
import tarfile
import threading
import time
from secrets import token_urlsafe as secrets_token

import pytest

from deploys.tailscale import AUTHKEY as TAILSCALE_AUTHKEY
from fleet.converge import keys
from fleet.converge.keys import new_host_key, public_host_key
from fleet.converge.vault import KdfParams, Vault
from fleet.preflight.inventory import select_vault
from harness import testfleet
from integration.conftest import docker_exec

PASS = "canary-run passphrase"


def canaries_of(value: str, reference: str) -> list[str]:
    """Distinctive pieces of a secret: its lines of 16+ characters that a different secret
    of the same kind does not share (PEM headers and constant framing are dropped)."""
    shared = set(reference.splitlines())
    return [line for line in value.splitlines() if len(line) >= 16 and line not in shared]


def sample_cmdlines(hosts: list[str], stop: threading.Event, out: dict[str, list[str]]) -> None:
    script = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f" 2>/dev/null; echo; done'
    for _ in range(600):  # bounded: at most 600 rounds, ~0.1 s apart
        if stop.is_set():
            return
        for host in hosts:
            r = subprocess.run(["docker", "exec", host, "sh", "-c", script],
                               capture_output=True, text=True, timeout=30)
            out[host].append(r.stdout)
        time.sleep(0.1)


def host_texts(host: str, admin: str) -> dict[str, str]:
    """The journal, the vLLM container's log, and every file under /etc/systemd, /tmp, the
    upload staging dir and the PostgreSQL and Redis logs."""
    texts = {"journal": subprocess.run(["docker", "exec", host, "journalctl", "--no-pager", "-o", "cat"],
                                       capture_output=True, text=True, timeout=60).stdout,
             # the LLM container's own log (json-file, not the journal), where there is one
             "vllm container log": subprocess.run(
                 ["docker", "exec", host, "sh", "-c", "docker logs vllm 2>&1 || true"],
                 capture_output=True, text=True, timeout=60).stdout}
    for root in ("etc/systemd", "tmp", f"home/{admin}/.cache", "var/log/postgresql", "var/log/redis"):
        tar = subprocess.run(["docker", "exec", host, "sh", "-c", f"tar -C / -cf - {root} 2>/dev/null || "
                              f"[ ! -e /{root} ]"], capture_output=True, timeout=60)
        if not tar.stdout:
            continue
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    texts[f"/{member.name}"] = archive.extractfile(member).read().decode("utf-8", "replace")
    return texts


BACKUP_METRICS = ("fleet_backup.prom", "fleet_restore_drill.prom")


def set_backups_aside(names: list[str]) -> list[tuple[str, str]]:
    """Move every backup repository and last-success metric aside; return what moved."""
    moved = []
    for host in names:
        listing = docker_exec(host, "sh", "-c", "ls -d /srv/backup/*/ /var/lib/prometheus/node-exporter/fleet_*.prom"
                                                " 2>/dev/null || true").stdout.split()
        for path in listing:
            path = path.rstrip("/")
            docker_exec(host, "mv", path, f"{path}.before-canary")
            moved.append((host, path))
    return moved


def put_backups_back(moved: list[tuple[str, str]]) -> None:
    for host, path in moved:
        docker_exec(host, "sh", "-c", f"rm -rf {path} && mv {path}.before-canary {path}")


def bootstrap_from(known_hosts_text: str) -> None:
    """Trust, for first contact, the keys the hosts hold now."""
    (testfleet.STATE / "bootstrap_known_hosts").write_text(known_hosts_text)


def canary_value(key: str) -> tuple[str, list[str]]:
    """A fresh value of the same kind as the real secret (so the deploys use it normally),
    and the strings that must never show up: the secret parts of it."""
    if key.startswith("ssh_host_") or key.startswith("backup_ssh_key/"):
        value = new_host_key()
        return value, canaries_of(value, new_host_key())
    if key.startswith("cloudflared_credentials/"):
        secret_b64 = base64.b64encode(os.urandom(32)).decode()
        creds = {"AccountTag": "canary0account", "TunnelSecret": secret_b64, "TunnelID": str(uuid.uuid4())}
        return json.dumps(creds), [secret_b64]
    if key == TAILSCALE_AUTHKEY:
        value = f"tskey-auth-canary{secrets_token(24)}"
        return value, [value]
    value = f"canary-{secrets_token(32)}"
    return value, [value]


@pytest.fixture
def canary_vault(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_TARGET", "test")
    select_vault(testfleet.REPO, testfleet.load_inventory()[1], "test")
    made = {key: canary_value(key) for key in keys.current()}
    data = {key: value for key, (value, _) in made.items()}
    path, phrase = tmp_path / "canary.vault", tmp_path / "canary.pass"
    phrase.write_text(PASS)
    Vault(path, PASS).save(data, KdfParams())
    return path, phrase, data, sorted({c for _, cs in made.values() for c in cs})


def test_no_secret_leaks_anywhere(canary_vault):
    path, phrase, data, canaries = canary_vault
    assert len(canaries) >= len(data), "each secret must yield canaries"
    hosts, _ = testfleet.load_inventory()
    names = list(hosts)
    # Forget each node's tailnet login, so the run joins again with the canary auth key.
    for host in names:
        docker_exec(host, "sh", "-c", "systemctl stop tailscaled && rm -f /var/lib/tailscale/tailscaled.state"
                                      " && systemctl start tailscaled")
    first_boot = (testfleet.STATE / "bootstrap_known_hosts").read_text()
    # Backups under the canary vault go to fresh repositories (a restic repository opens
    # only with the password it was made with), and the first-backup/drill metrics are set
    # aside so the run takes a backup and a drill with the canary passwords.
    moved = set_backups_aside(names)
    demo_known = (testfleet.STATE / "known_hosts").read_text()

    samples: dict[str, list[str]] = {h: [] for h in names}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_cmdlines, args=(names, stop, samples), daemon=True)
    bootstrap_from(demo_known)
    env = {"FLEET_VAULT": str(path), "FLEET_VAULT_PASSPHRASE_FILE": str(phrase)}
    sampler.start()
    try:
        # The llm host runs vLLM for this run, so its API key takes the same path as the rest.
        run = testfleet.converge(["-vvv", "--debug", "--diff", "--data", "llm_engine=vllm"],
                                 log_name="converge-canary", env=env)
    finally:
        stop.set()
        sampler.join(timeout=60)
    try:
        assert run["returncode"] == 0, run["output"][-3000:]
        assert sorted(run["bootstrap"]) == sorted(names), "every host had to take its canary key"
        assert all(len(s) >= 3 for s in samples.values()), "the sampler must have seen the run"
        assert "Install the vLLM API key (env file)" in run["output"]
        # the canary passwords took the database and backup paths: a new repository, a first
        # backup and drill under them, and the roles' verifiers set from them
        assert moved, "the demo backups must have been set aside"
        assert "Initialise the repository; first backup and drill" in run["output"]
        assert "Set roles, passwords, databases and grants" in run["output"]

        # Positive control: the public half of each key is not secret and --diff shows the
        # .pub file, so the same search must find it; a search that finds nothing proves nothing.
        publics = [public_host_key(value).split()[1] for key, value in data.items()
                   if key.startswith("ssh_host_")]
        assert all(p in run["output"] for p in publics), "the search could not see uploaded content"

        found = []
        for c in canaries:
            if c in run["output"]:
                found.append(("pyinfra output", c))
        for host in names:
            for where, text in host_texts(host, hosts[host]["ssh_user"]).items():
                found += [(f"{host}:{where}", c) for c in canaries if c in text]
            joined = "\n".join(samples[host])
            found += [(f"{host}: process command lines", c) for c in canaries if c in joined]
        print(f"searched {len(canaries)} canaries; samples per host: "
              f"{ {h: len(s) for h, s in samples.items()} }; occurrences: {len(found)}")
        assert found == [], f"secrets leaked: {found[:5]}"
    finally:
        # Back to the demo vault: first contact trusts the canary keys the hosts now hold.
        bootstrap_from((testfleet.STATE / "known_hosts").read_text())
        put_backups_back(moved)
        back = testfleet.converge([], log_name="converge-after-canary")
        bootstrap_from(first_boot)
        assert back["returncode"] == 0, back["output"][-3000:]
    settled = testfleet.converge([], log_name="converge-after-canary-noop")
    assert settled["returncode"] == 0 and settled["changed"] == 0 and not settled["bootstrap"]
