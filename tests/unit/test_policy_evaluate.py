"""The offline evaluator (fleet.policy.evaluate): the generated policy allows exactly the service
graph's flows and passes its own tests, without credentials; and the evaluator catches a policy
that is too open, too closed, or names something it never defines."""

from __future__ import annotations

import copy

import pytest

from fleet.policy import evaluate, tailnet
from fleet.policy.graph import ServiceGraph

ADMIN = "alice@example.com"


@pytest.fixture
def fleet(data):
    data.all_data["tailnet_policy_admins"] = [ADMIN]
    return data.fleet()


@pytest.fixture
def policy(fleet) -> dict:
    return evaluate.parse(tailnet.render(tailnet.generate(fleet)))


def test_the_generated_policy_allows_exactly_the_graph_and_passes_its_tests(fleet, policy):
    report = evaluate.check(fleet, policy)
    print("\n".join(report.lines()))
    assert report.ok, report.lines()
    graph = ServiceGraph(fleet)
    flows = graph.tailnet_flows()
    port = fleet.services.port
    assert report.result.flows == {(f.client, f.server, port(f.service)) for f in flows if f.client != "admins"}
    assert report.result.person_flows == {(ADMIN, f.server, port(f.service)) for f in flows if f.client == "admins"}
    assert report.result.assertions == sum(len(t.get("accept", ())) + len(t.get("deny", ())) for t in policy["tests"])
    assert report.lines()[-1] == "evaluate: ok"


def test_without_admins_the_fleet_policy_is_still_sound(data):
    fleet = data.fleet()
    report = evaluate.check(fleet, evaluate.parse(tailnet.render(tailnet.generate(fleet))))
    assert report.ok and not report.result.person_flows


def test_a_missing_grant_fails_its_accept_tests_and_a_declared_flow(fleet, policy):
    broken = copy.deepcopy(policy)
    broken["grants"] = [g for g in broken["grants"] if g["ip"] != ["tcp:5432"]]
    report = evaluate.check(fleet, broken)
    assert not report.ok
    assert ("pi5-alpha", "pi5-gamma", 5432) in report.missing
    assert "test tag:gateway -> tag:database:5432: expected accept, the grants deny it" in report.result.failures


def test_an_open_policy_fails_its_deny_tests_and_shows_undeclared_flows(fleet, policy):
    opened = copy.deepcopy(policy)
    opened["grants"].append({"src": ["*"], "dst": ["*"], "ip": ["*"]})
    report = evaluate.check(fleet, opened)
    assert ("pi5-beta", "pi5-gamma", 5432) in report.undeclared
    assert "test tag:monitoring -> tag:database:5432: expected deny, the grants allow it" in report.result.failures
    assert "  - undeclared: pi5-beta -> pi5-gamma:5432" in report.lines()


def test_tailscales_default_policy_lets_every_host_reach_everything(fleet, policy):
    default = {"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}], "tagOwners": policy["tagOwners"]}
    report = evaluate.check(fleet, default)
    assert len(report.undeclared) > 100 and not report.missing


def test_undefined_names_are_errors(fleet, policy):
    """Tailscale treats an unknown alias as nothing: the rule silently stops working."""
    bad = copy.deepcopy(policy)
    bad["grants"][0]["dst"].append("pi5-zeta")
    bad["grants"][1]["src"].append("group:ops")
    del bad["tagOwners"]["tag:gpu"]
    bad["tests"].append({"src": "autogroup:member", "accept": ["pi5-zeta:22"]})
    problems = evaluate.check(fleet, bad).result.problems
    assert "grants[0].dst: 'pi5-zeta' is not in hosts (an undefined alias matches nothing)" in problems
    assert "grants[1].src: 'group:ops' is not in groups" in problems
    assert "tagOwners: tag:gpu is advertised by a host but has no owner" in problems
    assert "tests: 'autogroup:member' cannot be a test's src (use a login, a tag or an address)" in problems


def test_tests_with_addresses_and_aliases(fleet, policy):
    """An address or alias is the device at that address: its tags count."""
    extra = copy.deepcopy(policy)
    extra["tests"] = [{"src": "100.100.0.1", "accept": ["pi5-gamma:5432", "100.100.0.3:6379"],
                       "deny": ["pi5-gamma:9187"]}]
    result = evaluate.check(fleet, extra).result
    assert result.failures == [] and result.assertions == 3


@pytest.mark.parametrize("text, expected", [
    ('{"a": "x // not a comment", // a comment\n "b": [1, 2,],}', {"a": "x // not a comment", "b": [1, 2]}),
    ('/* block\n comment */ {"a": "\\"quoted\\" /* kept */",}', {"a": '"quoted" /* kept */'}),
    ('{"a": {"b": [],},\n}\n', {"a": {"b": []}}),
])
def test_hujson(text, expected):
    assert evaluate.parse(text) == expected


@pytest.mark.parametrize("text", ['{"a": 1', "[1, 2]", '{"a": /* never closed'])
def test_not_a_policy(text):
    with pytest.raises(evaluate.PolicyError):
        evaluate.parse(text)
