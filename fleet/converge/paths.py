"""Where the fleet's local state lives. Standard library only, so the test harness can find
it before the virtualenv exists (`make demo` builds the base image while `make setup` runs)."""

from __future__ import annotations

from pathlib import Path


def state_root(repo: Path) -> Path:
    """Everything the checkout keeps between runs (not in git)."""
    return repo / ".state"


def state_dir(repo: Path, target: str = "test") -> Path:
    return state_root(repo) / ("testfleet" if target == "test" else target)


def test_ssh_key(repo: Path) -> Path:
    return state_dir(repo) / "id_ed25519"
