"""What ``lily plugins`` prints: the loaded plugins by kind, as a table or as JSON lines."""

from __future__ import annotations

import dataclasses

import orjson

from lily.plugins.protocols import KIND_GROUPS
from lily.plugins.registry import Plugins


def render_table(plugins: Plugins) -> str:
    lines: list[str] = []
    for kind, group in KIND_GROUPS.items():
        rows = sorted((p for p in plugins.listing if p.kind == kind), key=lambda p: p.name)
        lines.append(f"{kind} ({group}): {len(rows) or 'none'}")
        width = max((len(p.name) for p in rows), default=0)
        for p in rows:
            target = p.entry_point.split(" = ", 1)[-1]
            via = f"  (from connector {p.provided_by.split(':', 1)[1]})" if p.provided_by else ""
            lines.append(f"  {p.name:<{width}}  {target}  {p.distribution} {p.version}{via}")
    return "\n".join(lines)


def render_json(plugins: Plugins) -> str:
    return "\n".join(orjson.dumps(dataclasses.asdict(p)).decode() for p in plugins.listing)
