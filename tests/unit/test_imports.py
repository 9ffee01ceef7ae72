"""No import circles in ollamactl (issue 16, part 2): module- and function-level imports alike.

A circle works only as long as every import in it stays lazy or in the right order; it also says
that code sits in the wrong module.  The graph is read from the source with ``ast``, so an import
inside a function (or under ``if TYPE_CHECKING``) counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ollamactl"


def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (``pkg.__init__`` is ``pkg``)."""
    root = package.name
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join((root, *parts)).removesuffix(".__init__")
        out[name] = path
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, relative imports resolved against ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of the package it imports anywhere in its source.

    ``import p.a`` and ``from p import a`` (a submodule) are edges to ``p.a`` only: Python has
    made ``p`` ready before either runs, even halfway through ``p/__init__``.  ``from p import x``
    for a name ``x`` that is no submodule is an edge to ``p`` itself, whose ``__init__`` must have
    run to define ``x``.
    """
    mods = _modules(package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, mod, is_package)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            for target in targets:
                while target and target not in mods:  # import p.a.b where p.a.b is a name in p.a
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_ollamactl_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "ollamactl.cli" in graph and graph["ollamactl.cli"], "the walk found no imports: it is broken"
    assert circles(graph) == []


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The checker itself: function-level, relative and package-attribute imports all make edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "def f():\n    from pkg import a\n",
        "a.py": "from . import b\n",
        "b.py": "def g():\n    import pkg.sub.c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from ..d import thing\n",
        "d.py": "import json\nthing = 1\n",
        "e.py": "from pkg import version\n",
        "f.py": "from pkg.sub import c\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.d"},
        "pkg.d": set(),
        "pkg.e": {"pkg"},
        "pkg.f": {"pkg.sub.c"},
    }
    assert circles(graph) == []
    (pkg / "d.py").write_text("thing = 1\ndef h():\n    from pkg.a import x\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.d", "pkg.sub.c"]]
    (pkg / "d.py").write_text("from pkg import e\n")  # d -> e -> pkg -> a -> b -> c -> d
    assert circles(import_graph(pkg)) == [["pkg", "pkg.a", "pkg.b", "pkg.d", "pkg.e", "pkg.sub.c"]]
