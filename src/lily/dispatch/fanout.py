"""Turning a tenant's change events into deliveries, once each, in commit order.

One transaction per tenant batch: lock the tenant's position (SKIP LOCKED: another dispatcher already
doing this tenant is left to it), read the feed after it (only events no later commit can precede, see
 migration 0009), insert one delivery per matching (event, channel) — a repeat is ignored —
and move the position to the last event read. A crash before the commit leaves the position where it
was and nothing inserted; after it, everything is there. No event is skipped and none fans out twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from lily.domain.notifications import matches
from lily.store import notifications as store
from lily.store.db import Database

BATCH = 1000


def payload(event: dict[str, Any]) -> dict[str, Any]:
    """A change event as it is delivered."""
    occurred: datetime = event["occurred_at"]
    return {
        "id": str(event["id"]),
        "type": event["type"],
        "tenant_id": event["tenant_id"],
        "asset_id": str(event["asset_id"]) if event["asset_id"] else None,
        "qualified_name": event["qualified_name"],
        "version": event["version"],
        "changes": event["changes"],
        "actor": event["actor"],
        "occurred_at": occurred.isoformat(),
        "origin": event["origin"],
    }


async def fan_out(db: Database, tenant_id: str, first_delay: float) -> int:
    """Turn up to :data:`BATCH` of the tenant's new change events into deliveries; how many events."""
    async with db.tenant(tenant_id) as conn:
        position = await store.lock_position(conn)
        if position is None:
            return 0
        events = await store.changes_after(conn, tenant_id, position, BATCH)
        if not events:
            return 0
        subscriptions = await store.subscriptions_with_channels(conn)
        assets: dict[UUID, dict[str, Any]] = {}
        if any(_needs_asset(s["filter"]) for s in subscriptions):
            assets = await store.asset_facets(conn, list({e["asset_id"] for e in events if e["asset_id"]}))
        rows: dict[tuple[UUID, str], tuple[Any, ...]] = {}
        for event in events:
            asset = assets.get(event["asset_id"]) if event["asset_id"] else None
            for sub in subscriptions:
                key = (sub["channel_id"], str(event["id"]))
                if key in rows or not matches(sub["event_types"], sub["filter"], event, asset):
                    continue
                rows[key] = (key[0], key[1], event["type"], payload(event), event["occurred_at"], first_delay)
        await store.insert_deliveries(conn, tenant_id, list(rows.values()))
        last = events[-1]
        await store.move_position(conn, (int(last["xid"]), int(last["seq"])))
        return len(events)


def _needs_asset(filter_: dict[str, Any]) -> bool:
    return bool(filter_.get("types") or filter_.get("tags") or filter_.get("classifications"))
