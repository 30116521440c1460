"""The component contract and the layers: every module in deploys/ is a registered component
with a spec file, documented DEFAULTS and a settings reference that is current; the package
has no import cycle and no layer imports the one above it."""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

import pytest

from fleet.commands import docs
from fleet.converge import component as registry
from fleet.converge.component import Component, ComponentError, components, defaults, order

REPO = Path(__file__).resolve().parents[2]
DEPLOYS = REPO / "deploys"
SPECS = REPO / "tests" / "specs"
# Which layer may import which (a layer imports only those listed, and itself).
LAYERS = {
    "fleet.converge": set(),
    "fleet.preflight": {"fleet.converge", "deploys", "fleet.policy"},
    # the service graph: read by validation, the tailnet command and the firewall deploy
    "fleet.policy": {"fleet.converge", "fleet.preflight", "deploys"},
    "fleet.commands": {"fleet.converge", "fleet.preflight", "fleet.policy", "deploys"},
    "deploys": {"fleet.converge", "fleet.policy", "deploys"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the fleet/deploys modules it imports (any import statement, at any depth)."""
    files = sorted([*(REPO / "fleet").rglob("*.py"), *DEPLOYS.glob("*.py")])
    known = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        name = module_name(f)
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the longest known module the import names (from x import y: x.y if a module)
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def layer(module: str) -> str | None:
    return next((name for name in LAYERS if module == name or module.startswith(name + ".")), None)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "fleet.preflight.inventory" in graph and "deploys.site" in graph  # the walk found them
    assert cycles(graph) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_layer_imports_a_layer_above_it():
    wrong = [f"{mod} imports {dep}" for mod, deps in import_graph().items() for dep in deps
             if layer(mod) and layer(dep) and layer(dep) != layer(mod) and layer(dep) not in LAYERS[layer(mod)]]
    assert wrong == []


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in (REPO / "fleet").rglob("*.py")} | {p.name for p in (REPO / "fleet").iterdir() if p.is_dir()}
    assert not names & set(sys.stdlib_module_names)


def test_the_test_harness_is_not_in_the_package():
    assert not list((REPO / "fleet").rglob("testfleet.py")) and not list((REPO / "fleet").rglob("bench.py"))
    assert (REPO / "tests" / "harness" / "testfleet.py").exists()


def test_every_deploys_module_is_a_registered_component_with_a_spec_file():
    modules = {p.stem for p in DEPLOYS.glob("*.py")} - {"__init__", "site"}
    registered = {c.name for c in components()}
    assert modules == registered, f"not registered: {modules - registered}; no module: {registered - modules}"
    missing = [c.name for c in components() if not (SPECS / f"test_{c.name}.py").exists()]
    assert missing == [], f"components without tests/specs/test_<name>.py: {missing}"


def test_each_default_is_prefixed_and_commented():
    for c in components():
        path = DEPLOYS / f"{c.name}.py"
        comments = docs.key_comments(path.read_text(), str(path))
        assert set(comments) == set(c.defaults), c.name
        for key in c.defaults:
            assert key.startswith(f"{c.name}_"), f"{c.name}: {key} is not prefixed {c.name}_"
            assert comments[key], f"{c.name}: {key} has no comment above it"


def test_the_registry_keeps_the_orders_that_matter():
    names = [c.name for c in components()]
    for first, then in (("base", "tailscale"), ("nvidia", "docker"), ("docker", "llm"), ("llm", "ollama"),
                        ("llm", "vllm"), ("maintenance", "cloudflared"), ("ollama", "cloudflared")):
        assert names.index(first) < names.index(then), f"{first} must run before {then}"
    for c in components():
        for other in c.after:
            assert names.index(other) < names.index(c.name)
        for other in c.before:
            assert names.index(c.name) < names.index(other)
    # the backup's first snapshot needs every declared state to exist (a fresh host once
    # failed its first backup because Redis, which declares /var/lib/redis, ran after it)
    stateful = [c.name for c in components() if c.state(c.name, {**c.defaults}) or c.name in ("postgres", "redis")]
    assert {"postgres", "redis"} <= set(stateful)
    for name in stateful:
        assert names.index(name) < names.index("backup"), f"{name} declares state: it must run before backup"


def test_after_state_orders_after_every_component_with_state():
    saver = Component(name="a_saver", deploy=lambda: None, defaults={}, after_state=True)
    keeper = Component(name="z_keeper", deploy=lambda: None, defaults={}, state=lambda n, d: ["/srv"])
    assert [c.name for c in order([saver, keeper, _c("m")])] == ["m", "z_keeper", "a_saver"]


def _c(name, after=(), before=()):
    return Component(name=name, deploy=lambda: None, defaults={}, after=after, before=before)


def test_order_is_topological_and_stable():
    assert [c.name for c in order([_c("b", after=("a",)), _c("c"), _c("a")])] == ["a", "b", "c"]
    assert [c.name for c in order([_c("x", before=("a",)), _c("a")])] == ["x", "a"]


@pytest.mark.parametrize("found, message", [
    ([_c("a", after=("b",)), _c("b", after=("a",))], "order each other in a cycle"),
    ([_c("a", after=("nope",))], "after='nope' names no component"),
])
def test_order_errors_are_one_line(found, message):
    with pytest.raises(ComponentError, match=message) as err:
        order(found)
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_defaults_are_the_union_of_every_components():
    merged = defaults()
    for c in components():
        for key, value in c.defaults.items():
            assert merged[key] == value


def test_settings_reference_is_current():
    assert (REPO / "docs" / "settings.md").read_text() == docs.render(), \
        "docs/settings.md is stale. Fix: run `make docs` and commit it."


def test_key_comments_reads_the_comment_block_above_each_key():
    source = 'DEFAULTS = {\n    # one\n    # two\n    "a_x": 1,\n    "a_y": {\n        # inner\n        "k": 1,\n    },\n}\n'
    assert docs.key_comments(source) == {"a_x": "one two", "a_y": ""}
    assert list(tokenize.generate_tokens(io.StringIO(source).readline))  # valid Python


def test_fleet_components_selects_in_registry_order(monkeypatch):
    monkeypatch.setenv("FLEET_COMPONENTS", "tailscale, base")
    assert [c.name for c in registry.selected()] == ["base", "tailscale"]
    monkeypatch.setenv("FLEET_COMPONENTS", "")
    assert registry.selected() == registry.components()


def test_fleet_components_naming_no_component_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("FLEET_COMPONENTS", " , ")  # selected nothing: a converge that did nothing
    with pytest.raises(registry.ComponentError, match=r"FLEET_COMPONENTS=',' names no component\. Fix: name"):
        registry.selected()
    monkeypatch.setenv("FLEET_COMPONENTS", "base,dockr")
    with pytest.raises(registry.ComponentError, match=r"FLEET_COMPONENTS names no component 'dockr'\. Fix: use names"):
        registry.selected()



def unowned_files(paths) -> list[tuple[str, int]]:
    """Calls of pyinfra's files.put/template/directory that set a mode but no user or group:
    pyinfra then sets no owner and never checks it, so an owner changed by hand stays."""
    found = []
    for f in paths:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "files"
                    and node.func.attr in ("put", "template", "directory")):
                given = {k.arg for k in node.keywords}
                if "mode" in given and not {"user", "group"} <= given:
                    found.append((f.name, node.lineno))
    return found


def test_every_installed_file_names_its_owner():
    assert unowned_files(sorted(DEPLOYS.glob("*.py")) + sorted((REPO / "fleet" / "converge").glob("*.py"))) == []


def test_the_owner_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('files.put(name="x", src="a", dest="/etc/x", mode="644")\n'
                   'files.directory(name="y", path="/etc/y", user="root", group="root", mode="755")\n'
                   'files.directory(name="z", path="/var/lib/z")\n'
                   'files.template(name="t", src="t.j2", dest="/etc/t", user="root", mode="600")\n')
    assert unowned_files([bad]) == [("bad.py", 1), ("bad.py", 4)]
