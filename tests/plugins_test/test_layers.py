"""The house rules of imports that make connectors plugins: read from the source, so a shortcut fails CI.

- ``lily.connectors`` never imports ``lily.api`` (routes get the API through ``WebContext``);
- the pipeline core and the store never import ``lily.connectors`` (handlers come from the registry),
  except ``store/openlineage.py``, which keeps the connector's SQL in the store layer;
- ``lily.plugins`` imports no layer that would make it a cycle (api, pipeline, store, connectors).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "lily"


def imports(path: Path) -> set[str]:
    """Modules imported at run time (imports under ``if TYPE_CHECKING:`` are only for the type checker)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def offenders(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in sorted((SRC / package).rglob("*.py")):
        relative = str(path.relative_to(SRC))
        if relative in allowed:
            continue
        bad = sorted(m for m in imports(path) if m.startswith(forbidden))
        out.extend(f"{relative}: {m}" for m in bad)
    return out


@pytest.mark.parametrize(
    ("package", "forbidden", "allowed"),
    [
        ("connectors", ("lily.api",), ()),
        ("pipeline", ("lily.connectors",), ()),
        ("store", ("lily.connectors",), ("store/openlineage.py",)),
        ("plugins", ("lily.api", "lily.pipeline", "lily.store", "lily.connectors"), ()),
    ],
)
def test_layer_imports(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    assert offenders(package, forbidden, allowed) == []


def test_the_check_sees_imports() -> None:
    # Guards the guard: the app factory does import the API and the registry; the protocols' imports
    # for the type checker do not count.
    assert {"lily.api.web", "lily.plugins"} <= imports(SRC / "api" / "app.py")
    assert "lily.pipeline.context" not in imports(SRC / "plugins" / "protocols.py")
    assert "pydantic" in imports(SRC / "plugins" / "protocols.py")
