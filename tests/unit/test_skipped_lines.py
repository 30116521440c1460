"""pyinfra's "[host] Skipped" lines are left out of a run's output unless it is verbose
(fleet/converge/connector.py, HideSkipped); every other line is printed as before."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from pyinfra.api.operations import run_host_op
from pyinfra.context import ctx_state

from fleet.converge import connector


class Host:
    def __init__(self, name: str):
        self.name, self.print_prefix = name, f"[{name}] "


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    handler = Lines()
    logger = logging.getLogger("pyinfra")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def skip_on(host_name: str, verbose: bool) -> bool:
    """pyinfra's own run_host_op for a host the operation is not for."""
    host = Host(host_name)
    state = SimpleNamespace(ops={host: {}}, print_noop_info=verbose, trigger_callbacks=lambda *args: None)
    with ctx_state.use(state):
        return run_host_op(state, host, "some-op-hash")


def test_the_filter_is_on_pyinfras_logger_once():
    assert sum(isinstance(f, connector.HideSkipped) for f in logging.getLogger("pyinfra").filters) == 1


def test_a_skipped_host_prints_nothing_by_default(lines):
    assert skip_on("pi0-epsilon", verbose=False) is True
    assert lines == []


def test_a_verbose_run_prints_the_skipped_line(lines):
    assert skip_on("pi0-epsilon", verbose=True) is True
    assert len(lines) == 1 and lines[0].startswith("[pi0-epsilon] ") and "Skipped" in lines[0]


def test_every_other_line_is_printed(lines):
    logger = logging.getLogger("pyinfra")
    with ctx_state.use(SimpleNamespace(print_noop_info=False)):
        logger.info("[pi0-epsilon] No changes")
        logger.info("[pi0-epsilon] Skipped")  # not run_host_op's: printed
        logger.warning("[pi0-epsilon] Skipped")
    assert lines == ["[pi0-epsilon] No changes", "[pi0-epsilon] Skipped", "[pi0-epsilon] Skipped"]
