"""Helpers the mirror's tests share: hashing, Debian control stanzas, a private apt-get."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_stanzas(text: str) -> list[dict]:
    """Debian control-format stanzas (Packages, Release) as dicts; continuation lines kept."""
    stanzas = []
    for block in text.strip("\n").split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line[1:]
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        stanzas.append(fields)
    return stanzas


def private_apt(tmp_path: Path, sources: str, installed: list[str], arch: str):
    """An apt-get with its own sources, keys, lists and dpkg status (nothing of the
    system's), in which the packages `installed` count as installed. Returns apt(*args),
    which asserts success and returns the output; downloads land in tmp_path/dl."""
    for d in ("sources", "trusted", "prefs", "state/lists/partial", "cache/archives/partial", "dl"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "sources" / "mirror.sources").write_text(sources)
    (tmp_path / "status").write_text("".join(
        f"Package: {pkg}\nStatus: install ok installed\nPriority: optional\n"
        f"Maintainer: x <x@x>\nArchitecture: {arch}\nVersion: 99\nDescription: stub\n\n"
        for pkg in installed))
    opts = []
    for key, value in {
        "Dir::Etc::SourceList": "/dev/null", "Dir::Etc::SourceParts": tmp_path / "sources",
        "Dir::Etc::Trusted": tmp_path / "trusted" / "none.gpg",
        "Dir::Etc::TrustedParts": tmp_path / "trusted",
        "Dir::Etc::PreferencesParts": tmp_path / "prefs", "Dir::State": tmp_path / "state",
        "Dir::State::status": tmp_path / "status", "Dir::Cache": tmp_path / "cache",
        "Debug::NoLocking": "1", "APT::Sandbox::User": "root",
        "APT::Architecture": arch, "APT::Architectures": arch,
    }.items():
        opts += ["-o", f"{key}={value}"]

    def apt(*args):
        res = subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path / "dl")
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout + res.stderr

    return apt
