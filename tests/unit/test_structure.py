"""The package's shape: no import cycle inside logitlab/ and no module over 500 lines.

Imports are read from the source with ``ast``, wherever they are: at the top of a module, inside functions and
under ``if TYPE_CHECKING:`` (an import moved into a function still ties the two modules together; it only hides the
cycle from the interpreter). Each import becomes an edge between two modules of the package:

* ``import logitlab.a.b`` and ``from logitlab.a.b import f`` point at ``logitlab.a.b``;
* ``from logitlab.a import b`` points at ``logitlab.a.b`` when ``b`` is a submodule, else at ``logitlab.a``
  (a package stands for its ``__init__.py``);
* relative imports are resolved against the importing module's package.

The packages above an imported module are not edges of their own (Python initialises them first whoever
imports the module): a package's ``__init__`` that imports its submodules is not in a cycle with each of them.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import logitlab

MAX_LINES = 500


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package rooted at ``root`` (the folder holding ``__init__.py``), by dotted name."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def imports(name: str, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in its source."""
    path = known[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = name.split(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                assert node.level - 1 < len(base), f"{path}: relative import beyond the top-level package"
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != top:
                continue
            assert source in known, f"{path}: imports from {source}, which is not a module of {top}"
            # Each imported name: a submodule of `source` if there is one, else a name defined in `source`.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == top:
                assert target in known, f"{path}: imports {target}, which is not a module of {top}"
                found.add(target)
    found.discard(name)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports(name, known) for name in known}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # (a few dozen modules: recursion depth is no concern)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _shortest_cycle(start: str, graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """Breadth-first from ``start`` inside its component, back to ``start``: ``[start, ..., start]``."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is on no cycle of its component")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For each module on a cycle, one shortest cycle through it, each written ``[a, b, ..., a]`` from its
    smallest module, without repeats: every module of every tangle is named with the imports that close it."""
    out: list[list[str]] = []
    for comp in components(graph):
        for start in comp:
            c = _shortest_cycle(start, graph, set(comp))[:-1]
            k = c.index(min(c))
            c = c[k:] + c[:k]
            if c + [c[0]] not in out:
                out.append(c + [c[0]])
    return out


def oversize(root: Path, package: str, limit: int = MAX_LINES) -> dict[str, int]:
    """Modules with more than ``limit`` lines, and their line counts."""
    counts = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules(root, package).items()}
    return {name: n for name, n in sorted(counts.items()) if n > limit}


def _describe(graph: dict[str, set[str]]) -> str:
    lines = []
    for comp in components(graph):
        lines.append(f"{len(comp)} modules import each other: {', '.join(comp)}; cycles:")
        lines += ["    " + " -> ".join(c) for c in cycles(graph) if c[0] in comp]
    return "\n".join(lines)


# --- logitlab itself --------------------------------------------------------------------------------------------

ROOT = Path(logitlab.__file__).parent


def test_no_import_cycle_in_logitlab() -> None:
    graph = import_graph(ROOT, "logitlab")
    assert len(graph) > 30 and sum(len(v) for v in graph.values()) > 50, "the import graph was not read"
    assert not components(graph), "import cycles inside logitlab/:\n" + _describe(graph)


def test_no_module_over_500_lines() -> None:
    big = oversize(ROOT, "logitlab")
    assert not big, f"modules over {MAX_LINES} lines:\n" + "\n".join(f"{m}: {n} lines" for m, n in big.items())


# --- the checks themselves, on small package trees ----------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


_BASE = {
    "__init__.py": "from pkg.core import thing\nfrom pkg import sub\n",
    "core.py": "import os\nthing = 1\n",
    "util.py": "from .core import thing\nimport pkg.sub.leaf as leaf\n",
    "sub/__init__.py": "from . import leaf\n",
    "sub/leaf.py": "from ..core import thing\nfrom pkg.core import thing as t2\n",
    "sub/other.py": "from pkg.sub import leaf\nfrom pkg.sub import NAME\n",
}


def test_graph_resolves_every_kind_of_import(tmp_path: Path) -> None:
    graph = import_graph(_tree(tmp_path, _BASE), "pkg")
    assert graph == {
        "pkg": {"pkg.core", "pkg.sub"},
        "pkg.core": set(),
        "pkg.util": {"pkg.core", "pkg.sub.leaf"},
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": {"pkg.core"},
        "pkg.sub.other": {"pkg.sub.leaf", "pkg.sub"},  # a submodule, and a name defined in the package
    }
    assert components(graph) == [] and cycles(graph) == []


@pytest.mark.parametrize("where", ["top", "function", "type_checking"])
def test_cycle_found_wherever_the_import_is(tmp_path: Path, where: str) -> None:
    back = {"top": "from pkg.util import x\n",
            "function": "def f():\n    from ..util import x\n    return x\n",
            "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.util\n"}[where]
    files = {**_BASE, "sub/leaf.py": _BASE["sub/leaf.py"] + back}
    graph = import_graph(_tree(tmp_path, files), "pkg")
    assert components(graph) == [["pkg.sub.leaf", "pkg.util"]]
    assert cycles(graph) == [["pkg.sub.leaf", "pkg.util", "pkg.sub.leaf"]]


def test_cycle_through_a_package_init_and_a_three_module_cycle(tmp_path: Path) -> None:
    files = {**_BASE,
             "core.py": "import os\nthing = 1\n\ndef g():\n    from pkg import thing\n",  # via the root __init__
             "a.py": "from pkg.b import y\n", "b.py": "from . import c\n", "c.py": "import pkg.a\n"}
    graph = import_graph(_tree(tmp_path, files), "pkg")
    assert components(graph) == [["pkg", "pkg.core", "pkg.sub", "pkg.sub.leaf"], ["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles(graph) == [["pkg", "pkg.core", "pkg"], ["pkg", "pkg.sub", "pkg.sub.leaf", "pkg.core", "pkg"],
                             ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert "4 modules import each other: pkg, pkg.core, pkg.sub, pkg.sub.leaf" in _describe(graph)


def test_oversize_modules(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**_BASE, "big.py": "x = 1\n" * 501, "edge.py": "x = 1\n" * 500})
    assert oversize(root, "pkg") == {"pkg.big": 501}


def test_unresolvable_import_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**_BASE, "core.py": "from pkg.missing import x\n"})
    with pytest.raises(AssertionError, match="imports from pkg.missing"):
        import_graph(root, "pkg")
