"""fleet.converge.opcost: its replacements give pyinfra's own answers, and stand aside when
pyinfra's originals are not the ones they were checked against."""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyinfra
import pytest

from fleet.converge import opcost

util = sys.modules["pyinfra.api.util"]
arguments = sys.modules["pyinfra.api.arguments"]
ORIGINAL = util.get_operation_order_from_stack
from pyinfra.facts import deb  # noqa: E402
from pyinfra.facts.util import packaging  # noqa: E402

DEB_ORIGINAL = getattr(deb.DebPackages.process, "__wrapped__", deb.DebPackages.process)
operation_module = sys.modules["pyinfra.api.operation"]
CONNECTORS_ORIGINAL = getattr(sys.modules["pyinfra.api.connectors"].get_all_connectors, "__wrapped__",
                              sys.modules["pyinfra.api.connectors"].get_all_connectors)
facts_module = sys.modules["pyinfra.api.facts"]

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
    assert sorted(opcost.install()) == ["DebPackages.process", "_run_single_op", "all_global_arguments",
                                        "get_all_connectors", "get_operation_order_from_stack",
                                        "getcallargs", "make_formatted_string_command", "pop_global_arguments",
                                        "signature"]
    assert "pyinfra_cli" not in sys.modules  # nor imported by install: its import patches for gevent
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
    assert opcost.source_digest(POP_ORIGINAL) == opcost.CHECKED["pop_global_arguments"]
    assert opcost.source_digest(sys.modules["pyinfra.api.host"].HostData) == opcost.CHECKED["HostData"]
    assert (opcost.source_digest(command_module.make_formatted_string_command)
            == opcost.CHECKED["make_formatted_string_command"])
    assert opcost.source_digest(DEB_ORIGINAL) == opcost.CHECKED["DebPackages.process"]
    assert opcost.source_digest(operation_module._wrap_operation) == opcost.CHECKED["_wrap_operation"]
    assert opcost.source_digest(facts_module._handle_fact_kwargs) == opcost.CHECKED["_handle_fact_kwargs"]
    assert opcost.source_digest(inspect.getcallargs) == opcost.CHECKED["getcallargs"], (
        "this Python's inspect.getcallargs differs from the one checked: compare, then re-record")
    assert opcost.source_digest(packaging.parse_packages) == opcost.CHECKED["parse_packages"]
    operations = sys.modules["pyinfra.api.operations"]
    opcost.install()
    assert opcost.source_digest(opcost._ORIGINALS["_run_single_op"]) == opcost.CHECKED["_run_single_op"]
    assert opcost.source_digest(operations.run_host_op) == opcost.CHECKED["run_host_op"]
    assert opcost.source_digest(CONNECTORS_ORIGINAL) == opcost.CHECKED["get_all_connectors"]
    # pyinfra_cli is not imported here (it patches the process for gevent): read from its file
    origin = Path(importlib.util.find_spec("pyinfra_cli").submodule_search_locations[0]) / "inventory.py"
    source = origin.read_text()
    found = next(node for node in ast.parse(source).body
                 if isinstance(node, ast.FunctionDef) and node.name == "_get_imported_names")
    digest = opcost.hashlib.sha256((ast.get_source_segment(source, found, padded=True) + "\n").encode()).hexdigest()
    assert digest == opcost.CHECKED["_get_imported_names"]


def test_a_changed_hostdata_leaves_pyinfras_pop_in_place(monkeypatch):
    callers = [sys.modules[name] for name in opcost._CALLERS]
    for module in callers:
        monkeypatch.setattr(module, "pop_global_arguments", POP_ORIGINAL)
    monkeypatch.setitem(opcost.CHECKED, "HostData", "0" * 64)
    assert "pop_global_arguments" not in opcost.install()
    assert all(module.pop_global_arguments is POP_ORIGINAL for module in callers)


# --- pop_global_arguments -----------------------------------------------------------------
POP_ORIGINAL = arguments.pop_global_arguments


def _host(layer_data: dict):
    """A real pyinfra host whose data layers hold what `layer_data` names for each layer."""
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(
        ([("h1", layer_data.get("host", {}))], layer_data.get("all", {})),
        override_data=layer_data.get("override", {}),
        web=(["h1"], layer_data.get("group1", {})),
        db=(["h1"], layer_data.get("group2", {})),
    )
    state = State(inventory, Config())
    host = inventory.get_host("h1")
    return state, host


class Layer:
    """A data layer that is not a plain dict (pyinfra only needs __getitem__ and KeyError)."""

    def __init__(self, values):
        self.values = values

    def __bool__(self):
        return True

    def __getitem__(self, key):
        return self.values[key]


# Every layer, alone and shadowing the ones after it, for the arguments the fleet's data sets
# (_sudo, _timeout, _env...) and pyinfra's handled ones (_sudo_password is handled).
LAYERS = [
    {},
    {"override": {"_sudo": True}},
    {"host": {"_sudo": True, "_timeout": 30}, "group1": {"_sudo": False, "_timeout": 10}},
    {"group1": {"_env": {"A": "1"}}, "group2": {"_env": {"B": "2"}}},
    {"all": {"_retries": 2, "_chdir": "/tmp"}, "group2": {"_retries": 3}},
    {"override": {"_timeout": 5}, "host": {"_timeout": 6}, "group1": {"_timeout": 7}, "all": {"_timeout": 8}},
    {"host": {"_sudo_password": "pw", "name": "from data"}},
    {"group2": {"_success_exit_codes": [0, 3]}, "all": {"_success_exit_codes": [0, 4]}},
    {"override": Layer({"_timeout": 9, "_success_exit_codes": [0, 5]}), "host": {"_timeout": 6, "_retries": 1}},
    # layers with more keys than there are argument names (a site's group data): looked up the other way round
    {"host": {**{f"setting_{i}": i for i in range(80)}, "_sudo": True},
     "all": {**{f"default_{i}": i for i in range(150)}, "_timeout": 11, "_sudo": False}},
    {"group1": {f"setting_{i}": i for i in range(80)}, "all": {**{f"default_{i}": i for i in range(150)}, "_retries": 4}},
]
CALLS = [
    {},
    {"_sudo": False, "path": "/etc/x"},
    {"_env": {"C": "3"}, "name": "an operation", "_timeout": 1},
    {"_success_exit_codes": [0, 1], "_retries": 0},
]


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("kwargs", CALLS)
@pytest.mark.parametrize("deploy_kwargs", [None, {"_sudo": True, "_env": {"D": "4"}}])
def test_pop_arguments_is_pyinfras(layers, kwargs, deploy_kwargs):
    state, host = _host(layers)
    host.current_deploy_kwargs = deploy_kwargs
    theirs_kwargs, ours_kwargs = dict(kwargs), dict(kwargs)
    theirs = POP_ORIGINAL(state, host, theirs_kwargs)
    ours = opcost.pop_arguments(state, host, ours_kwargs)
    assert ours == theirs
    assert ours_kwargs == theirs_kwargs  # the same arguments popped, the rest left
    # a value found in data is a (shallow) copy in both: changing it changes no layer
    codes = ours[0]["_success_exit_codes"]
    codes.append(99)
    assert 99 not in opcost.pop_arguments(state, host, {})[0]["_success_exit_codes"]


def test_names_the_data_object_holds_itself_are_read_as_pyinfra_reads_them():
    """A name on the data object's class or in its own __dict__ is an attribute, not data:
    pyinfra's getattr finds it before any layer; a dict subclass layer is asked name by name."""
    from pyinfra.api.host import HostData

    class Defaults(dict):
        pass

    class WithDefaults(HostData):
        _timeout = 77

    state, host = _host({"host": {"_timeout": 5, "_retries": 1}, "group1": {"_chdir": "/srv"}})
    object.__setattr__(host.data, "__class__", WithDefaults)  # HostData.__setattr__ writes data
    host.data.__dict__["_retries"] = 4
    host.data.__dict__["datas"] = (*host.data.datas, Defaults({"_temp_dir": "/var/tmp", "_chdir": "/x"}))
    theirs = POP_ORIGINAL(state, host, {})[0]
    ours = opcost.pop_arguments(state, host, {})[0]
    assert ours == theirs
    assert (ours["_timeout"], ours["_retries"], ours["_chdir"], ours["_temp_dir"]) == (77, 4, "/srv", "/var/tmp")


def test_pop_arguments_refuses_a_bad_type_as_pyinfra_does():
    from pyinfra.api.exceptions import ArgumentTypeError

    state, host = _host({"host": {"_timeout": 5}})
    for pop in (POP_ORIGINAL, opcost.pop_arguments):
        with pytest.raises(ArgumentTypeError, match="Invalid argument `_sudo`"):
            pop(state, host, {"_sudo": "yes please"})


def test_a_type_check_an_immutable_value_passed_is_not_repeated(monkeypatch):
    from pyinfra.api.exceptions import ArgumentTypeError

    checks = []
    original = arguments.raise_if_bad_type
    monkeypatch.setattr(arguments, "raise_if_bad_type", lambda value, *a: checks.append(value) or original(value, *a))
    monkeypatch.setattr(opcost, "_passed", set())
    state, host = _host({"host": {"_timeout": 5}})
    for _ in range(3):
        opcost.pop_arguments(state, host, {"name": "an operation", "_success_exit_codes": [0, 1]})
    assert checks.count("an operation") == 1  # a str: checked once
    assert checks.count([0, 1]) == 3  # a list can change: checked every time
    for _ in range(2):  # a check that fails is not kept: it fails every time
        with pytest.raises(ArgumentTypeError, match="Invalid argument `_sudo`"):
            opcost.pop_arguments(state, host, {"_sudo": "yes please"})
    assert checks.count("yes please") == 2


def test_pop_arguments_is_installed_where_pyinfra_calls_it():
    opcost.install()
    for name in opcost._CALLERS:
        assert sys.modules[name].pop_global_arguments is opcost.pop_arguments
    assert arguments.pop_global_arguments is POP_ORIGINAL  # pyinfra's own stays importable


# --- make_formatted_string_command's split ------------------------------------------------
command_module = sys.modules["pyinfra.api.command"]
# pyinfra's own format strings (the File fact's, a checksum fact's, an operation's) and
# strings with quotes, escapes, comments and empty tokens, split the way a shell would
FORMATS = [
    "! (test -e {0} || test -L {0} ) || ( stat -c 'user=%U group=%G mode=%A' {0} 2> /dev/null )",
    "test -e {0} && ( sha256sum {0} 2> /dev/null || shasum -a 256 {0} 2> /dev/null ) || true",
    'sh -c "echo {0} \\"quoted\\" $HOME" # not a comment to shlex.split',
    "printf '%s\\n' '' {name} \"\" x\\ y",
    "curl -sSLf {0} -o {1}",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_commands_built_after_the_split_is_kept_are_pyinfras(fmt, monkeypatch):
    import shlex

    from pyinfra.api.command import QuoteString

    args = (QuoteString("/etc/a file"), "plain")
    kwargs = {"name": QuoteString("it's")}
    monkeypatch.setattr(command_module, "shlex", shlex)
    theirs = [command_module.make_formatted_string_command(fmt, *args, **kwargs).get_raw_value()
              for _ in range(2)]
    assert "make_formatted_string_command" in opcost.install()
    assert isinstance(command_module.shlex, opcost._SplitOnce)
    ours = [command_module.make_formatted_string_command(fmt, *args, **kwargs).get_raw_value()
            for _ in range(2)]  # the second from the kept split
    assert ours == theirs


def test_the_kept_split_is_a_fresh_list_and_other_calls_are_shlexs():
    import shlex

    once = opcost._SplitOnce(shlex)
    first = once.split("a 'b c' d")
    first.append("changed")
    assert once.split("a 'b c' d") == ["a", "b c", "d"]
    assert once.split("a # b", comments=True) == shlex.split("a # b", comments=True) == ["a"]
    assert once.split("a 'b c'", posix=False) == ["a", "'b c'"]
    assert once.quote("it's") == shlex.quote("it's")


def test_a_changed_formatter_leaves_pyinfras_split_in_place(monkeypatch):
    import shlex

    monkeypatch.setattr(command_module, "shlex", shlex)
    monkeypatch.setitem(opcost.CHECKED, "make_formatted_string_command", "0" * 64)
    assert "make_formatted_string_command" not in opcost.install()
    assert command_module.shlex is shlex


# `dpkg -l` as Debian prints it: held and installed packages, an architecture suffix, a
# package removed but not purged (rc: not installed), and the header lines
DPKG_L = """\
Desired=Unknown/Install/Remove/Purge/Hold
| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend
|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)
||/ Name           Version          Architecture Description
+++-==============-================-============-=================================
ii  adduser        3.134            all          add and remove users and groups
hi  docker.io      20.10.24+dfsg1-1 arm64        Linux container runtime
ii  libc6:arm64    2.36-9+deb12u9   arm64        GNU C Library: Shared libraries
rc  nginx-common   1.22.1-9         all          small, powerful, scalable web/proxy server
ii  restic         0.14.0-1+b5      arm64        backup program with multiple revisions
""".splitlines()


def test_packages_parsed_once_are_pyinfras_and_each_callers_own():
    opcost.install()
    fact = deb.DebPackages()
    theirs = DEB_ORIGINAL(fact, DPKG_L)
    assert theirs == {"adduser": {"3.134"}, "docker.io": {"20.10.24+dfsg1-1"}, "libc6": {"2.36-9+deb12u9"},
                      "restic": {"0.14.0-1+b5"}}
    first = fact.process(DPKG_L)
    assert first == theirs
    first["adduser"].add("changed")
    first.pop("restic")
    assert fact.process(list(DPKG_L)) == theirs  # the kept parse, untouched by the first caller
    assert fact.process(DPKG_L[:-1]) == {k: v for k, v in theirs.items() if k != "restic"}


def test_the_kept_parses_are_bounded(monkeypatch):
    calls = []

    def original(self, output):
        calls.append(tuple(output))
        return {line: {"1"} for line in output}

    process = opcost.packages_once(original)
    fact = SimpleNamespace(regex="r")
    monkeypatch.setattr(opcost, "PARSED_KEEP", 3)
    for n in range(5):
        assert process(fact, [f"p{n}"]) == {f"p{n}": {"1"}}
    assert process(fact, ["p4"]) == {"p4": {"1"}} and len(calls) == 5  # kept
    assert process(fact, ["p0"]) == {"p0": {"1"}} and len(calls) == 6  # dropped when full, parsed again
    assert process(SimpleNamespace(regex="other"), ["p0"]) and len(calls) == 7  # per regex too


def test_a_changed_package_parser_leaves_pyinfras_in_place(monkeypatch):
    monkeypatch.setattr(deb.DebPackages, "process", DEB_ORIGINAL)
    monkeypatch.setitem(opcost.CHECKED, "parse_packages", "0" * 64)
    assert "DebPackages.process" not in opcost.install()
    assert deb.DebPackages.process is DEB_ORIGINAL


def test_imported_names_are_kept_per_version_of_the_file(tmp_path):
    calls = []

    def original(filename):
        calls.append(filename)
        return {line.split()[-1] for line in open(filename) if line.startswith("import ")}

    names = opcost.names_once(original)
    data = tmp_path / "all.py"
    data.write_text("import os\nvalue = 1\n")
    first = names(str(data))
    assert first == {"os"} and calls == [str(data)]
    first.add("changed")
    assert names(str(data)) == {"os"} and len(calls) == 1  # kept, and a fresh set
    data.write_text("import os\nimport re\nvalue = 2\n")  # edited: another size
    assert names(str(data)) == {"os", "re"} and len(calls) == 2
    with pytest.raises(FileNotFoundError):
        names(str(tmp_path / "gone.py"))


def test_connectors_are_read_once_and_are_pyinfras(monkeypatch):
    """The connectors kept are the ones pyinfra's own function finds, the same classes, in a
    fresh dict each time; the entry points are read on the first call only, also when the
    inventory asks for every `@fleet/...` host, and get_execution_connectors follows."""
    connectors = sys.modules["pyinfra.api.connectors"]
    read = []
    real = connectors.entry_points
    monkeypatch.setattr(connectors, "entry_points", lambda **kw: read.append(kw) or real(**kw))
    found = opcost.connectors_once(CONNECTORS_ORIGINAL)
    first = found()
    assert first == CONNECTORS_ORIGINAL() and "fleet" in first and "ssh" in first
    assert first["fleet"] is CONNECTORS_ORIGINAL()["fleet"]
    read.clear()
    first["fleet"] = None
    assert found() == CONNECTORS_ORIGINAL() and found() is not found()  # fresh, and not changed by a caller
    assert len(read) == 1  # the original's call above; none by the kept function
    opcost.install()
    assert connectors.get_all_connectors is sys.modules["pyinfra.api.inventory"].get_all_connectors
    connectors.get_all_connectors()  # read here, or already by an earlier call in this process
    read.clear()
    from pyinfra.api import Inventory

    Inventory(([f"@fleet/host-{i}" for i in range(5)], {}))
    Inventory(([f"@fleet/host-{i}" for i in range(9)], {}))
    assert read == []  # pyinfra's own function read them 1 + 1 + 5 + 1 + 1 + 9 times
    assert set(connectors.get_execution_connectors()) == {
        name for name, c in CONNECTORS_ORIGINAL().items() if c.handles_execution}


# Loads group data as pyinfra's CLI does (pyinfra_cli imported, a State in context), before
# and after install, and prints what was replaced and whether the data came out the same.
PROBE = """\
import ast
import json
import pyinfra_cli.inventory as inventory
from pyinfra.api import State
from pyinfra.context import ctx_state
from fleet.converge import opcost
ctx_state.set(State())
parse, parsed = ast.parse, []
ast.parse = lambda *a, **k: parsed.append(1) or parse(*a, **k)
before = inventory._get_group_data(GROUP_DATA)
parsed_before = len(parsed)
replaced = opcost.install()  # (which parses pyinfra's sources for their digests)
parsed.clear()
after = [inventory._get_group_data(GROUP_DATA) for _ in range(2)]
print(json.dumps([sorted(replaced), repr(before) == repr(after[0]) == repr(after[1]), repr(after[0]),
                  parsed_before, len(parsed)]))
"""


def test_group_data_loaded_by_pyinfras_cli_is_the_same(tmp_path):
    """In a process that runs pyinfra's CLI (pyinfra_cli imported), install replaces
    _get_imported_names, and pyinfra loads the same group data with it as without."""
    group_data = tmp_path / "group_data"
    group_data.mkdir()
    (group_data / "all.py").write_text("import os\nfrom os import path as p, sep\n"
                                       "a = 1\nb = [os.sep]\n_private = 3\nsep2 = sep\n")
    (group_data / "web.py").write_text("__all__ = ['x']\nx = 1\ny = 2\n")
    probe = PROBE.replace("GROUP_DATA", repr(str(group_data)))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    replaced, same, shown, parsed_before, parsed_after = json.loads(proc.stdout)
    assert "_get_imported_names" in replaced and same, shown
    # all.py once per name it defines before (web.py sets __all__: never parsed); then once
    assert parsed_before > 1 and parsed_after == 1
    assert "'a': 1" in shown and "'sep2'" in shown and "'os'" not in shown and "'p'" not in shown


def _plain(a, b=2, *rest, c, d=4, **more):
    return a


class _Fact:
    def command(self, path, mode=None, *, follow=True):
        return path


CALLS = [
    (_plain, (1,), {"c": 3}),
    (_plain, (1, 5, 6, 7), {"c": 3, "x": 9}),
    (_plain, (), {"a": 1, "c": 3, "d": 0}),
    (_plain, (1,), {}),  # c missing: TypeError
    (_plain, (1,), {"a": 2, "c": 3}),  # a twice: TypeError
    (_Fact().command, ("/etc",), {}),
    (_Fact().command, ("/etc", "644"), {"follow": False}),
    (_Fact().command, (), {"path": "/etc"}),
    (_Fact().command, ("/etc", "644", "extra"), {}),  # too many: TypeError
    (_Fact().command, ("/etc",), {"owner": "root"}),  # unexpected: TypeError
    (_Fact.command, (_Fact(), "/etc"), {}),
]


def _outcome(function, args, kwargs):
    try:
        return "ok", function(*args, **kwargs)
    except TypeError as exc:
        return "TypeError", str(exc)


@pytest.mark.parametrize("func, args, kwargs", CALLS)
def test_kept_callargs_are_getcallargs(func, args, kwargs):
    kept = opcost.callargs_kept(inspect.getcallargs)
    theirs = _outcome(inspect.getcallargs, (func, *args), kwargs)
    assert _outcome(kept, (func, *args), kwargs) == theirs
    assert _outcome(kept, (func, *args), kwargs) == theirs  # from the kept spec


def test_a_method_of_each_new_instance_shares_one_spec(monkeypatch):
    asked = []
    original = inspect.getfullargspec
    monkeypatch.setitem(inspect.getcallargs.__globals__, "getfullargspec",
                        lambda func: asked.append(func) or original(func))
    kept = opcost.callargs_kept(inspect.getcallargs)
    first, second = _Fact(), _Fact()
    assert kept(first.command, "/a") == {"self": first, "path": "/a", "mode": None, "follow": True}
    assert kept(second.command, "/b") == {"self": second, "path": "/b", "mode": None, "follow": True}
    assert len(asked) == 1


def test_kept_signatures_are_inspects_and_made_once():
    kept = opcost.signature_kept(inspect.signature)
    assert kept(_plain) is kept(_plain)
    assert kept(_plain) == inspect.signature(_plain)
    assert kept(_plain).bind(1, c=3).arguments == inspect.signature(_plain).bind(1, c=3).arguments
    with pytest.raises(TypeError, match="missing a required argument: 'c'"):
        kept(_plain).bind(1)
    assert kept(_plain, follow_wrapped=False) == inspect.signature(_plain, follow_wrapped=False)

    class Unhashable:
        __hash__ = None

        def __call__(self, x):
            return x

    assert str(kept(Unhashable())) == "(x)"


def test_a_changed_operation_wrapper_leaves_pyinfras_signature_in_place(monkeypatch):
    monkeypatch.setattr(operation_module, "signature", inspect.signature)
    monkeypatch.setitem(opcost.CHECKED, "_wrap_operation", "0" * 64)
    assert "signature" not in opcost.install()
    assert operation_module.signature is inspect.signature


def test_a_wrapped_getcallargs_is_left_in_place(monkeypatch):
    """Someone else's wrapper around getcallargs shows the original's source (getsource
    unwraps), but its code is not the one checked: it is not reused."""
    @functools.wraps(inspect.getcallargs)
    def wrapper(*args, **kwargs):
        return inspect.getcallargs.__wrapped__(*args, **kwargs)

    wrapper.__wrapped__ = inspect.getcallargs
    monkeypatch.setattr(inspect, "getcallargs", wrapper)
    monkeypatch.setattr(facts_module, "getcallargs", wrapper)
    assert "getcallargs" not in opcost.install()
    assert facts_module.getcallargs is wrapper


# --- operations run across hosts: the hosts an operation is not for --------------------------

def _run_ops(single, verbose: bool, monkeypatch) -> tuple[dict, set[str]]:
    """Run five operations over four hosts with `single` as pyinfra's _run_single_op; return,
    per operation, what its callbacks, progress and log lines said (order within an operation
    aside: hosts run at once), and which hosts failed."""
    import logging

    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.state import BaseStateCallback, StateStage
    from pyinfra.operations import python

    from fleet.converge import connector  # noqa: F401 - the CLI's HideSkipped filter, as in a converge

    operations = sys.modules["pyinfra.api.operations"]
    monkeypatch.setattr(operations, "_run_single_op", single)
    inventory = Inventory((["a", "b", "c", "d"], {}))
    state = State(inventory, Config())
    state.print_noop_info = verbose
    for host in inventory:
        state.activate_host(host)
    seen: dict[str, list] = {}
    current: list[str] = []

    def note(*event):
        seen.setdefault(current[-1], []).append(event)

    class Record(BaseStateCallback):
        def operation_start(self, state, op_hash):
            current.append(state.get_op_meta(op_hash).names.copy().pop())
            note("start")

        def operation_host_start(self, state, host, op_hash):
            assert operations.ctx_host.get() is host  # run under the host's context, as pyinfra does
            note("host", host.name)

        def operation_end(self, state, op_hash):
            note("end")

    class Lines(logging.Handler):
        def emit(self, record):
            if current:
                note("line", record.getMessage())

    @contextlib.contextmanager
    def spinner(items, prefix_message=None):
        left = {host.name for host in items}

        def progress(host):
            left.remove(host.name)  # each host once, as pyinfra's own spinner insists
            note("progress", host.name)

        yield progress
        assert not left

    monkeypatch.setattr(operations, "progress_spinner", spinner)
    state.add_callback_handler(Record())

    def ok():
        return True

    def fail_on_b():
        if operations.ctx_host.get().name == "b":
            raise RuntimeError("b fails")
        return True

    hosts = {host.name: host for host in inventory}

    def on(names: str, function, **kwargs):
        """The operation for the hosts `names`, as pyinfra's CLI adds one from a deploy file
        (ordered by the caller's line: each call below is one operation)."""
        with monkeypatch.context() as cli:
            cli.setattr(pyinfra, "is_cli", True)
            with operations.ctx_state.use(state):
                for name in names:
                    with operations.ctx_host.use(hosts[name]):
                        python.call(function=function, **kwargs)

    state.set_stage(StateStage.Prepare)
    on("ab", ok, name="for a and b")
    on("c", ok, name="for c only")
    on("abcd", ok, name="for every host")
    on("bd", fail_on_b, name="fails on b")
    on("ac", ok, name="serial, for a and c", _serial=True)
    state.set_stage(StateStage.Execute)
    handler = Lines()
    logger = logging.getLogger("pyinfra")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        operations.run_ops(state)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    ordered = {op: sorted(events, key=repr) for op, events in seen.items()}
    assert all(events[0] == ("start",) and events[-1] == ("end",) for events in seen.values())
    return ordered, {host.name for host in inventory if host not in state.active_hosts}


@pytest.mark.parametrize("verbose", [False, True])
def test_hosts_an_operation_is_not_for_are_passed_over_as_pyinfra_does(verbose, monkeypatch):
    """The same callbacks (under the host's context), progress, failed hosts and printed lines
    as pyinfra's own _run_single_op; a "Skipped" line only in a verbose run, where pyinfra's
    own is also the only one printed (connector.HideSkipped)."""
    assert "_run_single_op" in opcost.install()
    ours, ours_failed = _run_ops(opcost.run_single_op, verbose, monkeypatch)
    theirs, theirs_failed = _run_ops(opcost._ORIGINALS["_run_single_op"], verbose, monkeypatch)
    assert ours == theirs
    assert ours_failed == theirs_failed == {"b"}
    skipped = sorted(event[1] for event in ours["for c only"] if event[0] == "line" and "Skipped" in event[1])
    assert len(skipped) == (3 if verbose else 0)
    assert ("host", "d") in ours["for c only"] and ("progress", "d") in ours["for c only"]
    # b failed before it: no longer active, so no longer met
    assert [e for e in ours["serial, for a and c"] if e[0] == "host"] == [("host", h) for h in "acd"]


def test_a_changed_operation_runner_is_left_in_place(monkeypatch):
    operations = sys.modules["pyinfra.api.operations"]
    opcost.install()
    original = opcost._ORIGINALS["_run_single_op"]
    monkeypatch.setattr(operations, "_run_single_op", original)
    monkeypatch.setitem(opcost.CHECKED, "run_host_op", "0" * 64)  # its skip branch, which ours repeats
    assert "_run_single_op" not in opcost.install()
    assert operations._run_single_op is original
