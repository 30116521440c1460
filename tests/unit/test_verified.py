"""verified_download's stamp: a file verified once is not hashed again while it is unchanged,
and any change to it (rewrite, truncation, in-place edit, replacement) voids the stamp."""

from __future__ import annotations

import subprocess

import pytest

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
