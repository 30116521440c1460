"""tests/report.py: the closing count and the failed-case list CI prints when a run fails."""

import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "report.py"

SUITE = """<testsuite name="faults" tests="3" failures="1" errors="1">
<testcase classname="faults" name="kill-postgres[pi5-gamma]" time="1">
<failure message="AssertionError: pg-04 failed&#10;the traceback follows">AssertionError: pg-04 failed
the traceback follows</failure></testcase>
<testcase classname="t" name="test_x[pi5-beta]" time="1"><error message="">ConnectError: gone</error></testcase>
<testcase classname="faults" name="docker-restart-owed[pi5-gamma]" time="1"/>
<testcase classname="t" name="test_y[pi5-beta]" time="1"><skipped message="waived"/></testcase>
</testsuite>"""


def run(*args):
    return subprocess.run([sys.executable, str(REPORT), *args], capture_output=True, text=True, timeout=60)


def test_failures_lists_each_failed_or_errored_case_with_its_first_line(tmp_path):
    path = tmp_path / "junit-faults.xml"
    path.write_text(SUITE)
    out = run("--failures", f"faults={path}", f"specs={tmp_path / 'absent.xml'}")
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "FAILED faults: kill-postgres[pi5-gamma]: AssertionError: pg-04 failed",
        "FAILED faults: test_x[pi5-beta]: ConnectError: gone",
    ]


def test_failures_is_quiet_and_zero_when_nothing_failed(tmp_path):
    path = tmp_path / "junit-specs.xml"
    path.write_text('<testsuite name="s"><testcase classname="t" name="test_a[pi5-alpha]" time="1"/></testsuite>')
    out = run("--failures", f"specs={path}")
    assert (out.returncode, out.stdout) == (0, "")


def test_the_closing_count_still_sums_every_part(tmp_path):
    path = tmp_path / "junit-faults.xml"
    path.write_text(SUITE)
    out = run(f"faults={path}")
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["  faults:          1 passed, 2 failed, 1 skipped",
                                       "tests: 1 passed, 2 failed, 1 skipped"]
