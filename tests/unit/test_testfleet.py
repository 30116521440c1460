"""Counting pyinfra's per-host results, which the idempotence check and the benchmark use."""

import subprocess
from types import SimpleNamespace

import pytest

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


def test_the_benchmark_reads_each_hosts_cpu_and_its_idle_rate(monkeypatch):
    """Per host: a run's CPU (medians over runs), and CPU seconds per second with nothing run;
    no figure at all where a reading fails, never a partial one."""
    from harness import bench

    readings = iter([{"a": 1.0, "b": 10.0}, {"a": 1.5, "b": 12.0},  # run 1
                     {"a": 2.0, "b": 12.0}, {"a": 2.1, "b": 16.0},  # run 2
                     {"a": 2.1, "b": 16.0}, {"a": 2.9, "b": 17.0}])  # run 3
    monkeypatch.setattr(bench, "hosts_cpu_each", lambda names: next(readings))
    monkeypatch.setattr(bench, "hosts_last_pid", lambda names: None)
    monkeypatch.setattr(bench, "operator_cpu", lambda: 0.0)
    ticks = iter([(10, 1000), (20, 1100), (20, 1100), (20, 1300), (20, 1300), (80, 1500)])  # 10%, 0%, 30%
    monkeypatch.setattr(bench, "machine_ticks", lambda: next(ticks))
    meter = bench.CpuMeter(["a", "b"])
    for _ in range(3):
        meter.wrap("run", lambda: None)()
    got = meter.medians("run")
    assert got["by_host"] == {"a": 0.5, "b": 2.0} and got["test_hosts"] == 2.5 and got["steal_percent"] == 10.0

    clock = iter([100.0, 110.0])
    monkeypatch.setattr(bench.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    readings = iter([{"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 4.0}])
    assert bench.idle_cpu(["a", "b"], 10) == {"total": 0.25, "by_host": {"a": 0.05, "b": 0.2}}
    readings = iter([{"a": 1.0, "b": 2.0}, None])  # a cgroup file went away
    clock = iter([100.0, 110.0])
    assert bench.idle_cpu(["a", "b"], 10) is None


def test_the_benchmark_reads_the_machines_steal(monkeypatch, tmp_path):
    """/proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice;
    guest time is already in user and nice."""
    from harness import bench

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n")
    real = bench.Path
    monkeypatch.setattr(bench, "Path", lambda path: real(stat) if path == "/proc/stat" else real(path))
    assert bench.machine_ticks() == (30, 1000)
    assert bench.steal_percent((30, 1000), (45, 1100)) == 15.0
    assert bench.steal_percent(None, (45, 1100)) is None and bench.steal_percent((30, 1000), (30, 1000)) is None
    stat.write_text("intr 1 2 3\n")
    assert bench.machine_ticks() is None


def test_the_benchmarks_cpu_window_holds_pyinfras_run_alone(monkeypatch, tmp_path):
    """The host-key check before each converge (an ssh-keyscan of every host: ~0.4 CPU-s of
    the operator's for 10 hosts, and a key exchange on each host) is not the converge's work:
    the benchmark's readings are taken around pyinfra's process only."""
    import contextlib

    from harness import testfleet

    order = []
    monkeypatch.setattr(testfleet, "STATE", tmp_path)
    monkeypatch.setattr(testfleet, "hosts_to_bootstrap", lambda env: order.append("host-key check") or [])

    class Pyinfra:
        returncode = 0

        def __init__(self, *args, **kwargs):
            order.append("pyinfra starts")
            self.stdout = iter(["--> Disconnecting from hosts...\n"])

        def wait(self):
            order.append("pyinfra exits")

        def poll(self):
            return 0

    monkeypatch.setattr(testfleet.subprocess, "Popen", Pyinfra)

    @contextlib.contextmanager
    def window():
        order.append("readings")
        yield
        order.append("readings")

    assert testfleet.converge([], window=window())["returncode"] == 0
    assert order == ["host-key check", "readings", "pyinfra starts", "pyinfra exits", "readings"]


def test_the_benchmark_finds_the_hosts_it_added_and_only_them():
    from harness.bench import added_names

    present = ["pi0-epsilon", "pi0-epsilon-x1", "pi0-epsilon-x12", "pi0-epsilon-x", "pi0-epsilon-xa",
               "fleet-mirror", "other-x1", "pi5-beta-x2", "pi5-beta-x2-x3"]
    assert added_names(["pi0-epsilon", "pi5-beta"], present) == ["pi0-epsilon-x1", "pi0-epsilon-x12", "pi5-beta-x2"]


def test_missing_engine_and_build_tools_are_one_apt_transaction(monkeypatch):
    """On a fresh machine docker.io and mmdebstrap come in one `apt-get update` and one install,
    and make demo's `make setup` starts between the two; with both there, apt is not run and
    setup starts at once."""
    from harness import image

    steps: list[str] = []
    present: set[str] = set()
    monkeypatch.setattr(image.shutil, "which", lambda name: f"/usr/bin/{name}" if name in present else None)
    monkeypatch.setattr(image, "log", lambda message: None)

    def run(cmd, check=False, env=None):
        steps.append(" ".join(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(image, "run", run)
    image.ensure_tools(updated=lambda: steps.append("setup"))
    assert steps == ["apt-get update -qq", "setup", "apt-get install -y -qq docker.io mmdebstrap"]
    steps.clear()
    present.update({"dockerd", "mmdebstrap"})
    image.ensure_tools(updated=lambda: steps.append("setup"))
    assert steps == ["setup"]
    steps.clear()
    present.discard("mmdebstrap")  # the engine is there: only the build tool
    image.ensure_tools()
    assert steps == ["apt-get update -qq", "apt-get install -y -qq mmdebstrap"]


def test_image_build_shows_each_step_and_fails_with_the_tail(capsys):
    """mmdebstrap's "I: " lines are shown as they come; its other output only when it fails."""
    from harness.image import stream_info

    lines = ["I: running apt-get update...", "Get:1 http://deb.debian.org bookworm InRelease",
             "I: downloading packages with apt...", "W: a warning", "I: success in 28.6 seconds"]
    stream_info(["printf", "%s\\n", *lines], "mmdebstrap")
    printed = capsys.readouterr()
    shown = [line.split("] ", 1)[1] for line in printed.out.splitlines() if "mmdebstrap:" in line]
    assert shown == ["mmdebstrap: running apt-get update...", "mmdebstrap: downloading packages with apt...",
                     "mmdebstrap: success in 28.6 seconds"]
    with pytest.raises(SystemExit) as failed:
        stream_info(["sh", "-c", "echo 'I: extracting archives...'; echo 'E: no space left'; exit 1"], "mmdebstrap")
    assert "mmdebstrap failed (exit 1)" in str(failed.value) and "E: no space left" in str(failed.value)


def test_image_build_counts_dpkg_steps_within_a_step(capsys):
    """Within an install step, dpkg's --verbose lines are counted and shown (here at each
    line: every=0), out of apt's total once it gives one; the counts start again at the
    next step."""
    from harness.image import stream_info

    lines = ["I: installing remaining packages inside the chroot...",
             "0 upgraded, 113 newly installed, 0 to remove and 0 not upgraded.",
             "Unpacking libc6:amd64 (2.36-9) ...", "Unpacking systemd (252.39-1) ...",
             "Setting up libc6:amd64 (2.36-9) ...", "Preparing to unpack .../sudo.deb ...",
             "I: cleaning package lists and apt cache...", "Setting up sudo (1.9.13) ..."]
    stream_info(["printf", "%s\\n", *lines], "mmdebstrap", every=0)
    shown = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert shown == [
        "mmdebstrap: installing remaining packages inside the chroot...",
        "mmdebstrap:   1 of 113 packages unpacked, 0 set up (now libc6)",
        "mmdebstrap:   2 of 113 packages unpacked, 0 set up (now systemd)",
        "mmdebstrap:   2 of 113 packages unpacked, 1 set up (now libc6)",
        "mmdebstrap: cleaning package lists and apt cache...",
        "mmdebstrap:   0 packages unpacked, 1 set up (now sudo)",
    ]


def test_a_host_slow_to_present_its_key_is_scanned_again(monkeypatch):
    # right after fleet-up an sshd may not answer the first scan: taking its silence for
    # "already on its vault key" would refuse the host's first contact
    from types import SimpleNamespace

    import harness.testfleet as tf

    answers = {"100.100.1.1": [True, True], "100.100.1.2": [False, True], "100.100.1.3": [False] * 3}
    scanned = []

    def fake_run(cmd, check=True, **kw):
        asked = cmd[cmd.index("ed25519") + 1:]
        scanned.append(asked)
        out = "".join(f"# {a}:22 SSH-2.0-OpenSSH_9.2\n{a} ssh-ed25519 KEY{a[-1]}\n"
                      for a in asked if answers[a].pop(0))
        return SimpleNamespace(stdout=out, returncode=0)

    monkeypatch.setattr(tf, "run", fake_run)
    monkeypatch.setattr(tf.time, "sleep", lambda s: None)
    found = tf.presented_keys(list(answers))
    assert found == {"100.100.1.1": "ssh-ed25519 KEY1", "100.100.1.2": "ssh-ed25519 KEY2"}
    # only the silent ones are asked again, and a host that never answers is given up on
    assert scanned == [list(answers), ["100.100.1.2", "100.100.1.3"], ["100.100.1.3"]]


# --- an earlier engine's leftovers -------------------------------------------------------------
OLD, MINE, OTHER = "a" * 64, "b" * 64, "c" * 64
FIB = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 100.100.0.0/16 2 0 2
        |-- 100.100.0.0
           /16 link UNICAST
        |-- {address}
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
"""


def _proc(tmp_path, entries: dict):
    """A stand-in /proc: {pid or "self": (cgroup text, address or None)}."""
    for pid, (cgroup, address) in entries.items():
        d = tmp_path / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "net").mkdir()
        (d / "cgroup").write_text(cgroup)
        (d / "ns" / "net").write_text(str(pid))  # a namespace of its own (its own inode)
        (d / "net" / "fib_trie").write_text(FIB.format(address=address or "192.0.2.9"))
    return tmp_path


def test_the_container_of_a_process_is_read_from_either_cgroup_layout():
    from harness.testfleet import container_of

    assert container_of(f"12:pids:/docker/{OLD}/init.scope\n0::/docker/{OLD}/init.scope\n") == OLD
    assert container_of(f"0::/system.slice/docker-{OLD}.scope\n") == OLD
    assert container_of("0::/user.slice/session-1.scope\n") is None


def test_local_addresses_are_read_from_fib_trie():
    from harness.testfleet import local_addresses

    assert local_addresses(FIB.format(address="100.100.0.3")) == {"100.100.0.3"}


def test_only_unknown_containers_holding_a_test_address_are_leftovers(tmp_path):
    from harness.testfleet import orphaned_hosts

    proc = _proc(tmp_path, {
        "self": ("0::/user.slice\n", None),
        10: (f"0::/docker/{OLD}/init.scope\n", "100.100.0.1"),  # an old test host: both its pids
        11: (f"0::/docker/{OLD}/init.scope\n", "100.100.0.1"),
        20: (f"0::/docker/{MINE}/init.scope\n", "100.100.0.2"),  # the running engine's own host
        30: (f"0::/docker/{OTHER}/init.scope\n", "172.17.0.2"),  # someone else's container
        40: ("0::/user.slice\n", "100.100.255.254"),  # not in a container
    })
    assert orphaned_hosts({MINE}, ["100.100.0.0/16", "100.101.0.0/16"], proc) == {OLD: [10, 11]}


def test_the_operators_own_container_is_never_a_leftover(tmp_path):
    from harness.testfleet import orphaned_hosts

    proc = _proc(tmp_path, {
        "self": (f"0::/docker/{OLD}/init.scope\n", "100.100.255.254"),
        10: (f"0::/docker/{OLD}/init.scope\n", "100.100.255.254"),
    })
    assert orphaned_hosts(set(), ["100.100.0.0/16"], proc) == {}


def test_only_rules_of_docker_bridges_that_are_gone_are_dead():
    from harness.testfleet import dead_bridge_rules

    saved = """*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 100.100.0.0/16 ! -o br-8d93b2bd760c -j MASQUERADE
-A POSTROUTING -s 100.100.0.0/16 ! -o br-0620a9c609dc -j MASQUERADE
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i br-8d93b2bd760c -j RETURN
-A FORWARD -o br-lan0 -j ACCEPT
COMMIT
"""
    live = {"br-0620a9c609dc", "docker0"}
    assert dead_bridge_rules(saved, exists=lambda name: name in live) == [
        "-A POSTROUTING -s 100.100.0.0/16 ! -o br-8d93b2bd760c -j MASQUERADE",
        "-A DOCKER -i br-8d93b2bd760c -j RETURN",
    ]


def test_leftovers_found_without_root_stop_fleet_up_with_one_line(monkeypatch):
    """Stopping an earlier engine's containers and deleting its bridges needs root: without
    it, fleet-up says what it found and what to do, and kills or deletes nothing."""
    import harness.testfleet as tf

    touched = []
    monkeypatch.setattr(tf, "networks", lambda test_fleet: {"tailnet": "100.100.0.0/16"})
    monkeypatch.setattr(tf, "docker", lambda *args, check=True: SimpleNamespace(returncode=1, stdout=""))
    monkeypatch.setattr(tf, "route_devices", lambda subnet: ["br-8d93b2bd760c"])
    monkeypatch.setattr(tf, "orphaned_hosts", lambda known, subnets: {OLD: [10]})
    monkeypatch.setattr(tf.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tf.os, "kill", lambda *a: touched.append(a))
    monkeypatch.setattr(tf.subprocess, "run", lambda *a, **k: touched.append(a))
    with pytest.raises(SystemExit) as exc:
        tf.clear_leftovers({})
    message = str(exc.value)
    assert "\n" not in message and "br-8d93b2bd760c" in message and "1 container(s)" in message
    assert "needs root" in message and "ip link delete" in message
    assert touched == []


def test_killpoint_kills_pyinfra_before_the_named_operation_reaches_the_host(tmp_path):
    # The fault suite's exact kill point: the operation before it ran, nothing of it ran, and
    # the harness can tell this kill from any other end of the run.
    import subprocess
    import sys
    from pathlib import Path

    from harness.killpoint import KILLED

    deploy = tmp_path / "deploy.py"
    deploy.write_text(
        "from pyinfra.operations import server\n"
        f"server.shell(name='First', commands=['touch {tmp_path}/first'])\n"
        f"server.shell(name='Second', commands=['touch {tmp_path}/second'])\n")
    killpoint = Path(__file__).resolve().parents[1] / "harness" / "killpoint.py"
    proc = subprocess.run([sys.executable, str(killpoint), "Second", "-y", "@local", str(deploy)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert (tmp_path / "first").exists() and not (tmp_path / "second").exists()
    assert f"{KILLED} 'Second'" in proc.stdout.splitlines()
    # a name no operation has: pyinfra runs to its end
    proc = subprocess.run([sys.executable, str(killpoint), "Third", "-y", "@local", str(deploy)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "second").exists(), proc.stdout + proc.stderr


def test_fleet_up_removes_labelled_hosts_of_an_earlier_inventory_only():
    from harness.testfleet import MIRROR, strays

    existing = {"pi5-alpha", "pi0-epsilon-x1", "pi0-epsilon-x2", MIRROR}
    assert strays(existing, {"pi5-alpha": {}, "pi5-beta": {}}) == ["pi0-epsilon-x1", "pi0-epsilon-x2"]
    assert strays({"pi5-alpha", MIRROR}, {"pi5-alpha": {}}) == []


def test_fleet_up_starts_afresh_a_host_this_checkouts_key_cannot_log_in_to():
    from harness.testfleet import key_label, start_over

    mine = key_label("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine fleet-testfleet")
    assert mine == key_label("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine another-comment")
    assert mine != key_label("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther fleet-testfleet")
    assert start_over("pi5-alpha", f"fleet-testhost:abc {mine}\n", "fleet-testhost", mine) is None
    other = start_over("pi5-alpha", "fleet-testhost:abc 0123456789abcdef\n", "fleet-testhost", mine)
    assert other.startswith("pi5-alpha was flashed with another operator key") and "id_ed25519" in other
    # a host started before hosts were labelled with their key
    assert start_over("pi5-alpha", "fleet-testhost:abc <no value>\n", "fleet-testhost", mine)
    arch = start_over("pi5-alpha", f"fleet-testhost-arm64:abc {mine}\n", "fleet-testhost", mine)
    assert arch == "pi5-alpha runs another architecture's image than fleet-testhost"


@pytest.mark.parametrize("argv, message", [
    (["--spec-workers", "-3"], "--spec-workers must be 0 (none) or more"),
    (["--runs", "0"], "--runs must be 1 or more"),
    (["--extra-hosts", "99"], "--extra-hosts must be 0 to {EXTRA_MAX}"),
])
def test_the_benchmark_refuses_bad_arguments_in_one_line_before_any_run(argv, message, capsys):
    from harness.bench import EXTRA_MAX, main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    wanted = message.format(EXTRA_MAX=EXTRA_MAX)
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"python tests/harness/bench.py: error: {wanted}"
