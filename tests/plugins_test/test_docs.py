"""The README's Plugins section documents every kind, its entry-point group and its protocol."""

from __future__ import annotations

from pathlib import Path

from lily.plugins.protocols import KIND_GROUPS, PROTOCOLS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_kind_and_group_is_documented_in_the_readme() -> None:
    section = README.read_text().split("## Plugins", 1)[1]
    for kind, group in KIND_GROUPS.items():
        assert f"| {kind} | `{group}` | `{PROTOCOLS[kind].__name__}`" in section, kind
