"""The setup checklist (fleet/checklist.py) against the code it names, and the phase runner's
pure parts (fleet/commands/phase.py). No host, no Docker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleet.checklist import ITEMS, PHASES, phase_items
from fleet.commands import docs, phase, phase_checks
from fleet.converge import component as registry
from fleet.preflight.inventory import FleetConfigError, hosts_named, read_inventory_data
from fleet.preflight.model import load_fleet

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO.parent / "shared" / "reference" / "infrastructure-bible.md"
SPEC_IDS = {m.group(1) for f in (REPO / "tests" / "specs").glob("test_*.py")
            for m in re.finditer(r"^def test_([a-z]+\d+)_", f.read_text(), re.M)}


@pytest.fixture(scope="module")
def fleet():
    hosts, _ = read_inventory_data(REPO / "inventory.py")
    return load_fleet(hosts, REPO / "group_data")


def test_ids_are_unique_and_numbered_per_phase():
    for number in PHASES:
        ids = [item["id"] for item in phase_items(number)]
        assert ids == [f"p{number}-{n:02d}" for n in range(1, len(ids) + 1)]
    assert len({i["id"] for i in ITEMS}) == len(ITEMS)


@pytest.mark.skipif(not GUIDE.exists(), reason="the guide is not next to this checkout")
def test_every_item_of_the_guide_is_here_in_its_words():
    text = GUIDE.read_text()
    section = text[text.index("## Setup Checklist"):]
    section = section[:section.index("\n## ", 5)]
    guide = {}
    for block in section.split("### Phase ")[1:]:
        number = int(block[0])
        guide[number] = [line[len("- [ ] "):].strip() for line in block.splitlines() if line.startswith("- [ ] ")]
    for number, texts in guide.items():
        assert [item["text"] for item in phase_items(number)] == texts


def test_everything_an_item_names_exists():
    names = {c.name for c in registry.components()}
    for item in ITEMS:
        assert set(item["converge"]) <= names | {phase.EDGE}, item["id"]
        for kind, *rest in item["verify"]:
            if kind == "specs":
                assert set(rest[0]) <= SPEC_IDS, (item["id"], set(rest[0]) - SPEC_IDS)
            elif kind == "check":
                assert rest[0] in phase_checks.CHECKS, item["id"]
            else:
                assert kind == "manual" and rest[0] and rest[1], item["id"]


def test_hosts_name_groups_or_hosts(fleet):
    for item in ITEMS:
        for name in item["hosts"]:
            assert name in fleet.known_groups or name in fleet.hosts, item["id"]
        assert phase.item_hosts(fleet, item, list(fleet.hosts)), item["id"]


def test_limit_takes_hosts_and_groups_and_refuses_unknown_names(fleet):
    assert hosts_named(fleet, "pi5-beta,gateway") == ["pi5-alpha", "pi5-beta"]
    assert hosts_named(fleet, None) == list(fleet.hosts)
    with pytest.raises(FleetConfigError, match="neither a host nor a group") as err:
        hosts_named(fleet, "pi9")
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_spec_cases_map_to_their_host():
    hosts = ["pi5-alpha", "pi5-alpha-2", "jetson-prime"]
    assert phase.spec_host("test_ts01_daemon[pi5-alpha]", hosts) == "pi5-alpha"
    assert phase.spec_host("test_ts01_daemon[pi5-alpha-2]", hosts) == "pi5-alpha-2"
    assert phase.spec_host("test_base02_nonlocal_bind[jetson-prime-net.ipv4.ip_nonlocal_bind]", hosts) == "jetson-prime"
    assert phase.spec_host("test_x[other]", hosts) is None


def test_an_item_is_failing_when_any_of_its_checks_fails():
    results = {("ts01", "a"): [("passed", "t")], ("ts01", "b"): [("failed", "test_ts01[b]: assert False")]}
    item = {"verify": [("specs", ["ts01"])]}
    ctx = phase_checks.Context(repo=REPO, entries={}, fleet=None, hosts=[])
    out = phase.verify_item(item, ctx, ["a", "b"], results)
    assert out["status"] == "failing" and out["evidence"] == ["test_ts01[b]: assert False"]
    assert phase.verify_item(item, ctx, ["a"], results)["status"] == "done"
    assert phase.verify_item(item, ctx, ["c"], results)["status"] == "n/a"


def test_a_manual_item_prints_its_reason_and_steps():
    item = next(i for i in ITEMS if i["id"] == "p2-03")
    out = phase.verify_item(item, None, [], {})
    lines = phase.render(item, out)
    assert lines[0].startswith("p2-03  manual") and "reason:" in lines[1] and "step 1:" in lines[2]


def test_earlier_phases_block_with_the_failing_items(tmp_path):
    (tmp_path / ".state" / "fleet" / "phases").mkdir(parents=True)
    assert phase.blockers(tmp_path, "fleet", 2, ["a"]) == [
        "phase 1 has not been run (no report at .state/fleet/phases/phase1.json): run `make phase1` first"]
    report = {"hosts": ["a"], "finished": "T", "items": [
        {"id": "p1-02", "text": "ping", "status": "failing"}, {"id": "p1-01", "text": "x", "status": "done"}]}
    phase.report_path(tmp_path, "fleet", 1).write_text(json.dumps(report))
    assert phase.blockers(tmp_path, "fleet", 2, ["a"]) == ["p1-02 ping: failing in the phase 1 report of T"]
    assert phase.blockers(tmp_path, "fleet", 2, ["a", "b"])[0].startswith("phase 1 was last run without b")
    assert phase.blockers(tmp_path, "fleet", 1, ["a"]) == []


def test_bad_usage_is_one_line(capsys):
    assert phase.main(["7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "phase 7 does not exist" in err


def test_generated_documents_are_current():
    for name, (path, text) in docs.generated(REPO).items():
        assert path.exists() and path.read_text() == text, f"{path.name} is stale. Fix: run `make docs` and commit it."


def test_fleet_document_lists_every_host_service_and_domain(fleet):
    text = docs.render_fleet(fleet)
    for host in fleet.hosts.values():
        assert f"## {host.name}" in text
        for name in fleet.services.on(host.name):
            assert f"| {name} |" in text
    for domain in fleet.domains:
        assert domain in text


def test_runbook_commands_are_real_make_targets(fleet):
    targets = set(re.findall(r"^([a-z0-9-]+):", (REPO / "Makefile").read_text(), re.M))
    used = set(re.findall(r"^make ([a-z0-9-]+)", docs.render_runbook(fleet), re.M))
    assert used and used <= targets, used - targets
    for op in ("Converge one host", "Add a host", "Rotate a secret", "Restore a database", "Rebuild a host",
               "Roll back an app"):
        assert f"## {op}" in docs.render_runbook(fleet)


def test_the_makefiles_spec_workers_are_the_phase_commands():
    """`make verify` and the phase command run the specs with the same default workers."""
    default = re.search(r"^SPEC_WORKERS \?= (\d+)$", (REPO / "Makefile").read_text(), re.M)
    assert default and int(default.group(1)) == phase.SPEC_WORKERS
