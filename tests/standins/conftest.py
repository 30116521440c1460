"""Fixtures for the stand-ins' own tests."""

import pytest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The offline stand-in mirror (tests/mirror/build.py), built once per test module."""
    from mirror import build as mirror_build

    out = tmp_path_factory.mktemp("mirror")
    return out, mirror_build.build(out)
