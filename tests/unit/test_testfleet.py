"""Counting pyinfra's per-host results, which the idempotence check and the benchmark use."""

from harness.testfleet import count_changes, image_tag

SAMPLE = """--> Starting operation: Base | Install base packages
    [pi5-alpha]        Success
    [droplet-failover] No changes
--> Starting operation: Base | Harden sshd
    [pi5-alpha]        \x1b[32mNo changes\x1b[0m
    [droplet-failover] Error: executed 3 commands
    [pi5-alpha]        Reading package lists... Success
"""


def test_counts_per_host():
    assert count_changes(SAMPLE) == {
        "pi5-alpha": {"changed": 1, "unchanged": 1, "error": 0},
        "droplet-failover": {"changed": 0, "unchanged": 1, "error": 1},
    }


def test_image_tag_is_stable_and_hashed():
    assert image_tag() == image_tag()
    assert image_tag().startswith("fleet-testhost:") and len(image_tag().split(":")[1]) == 12


def test_arm64_image_has_its_own_tag():
    # a different architecture is a different image; the native one keeps its tag
    assert image_tag("arm64") != image_tag()
    assert image_tag("arm64").startswith("fleet-testhost-arm64:")


def test_the_benchmark_counts_the_processes_hosts_started():
    from harness.bench import processes_started

    assert processes_started([100, 2000], [151, 2011]) == 50 + 10  # less each reading's own cat
    assert processes_started([100, 2000], [151, 12]) is None  # PIDs wrapped on one host
    assert processes_started(None, [1, 2]) is None and processes_started([1], None) is None


def test_image_build_progress_folds_the_per_package_fetch(capsys):
    """debootstrap's Retrieving/Validating pair, printed for every package, is one phase."""
    from harness.testfleet import stream_phases

    lines = ["I: Resolving dependencies", "I: Checking component main",
             *[f"I: {verb} pkg{i}" for i in range(40) for verb in ("Retrieving", "Validating")],
             "I: Chosen extractor", "I: Extracting a", "I: Extracting b", "W: a warning"]
    stream_phases(["printf", "%s\\n", *lines], "debootstrap")
    printed = capsys.readouterr()
    shown = [line.split("] ", 1)[1] for line in (printed.out + printed.err).splitlines() if "debootstrap:" in line]
    assert shown == ["debootstrap: Resolving done (1 step(s))", "debootstrap: Checking done (1 step(s))",
                     "debootstrap: Retrieving/Validating done (80 step(s))", "debootstrap: Chosen done (1 step(s))",
                     "debootstrap: Extracting done (3 step(s))"]
