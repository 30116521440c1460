"""fleet.converge.opcost: its replacements give pyinfra's own answers, and stand aside when
pyinfra's originals are not the ones they were checked against."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pyinfra
import pytest

from fleet.converge import opcost

util = sys.modules["pyinfra.api.util"]
arguments = sys.modules["pyinfra.api.arguments"]
ORIGINAL = util.get_operation_order_from_stack

# A deploy file as pyinfra's CLI runs one: calls spread over several lines, nested calls,
# a helper module in between and a frame that lives in pyinfra's install directory.
DEPLOY = '''\
def op(state):
    return helper.call_twice(
        state,
    )


def nested(state):
    values = [
        1,
        op(state),
    ]
    return values[1]


result = {
    "a": nested(
        STATE),
}["a"]
'''

HELPER = '''\
def call_twice(state):
    return INNER(state)
'''

INNER = '''\
def inner(state):
    return [f(state) for f in (ORIGINAL, OURS)]
'''


def run_deploy(tmp_path, deploy_name, helper_name, inner_filename, state):
    """Run DEPLOY as `deploy_name`; both functions are called from the same frame and line."""
    inner_ns = {"ORIGINAL": ORIGINAL, "OURS": opcost.operation_order}
    exec(compile(INNER, inner_filename, "exec"), inner_ns)
    helper_path = tmp_path / helper_name
    helper_path.write_text(HELPER)
    helper = SimpleNamespace()
    helper_ns = {"INNER": inner_ns["inner"]}
    exec(compile(HELPER, str(helper_path), "exec"), helper_ns)
    helper.call_twice = helper_ns["call_twice"]
    deploy_path = tmp_path / deploy_name
    deploy_path.write_text(DEPLOY)
    ns = {"helper": helper, "STATE": state}
    exec(compile(DEPLOY, str(deploy_path), "exec"), ns)
    return ns["result"], str(deploy_path)


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("inner_in_pyinfra", [True, False])
@pytest.mark.parametrize("deploy_found", [True, False])
def test_the_operation_order_is_pyinfras(tmp_path, monkeypatch, is_cli, inner_in_pyinfra, deploy_found):
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    inner_filename = f"{util.PYINFRA_INSTALL_DIR}/api/fake_operation.py" if inner_in_pyinfra else str(tmp_path / "inner.py")
    state = SimpleNamespace(current_deploy_filename=None, current_op_file_number=7)
    deploy_name = "site.py"
    if deploy_found:
        state.current_deploy_filename = str(tmp_path / deploy_name)
    else:
        state.current_deploy_filename = str(tmp_path / "not-on-the-stack.py")
    (theirs, ours), _ = run_deploy(tmp_path, deploy_name, "helper.py", inner_filename, state)
    assert ours == theirs
    if deploy_found:
        # from the deploy file down: its lines 16 and 10, the helper's 2, the inner frame's 2
        expected = [7] if is_cli else []
        expected += [16, 10, 2, 2] if not inner_in_pyinfra else [16, 10, 2]
        assert theirs[: len(expected)] == expected


def test_a_module_run_from_bytecode_is_named_as_inspect_names_it(tmp_path, monkeypatch):
    """co_filename ending in .pyc: inspect reports the .py beside it; so does opcost."""
    monkeypatch.setattr(pyinfra, "is_cli", True)
    (tmp_path / "site.py").write_text(DEPLOY)
    state = SimpleNamespace(current_deploy_filename=str(tmp_path / "site.py"), current_op_file_number=1)
    inner_ns = {"ORIGINAL": ORIGINAL, "OURS": opcost.operation_order}
    exec(compile(INNER, str(tmp_path / "inner.py"), "exec"), inner_ns)
    helper_ns = {"INNER": inner_ns["inner"]}
    exec(compile(HELPER, str(tmp_path / "helper.py"), "exec"), helper_ns)
    ns = {"helper": SimpleNamespace(call_twice=helper_ns["call_twice"]), "STATE": state}
    exec(compile(DEPLOY, str(tmp_path / "site.pyc"), "exec"), ns)
    theirs, ours = ns["result"]
    assert ours == theirs
    assert theirs[:2] == [1, 16]  # the .pyc frame was taken for the deploy file


def test_global_arguments_are_pyinfras_and_a_fresh_list_each_time():
    opcost.install()
    first = arguments.all_global_arguments()
    assert first == arguments.all_global_arguments.__wrapped__()
    first.clear()
    assert arguments.all_global_arguments() and arguments.all_global_arguments() is not first
    assert sys.modules["pyinfra.api.facts"].all_global_arguments is arguments.all_global_arguments


def test_install_replaces_the_checked_originals_only(monkeypatch):
    operation = sys.modules["pyinfra.api.operation"]
    assert sorted(opcost.install()) == ["all_global_arguments", "get_operation_order_from_stack"]
    assert operation.get_operation_order_from_stack is opcost.operation_order
    assert opcost.install() == opcost.install()  # a second call changes nothing

    # pyinfra upgraded and its function changed: it is left in place
    monkeypatch.setattr(operation, "get_operation_order_from_stack", ORIGINAL)
    monkeypatch.setitem(opcost.CHECKED, "get_operation_order_from_stack", "0" * 64)
    assert "get_operation_order_from_stack" not in opcost.install()
    assert operation.get_operation_order_from_stack is ORIGINAL


def test_the_digests_are_of_the_installed_pyinfra():
    """requirements.lock pins pyinfra; when it moves, this says to re-check and re-record."""
    assert opcost.source_digest(ORIGINAL) == opcost.CHECKED["get_operation_order_from_stack"], (
        "pyinfra's get_operation_order_from_stack changed: compare it with opcost.operation_order, "
        "then record its new digest in opcost.CHECKED")
    original = getattr(arguments.all_global_arguments, "__wrapped__", arguments.all_global_arguments)
    assert opcost.source_digest(original) == opcost.CHECKED["all_global_arguments"]
