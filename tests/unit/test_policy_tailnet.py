"""The generated tailnet policy (fleet.policy.tailnet): its sections come from the facts, its
grants never reach a host the graph does not name, its tests cover every declared flow and the
undeclared (tag, port) pairs, and its HuJSON reads back with a fingerprint."""

from __future__ import annotations

import pytest

from fleet.policy import evaluate, tailnet
from fleet.policy.graph import ADMINS, ServiceGraph

ADMIN = "alice@example.com"


@pytest.fixture
def fleet(data):
    data.all_data["tailnet_policy_admins"] = [ADMIN, "bob@example.com"]
    return data.fleet()


@pytest.fixture
def policy(fleet) -> tailnet.Policy:
    return tailnet.generate(fleet)


def test_tag_owners_groups_and_hosts_come_from_the_data(data, fleet, policy):
    tags = {t for ts in data.all_data["tailscale_tags_by_group"].values() for t in ts}
    assert set(policy.content["tagOwners"]) == tags
    assert all(owners == data.all_data["tailnet_policy_tag_owners"] for owners in policy.content["tagOwners"].values())
    assert policy.content["groups"] == {"group:admins": [ADMIN, "bob@example.com"]}
    assert policy.content["hosts"] == {name: h["tailnet_address"] for name, h in data.hosts.items()}
    assert "ssh" not in policy.content  # tailnet_policy_ssh = "plain": a grant to port 22 instead


def test_one_grant_per_service_and_client_set(fleet, policy):
    graph = ServiceGraph(fleet)
    port = fleet.services.port
    for grant, note in zip(policy.grants, policy.notes):
        assert set(grant) == {"src", "dst", "ip"} and len(grant["ip"]) == 1
        assert "*" not in grant["src"] + grant["dst"]
        service = note.split(" on ")[0]
        assert grant["ip"] == [f"tcp:{port(service)}"]
    by_service = {}
    for flow in graph.tailnet_flows():
        by_service.setdefault(flow.service, set()).add(flow.server)
    assert {n.split(" on ")[0] for n in policy.notes} == set(by_service)


def test_the_postgres_grant_reads_its_clients_from_the_data(data, policy):
    (grant,) = [g for g, n in zip(policy.grants, policy.notes) if n.startswith("postgres on ")]
    tags = data.all_data["tailscale_tags_by_group"]
    clients = [tag for group in data.group_data["database"]["postgres_roles"]["api"]["clients"] for tag in tags[group]]
    assert grant == {"src": sorted(clients + tags["healthcheck"]), "dst": tags["database"], "ip": ["tcp:5432"]}


def test_a_host_no_tag_fits_is_named_by_its_alias(policy):
    """pi5-beta's agents are reached by pi5-alpha's tunnel; tag:agents would also open pi5-alpha's."""
    (grant,) = [g for g, n in zip(policy.grants, policy.notes) if n.startswith("agents on ")]
    assert grant == {"src": ["tag:gateway"], "dst": ["pi5-beta"], "ip": ["tcp:8001"]}


def test_cover_prefers_the_largest_tag_and_never_overreaches():
    sel = tailnet.Selectors({"a": ["tag:pi", "tag:x"], "b": ["tag:pi"], "c": ["tag:pi"], "d": ["tag:cloud"]})
    assert sel.cover({"a", "b", "c"}) == ["tag:pi"]
    assert sel.cover({"a", "b"}) == ["tag:x", "b"]
    assert sel.cover({"a", "b", "c", "d"}) == ["tag:pi", "tag:cloud"]
    assert sel.cover(set()) == []


def test_tests_accept_every_declared_flow(fleet, policy):
    """Each flow has an accept from a selector of its client to a selector of its server."""
    graph = ServiceGraph(fleet)
    tags = tailnet.host_tags(fleet)
    accepts = {(t["src"], a) for t in policy.tests for a in t.get("accept", ())}
    for flow in graph.tailnet_flows():
        port = fleet.services.port(flow.service)
        srcs = {ADMIN} if flow.client == ADMINS else {*tags[flow.client], fleet.hosts[flow.client].tailnet_address}
        dsts = {*tags[flow.server], flow.server}
        assert any((s, f"{d}:{port}") in accepts for s in srcs for d in dsts), flow


def test_tests_deny_undeclared_tag_and_port_pairs(policy):
    denies = {(t["src"], d) for t in policy.tests for d in t.get("deny", ())}
    assert ("tag:monitoring", "tag:database:5432") in denies
    assert ("tag:cloud", "tag:database:6379") in denies
    # tag:pi is also pi5-alpha's, a declared postgres client: neither accepted nor denied as a whole
    assert not [d for s, d in denies if s == "tag:pi" and d == "tag:database:5432"]
    assert ("tag:gpu", "tag:monitoring:3000") in denies
    assert (ADMIN, "tag:database:5432") in denies
    assert ("tag:gateway", "tag:database:5432") not in denies
    for test in policy.tests:
        assert not test["src"].startswith(("autogroup:", "group:")), "a test's src cannot be a group"
        assert not set(test.get("accept", ())) & set(test.get("deny", ()))


def test_without_admins_there_are_no_admin_tests(data):
    data.all_data["tailnet_policy_admins"] = []
    policy = tailnet.generate(data.fleet())
    assert policy.content["groups"] == {"group:admins": []}
    assert all(t["src"].startswith("tag:") for t in policy.tests)


def test_tailscale_ssh_gives_admins_the_hosts_ssh_users(data):
    data.all_data["tailnet_policy_ssh"] = "tailscale"
    data.all_data["tailnet_policy_admins"] = [ADMIN]
    policy = tailnet.generate(data.fleet())
    assert policy.content["ssh"] == [{"action": "accept", "src": ["group:admins"], "dst": ["tag:pi", "tag:cloud", "tag:gpu"],
                                      "users": sorted({h["ssh_user"] for h in data.hosts.values()})}]


def test_hujson_round_trip_and_fingerprint(policy):
    text = tailnet.render(policy)
    assert text.startswith("// The fleet's tailnet policy, generated from inventory.py")
    assert "\t\t// postgres on pi5-gamma <- pi0-epsilon, pi5-alpha\n" in text
    assert "],\n\t\t}," in text  # trailing commas, as the admin console writes them
    parsed = evaluate.parse(text)
    assert parsed == policy.content
    assert tailnet.fingerprint_matches(text, parsed) is True
    edited = dict(parsed, grants=parsed["grants"][1:])
    assert tailnet.fingerprint_matches(text, edited) is False
    assert tailnet.fingerprint_matches(text.split("\n", 3)[3], parsed) is None


def test_the_fingerprint_ignores_formatting_and_comments(policy):
    text = tailnet.render(policy)
    reformatted = text.replace("\t", "    ").replace("// postgres on", "// (edited comment) postgres on")
    assert tailnet.fingerprint_matches(reformatted, evaluate.parse(reformatted)) is True


def test_summary_lists_grants_and_counts(policy):
    lines = tailnet.summary(policy)
    assert lines[0].startswith("grant group:admins, tag:database, tag:healthcheck -> tag:cloud tcp:22   # ssh on droplet-failover")
    accepts = sum(len(t.get("accept", ())) for t in policy.tests)
    denies = sum(len(t.get("deny", ())) for t in policy.tests)
    assert lines[-1] == (f"policy: {len(policy.grants)} grants, 10 tags, 7 hosts, 0 ssh rules; tests: "
                         f"{len(policy.tests)} sources, {accepts} accept and {denies} deny assertions")
