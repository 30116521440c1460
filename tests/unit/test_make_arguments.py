"""What the Makefile's targets are given on the command line (FORCE=1, DELETE=1, CONFIRM=yes,
SPEC_WORKERS=4, ...) is checked before the target's command runs: a switch is on only for
1/yes/true, off for 0/no/false or when left out, and anything else stops make with one line
that names the variable and says how to fix it. `make -n` prints the commands without running
them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.commands import phase

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed here")


def make_n(target: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def command(target: str, **variables: str) -> str:
    """The target's own command line (the last one `make -n` prints, its continued lines joined)."""
    out = make_n(target, **variables)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.replace("\\\n", " ").split("\n")[-2].split())


SWITCHES = [("rebuild", "FORCE", "--force", {"HOST": "pi5-gamma"}),
            ("edge-apply", "DELETE", "--delete-unlisted", {}),
            ("tailnet-apply", "FORCE", "--force", {}),
            ("phase1", "CHECK_ONLY", "--check-only", {}),
            ("bench", "FRESH", "--fresh", {})]


@pytest.mark.parametrize("target,name,flag,extra", SWITCHES, ids=[s[0] for s in SWITCHES])
def test_a_switch_is_on_only_when_it_says_so(target, name, flag, extra):
    assert flag not in command(target, **extra)
    for off in ("", "0", "no", "false"):
        assert flag not in command(target, **extra, **{name: off}), f"{name}={off}"
    for on in ("1", "yes", "true"):
        assert flag in command(target, **extra, **{name: on}), f"{name}={on}"


@pytest.mark.parametrize("target,name,flag,extra", SWITCHES, ids=[s[0] for s in SWITCHES])
@pytest.mark.parametrize("value", ["maybe", "2", "YES", "1 0"])
def test_any_other_value_is_one_line_before_anything_runs(target, name, flag, extra, value):
    out = make_n(target, **extra, **{name: value})
    assert out.returncode != 0 and flag not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{name}={value} is not a yes/no value. Fix: {name}=1" in lines[0]


def test_restore_replaces_the_live_databases_only_for_confirm_yes():
    assert command("restore", HOST="pi5-gamma", CONFIRM="yes").endswith("restore 'pi5-gamma' --confirm")
    assert command("restore", HOST="pi5-gamma", DATABASE="app", CONFIRM="yes").endswith("--database 'app' --confirm")
    assert "--confirm" not in command("restore", HOST="pi5-gamma")
    for value in ("1", "no", "YES", "yes yes"):
        out = make_n("restore", HOST="pi5-gamma", CONFIRM=value)
        lines = out.stderr.strip().splitlines()
        assert out.returncode != 0 and "--confirm" not in out.stdout
        assert len(lines) == 1 and f"CONFIRM={value} is not yes. Fix: CONFIRM=yes" in lines[0]


@pytest.mark.parametrize("target,given,passed", [("verify", "0", "-n 0 "), ("phase1", "8", "--workers 8")])
def test_spec_workers_is_a_whole_number(target, given, passed):
    assert passed in command(target, SPEC_WORKERS=given)
    for value in ("x", "-2", "", "1.5", "2 3"):
        out = make_n(target, SPEC_WORKERS=value)
        lines = out.stderr.strip().splitlines()
        assert out.returncode != 0 and len(lines) == 1, (value, out.stderr)
        assert f"SPEC_WORKERS={value} is not a number of spec workers. Fix: a whole number" in lines[0]


def test_a_host_is_one_argument_even_when_empty():
    assert command("backup").endswith("fleet backup ''")
    assert command("restore", HOST="a b").split("restore ", 1)[1].startswith("'a b'")


@pytest.mark.parametrize("value", ['pi5"x`touch {marker}`', """pi5"x'y `touch {marker}` z"""])
def test_quotes_and_backquotes_in_a_value_reach_the_command_as_text(tmp_path, value):
    """Double quotes let a `"` in HOST end the argument and a backquote run a command. The
    command line `make -n` prints is what make gives the shell: its arguments, run through
    the shell with printf in place of the command, must be the value as given, once."""
    marker = tmp_path / "ran"
    value = value.format(marker=marker)
    out = make_n("backup", HOST=value)
    assert out.returncode == 0, out.stderr
    arguments = out.stdout.strip().splitlines()[-1].split(" -m fleet backup ", 1)[1]
    shown = subprocess.run(["bash", "-c", f"printf '%s\\n' {arguments}"], capture_output=True, text=True, timeout=30)
    assert not marker.exists()
    assert shown.returncode == 0 and shown.stdout == value + "\n"


def test_phase_reads_spec_workers_without_a_traceback():
    assert phase.spec_workers(None, None) == phase.SPEC_WORKERS
    assert phase.spec_workers(None, "2") == 2 and phase.spec_workers(3, "x") == 3
    for given, env in ((None, "x"), (None, "-1"), (-3, None)):
        with pytest.raises(phase.PhaseError, match="is not a number of spec workers. Fix: a whole number"):
            phase.spec_workers(given, env)


@pytest.mark.parametrize("target", ["plan", "converge"])
def test_limit_gives_pyinfra_one_limit_per_name(target):
    """`make converge LIMIT=pi5-alpha` converged every host: only the phases read LIMIT."""
    assert command(target).endswith("deploys/site.py")
    assert command(target, LIMIT="pi5-alpha").endswith("deploys/site.py --limit 'pi5-alpha'")
    assert command(target, LIMIT="pi5-alpha,gpu").endswith("--limit 'pi5-alpha' --limit 'gpu'")
    assert command(target, LIMIT="it's").endswith("--limit 'it'\\''s'")


def test_verify_hands_limit_to_the_specs():
    assert "FLEET_SPEC_HOSTS" not in command("verify")
    assert command("verify", LIMIT="database,pi5-alpha").startswith("FLEET_SPEC_HOSTS='database,pi5-alpha' ")
