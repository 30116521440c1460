"""verified_download's stamp: a file verified once is not hashed again while it is unchanged,
and any change to it (rewrite, truncation, in-place edit, replacement) voids the stamp."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess

import pytest
from pyinfra.context import ctx_host

from fleet.converge import ops
from fleet.converge.ops import VerifiedSha256, stamp_command

SUM = "a" * 64


@pytest.fixture
def stamped(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "VERIFIED_DIR", str(tmp_path / "verified"))
    path = tmp_path / "archive.tar"
    path.write_bytes(b"payload")
    subprocess.run(["sh", "-c", stamp_command(str(path), SUM)], check=True)
    return path


def fact(path, sha256=SUM):
    out = subprocess.run(["sh", "-c", VerifiedSha256().command(str(path), sha256)], capture_output=True, text=True)
    return VerifiedSha256().process(out.stdout.splitlines())


def test_an_unchanged_file_is_stamped(stamped):
    assert fact(stamped) == "stamped"


def test_another_checksum_is_not(stamped):
    assert fact(stamped, "b" * 64) is None


@pytest.mark.parametrize("change", [
    lambda p: p.write_bytes(b"payload"),                          # rewritten, same bytes
    lambda p: p.write_bytes(b""),                                 # truncated
    lambda p: p.open("r+b").write(b"X"),                          # edited in place, same size
    lambda p: (p.unlink(), p.write_bytes(b"payload")),            # replaced by a new file
    lambda p: p.unlink(),                                         # gone
])
def test_any_change_voids_the_stamp(stamped, change):
    change(stamped)
    assert fact(stamped) is None


class LocalHost:
    """Answers each fact by running its own command here, bounded: a fact that waits (on a
    FIFO, say) fails the test instead of hanging it, and is killed with its whole process
    group, so no reader is left blocked after the test."""

    def get_fact(self, fact, **kwargs):
        fact = fact()  # one instance: some facts keep their arguments for process()
        proc = subprocess.Popen(["sh", "-c", str(fact.command(**kwargs))], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        lines = stdout.splitlines()
        return fact.process(lines) if lines else fact.default()

    def noop(self, _text):
        pass


PAYLOAD_SUM = hashlib.sha256(b"payload").hexdigest()


def download(tmp_path, dest, payload=b"payload"):
    """verified_download's commands for `dest`, run here; (commands, exit status)."""
    src = tmp_path / "release.bin"
    src.write_bytes(payload)
    with ctx_host.use(LocalHost()):
        commands = [c.get_raw_value() for c in ops.verified_download._inner(
            src=f"file://{src}", dest=str(dest), sha256=hashlib.sha256(payload).hexdigest())]
    bin_dir = tmp_path / "bin"  # curl's test double: copies a file:// URL to -o's path
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text('#!/bin/sh\nwhile [ $# -gt 1 ]; do [ "$1" = -o ] && { out=$2; shift; }; shift; done\n'
                                  'exec cp "${1#file://}" "$out"\n')
    (bin_dir / "curl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    rc = subprocess.run(["sh", "-c", " && ".join(f"( {c} )" for c in commands)], env=env, timeout=10).returncode
    return commands, rc


@pytest.mark.parametrize("make", [
    lambda p: subprocess.run(["mkfifo", str(p)], check=True),      # a reader of it waits for a writer
    lambda p: p.symlink_to(p.parent / "release.bin"),              # a link to a file with the sum
])
def test_what_is_not_a_regular_file_is_replaced_without_reading_it(tmp_path, monkeypatch, make):
    monkeypatch.setattr(ops, "VERIFIED_DIR", str(tmp_path / "verified"))
    dest = tmp_path / "archive.tar"
    make(dest)
    commands, rc = download(tmp_path, dest)
    assert rc == 0 and any("curl" in c for c in commands)
    assert dest.is_file() and not dest.is_symlink() and dest.read_bytes() == b"payload"
    assert fact(dest, PAYLOAD_SUM) == "stamped"


def test_a_file_with_the_sum_is_only_stamped(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "VERIFIED_DIR", str(tmp_path / "verified"))
    dest = tmp_path / "archive.tar"
    dest.write_bytes(b"payload")
    commands, rc = download(tmp_path, dest)
    assert rc == 0 and len(commands) == 1 and "curl" not in commands[0]
    assert fact(dest, PAYLOAD_SUM) == "stamped"


def test_a_directory_in_the_way_fails_and_is_never_stamped(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "VERIFIED_DIR", str(tmp_path / "verified"))
    dest = tmp_path / "archive.tar"
    dest.mkdir()
    commands, rc = download(tmp_path, dest)
    assert rc != 0 and list(dest.iterdir()) == []
    assert not (tmp_path / "verified").exists() or not list((tmp_path / "verified").iterdir())
    assert not (tmp_path / "archive.tar.fleet-candidate").exists()
