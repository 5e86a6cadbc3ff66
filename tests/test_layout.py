"""The package layout keeps its promises (docs/ARCHITECTURE.md): shared I/O at the bottom, no import cycles."""
from __future__ import annotations

import ast
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


def test_shared_io_and_the_archive_client_use_only_the_shared_layer_of_wsm():
    offenders = {}
    for name, imported in _graph(top_level_only=False).items():
        if name.startswith("archive_client") or name.startswith("wsm.io"):
            bad = sorted(m for m in imported if m.startswith("wsm") and not (m in LEAVES or m.startswith("wsm.io")))
            if bad:
                offenders[name] = bad
    assert not offenders, f"imports above the shared layer: {offenders}"


LOWER = ("wsm.io", "wsm.config", "wsm.stages", "wsm.models", "wsm.learn", "wsm.selection")   # below the commands
COMMANDS = ("wsm.fit", "wsm.generate", "wsm.report", "wsm.train", "wsm.cli", "wsm.demo")


def test_the_layers_below_the_commands_never_import_a_command_folder_even_inside_a_function():
    offenders = {name: sorted(m for m in imported if m.startswith(COMMANDS))
                 for name, imported in _graph(top_level_only=False).items() if name.startswith(LOWER)}
    offenders = {name: bad for name, bad in offenders.items() if bad}
    assert not offenders, f"upward imports: {offenders}"


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
