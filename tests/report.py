"""Sum JUnit XML files from the test run into one closing line, and (with --per-host) a
per-host table of spec results.

    python tests/report.py "product unit=.state/junit-unit.xml" "specs=.state/junit-specs.xml" ...
    python tests/report.py --per-host .state/junit-specs.xml
    python tests/report.py --failures "specs=.state/junit-specs.xml" ...

Each `label=path` part gets its own count (the product's unit tests apart from the test
stand-ins' own), then one closing line sums them all. With --failures it prints only the
failed cases, a line each with the first line of their message (CI's failure summary: CI
shows only the end of its output, and the test step's own output is far above it).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleet.preflight.inventory import read_inventory_data  # noqa: E402


def counted(counter: Counter) -> str:
    line = f"{counter['passed']} passed, {counter['failed']} failed"
    if counter["skipped"]:
        line += f", {counter['skipped']} skipped"
    return line


def outcome(case: ET.Element) -> str:
    for tag, result in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
        if case.find(tag) is not None:
            return result
    return "passed"


def cases(paths: list[str]):
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            yield case


def host_of(name: str, hosts: list[str]) -> str | None:
    params = name.partition("[")[2].rstrip("]")
    matches = [h for h in hosts if params == h or params.startswith(h + "-")]
    return max(matches, key=len) if matches else None


def failures(parts: list[tuple[str, str]]) -> int:
    count = 0
    for label, path in parts:
        for case in cases([path]):
            if outcome(case) != "failed":
                continue
            count += 1
            found = case.find("failure")
            found = case.find("error") if found is None else found
            text = (found.get("message") or found.text or "").strip()
            first = text.splitlines()[0] if text else "(no message)"
            print(f"FAILED {label or path}: {case.get('name')}: {first}"[:300])
    return 1 if count else 0


def main(argv: list[str]) -> int:
    per_host, only_failures = "--per-host" in argv, "--failures" in argv
    parts = [a.partition("=") if "=" in a else ("", "", a) for a in argv if a not in ("--per-host", "--failures")]
    parts = [(label, path) for label, _, path in parts if Path(path).exists()]
    paths = [path for _, path in parts]
    if not paths:
        print("no test results found", file=sys.stderr)
        return 1
    if only_failures:
        return failures(parts)
    if per_host:
        hosts, _ = read_inventory_data(Path(__file__).resolve().parents[1] / "inventory.py")
        table: dict[str, Counter] = defaultdict(Counter)
        for case in cases(paths):
            host = host_of(case.get("name", ""), list(hosts))
            if host:
                table[host][outcome(case)] += 1
        print(f"{'host':<18} {'groups':<26} {'passed':>6} {'failed':>6} {'skipped':>7}")
        for name, entry in hosts.items():
            c = table[name]
            print(f"{name:<18} {','.join(entry['groups']):<26} {c['passed']:>6} {c['failed']:>6} {c['skipped']:>7}")
        failed = sum(c["failed"] for c in table.values())
        return 1 if failed or len(table) != len(hosts) else 0
    total = Counter()
    for label, path in parts:
        part = Counter(outcome(c) for c in cases([path]))
        total += part
        if label:
            print(f"  {label + ':':<16} {counted(part)}")
    print(f"tests: {counted(total)}")
    return 1 if total["failed"] or not total["passed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
