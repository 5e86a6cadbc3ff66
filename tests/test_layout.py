"""The package layout keeps its promises (docs/ARCHITECTURE.md): every import points down a layer, no import cycles."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wsm", "archive_client")
# what the shared layer and the archive client may use of wsm: leaves that import nothing else of it
LEAVES = ("wsm", "wsm.errors", "wsm._compat")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool, modules: set[str]) -> set[str]:
    """Modules ``path`` imports (relative imports resolved); at module level only, or anywhere. ``from pkg import
    module`` counts as importing the module, ``from pkg import name`` as importing pkg."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _sources()
    return {name: {m for m in _imports(path, top_level_only, set(modules)) if m in modules and m != name}
            for name, path in modules.items()}


# The layers, lowest first (docs/ARCHITECTURE.md). A module may import its own package and any lower layer, never
# a package of its own layer or above: the four commands do not import each other (train's attribute runs write
# their report with report's builder, so report sits below train).
LAYERS = (
    ("wsm", "wsm.errors", "wsm._compat", "wsm._lazy"),
    ("wsm.io",),
    ("archive_client",),
    ("wsm.selection", "wsm.stages", "wsm.metrics"),
    ("wsm.config", "wsm.models"),
    ("wsm.learn", "wsm.mapping"),
    ("wsm.folders",),
    ("wsm.fit", "wsm.generate", "wsm.report"),
    ("wsm.train",),
    ("wsm.demo",),
    ("wsm.cli",),
    ("wsm.__main__",),
)


def _package(module: str) -> str:
    """The layer entry a module belongs to: the longest entry of LAYERS it is or lies under."""
    entries = [e for layer in LAYERS for e in layer if module == e or module.startswith(e + ".")]
    assert entries, f"{module} is in no layer of LAYERS: add it there (and to docs/ARCHITECTURE.md)"
    return max(entries, key=len)


def _rank(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def _upward(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """The imports of each module that go to another package of its own layer or above."""
    found = {}
    for name, imported in graph.items():
        own = _package(name)
        bad = sorted(m for m in imported if _package(m) != own and _rank(_package(m)) >= _rank(own))
        if bad:
            found[name] = bad
    return found


def test_every_import_points_down_a_layer_even_inside_a_function():
    upward = _upward(_graph(top_level_only=False))
    assert not upward, f"imports of the same layer or above: {upward}"


def test_the_layer_check_flags_peers_and_upward_imports_and_sees_inside_functions(tmp_path, monkeypatch):
    assert _upward({"wsm.fit.driver": {"wsm.generate.driver", "wsm.mapping"},
                    "wsm.io.atomic": {"wsm.folders.run"},
                    "wsm.train.driver": {"wsm.report.attributes", "wsm.train.options"}}) == {
        "wsm.fit.driver": ["wsm.generate.driver"], "wsm.io.atomic": ["wsm.folders.run"]}
    (tmp_path / "wsm" / "io").mkdir(parents=True)
    module = tmp_path / "wsm" / "io" / "example.py"
    module.write_text("def f():\n    from wsm.generate import driver\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _imports(module, top_level_only=False, modules={"wsm.generate.driver"}) == {"wsm.generate.driver"}
    assert _imports(module, top_level_only=True, modules={"wsm.generate.driver"}) == set()


def test_no_import_cycle_at_module_level():
    graph = _graph(top_level_only=True)
    state: dict[str, int] = {}      # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph.get(name, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [name, nxt]))
            if nxt not in state:
                visit(nxt, path + [name])
        state[name] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_each_stage_of_the_flow_is_a_folder():
    for stage in ("fit", "generate", "report", "train"):
        assert (ROOT / "wsm" / stage / "__init__.py").is_file()
        assert (ROOT / "wsm" / stage / "driver.py").is_file()


def test_the_tests_mirror_the_packages():
    """tests/<package path>/test_*.py for the modules of that package (project-wide tests at the top)."""
    misplaced = [str(t.relative_to(ROOT)) for t in (ROOT / "tests").rglob("test_*.py")
                 if t.parent != ROOT / "tests" and not (ROOT / t.parent.relative_to(ROOT / "tests")).is_dir()]
    assert not misplaced, f"test modules in a folder that mirrors no package: {misplaced}"
