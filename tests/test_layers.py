"""Layering (issue 11, point 3): `app/core` imports nothing above it, and the exceptions the
store and services raise live in a leaf module the error handlers import alone."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"


def _app_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "app" or name.startswith("app.")}


def test_core_imports_only_core() -> None:
    above = {path.name: sorted(m for m in _app_imports(path) if not m.startswith("app.core"))
             for path in sorted((APP / "core").glob("*.py"))}
    assert not {name: modules for name, modules in above.items() if modules}


def test_the_exceptions_module_is_a_leaf() -> None:
    assert _app_imports(APP / "core" / "exceptions.py") == set()
    assert _app_imports(APP / "core" / "errors.py") == {"app.core.exceptions"}
