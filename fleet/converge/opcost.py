"""Ten repeated costs of pyinfra's CLI, removed with exact equivalents.

Measured on a no-op converge of the 7-host test fleet (718 operations; docs/performance.md):
of the operator's CPU, 2.0 s went to `get_operation_order_from_stack`, 0.5 s to
`all_global_arguments` and, once those were gone, ~1.3 s (profiled) to
`pop_global_arguments`'s host-data lookups; all on pyinfra's single gevent thread, so
straight onto wall time.

- `get_operation_order_from_stack` names an operation by the line numbers of its call stack.
  It builds them with `inspect.stack()`, which reads the source lines around every frame
  (`findsource`, `os.path.exists` per frame) and then calls `getframeinfo` on every frame a
  second time, only to keep each frame's file name and line number. `operation_order` walks
  the same frames with `sys._getframe` and reads those two things from the frame itself:
  the file name `getframeinfo` reports is the code's `co_filename` (it differs only for a
  module run from bytecode, which is handled the same way below), and its line number is the
  start line of the instruction being run, which is `f_lineno` (the same location table).
- `all_global_arguments` calls `typing.get_type_hints` on the same class for every
  operation and fact; its answer cannot change during a run, so it is computed once.
- `pop_global_arguments` runs for every operation and every fact (~2,000 times in a no-op
  of the site) and looks each of the 32 global argument names up in `host.data`. Each
  lookup walks the host's data layers, and three of them are functions called anew every
  time: one merges the data of every group the host is in. So one call builds ~100 dicts
  to find that no layer has the name. `pop_arguments` reads the layers once per call, in the
  same order, with the same shallow copy of the value found: the layers cannot change within
  the call (nothing but pyinfra's own argument handlers runs in it). A plain dict layer says
  which of the 32 names it holds in one set intersection (nearly always none) instead of 32
  lookups; any other mapping is asked name by name, as pyinfra asks it. A name that the data
  object's class or the object itself holds (none of pyinfra's global arguments is) is still
  read through `getattr`, as pyinfra does; which names the class holds is worked out once per
  class. 60-66 µs a call before the intersection, 37-39 µs after (timed in a no-op of the
  site, 1,987 calls; pyinfra's own: ~130 µs on a smaller host). The type check of a value
  that differs from its default (typeguard, ~22 µs; ~1,900 a no-op, nearly all an operation's
  `name`) is done once per immutable value and type: the same check passes again.
- `make_formatted_string_command` (how pyinfra's facts and operations build a command from a
  format string: `test -e {0} && ...`) runs `shlex.split` over the format string on every
  call, ~1,000 times in a no-op of the site, mostly over the same dozen strings of
  pyinfra's file and checksum facts (up to 109 µs a call). `shlex.split` is a pure function
  of its string, so `command.shlex` becomes `_SplitOnce`, which hands out a fresh list of
  the tokens split the first time (the last 4,096 strings are kept: 9 µs a call); all else
  it is asked for is the shlex module's own. ~25 ms of a no-op (sampled).
- `DebPackages.process` parses `dpkg -l` with a regular expression per line every time the
  fact is asked: by every `apt.packages` operation, ~75 times in a no-op of the site, over the
  same few outputs (0.3 ms a parse for the test hosts' 209 packages; a Raspberry Pi OS image
  has several hundred more). The parse is a pure function of the fact's regex and the output
  lines, so each distinct output is parsed once and every caller gets its own copy of the
  answer (a fresh dict of fresh sets, as a parse gives).
- pyinfra's CLI, loading `group_data/`, asks `_get_imported_names` (which parses the file with
  `ast` to leave its imports out of the data) once per name the file defines: 68 parses of
  11 files, all.py 31 times, ~43 ms before the first host is contacted. Its answer depends
  on the file alone, so it is kept per file (path, inode, size and modification time) and
  handed out as a fresh set. Only in a process that runs pyinfra's CLI: this module never
  imports `pyinfra_cli` itself, whose import patches the whole process for gevent.
- Every operation call checks its arguments with `inspect.signature(func).bind(...)`
  (`_wrap_operation`), and `inspect.signature` builds the function's Signature anew each
  time: ~860 calls, ~93 ms of a no-op of the site (timed). A Signature is immutable and the
  operations' functions are not changed while pyinfra runs, so pyinfra.api.operation's
  `signature` keeps one per function (the binding itself is still done on every call).
- Every fact asked with arguments merges them with `inspect.getcallargs(fact.command, ...)`,
  whose first step, `getfullargspec`, rebuilds the method's signature: ~1,090 calls, ~53 ms
  of a no-op (timed). pyinfra.api.facts gets the standard library's own getcallargs (the same
  code object) with `getfullargspec` answered once per function; the rest of its work, and
  every error it raises, are the original's.
- `_run_single_op` spawns a greenlet for every host at every operation, also for the hosts
  the operation is not for, only to say "Skipped": ~1,350 of them in a no-op of the test
  fleet, ~220 for each host like pi0-epsilon. `run_single_op` passes those hosts over where
  it meets them, with pyinfra's callbacks, progress and (with `-v`) line; the hosts the
  operation is for run as pyinfra runs them.
- `get_all_connectors` reads the `pyinfra.connectors` entry points of every installed
  distribution (an `entry_points.txt` per package of the virtualenv: ~6-9 ms here) and
  loads each connector, and pyinfra's inventory asks it again for every host named
  `@connector/...`, as every host of the fleet is: 18 readings in a no-op of the 7-host site,
  2 more per added host, all before the first host is contacted. The connectors installed
  cannot change while pyinfra runs, and loading an entry point again gives the same class,
  so the answer is read once and handed out as a fresh dict, as the original returns.

Why code of our own: pyinfra has no setting for any of these (the stack is how its CLI orders
operations across hosts), and fewer, larger operations per component would be a refactor of
every component. So the functions are replaced in the modules that call them (and, for the
split, the `shlex` name of the one module that splits), and only when pyinfra's own
functions are the ones these were checked against: `install` compares the source of each
original with the digest recorded here, and leaves pyinfra alone (its own, slower code runs)
when they differ, e.g. after an upgrade. tests/unit/test_opcost.py checks that each gives
pyinfra's answers: frame by frame, argument by argument over data layers that have, lack,
shadow and override every global argument, and command by command for the split.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import shlex
import sys
import types
from copy import copy

logger = logging.getLogger("pyinfra")

# sha256 of inspect.getsource() of the originals these replace, and of the HostData whose
# lookups pop_arguments repeats (pyinfra 3.10.0).
CHECKED = {
    "get_operation_order_from_stack": "f4807f61585570e091fd453c7552d9e2b49329555f07f395a8e8f1d2a398a0b2",
    "all_global_arguments": "f7afbc472d78c5d2f0bb282994175647651e888543da001968d903cc4a26a5a1",
    "pop_global_arguments": "a12a311539ff5068152b1c9c4578d77a8a893239a570f912768050a623069faf",
    "HostData": "27949344fe93e254a4b7a536a4f56271de272f681a6d9885ceb434d275dbd176",
    "make_formatted_string_command": "6d699a2480b77b40d8a79a50b7934dc3a0b158d87ba71dbd5b2e3f199358544a",
    "DebPackages.process": "1bcc3b9247383499248181a7984d86f9f73ae257ff430d0d50d73261f2efe484",
    "parse_packages": "5c976c0ec53cf9aadf3be2470a822b5582bea24cd1be515203398aed38ddba1c",
    "_get_imported_names": "7a85a10a60fabb9431c6e36baf41fef1b564336e20859988f971a4d5db6983f5",
    "_wrap_operation": "8195e098a9c6a0b359e76364e6e6faced77ae9f94a2551882e48809626b4bedb",
    "_handle_fact_kwargs": "f1e30b1315adca787fc225c82ec7d2ce631a01602c4ee015204a7940ec041ae1",
    # the standard library's (CPython 3.11): its code is reused with getfullargspec kept
    "getcallargs": "29a7587619346009f9d96c0e073a9eb3d43dd2499a28d4546b5e560eb4782a0a",
    "_run_single_op": "18b3ae71f84a3c16c90596358ef07fd6c7771e5215472baa76f1a5bf71e8c06e",
    "run_host_op": "32d469d392d640dfefe4b79f158ae7a17ef9e8ac4e7e8c25b77f3f1eb8ac71d0",
    "get_all_connectors": "7d05cb4b81d92078b20c1ad876186310472ce3dc4c3636f3815d031bbf7e1d8e",
}
# pop_arguments stands for pop_global_arguments in the modules that import it by name.
_CALLERS = ("pyinfra.api.operation", "pyinfra.api.facts", "pyinfra.api.deploy")

_BYTECODE = (".pyc", ".pyo")


def source_digest(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def _filename(frame) -> str:
    name = frame.f_code.co_filename
    if name.endswith(_BYTECODE):  # what inspect.getframeinfo reports for these
        return inspect.getsourcefile(frame) or name
    return name


def operation_order(state) -> list:
    """pyinfra.api.util.get_operation_order_from_stack, without reading any source file."""
    import pyinfra
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()

    i = 0
    if state.current_deploy_filename:
        for i, frame in enumerate(frames):
            if _filename(frame) == state.current_deploy_filename:
                break
        else:  # pyinfra's loop ends on its own frame, which it then skips: nothing is kept
            i = len(frames)

    line_numbers = []
    if pyinfra.is_cli:
        line_numbers.append(state.current_op_file_number)
    for frame in frames[i:]:
        if _filename(frame).startswith(PYINFRA_INSTALL_DIR):
            continue
        line_numbers.append(frame.f_lineno)
    del frames, frame
    return line_numbers


def _argument_table(data_type) -> tuple[list, frozenset]:
    """(key, type, default, handler, read through getattr) for each global argument, in
    pyinfra's order, and the names that are looked up in the data layers: those `data_type`
    (HostData, whose source is checked) does not define itself. Made once per class: the
    arguments (`all_global_arguments`, kept) and their meta are fixed for a run."""
    from pyinfra.api.arguments import all_argument_meta, all_global_arguments

    table = _TABLES.get(data_type)
    if table is None:
        rows = [(key, type_, all_argument_meta[key].default, all_argument_meta[key].handler, hasattr(data_type, key))
                for key, type_ in all_global_arguments()]
        table = _TABLES[data_type] = (rows, frozenset(key for key, *_, attr in rows if not attr))
    return table


_TABLES: dict = {}


def pop_arguments(state, host, kwargs: dict):
    """pyinfra.api.arguments.pop_global_arguments, reading the host's data layers once."""
    from pyinfra.api.arguments import ArgumentTypeError, raise_if_bad_type
    from pyinfra.api.host import extract_callable_datas
    from pyinfra.context import ctx_config

    config = state.config
    if ctx_config.isset():
        config = ctx_config.get()
        assert config is not None

    meta_kwargs = host.current_deploy_kwargs or {}
    data = host.data
    rows, names = _argument_table(type(data))
    own = data.__dict__
    # Every layer is read once, in order, as pyinfra reads them for each name: the first layer
    # that has a name gives its (shallow-copied) value. A plain dict answers which of the
    # names it has in one set operation (almost always none), walking the smaller of the two:
    # `names.intersection(layer)` walks every key of the layer, `layer.keys() & names` looks
    # each name up in it (the site's layers hold 0-139 keys, the names 32; ~5 ms of a site
    # no-op's ~100 ms in this function: docs/performance.md, twenty-sixth round). Any other
    # mapping is asked name by name, as pyinfra asks it. Names the instance itself holds are
    # read through getattr below, as pyinfra does, and so are left out here.
    pending = names.difference(own) if own.keys() & names else names
    found: dict = {}
    for layer in extract_callable_datas(data.datas):
        if not pending:
            break
        if type(layer) is dict:
            hits = pending.intersection(layer) if len(layer) <= len(pending) else layer.keys() & pending
            if hits:
                for key in hits:
                    found[key] = copy(layer[key])
                pending = pending - hits
            continue
        for key, *_ in rows:
            if key in pending:
                try:
                    found[key] = copy(layer[key])
                except KeyError:
                    pass
        pending = pending.difference(found)

    arguments = {}
    found_keys = []
    for key, type_, default_of, handler, attr in rows:
        default = default_of(config)
        if attr or key in own:  # not a data lookup in pyinfra either
            host_default = getattr(data, key, _MISSING)
            if host_default is not _MISSING:
                default = host_default
        elif key in found:
            default = found[key]

        if key in kwargs:
            found_keys.append(key)
            value = kwargs.pop(key)
        else:
            value = meta_kwargs.get(key, default)

        if handler:
            value = handler(config, value)

        if value != default:
            _check_type_once(value, type_, lambda: raise_if_bad_type(value, type_, ArgumentTypeError,
                                                                      f"Invalid argument `{key}`:"))

        arguments[key] = value
    return arguments, found_keys


# Values of these types cannot change, so a type check one of them passed passes again: most
# checks in a run are of each operation's `name` (a str), ~1,900 of them at ~22 µs each
# (typeguard's check_type). A check that fails raises, as pyinfra's does, and is not kept.
_IMMUTABLE = (str, bool, int, float, type(None))
TYPE_CHECKS_KEEP = 8192
_passed: set = set()


def _check_type_once(value, type_, check) -> None:
    """`check()` (it raises on a bad type), unless this immutable value passed it for this type."""
    mark = (type(value), value, type_) if type(value) in _IMMUTABLE else None
    try:
        if mark in _passed:
            return
    except TypeError:  # a type that cannot be hashed: checked every time
        mark = None
    check()
    if mark is not None:
        if len(_passed) >= TYPE_CHECKS_KEEP:
            _passed.clear()
        _passed.add(mark)


_MISSING = object()


class _SplitOnce:
    """The shlex module as pyinfra.api.command uses it, with `split` remembered per string."""

    def __init__(self, module):
        self._module = module
        self._tokens = functools.lru_cache(maxsize=4096)(lambda string: tuple(module.split(string)))

    def split(self, string, comments=False, posix=True):
        if type(string) is not str or comments or not posix:  # pyinfra asks neither: not kept
            return self._module.split(string, comments, posix)
        return list(self._tokens(string))

    def __getattr__(self, name):
        return getattr(self._module, name)


# distinct `dpkg -l` outputs kept at once: one or two per host in a run (before and after an
# install); when full, the kept ones are dropped and parsed again as asked
PARSED_KEEP = 64


def packages_once(original):
    """DebPackages.process, parsing each distinct output once; each caller gets a copy."""
    kept: dict[tuple, dict] = {}

    @functools.wraps(original)
    def process(self, output):
        key = (self.regex, tuple(output))
        found = kept.get(key)
        if found is None:
            found = original(self, output)
            if len(kept) >= PARSED_KEEP:
                kept.clear()
            kept[key] = found
        return {name: set(versions) for name, versions in found.items()}

    process.fleet_opcost = True
    return process


def signature_kept(signature):
    """inspect.signature, keeping the Signature of each callable it is asked about."""
    kept = functools.lru_cache(maxsize=4096)(signature)

    @functools.wraps(signature)
    def kept_signature(obj, *, follow_wrapped=True, globals=None, locals=None, eval_str=False):
        if follow_wrapped is not True or globals is not None or locals is not None or eval_str:
            return signature(obj, follow_wrapped=follow_wrapped, globals=globals, locals=locals, eval_str=eval_str)
        try:
            hash(obj)
        except TypeError:
            return signature(obj)
        return kept(obj)

    kept_signature.fleet_opcost = True
    return kept_signature


def callargs_kept(getcallargs):
    """inspect.getcallargs itself (its code object), with getfullargspec kept per function: a
    bound method's spec is its function's (it includes the bound argument), so methods of
    instances made anew each call share one."""
    getfullargspec = getcallargs.__globals__["getfullargspec"]
    kept: dict = {}

    def argspec(func):
        key = getattr(func, "__func__", func)
        try:
            return kept[key]
        except KeyError:
            spec = kept[key] = getfullargspec(func)
            return spec
        except TypeError:  # unhashable: not kept
            return getfullargspec(func)

    names = dict(getcallargs.__globals__, getfullargspec=argspec)
    function = types.FunctionType(getcallargs.__code__, names, getcallargs.__name__, getcallargs.__defaults__,
                                  getcallargs.__closure__)
    function.__kwdefaults__ = getcallargs.__kwdefaults__
    functools.update_wrapper(function, getcallargs)
    function.fleet_opcost = True
    return function


def names_once(original):
    """pyinfra_cli.inventory._get_imported_names, parsing each version of a file once."""
    kept: dict[tuple, frozenset] = {}

    @functools.wraps(original)
    def imported_names(filename):
        try:
            stat = os.stat(filename)
        except OSError:
            return original(filename)  # its own error, as pyinfra would raise it
        key = (filename, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in kept:
            kept[key] = frozenset(original(filename))
        return set(kept[key])

    imported_names.fleet_opcost = True
    return imported_names


def connectors_once(original):
    """pyinfra.api.connectors.get_all_connectors, its entry points read and loaded once."""
    kept: list[dict] = []

    @functools.wraps(original)
    def get_all_connectors():
        if not kept:
            kept.append(original())
        return dict(kept[0])  # a fresh dict each call, as the original returns

    get_all_connectors.fleet_opcost = True
    return get_all_connectors


def run_single_op(state, op_hash):
    """pyinfra.api.operations._run_single_op, where the hosts an operation is not for are
    passed over in place rather than each in a greenlet of its own.

    pyinfra spawns a greenlet for every active host at every operation; for a host the
    operation is not for, that greenlet runs `run_host_op`'s first branch only: the
    `operation_host_start` callbacks and an INFO line "Skipped". The fleet's hosts differ, so
    most host-operations are those: ~220 of the ~295 operations for a host like pi0-epsilon,
    ~1,350 in a no-op of the test fleet, each a spawn, a context switch, a LogRecord (built
    before any filter sees it, with a walk up the stack to name its caller) and a progress
    update; the spawn and the line alone took ~19 µs (timed). Here that branch runs where
    the host is met: the same callbacks under the same host context, the same progress, and
    the "Skipped" line when the run prints it at all (`-v`; connector.HideSkipped drops it
    otherwise). Every host the operation is for runs exactly as pyinfra runs it; serial
    operations are pyinfra's code."""
    operations = sys.modules["pyinfra.api.operations"]
    op_meta = state.get_op_meta(op_hash)
    if op_meta.global_arguments["_serial"]:
        return _ORIGINALS["_run_single_op"](state, op_hash)

    state.trigger_callbacks("operation_start", op_hash)
    operations.log_operation_start(op_meta)
    failed_hosts = set()
    hosts = list(state.inventory.get_active_hosts())
    parallel = op_meta.global_arguments["_parallel"]
    batches = [hosts[i : i + parallel] for i in range(0, len(hosts), parallel)] if parallel else [hosts]

    for batch in batches:
        with operations.progress_spinner(batch) as progress:
            if state.pool is None:
                raise operations.PyinfraError("No pool found on state.")
            greenlet_to_host = {}
            for host in batch:
                if op_hash in state.ops[host]:
                    greenlet_to_host[state.pool.spawn(operations._run_host_op_with_context, state, host,
                                                      op_hash)] = host
                else:
                    _pass_over(state, host, op_hash, operations)
                    progress(host)
            for greenlet in operations.gevent.iwait(greenlet_to_host.keys()):
                progress(greenlet_to_host[greenlet])
            for greenlet, host in greenlet_to_host.items():
                if not greenlet.get():
                    failed_hosts.add(host)

    state.fail_hosts(failed_hosts)
    state.trigger_callbacks("operation_end", op_hash)


def _pass_over(state, host, op_hash, operations) -> None:
    """run_host_op for a host the operation is not for (its first branch)."""
    with operations.ctx_host.use(host):
        state.trigger_callbacks("operation_host_start", host, op_hash)
        if getattr(state, "print_noop_info", False):
            operations.logger.info(f"{host.print_prefix}{operations.format_text('Skipped', 'blue')}")


_ORIGINALS: dict = {}


def install() -> list[str]:
    """Put the equivalents in place where pyinfra's originals are the checked ones.

    Returns the names replaced. Safe to call more than once."""
    import pyinfra.api.arguments  # noqa: F401 - the submodules, not the names pyinfra.api exports
    import pyinfra.api.facts  # noqa: F401
    import pyinfra.api.operation  # noqa: F401
    import pyinfra.api.util  # noqa: F401

    util = sys.modules["pyinfra.api.util"]
    arguments = sys.modules["pyinfra.api.arguments"]
    operation = sys.modules["pyinfra.api.operation"]
    facts = sys.modules["pyinfra.api.facts"]
    replaced = []

    original = util.get_operation_order_from_stack
    if operation.get_operation_order_from_stack is operation_order:
        replaced.append("get_operation_order_from_stack")
    elif source_digest(original) == CHECKED["get_operation_order_from_stack"]:
        operation.get_operation_order_from_stack = operation_order
        replaced.append("get_operation_order_from_stack")
    else:
        logger.debug("opcost: pyinfra's get_operation_order_from_stack is not the checked one; left as is")

    original = arguments.all_global_arguments
    if getattr(original, "fleet_opcost", False):
        replaced.append("all_global_arguments")
    elif source_digest(original) == CHECKED["all_global_arguments"]:
        once = functools.cache(original)

        @functools.wraps(original)
        def all_global_arguments():
            return list(once())  # a fresh list each call, as the original returns

        all_global_arguments.fleet_opcost = True
        arguments.all_global_arguments = all_global_arguments
        facts.all_global_arguments = all_global_arguments
        replaced.append("all_global_arguments")
    else:
        logger.debug("opcost: pyinfra's all_global_arguments is not the checked one; left as is")

    import pyinfra.api.deploy  # noqa: F401
    import pyinfra.api.host  # noqa: F401

    callers = [sys.modules[name] for name in _CALLERS]
    if all(module.pop_global_arguments is pop_arguments for module in callers):
        replaced.append("pop_global_arguments")
    elif (source_digest(arguments.pop_global_arguments) == CHECKED["pop_global_arguments"]
          and source_digest(sys.modules["pyinfra.api.host"].HostData) == CHECKED["HostData"]
          and all(module.pop_global_arguments is arguments.pop_global_arguments for module in callers)):
        for module in callers:
            module.pop_global_arguments = pop_arguments
        replaced.append("pop_global_arguments")
    else:
        logger.debug("opcost: pyinfra's pop_global_arguments or HostData is not the checked one; left as is")

    import pyinfra.api.command  # noqa: F401

    command = sys.modules["pyinfra.api.command"]
    if isinstance(command.shlex, _SplitOnce):
        replaced.append("make_formatted_string_command")
    elif (command.shlex is shlex and source_digest(command.make_formatted_string_command)
          == CHECKED["make_formatted_string_command"]):
        command.shlex = _SplitOnce(shlex)
        replaced.append("make_formatted_string_command")
    else:
        logger.debug("opcost: pyinfra's make_formatted_string_command is not the checked one; left as is")

    from pyinfra.facts import deb
    from pyinfra.facts.util import packaging

    def swap(name: str, installed: bool, checked, apply, what: str) -> None:
        """`apply` the replacement called `name` when `checked()` says pyinfra's original is the
        one it was checked against (`installed`: it already is in place)."""
        if installed:
            replaced.append(name)
        elif checked():
            apply()
            replaced.append(name)
        else:
            logger.debug(f"opcost: {what} is not the checked one; left as is")

    swap("DebPackages.process", getattr(deb.DebPackages.process, "fleet_opcost", False),
         lambda: (source_digest(deb.DebPackages.process) == CHECKED["DebPackages.process"]
                  and source_digest(packaging.parse_packages) == CHECKED["parse_packages"]
                  and deb.parse_packages is packaging.parse_packages),
         lambda: setattr(deb.DebPackages, "process", packages_once(deb.DebPackages.process)),
         "pyinfra's DebPackages.process or parse_packages")
    inventory = sys.modules.get("pyinfra_cli.inventory")  # loaded by pyinfra's CLI only
    if inventory is not None:
        swap("_get_imported_names", getattr(inventory._get_imported_names, "fleet_opcost", False),
             lambda: source_digest(inventory._get_imported_names) == CHECKED["_get_imported_names"],
             lambda: setattr(inventory, "_get_imported_names", names_once(inventory._get_imported_names)),
             "pyinfra's _get_imported_names")
    swap("signature", getattr(operation.signature, "fleet_opcost", False),
         lambda: (operation.signature is inspect.signature
                  and source_digest(operation._wrap_operation) == CHECKED["_wrap_operation"]),
         lambda: setattr(operation, "signature", signature_kept(inspect.signature)),
         "pyinfra's _wrap_operation")
    swap("getcallargs", getattr(facts.getcallargs, "fleet_opcost", False),
         # a wrapper around getcallargs shows the original's source, but its code is not it
         lambda: (facts.getcallargs is inspect.getcallargs and not hasattr(inspect.getcallargs, "__wrapped__")
                  and source_digest(facts._handle_fact_kwargs) == CHECKED["_handle_fact_kwargs"]
                  and source_digest(inspect.getcallargs) == CHECKED["getcallargs"]),
         lambda: setattr(facts, "getcallargs", callargs_kept(inspect.getcallargs)),
         "pyinfra's _handle_fact_kwargs or Python's getcallargs")

    import pyinfra.api.connectors  # noqa: F401
    import pyinfra.api.inventory  # noqa: F401

    connectors, inventories = sys.modules["pyinfra.api.connectors"], sys.modules["pyinfra.api.inventory"]

    def connectors_kept() -> None:
        # get_execution_connectors calls it through its module's name; the inventory holds its own
        connectors.get_all_connectors = inventories.get_all_connectors = connectors_once(connectors.get_all_connectors)

    swap("get_all_connectors", getattr(inventories.get_all_connectors, "fleet_opcost", False),
         lambda: (source_digest(connectors.get_all_connectors) == CHECKED["get_all_connectors"]
                  and inventories.get_all_connectors is connectors.get_all_connectors),
         connectors_kept, "pyinfra's get_all_connectors")

    import pyinfra.api.operations  # noqa: F401

    operations = sys.modules["pyinfra.api.operations"]
    if operations._run_single_op is not run_single_op:
        _ORIGINALS["_run_single_op"] = operations._run_single_op
    original = _ORIGINALS["_run_single_op"]
    swap("_run_single_op", operations._run_single_op is run_single_op,
         lambda: (source_digest(original) == CHECKED["_run_single_op"]
                  and source_digest(operations.run_host_op) == CHECKED["run_host_op"]),
         lambda: setattr(operations, "_run_single_op", run_single_op),
         "pyinfra's _run_single_op or run_host_op")
    return replaced
