"""The package's layout holds: small modules, imports that never form a
cycle, no library module above `nt_frozen.testing`, private JAX names only in
`nt_frozen._compat`, and a README that lists every module."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nt_frozen"
MAX_LINES = 400


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: pathlib.Path) -> set[str]:
    """The `nt_frozen` modules `path` imports, anywhere in it (an import inside
    a function still runs, so it still counts towards a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from a import b` imports module `a.b` when there is one.
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found


# `from nt_frozen import stax` in the package root imports the submodule.
GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for succ in sorted(graph[node]):
            if state.get(succ) == 1:
                return path[path.index(succ) :] + [succ]
            if succ not in state and (cycle := visit(succ)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_then():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    # A package's own __init__ re-exports its submodules: edges from a
    # submodule to its package's __init__ would be cycles by construction,
    # so the graph has none (no submodule imports its package root).
    for name, imports in GRAPH.items():
        parents = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        assert not imports & parents, f"{name} imports its package {imports & parents}"
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_no_library_module_imports_testing():
    for name, imports in GRAPH.items():
        if not name.startswith("nt_frozen.testing"):
            testing = {m for m in imports if m.startswith("nt_frozen.testing")}
            assert not testing, f"{name} imports {testing}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it by concept"


def test_private_jax_names_only_in_compat():
    pattern = re.compile(r"\bjax\._src\b")
    for name, path in MODULES.items():
        if not name.startswith("nt_frozen._compat"):
            assert not pattern.search(path.read_text()), name


def test_readme_layout_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(nt_frozen/[\w/]+\.py)`", layout))
    present = {str(p.relative_to(ROOT)) for p in MODULES.values()}
    assert listed == present, (
        f"README's layout lacks {sorted(present - listed)}, "
        f"names missing {sorted(listed - present)}"
    )
