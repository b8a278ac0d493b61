"""Channels, subscriptions and deliveries in SQL (migration 0010).

API reads and writes run in the tenant's transaction (row-level security scopes them). The dispatcher
claims and records deliveries of every tenant as ``lily_pipeline``; it turns a tenant's change events
into deliveries in that tenant's own transaction, moving the tenant's position in the same commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from lily.domain.errors import Conflict, NotFound
from lily.store.db import Conn

# Sent (payload empty) by every statement that makes deliveries due now, at its commit: idle dispatchers
# LISTEN and claim at once instead of at their next poll (lily.dispatch.wakeup).
NOTIFY_CHANNEL = "lily_deliveries"
_NOTIFY = f"pg_notify('{NOTIFY_CHANNEL}', '')"

_CHANNEL = (
    "channel_id AS id, name, type, config, secrets_sealed, previous_secret_until, enabled, disabled_reason,"
    " created_by, created_at, updated_at"
)
_SUBSCRIPTION = "subscription_id AS id, channel_id, event_types, filter, created_by, created_at, updated_at"
_DELIVERY = (
    "delivery_id AS id, channel_id, message_id, event_type, state, attempts, round_start, next_attempt_at,"
    " lease_owner, last_status, last_error, last_response, occurred_at, created_at, updated_at, delivered_at"
)

# -- channels ----------------------------------------------------------------------------------------


async def insert_channel(
    conn: Conn,
    tenant_id: str,
    *,
    name: str,
    type_: str,
    config: dict[str, Any],
    secrets_sealed: str | None,
    enabled: bool,
    actor: str,
) -> dict[str, Any]:
    try:
        cur = await conn.execute(
            "INSERT INTO notification_channels (tenant_id, name, type, config, secrets_sealed, enabled, created_by)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_CHANNEL}",
            [tenant_id, name, type_, Jsonb(config), secrets_sealed, enabled, actor],
        )
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"a channel named {name[:200]!r} exists", field="name") from None
    row = await cur.fetchone()
    assert row is not None
    return row


async def get_channel(conn: Conn, channel_id: UUID, *, lock: bool = False) -> dict[str, Any]:
    cur = await conn.execute(
        f"SELECT {_CHANNEL} FROM notification_channels WHERE channel_id = %s" + (" FOR UPDATE" if lock else ""),
        [channel_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such channel")
    return row


async def list_channels(conn: Conn, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_CHANNEL} FROM notification_channels WHERE (%s::uuid IS NULL OR channel_id > %s::uuid)"
        " ORDER BY channel_id LIMIT %s",
        [after, after, limit],
    )
    return await cur.fetchall()


async def update_channel(
    conn: Conn,
    channel_id: UUID,
    *,
    name: str,
    config: dict[str, Any],
    secrets_sealed: str | None,
    enabled: bool,
) -> dict[str, Any]:
    try:
        cur = await conn.execute(
            "UPDATE notification_channels SET name = %s, config = %s, secrets_sealed = %s, enabled = %s,"
            " disabled_reason = CASE WHEN %s THEN NULL ELSE disabled_reason END, updated_at = now()"
            f" WHERE channel_id = %s RETURNING {_CHANNEL}",
            [name, Jsonb(config), secrets_sealed, enabled, enabled, channel_id],
        )
    except psycopg.errors.UniqueViolation:
        raise Conflict(f"a channel named {name[:200]!r} exists", field="name") from None
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such channel")
    return row


async def rotate_channel_secret(
    conn: Conn, channel_id: UUID, secrets_sealed: str, previous_until: datetime
) -> dict[str, Any]:
    cur = await conn.execute(
        "UPDATE notification_channels SET secrets_sealed = %s, previous_secret_until = %s, updated_at = now()"
        f" WHERE channel_id = %s RETURNING {_CHANNEL}",
        [secrets_sealed, previous_until, channel_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such channel")
    return row


async def delete_channel(conn: Conn, channel_id: UUID) -> None:
    cur = await conn.execute("DELETE FROM notification_channels WHERE channel_id = %s", [channel_id])
    if cur.rowcount == 0:
        raise NotFound("no such channel")


# -- subscriptions -----------------------------------------------------------------------------------


async def _start_position(conn: Conn, tenant_id: str) -> None:
    """A tenant's first subscription starts its dispatch at the feed's end: events from now on.

    The position (xmin, 0) lies just before every transaction still running, so an event of one that
    commits later is still ahead of it, and every event behind it had committed before this one.
    """
    await conn.execute(
        "INSERT INTO dispatch_positions (tenant_id, xid, seq)"
        " VALUES (%s, pg_snapshot_xmin(pg_current_snapshot()), 0) ON CONFLICT (tenant_id) DO NOTHING",
        [tenant_id],
    )


async def insert_subscription(
    conn: Conn, tenant_id: str, *, channel_id: UUID, event_types: list[str], filter_: dict[str, Any], actor: str
) -> dict[str, Any]:
    await get_channel(conn, channel_id)
    await _start_position(conn, tenant_id)
    cur = await conn.execute(
        "INSERT INTO notification_subscriptions (tenant_id, channel_id, event_types, filter, created_by)"
        f" VALUES (%s, %s, %s, %s, %s) RETURNING {_SUBSCRIPTION}",
        [tenant_id, channel_id, event_types, Jsonb(filter_), actor],
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def get_subscription(conn: Conn, subscription_id: UUID) -> dict[str, Any]:
    cur = await conn.execute(
        f"SELECT {_SUBSCRIPTION} FROM notification_subscriptions WHERE subscription_id = %s", [subscription_id]
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such subscription")
    return row


async def list_subscriptions(
    conn: Conn, *, channel_id: UUID | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {_SUBSCRIPTION} FROM notification_subscriptions"
        " WHERE (%s::uuid IS NULL OR channel_id = %s::uuid) AND (%s::uuid IS NULL OR subscription_id > %s::uuid)"
        " ORDER BY subscription_id LIMIT %s",
        [channel_id, channel_id, after, after, limit],
    )
    return await cur.fetchall()


async def update_subscription(
    conn: Conn, subscription_id: UUID, *, channel_id: UUID, event_types: list[str], filter_: dict[str, Any]
) -> dict[str, Any]:
    await get_channel(conn, channel_id)
    cur = await conn.execute(
        "UPDATE notification_subscriptions SET channel_id = %s, event_types = %s, filter = %s, updated_at = now()"
        f" WHERE subscription_id = %s RETURNING {_SUBSCRIPTION}",
        [channel_id, event_types, Jsonb(filter_), subscription_id],
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such subscription")
    return row


async def delete_subscription(conn: Conn, subscription_id: UUID) -> None:
    cur = await conn.execute("DELETE FROM notification_subscriptions WHERE subscription_id = %s", [subscription_id])
    if cur.rowcount == 0:
        raise NotFound("no such subscription")


async def subscriptions_with_channels(conn: Conn) -> list[dict[str, Any]]:
    """The tenant's subscriptions, for matching change events."""
    cur = await conn.execute("SELECT channel_id, event_types, filter FROM notification_subscriptions")
    return await cur.fetchall()


# -- deliveries: API ---------------------------------------------------------------------------------


async def insert_deliveries(conn: Conn, tenant_id: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert (channel_id, message_id, event_type, payload, occurred_at, first_delay_seconds) rows; one per
    (channel, message) ever: a repeat is ignored, which makes turning events into deliveries idempotent."""
    if not rows:
        return 0
    cols = list(zip(*rows, strict=True))
    cur = await conn.execute(
        "WITH ins AS ("
        " INSERT INTO deliveries (tenant_id, channel_id, message_id, event_type, payload, occurred_at,"
        " next_attempt_at)"
        " SELECT %s, c, m, t, p, o, now() + make_interval(secs => s)"
        " FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::jsonb[], %s::timestamptz[], %s::float8[])"
        " AS v(c, m, t, p, o, s)"
        " ON CONFLICT (tenant_id, channel_id, message_id) DO NOTHING RETURNING 1)"
        f" SELECT n, CASE WHEN n > 0 THEN {_NOTIFY} END FROM (SELECT count(*) AS n FROM ins) c",
        [
            tenant_id,
            list(cols[0]),
            list(cols[1]),
            list(cols[2]),
            [Jsonb(p) for p in cols[3]],
            list(cols[4]),
            list(cols[5]),
        ],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def delivery_id_of(conn: Conn, channel_id: UUID, message_id: str) -> UUID:
    cur = await conn.execute(
        "SELECT delivery_id FROM deliveries WHERE channel_id = %s AND message_id = %s", [channel_id, message_id]
    )
    row = await cur.fetchone()
    assert row is not None
    delivery_id: UUID = row["delivery_id"]
    return delivery_id


def _delivery_filter(
    *, state: str | None, channel_id: UUID | None, event_type: str | None, since: datetime | None
) -> tuple[str, list[Any]]:
    """(WHERE conditions, parameters). ``state`` ``delivering`` means pending with a live lease."""
    conditions = ["TRUE"]
    params: list[Any] = []
    if state == "delivering":
        conditions.append("state = 'pending' AND lease_owner IS NOT NULL AND next_attempt_at > now()")
    elif state == "pending":
        conditions.append("state = 'pending' AND (lease_owner IS NULL OR next_attempt_at <= now())")
    elif state is not None:
        conditions.append("state = %s")
        params.append(state)
    if channel_id is not None:
        conditions.append("channel_id = %s")
        params.append(channel_id)
    if event_type is not None:
        if event_type.endswith(".*"):
            conditions.append("event_type LIKE %s")
            params.append(event_type[:-1].replace("_", r"\_") + "%")
        elif event_type != "*":
            conditions.append("event_type = %s")
            params.append(event_type)
    if since is not None:
        conditions.append("created_at >= %s")
        params.append(since)
    return " AND ".join(conditions), params


async def list_deliveries(
    conn: Conn,
    *,
    state: str | None,
    channel_id: UUID | None,
    event_type: str | None,
    since: datetime | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    where, params = _delivery_filter(state=state, channel_id=channel_id, event_type=event_type, since=since)
    if after is not None:
        where += " AND (created_at, delivery_id) < (%s, %s)"
        params.extend(after)
    cur = await conn.execute(
        f"SELECT {_DELIVERY} FROM deliveries WHERE {where} ORDER BY created_at DESC, delivery_id DESC LIMIT %s",
        [*params, limit],
    )
    return await cur.fetchall()


async def get_delivery(conn: Conn, delivery_id: UUID) -> dict[str, Any]:
    cur = await conn.execute(f"SELECT {_DELIVERY} FROM deliveries WHERE delivery_id = %s", [delivery_id])
    row = await cur.fetchone()
    if row is None:
        raise NotFound("no such delivery")
    return row


async def attempts_of(conn: Conn, delivery_ids: Sequence[UUID], per_delivery: int = 10) -> list[dict[str, Any]]:
    """The latest attempts of each delivery, newest first."""
    cur = await conn.execute(
        "SELECT a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.status, a.error, a.response"
        " FROM unnest(%s::uuid[]) AS d(id) CROSS JOIN LATERAL ("
        "  SELECT * FROM delivery_attempts WHERE delivery_id = d.id ORDER BY attempt DESC LIMIT %s) a",
        [list(delivery_ids), per_delivery],
    )
    return await cur.fetchall()


async def retry_delivery(conn: Conn, delivery_id: UUID) -> dict[str, Any]:
    """Send it again now, with a fresh retry schedule. A delivery being sent (or delivered) is left alone
    unless delivered: a delivered one is sent again on request."""
    cur = await conn.execute(
        "UPDATE deliveries SET state = 'pending', round_start = attempts, next_attempt_at = now(),"
        " lease_owner = NULL, updated_at = now()"
        " WHERE delivery_id = %s AND NOT (state = 'pending' AND lease_owner IS NOT NULL AND next_attempt_at > now())"
        f" RETURNING {_DELIVERY}, {_NOTIFY} AS notified",
        [delivery_id],
    )
    row = await cur.fetchone()
    if row is None:
        await get_delivery(conn, delivery_id)  # 404 when missing
        raise Conflict("the delivery is being sent right now; retry once the attempt has ended")
    del row["notified"]
    return row


async def retry_dead(
    conn: Conn, *, channel_id: UUID | None, event_type: str | None, since: datetime | None, limit: int
) -> int:
    """Replay up to ``limit`` dead-lettered deliveries matching the filter; how many."""
    where, params = _delivery_filter(state="dead", channel_id=channel_id, event_type=event_type, since=since)
    cur = await conn.execute(
        "WITH replayed AS ("
        " UPDATE deliveries SET state = 'pending', round_start = attempts, next_attempt_at = now(),"
        " lease_owner = NULL, updated_at = now()"
        f" WHERE delivery_id IN (SELECT delivery_id FROM deliveries WHERE {where} LIMIT %s) RETURNING 1)"
        f" SELECT n, CASE WHEN n > 0 THEN {_NOTIFY} END FROM (SELECT count(*) AS n FROM replayed) c",
        [*params, limit],
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


# -- the dispatcher ----------------------------------------------------------------------------------


async def tenants_with_changes(conn: Conn, limit: int = 100) -> list[str]:
    """Tenants (with subscriptions) whose feed has events past their position that can be served now:
    below ``lily_change_horizon()``, the snapshot's xmin counting only this database's transactions (a
    long transaction in another database on the server must not hold deliveries back; migration 0009)."""
    cur = await conn.execute(
        "SELECT p.tenant_id FROM (SELECT lily_change_horizon()::text::xid8 AS horizon) h, dispatch_positions p"
        " WHERE EXISTS (SELECT 1 FROM change_events c WHERE c.tenant_id = p.tenant_id"
        " AND (c.xid, c.seq) > (p.xid, p.seq) AND c.xid < h.horizon) LIMIT %s",
        [limit],
    )
    return [r["tenant_id"] for r in await cur.fetchall()]


async def lock_position(conn: Conn) -> tuple[int, int] | None:
    """The tenant's position, locked for this transaction; None when another dispatcher holds it."""
    cur = await conn.execute(
        "SELECT xid::text::bigint AS xid, seq FROM dispatch_positions FOR UPDATE SKIP LOCKED",
    )
    row = await cur.fetchone()
    return None if row is None else (int(row["xid"]), int(row["seq"]))


async def changes_after(conn: Conn, tenant_id: str, position: tuple[int, int], limit: int) -> list[dict[str, Any]]:
    """The tenant's change events after ``position`` in commit order, only those no later commit can
    precede (below ``lily_change_horizon()``: the ordering contract of migration 0009)."""
    cur = await conn.execute(
        "SELECT c.xid::text::bigint AS xid, c.seq, c.id, c.type, c.tenant_id, c.asset_id, c.qualified_name,"
        " c.version, c.changes, c.actor, c.occurred_at, c.origin"
        " FROM (SELECT lily_change_horizon()::text::xid8 AS horizon) h, change_events c"
        " WHERE c.tenant_id = %s AND (c.xid, c.seq) > (%s::text::xid8, %s) AND c.xid < h.horizon"
        " ORDER BY c.xid, c.seq LIMIT %s",
        [tenant_id, str(position[0]), position[1], limit],
    )
    return await cur.fetchall()


async def move_position(conn: Conn, position: tuple[int, int]) -> None:
    await conn.execute(
        "UPDATE dispatch_positions SET xid = %s::text::xid8, seq = %s, updated_at = now()",
        [str(position[0]), position[1]],
    )


async def asset_names(conn: Conn, asset_ids: Sequence[UUID]) -> dict[UUID, str]:
    cur = await conn.execute("SELECT asset_id, qualified_name FROM assets WHERE asset_id = ANY(%s)", [list(asset_ids)])
    return {r["asset_id"]: r["qualified_name"] for r in await cur.fetchall()}


async def now(conn: Conn) -> datetime:
    """The database's clock (leases are in its time)."""
    cur = await conn.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    value: datetime = row["now"]
    return value


async def asset_facets(conn: Conn, asset_ids: Sequence[UUID]) -> dict[UUID, dict[str, Any]]:
    """Type, tags and classifications of assets, for subscription filters."""
    if not asset_ids:
        return {}
    cur = await conn.execute(
        "SELECT asset_id, type, tags, classifications FROM assets WHERE asset_id = ANY(%s)", [list(asset_ids)]
    )
    return {r["asset_id"]: r for r in await cur.fetchall()}


async def claim(
    conn: Conn,
    *,
    owner: str,
    limit: int,
    per_channel: int,
    in_flight: Mapping[UUID, int],
    busy_tenants: Sequence[str],
    lease_seconds: float,
) -> list[dict[str, Any]]:
    """Take up to ``limit`` due deliveries of enabled channels, leased to ``owner``: until the lease ends
    no other dispatcher sees them, and if ``owner`` dies they come due again when it does. Of each channel
    at most ``per_channel`` less what ``owner`` already has ``in_flight`` of it, so a channel never has
    more than ``per_channel`` attempts of one dispatcher at once. Channels are visited in random order,
    so a channel with a long backlog never starves the others."""
    cur = await conn.execute(
        "WITH picked AS ("
        " SELECT x.tenant_id, x.delivery_id FROM ("
        "  SELECT ch.tenant_id, ch.channel_id, %s - coalesce(f.n, 0) AS room FROM notification_channels ch"
        "  LEFT JOIN unnest(%s::uuid[], %s::int[]) AS f(channel_id, n) ON f.channel_id = ch.channel_id"
        "  WHERE ch.enabled AND coalesce(f.n, 0) < %s AND NOT (ch.tenant_id = ANY(%s::text[]))"
        "  ORDER BY random()) ch"
        " CROSS JOIN LATERAL ("
        "  SELECT d.tenant_id, d.delivery_id FROM deliveries d"
        "  WHERE d.tenant_id = ch.tenant_id AND d.channel_id = ch.channel_id AND d.state = 'pending'"
        "  AND d.next_attempt_at <= now() ORDER BY d.next_attempt_at LIMIT ch.room FOR UPDATE SKIP LOCKED) x"
        " LIMIT %s)"
        " UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => %s), lease_owner = %s,"
        " attempts = d.attempts + 1, updated_at = now()"
        " FROM picked p, notification_channels ch"
        " WHERE d.tenant_id = p.tenant_id AND d.delivery_id = p.delivery_id"
        " AND ch.tenant_id = d.tenant_id AND ch.channel_id = d.channel_id"
        " RETURNING d.tenant_id, d.delivery_id, d.channel_id, d.message_id, d.event_type, d.payload, d.attempts,"
        " d.round_start, d.occurred_at, ch.type AS channel_type, ch.config AS channel_config,"
        " ch.secrets_sealed, ch.previous_secret_until > now() AS previous_secret_signs",
        [
            per_channel,
            list(in_flight),
            list(in_flight.values()),
            per_channel,
            list(busy_tenants),
            limit,
            lease_seconds,
            owner,
        ],
    )
    return await cur.fetchall()


async def record(conn: Conn, owner: str, outcomes: Sequence[dict[str, Any]]) -> None:
    """Record attempts' outcomes in one round trip each for deliveries and attempts. An outcome whose lease
    another dispatcher has taken over since (this one was too slow) changes nothing but its attempt row."""
    if not outcomes:
        return

    def col(name: str) -> list[Any]:
        return [o[name] for o in outcomes]

    await conn.execute(
        "UPDATE deliveries d SET state = v.state,"
        " next_attempt_at = CASE WHEN v.state = 'pending' THEN now() + make_interval(secs => v.delay)"
        "  ELSE d.next_attempt_at END,"
        " lease_owner = NULL, last_status = v.status, last_error = v.error, last_response = v.response,"
        " delivered_at = CASE WHEN v.state = 'delivered' THEN now() ELSE d.delivered_at END, updated_at = now()"
        " FROM unnest(%s::text[], %s::uuid[], %s::int[], %s::text[], %s::float8[], %s::int[], %s::text[],"
        "  %s::text[]) AS v(tenant_id, delivery_id, attempt, state, delay, status, error, response)"
        " WHERE d.tenant_id = v.tenant_id AND d.delivery_id = v.delivery_id AND d.lease_owner = %s"
        " AND d.attempts = v.attempt",
        [
            col("tenant_id"),
            col("delivery_id"),
            col("attempt"),
            col("state"),
            col("delay"),
            col("status"),
            col("error"),
            col("response"),
            owner,
        ],
    )
    await conn.execute(
        "INSERT INTO delivery_attempts (tenant_id, delivery_id, attempt, started_at, duration_ms, status, error,"
        " response, dispatcher)"
        " SELECT * FROM unnest(%s::text[], %s::uuid[], %s::int[], %s::timestamptz[], %s::int[], %s::int[],"
        "  %s::text[], %s::text[], %s::text[])"
        " ON CONFLICT DO NOTHING",
        [
            col("tenant_id"),
            col("delivery_id"),
            col("attempt"),
            col("started_at"),
            col("duration_ms"),
            col("status"),
            col("error"),
            col("response"),
            [owner] * len(outcomes),
        ],
    )


async def release(conn: Conn, owner: str, rows: Sequence[dict[str, Any]]) -> None:
    """Hand claimed deliveries back unsent: due now, unleased, their claim's attempt not counted. Only
    while ``owner`` still holds the claim (same lease owner, same attempt)."""
    if not rows:
        return
    await conn.execute(
        "UPDATE deliveries d SET lease_owner = NULL, next_attempt_at = now(), attempts = d.attempts - 1,"
        " updated_at = now()"
        " FROM unnest(%s::text[], %s::uuid[], %s::int[]) AS v(tenant_id, delivery_id, attempt)"
        " WHERE d.tenant_id = v.tenant_id AND d.delivery_id = v.delivery_id AND d.lease_owner = %s"
        f" AND d.attempts = v.attempt AND d.state = 'pending' RETURNING {_NOTIFY}",
        [[r["tenant_id"] for r in rows], [r["delivery_id"] for r in rows], [r["attempts"] for r in rows], owner],
    )


async def disable_channel(conn: Conn, tenant_id: str, channel_id: UUID, reason: str) -> None:
    await conn.execute(
        "UPDATE notification_channels SET enabled = false, disabled_reason = %s, updated_at = now()"
        " WHERE tenant_id = %s AND channel_id = %s",
        [reason, tenant_id, channel_id],
    )


async def prune_deliveries(conn: Conn, older_than_seconds: float, limit: int) -> int:
    """Delete up to ``limit`` finished (delivered or dead) deliveries last changed that long ago, with their
    attempts."""
    cur = await conn.execute(
        "DELETE FROM deliveries WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM deliveries WHERE state IN ('delivered', 'dead')"
        " AND updated_at < now() - make_interval(secs => %s) LIMIT %s))",
        [older_than_seconds, limit],
    )
    return cur.rowcount
