"""Roles, ordered by what they may do: each role may do everything the roles below it may."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    viewer = "viewer"
    editor = "editor"
    steward = "steward"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


_RANK = {Role.viewer: 0, Role.editor: 1, Role.steward: 2, Role.admin: 3}


def highest(roles: list[str]) -> Role | None:
    known = [Role(r) for r in roles if r in Role.__members__]
    return max(known, key=lambda r: r.rank) if known else None
