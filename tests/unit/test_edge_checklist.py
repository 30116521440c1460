"""The checklist's Cloudflare items against the fake API (tests/fakes): `python -m fleet apikey`
and the phase checks that read the edge (tunnels, DNS, WAF and rate-limiting rules, the AUTH
namespace, the Workers/KV counts), each failing before `edge apply` and done after it."""

from __future__ import annotations

import hashlib
import json

import pytest

from fakes.cloudflare_api import FakeCloudflare
from fakes.operator import copy_repo, use_vault
from fleet.commands import apikey, edge, phase_checks
from fleet.commands.cli import load_data

ACCOUNT = "0123456789abcdef0123456789abcdef"
TOKEN = "cf-checklist-token-77a1"
CLEAN_ENV = ("FLEET_VAULT_PASSPHRASE_FILE", "FLEET_TARGET", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_KEY",
             "CLOUDFLARE_EMAIL", "CLOUDFLARE_API_USER_SERVICE_KEY", "CLOUDFLARE_BASE_URL")


@pytest.fixture
def world(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path, f'edge_account_id = "{ACCOUNT}"')
    use_vault(tmp_path / "c.vault", "pp", {"cloudflare_api_token": TOKEN}, monkeypatch, CLEAN_ENV)
    fake = FakeCloudflare(token=TOKEN, account_id=ACCOUNT)
    for zone in ("blackroad.io", "lucidia.earth"):
        fake.add_zone(zone)
    for title in ("AUTH", "STATE"):
        fake.add_kv(title)
    fake.add_worker("blackroad-auth")
    monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", fake.url)
    yield repo, fake
    fake.stop()
    assert not fake.unhandled, fake.unhandled


def context(repo):
    fleet = load_data(repo)
    return phase_checks.Context(repo=repo, entries={}, fleet=fleet, hosts=list(fleet.hosts))


def test_generated_keys_are_the_guides():
    key, key_hash = apikey.generate_api_key()
    assert key.startswith("br_") and len(key) > 40
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert apikey.verify_api_key(key, key_hash) and not apikey.verify_api_key(key + "x", key_hash)


def test_create_prints_the_key_once_and_stores_only_its_hash(world, capsys):
    repo, fake = world
    assert apikey.main(["--repo", str(repo), "create", "partner-x"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("br_") and TOKEN not in out.out + out.err and key not in out.err
    (auth,) = [ns for ns, t in ((i, n["title"]) for i, n in fake.kv.items()) if t == "AUTH"]
    stored = fake.kv_values[auth]
    assert list(stored) == [hashlib.sha256(key.encode()).hexdigest()]
    assert key not in json.dumps(stored) and json.loads(next(iter(stored.values()))["value"])["name"] == "partner-x"
    assert apikey.main(["--repo", str(repo), "list"]) == 0
    assert "apikey: 1 key(s) in AUTH" in capsys.readouterr().out


def test_no_auth_namespace_is_one_line(world, capsys):
    repo, fake = world
    for ns_id in [i for i, n in fake.kv.items() if n["title"] == "AUTH"]:
        del fake.kv[ns_id]
    assert apikey.main(["--repo", str(repo), "create", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no KV namespace titled AUTH" in err and "Fix:" in err


@pytest.mark.parametrize("argv,shown", [(["create", ""], "NAME=(none)"), (["create", "  "], "NAME='  '"),
                                        (["create", "a\nb"], "NAME='a\\nb'"), (["create", "x" * 101], "NAME='xxx"),
                                        (["create", "ok", "--user", "\x1b[2J"], "--user='\\x1b[2J'")])
def test_a_bad_name_is_one_line_before_anything_is_asked(world, capsys, argv, shown):
    repo, fake = world
    assert apikey.main(["--repo", str(repo), *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"apikey: {shown}") and "Fix: 1-100 printable characters" in err
    assert not fake.requests, "the API was asked before NAME was checked"


def test_edge_items_fail_before_apply_and_are_done_after(world, capsys):
    repo, fake = world
    before = context(repo)
    assert phase_checks.edge_dns(before).status == "failing"
    assert phase_checks.edge_tunnels(before).status == "failing"
    waf = phase_checks.edge_waf_rules(before)
    assert waf.status == "failing" and "new entry point" in waf.evidence[0]
    assert phase_checks.edge_rate_limits(before).status == "failing"
    assert phase_checks.edge_auth_namespace(before).status == "done"
    assert phase_checks.edge_worker_count(before).status == "done"
    assert edge.main(["--repo", str(repo), "apply"]) == 0
    capsys.readouterr()
    after = context(repo)
    for check in (phase_checks.edge_dns, phase_checks.edge_tunnels, phase_checks.edge_waf_rules,
                  phase_checks.edge_rate_limits, phase_checks.edge_kv_count):
        result = check(after)
        assert result.status == "done", (check.__name__, result.evidence)


def test_clutter_and_clear_keys_fail_their_items(world):
    repo, fake = world
    for n in range(11):
        fake.add_worker(f"old-{n}")
    (auth,) = [i for i, n in fake.kv.items() if n["title"] == "AUTH"]
    fake.kv_values[auth] = {"br_in-clear": {"value": "{}", "metadata": None}}
    ctx = context(repo)
    workers = phase_checks.edge_worker_count(ctx)
    assert workers.status == "failing" and "12 Workers (target <= 10)" in workers.evidence[0]
    keys = phase_checks.edge_auth_namespace(ctx)
    assert keys.status == "failing" and "not SHA-256 hashes" in keys.evidence[0]


def test_no_token_fails_the_items_with_the_fix(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path, f'edge_account_id = "{ACCOUNT}"')
    use_vault(tmp_path / "c.vault", "pp", {}, monkeypatch, CLEAN_ENV)
    result = phase_checks.edge_dns(context(repo))
    assert result.status == "failing" and "no Cloudflare API token" in result.evidence[0]
