"""What the audit log records of a change, whatever changed: an asset, lineage, the tenant's
configuration, a session. One shape for every entry, and the rules every writer follows:

- an entry names the action, the actor, the request (``X-Request-ID``) and, for pipeline writes, the event;
- it is written in the transaction that makes the change, so there is no change without its entry;
- ``detail["changed"]`` lists what changed; a change that alters nothing is not audited (as an asset
  write that changes nothing makes no version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(slots=True, frozen=True)
class AuditEntry:
    action: str
    actor: str
    at: datetime
    request_id: str | None = None
    event_id: UUID | None = None
    asset_id: UUID | None = None
    version_before: int | None = None
    version_after: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


def changed_paths(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the members that differ (nested objects compared member by member)."""
    paths: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            paths += changed_paths(old, new, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def config_replaced(
    before: Mapping[str, Any], after: Mapping[str, Any], *, actor: str, request_id: str | None, at: datetime
) -> AuditEntry | None:
    """The entry for a tenant-configuration change (both as full documents), or None if it changes nothing.

    The configuration has no version history, so the entry keeps both documents whole."""
    changed = changed_paths(before, after)
    if not changed:
        return None
    return AuditEntry(
        "tenant.config_replaced",
        actor,
        at,
        request_id=request_id,
        detail={"changed": changed, "from": dict(before), "to": dict(after)},
    )


def logged_out(jti: str, *, actor: str, request_id: str | None, at: datetime) -> AuditEntry:
    """The entry for a token revoked by its holder (``POST /auth/logout``)."""
    return AuditEntry("auth.logout", actor, at, request_id=request_id, detail={"changed": ["session"], "jti": jti})
