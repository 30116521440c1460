"""fleet.commands.edge against a local fake of the Cloudflare API (tests/fakes): plan changes nothing,
apply converges and a second apply writes nothing, the audit deletes only with the flag, and
token problems are clear errors that never show the token.

The committed group_data has edge_account_id = "" on purpose: each test copies inventory.py
and group_data/ into a temporary directory with the account ID filled in and points the CLI
at it with its hidden --repo option. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fakes.cloudflare_api import FakeCloudflare
from fakes.operator import REPO, copy_repo, use_vault
from fleet.commands import edge
from fleet.preflight.model import load_group_data
from fleet.converge.vault import Vault

ACCOUNT = "0123456789abcdef0123456789abcdef"
TOKEN = "cf-unit-token-3b9d2f7a61"  # must never appear in any output
PASSPHRASE = "edge unit passphrase"
TUNNELS = ["pi5-alpha", "jetson-prime", "droplet-failover"]
UNLISTED_WORKERS = ["old-landing", "test-worker-2"]
UNLISTED_KV = ["SCRATCH", "SESSIONS_OLD"]
# What the committed data asks for: WAF rules in both zones, a rate limit on blackroad.io.
RULESETS = [("waf rules", "blackroad.io"), ("waf rules", "lucidia.earth"), ("rate limits", "blackroad.io")]
RULESET_PHASES = ["http_request_firewall_custom", "http_request_firewall_custom", "http_ratelimit"]
CLEAN_ENV = ("FLEET_VAULT_PASSPHRASE_FILE", "FLEET_TARGET", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_KEY",
             "CLOUDFLARE_EMAIL", "CLOUDFLARE_API_USER_SERVICE_KEY", "CLOUDFLARE_BASE_URL")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the inventory and group data, with an account ID."""
    return copy_repo(tmp_path, f'edge_account_id = "{ACCOUNT}"')


@pytest.fixture
def vault(tmp_path, monkeypatch) -> Vault:
    return use_vault(tmp_path / "edge.vault", PASSPHRASE,
                     {"cloudflare_api_token": TOKEN, "tailscale_authkey": "tskey-unit"}, monkeypatch, CLEAN_ENV)


@pytest.fixture
def fake(monkeypatch):
    api = FakeCloudflare(token=TOKEN, account_id=ACCOUNT)
    api.add_zone("blackroad.io")
    api.add_zone("lucidia.earth")
    for name in [*UNLISTED_WORKERS, "blackroad-auth"]:
        api.add_worker(name)
    for title in [*UNLISTED_KV, "AUTH"]:
        api.add_kv(title)
    monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", api.url)
    yield api
    api.stop()
    assert not api.unhandled, f"edge called endpoints the fake does not serve: {api.unhandled}"


@pytest.fixture
def run(repo, vault, fake, capsys):
    """run('plan') -> (exit code, stdout, stderr); asserts the token never shows."""
    def _run(*args: str) -> tuple[int, str, str]:
        code = edge.main(["--repo", str(repo), *args])
        out = capsys.readouterr()
        assert TOKEN not in out.out + out.err
        return code, out.out, out.err
    return _run


def domains() -> dict:
    return load_group_data(REPO / "group_data")[0]["fleet_domains"]


def tunnel_id(fake: FakeCloudflare, name: str) -> str:
    (tunnel,) = fake.live_tunnels(name)
    return tunnel["id"]


# --- the desired state (pure) ----------------------------------------------------------------

def test_desired_state_from_the_repo_data(repo):
    desired = edge.desired_state(edge.load_data(repo))
    assert desired.account_id == ACCOUNT
    assert sorted(desired.tunnels) == sorted(TUNNELS)
    assert {r.name: (r.zone, r.tunnel) for r in desired.records} == {
        name: ("lucidia.earth" if name.endswith("lucidia.earth") else "blackroad.io", route["tunnel"])
        for name, route in domains().items()
    }


def test_a_domain_in_no_zone_is_an_error(repo):
    fleet = edge.load_data(repo)
    fleet.all_data["fleet_domains"]["shop.example.com"] = {"host": "pi5-alpha", "service": "web", "tunnel": "pi5-alpha"}
    fleet.all_data["fleet_domains"]["notblackroad.io"] = {"host": "pi5-alpha", "service": "web", "tunnel": "pi5-alpha"}
    with pytest.raises(edge.EdgeError) as err:
        edge.desired_state(fleet)
    assert len(err.value.problems) == 2
    assert "shop.example.com is in none of edge_zones" in str(err.value)
    assert "notblackroad.io is in none of edge_zones" in str(err.value)
    assert "Fix: add its zone" in str(err.value)


def test_empty_account_id_is_refused_before_anything_else(vault, capsys):
    """The committed data has no account ID: the CLI says where to set it, exit 1."""
    assert edge.main(["--repo", str(REPO), "plan"]) == 1
    err = capsys.readouterr().err
    assert "edge_account_id is empty" in err and "group_data/all.py" in err


def test_bad_usage_is_exit_2(capsys):
    assert edge.main(["frobnicate"]) == 2
    assert edge.main(["plan", "--delete-unlisted"]) == 2
    assert edge.main([]) == 2


# --- plan and apply --------------------------------------------------------------------------

def test_plan_on_an_empty_account_lists_every_add_and_changes_nothing(run, fake, vault):
    before = vault.path.read_bytes()
    code, out, err = run("plan")
    assert code == 0, err
    lines = out.splitlines()
    for name in TUNNELS:
        assert f"+ tunnel {name}" in lines
    for name, route in domains().items():
        assert f"+ dns {name} CNAME <new {route['tunnel']} tunnel id>.cfargotunnel.com (proxied)" in lines
    for name in UNLISTED_WORKERS:
        assert f"- worker {name} (unlisted; apply --delete-unlisted deletes it)" in lines
    for title in UNLISTED_KV:
        assert any(line.startswith(f"- kv {title} (") for line in lines)
    assert not any("blackroad-auth" in line or " AUTH " in line for line in lines)
    for kind, zone in RULESETS:
        assert any(line.startswith(f"+ {kind} {zone} (") and "new entry point" in line for line in lines), kind
    assert lines[-1] == (f"plan: {len(TUNNELS) + len(domains()) + len(RULESETS)} to add, 0 to change, "
                         "4 unlisted (not deleted)")
    assert fake.writes == []
    assert vault.path.read_bytes() == before


def test_apply_creates_tunnels_and_records_then_converges(run, fake, vault):
    code, out, err = run("apply")
    assert code == 0, err
    data = vault.load()
    secrets_printed = []
    for name in TUNNELS:
        (tunnel,) = fake.live_tunnels(name)
        assert tunnel["config_src"] == "local"
        creds = json.loads(data[f"cloudflared_credentials/{name}"])
        assert creds == {"AccountTag": ACCOUNT, "TunnelSecret": fake.tunnel_secrets[tunnel["id"]],
                         "TunnelID": tunnel["id"]}
        assert len(base64.b64decode(creds["TunnelSecret"], validate=True)) == 32
        assert f"created tunnel {name} ({tunnel['id']})" in out
        secrets_printed.append(creds["TunnelSecret"] in out + err)
    assert not any(secrets_printed)
    for name, route in domains().items():
        (record,) = fake.records_named(name)
        assert (record["type"], record["content"], record["proxied"]) == (
            "CNAME", f"{tunnel_id(fake, route['tunnel'])}.cfargotunnel.com", True)
    assert sorted(fake.workers) == sorted([*UNLISTED_WORKERS, "blackroad-auth"])
    assert fake.kv_titles() == sorted([*UNLISTED_KV, "AUTH"])
    for (_, zone), phase in zip(RULESETS, RULESET_PHASES):
        rules = fake.rulesets[(fake.zone_id(zone), phase)]["rules"]
        assert rules and all(r["ref"].startswith("fleet-") for r in rules)
    assert "apply: 13 change(s) made (4 unlisted left in place; --delete-unlisted deletes them)" in out

    writes = len(fake.writes)
    saved = vault.path.read_bytes()
    code, out, err = run("apply")
    assert code == 0, err
    assert len(fake.writes) == writes, fake.writes[writes:]
    assert "apply: no changes" in out.splitlines()[-1]
    assert vault.path.read_bytes() == saved

    code, out, _ = run("plan")
    assert out.splitlines()[-1] == "plan: 0 to add, 0 to change, 4 unlisted (not deleted)"
    assert f"= dns blackroad.io CNAME {tunnel_id(fake, 'pi5-alpha')}.cfargotunnel.com (proxied, ok)" in out


def test_a_record_pointing_elsewhere_is_planned_as_a_change_and_fixed(run, fake):
    assert run("apply")[0] == 0
    (record,) = fake.records_named("api.blackroad.io")
    record.update(content="old-origin.example.net", proxied=False)
    writes = len(fake.writes)
    code, out, _ = run("plan")
    target = f"{tunnel_id(fake, 'pi5-alpha')}.cfargotunnel.com"
    assert f"~ dns api.blackroad.io CNAME old-origin.example.net -> {target} (proxied)" in out
    assert out.splitlines()[-1] == "plan: 0 to add, 1 to change, 4 unlisted (not deleted)"
    assert len(fake.writes) == writes
    code, out, err = run("apply")
    assert code == 0, err
    assert [m for m, _ in fake.writes[writes:]] == ["PATCH"]
    assert (record["content"], record["proxied"]) == (target, True)
    assert fake.records_named("api.blackroad.io") == [record]


def test_unlisted_workers_and_kv_are_deleted_only_with_the_flag(run, fake):
    assert run("apply")[0] == 0
    assert sorted(fake.workers) == sorted([*UNLISTED_WORKERS, "blackroad-auth"])
    code, out, err = run("apply", "--delete-unlisted")
    assert code == 0, err
    assert sorted(fake.workers) == ["blackroad-auth"]
    assert fake.kv_titles() == ["AUTH"]
    for name in UNLISTED_WORKERS:
        assert f"deleted worker {name} (unlisted)" in out
    deletes = [path for method, path in fake.writes if method == "DELETE"]
    assert len(deletes) == 4
    assert all("/workers/scripts/" in p or "/storage/kv/namespaces/" in p for p in deletes)
    assert len(fake.live_tunnels()) == len(TUNNELS) and len(fake.records) == len(domains())
    assert run("apply", "--delete-unlisted")[1].splitlines()[-1] == "apply: no changes"


def test_listings_are_read_page_by_page(run, fake):
    fake.max_per_page = 2
    for i in range(5):
        fake.add_kv(f"EXTRA_{i}")
    code, out, err = run("plan")
    assert code == 0, err
    assert out.splitlines()[-1].endswith("9 unlisted (not deleted)")
    assert any("page=3" in path for _, path in fake.requests if "/storage/kv/namespaces" in path)


# --- tunnels and the vault -------------------------------------------------------------------

def test_a_tunnel_without_credentials_in_the_vault_is_an_error(run, fake, vault):
    fake.add_tunnel("jetson-prime")
    before = vault.path.read_bytes()
    code, out, err = run("apply")
    assert code == 1
    assert "tunnel jetson-prime exists in Cloudflare" in err
    assert "restore the vault" in err and "delete the tunnel in the dashboard" in err
    assert "Traceback" not in err
    assert fake.writes == [] and vault.path.read_bytes() == before


def test_credentials_for_a_deleted_tunnel_are_replaced(run, fake, vault):
    assert run("apply")[0] == 0
    old = tunnel_id(fake, "jetson-prime")
    fake.delete_tunnel(old)  # in the dashboard: still listed, with deleted_at
    before = vault.path.read_bytes()
    code, out, _ = run("plan")
    assert code == 0
    assert f"+ tunnel jetson-prime (the vault's credentials are for tunnel {old}" in out
    assert (f"~ dns llm.blackroad.io CNAME {old}.cfargotunnel.com -> "
            "<new jetson-prime tunnel id>.cfargotunnel.com (proxied)") in out
    assert vault.path.read_bytes() == before
    assert run("apply")[0] == 0
    new = tunnel_id(fake, "jetson-prime")
    assert new != old
    assert json.loads(vault.load()["cloudflared_credentials/jetson-prime"])["TunnelID"] == new
    assert fake.records_named("llm.blackroad.io")[0]["content"] == f"{new}.cfargotunnel.com"


def test_a_record_a_cname_cannot_replace_is_an_error(run, fake):
    fake.add_record("www.lucidia.earth", "A", "192.0.2.10")
    code, _, err = run("plan")
    assert code == 1
    assert "dns www.lucidia.earth has records a CNAME cannot share a name with (A 192.0.2.10)" in err
    assert run("apply")[0] == 1
    assert fake.writes == [] and len(fake.records) == 1


# --- the token -------------------------------------------------------------------------------

def test_a_rejected_token_is_a_clear_error(run, fake, monkeypatch):
    wrong = "cf-wrong-token-5e1c0d"
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", wrong)  # the environment wins over the vault
    code, out, err = run("plan")
    assert code == 1
    assert "the Cloudflare API rejected the token (HTTP 403" in err
    assert "Authentication error [10000]" in err and "token from CLOUDFLARE_API_TOKEN" in err
    assert f"check it has {edge.PERMISSIONS}" in err and "Zone WAF:Edit" in err
    assert "Traceback" not in err and wrong not in out + err
    assert fake.writes == []


def test_a_rejected_token_through_the_cli(repo, vault, fake):
    """The real command line: exit 1, one clear line, no traceback, no token."""
    env = dict(os.environ, CLOUDFLARE_API_TOKEN="cf-wrong-token-5e1c0d")
    proc = subprocess.run([sys.executable, "-m", "fleet", "edge", "--repo", str(repo), "apply"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("edge: the Cloudflare API rejected the token (HTTP 403")
    assert "Traceback" not in proc.stderr and "cf-wrong-token" not in proc.stdout + proc.stderr
    assert fake.writes == []


def test_the_vault_token_is_used_when_the_environment_has_none(run, fake):
    assert run("plan")[0] == 0
    assert fake.requests


def test_a_missing_token_is_a_clear_error(run, fake, vault):
    vault.save({"tailscale_authkey": "tskey-unit"})
    code, _, err = run("plan")
    assert code == 1
    assert "no Cloudflare API token" in err
    assert "CLOUDFLARE_API_TOKEN" in err and "cloudflare_api_token" in err
    assert fake.requests == []


# --- WAF and rate-limiting rules ---------------------------------------------------------------

def test_rules_keep_hand_made_ones_and_fix_a_changed_rule(run, fake):
    waf = ("http_request_firewall_custom")
    zone_id = fake.zone_id("blackroad.io")
    fake.put_entrypoint({}, {"rules": [{"ref": "by-hand", "description": "ops' own", "expression": "ip.src eq 192.0.2.1",
                                        "action": "block"}]}, zone_id, waf)
    hand_id = fake.rulesets[(zone_id, waf)]["rules"][0]["id"]
    code, out, err = run("plan")
    assert "~ waf rules blackroad.io (1 rule(s): rules differ; 1 hand-made rule(s) kept)" in out.splitlines(), out
    assert run("apply")[0] == 0
    rules = fake.rulesets[(zone_id, waf)]["rules"]
    assert [r["ref"] for r in rules] == ["fleet-block-probes", "by-hand"] and rules[1]["id"] == hand_id
    # someone edits our rule in the dashboard: the plan shows it, apply puts it back, once
    rules[0]["expression"] = "true"
    code, out, _ = run("plan")
    assert "~ waf rules blackroad.io (1 rule(s): rules differ; 1 hand-made rule(s) kept)" in out
    writes = len(fake.writes)
    assert run("apply")[0] == 0 and len(fake.writes) == writes + 1
    assert fake.rulesets[(zone_id, waf)]["rules"][0]["expression"].startswith("(starts_with(")
    assert fake.rulesets[(zone_id, waf)]["rules"][1]["id"] == hand_id
    code, out, _ = run("apply")
    assert "apply: no changes" in out.splitlines()[-1]


@pytest.mark.parametrize("rules, message", [
    ('{"blackroad.io": [{"ref": "x", "description": "d", "expression": "true", "action": "block"}]}',
     "must start with 'fleet-'"),
    ('{"example.org": []}', "not one of edge_zones"),
    ('{"blackroad.io": [{"ref": "fleet-a", "description": "d", "expression": "true", "action": "nuke"}]}',
     "action 'nuke' is not one of"),
    ('{"blackroad.io": [{"ref": "fleet-a", "description": "d"}]}', "missing expression, action"),
])
def test_bad_rules_are_refused_before_any_request(tmp_path, vault, fake, capsys, rules, message):
    root = copy_repo(tmp_path, f'edge_account_id = "{ACCOUNT}"\nedge_waf_rules = {rules}')
    assert edge.main(["--repo", str(root), "plan"]) == 1
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err and fake.requests == []


@pytest.mark.parametrize("setting, message", [
    # text where a list belongs: read letter by letter, it would keep nothing and
    # apply --delete-unlisted would delete every Worker
    ('edge_workers_keep = "blackroad-auth"', "edge_workers_keep: 'blackroad-auth' is not a list of names."),
    ('edge_kv_keep = "AUTH"', "edge_kv_keep: 'AUTH' is not a list of names."),
    ('edge_zones = ["blackroad.io", 7]', "edge_zones: ['blackroad.io', 7] is not a list of zone names."),
])
def test_bad_lists_are_refused_before_any_request(tmp_path, vault, fake, capsys, setting, message):
    root = copy_repo(tmp_path, f'edge_account_id = "{ACCOUNT}"\n{setting}')
    assert edge.main(["--repo", str(root), "apply", "--delete-unlisted"]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and fake.requests == []


def test_a_rate_limit_needs_its_ratelimit_block(tmp_path, vault, fake, capsys):
    rule = '{"blackroad.io": [{"ref": "fleet-r", "description": "d", "expression": "true", "action": "block"}]}'
    root = copy_repo(tmp_path, f'edge_account_id = "{ACCOUNT}"\nedge_rate_limits = {rule}')
    assert edge.main(["--repo", str(root), "plan"]) == 1
    assert "a rate limit needs ratelimit with characteristics, period" in capsys.readouterr().err
