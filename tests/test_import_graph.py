"""No import circle inside `app` or `training`, function-level imports included.

The layer contracts (`make lint-imports`) keep most circles out; this walks the whole import
graph, so a circle between modules the contracts do not order (or through an import inside
a function) fails too.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest


def _circles(package: str) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    graph = grimp.build_graph(package)
    modules = sorted(graph.modules)
    edges = {m: sorted(n for n in graph.find_modules_directly_imported_by(m)
                       if n.startswith(package)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


@pytest.mark.parametrize("package", ["app", "training"])
def test_no_import_circle(package: str) -> None:
    assert _circles(package) == []


def test_the_walk_finds_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: two modules that import each other (one inside a function)."""
    root = tmp_path / "circled"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from circled import b\n")
    (root / "b.py").write_text("def f():\n    from circled import a\n    return a\n")
    (root / "c.py").write_text("from circled import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _circles("circled") == [["circled.a", "circled.b"]]
