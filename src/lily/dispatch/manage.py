"""Channels, subscriptions, notifications and deliveries as the API manages them.

Secrets: a channel's ``Config`` fields typed ``SecretStr`` and, for channels that sign (``signs = True``,
the webhook), its ``whsec_…`` signing secrets are sealed together into ``secrets_sealed``; responses
show the config with those fields ``null``. The signing secret is returned twice only: by the create
and by a rotation. Every change is audited (without any secret).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from lily.crypto import Keyring, merge_secrets, random_secret, redacted, split_secrets
from lily.domain.errors import Conflict, Invalid, NotFound
from lily.domain.notifications import NOTIFICATION_TYPE, ChannelIn, ChannelPut, NotificationIn, SubscriptionIn
from lily.plugins.config import config_model, plugin_config
from lily.plugins.protocols import Channel
from lily.store import audit
from lily.store import notifications as store
from lily.store.db import Conn, Database


async def _audit(conn: Conn, tenant_id: str, action: str, actor: str, request_id: str | None, **detail: Any) -> None:
    entry = {"action": action, "actor": actor, "request_id": request_id, "at": datetime.now(UTC), "detail": detail}
    await audit.write_audit(conn, tenant_id, [entry])


def _plugin(channels: Mapping[str, Channel], type_: str) -> Channel:
    plugin = channels.get(type_)
    if plugin is None:
        known = ", ".join(sorted(channels)) or "none"
        raise Invalid(f"unknown channel type {type_[:100]!r} (installed: {known})", field="type")
    return plugin


def channel_out(row: Mapping[str, Any], channels: Mapping[str, Channel], signing_secret: str | None = None) -> dict:
    plugin = channels.get(row["type"])
    config = redacted(config_model(plugin), row["config"]) if plugin is not None else dict(row["config"])
    return {
        "id": row["id"],
        "name": row["name"],
        "type": row["type"],
        "config": config,
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "signing_secret": signing_secret,
    }


def _stored(keyring: Keyring, sealed: str | None) -> dict[str, Any]:
    return keyring.open(sealed) if sealed else {}


def _seal(keyring: Keyring, hidden: Mapping[str, str], signing: list[str]) -> str | None:
    if not hidden and not signing:
        return None
    return keyring.seal({"config": dict(hidden), "signing": signing})


async def create_channel(
    db: Database,
    keyring: Keyring,
    channels: Mapping[str, Channel],
    tenant_id: str,
    body: ChannelIn,
    *,
    actor: str,
    request_id: str | None,
) -> dict[str, Any]:
    plugin = _plugin(channels, body.type)
    public, hidden = split_secrets(plugin_config(plugin, body.config))
    secret = random_secret() if getattr(plugin, "signs", False) else None
    sealed = _seal(keyring, hidden, [secret] if secret else [])
    async with db.tenant(tenant_id) as conn:
        row = await store.insert_channel(
            conn,
            tenant_id,
            name=body.name,
            type_=body.type,
            config=public,
            secrets_sealed=sealed,
            enabled=body.enabled,
            actor=actor,
        )
        await _audit(conn, tenant_id, "channel.created", actor, request_id, channel_id=str(row["id"]), type=body.type)
    return channel_out(row, channels, secret)


async def get_channel(db: Database, channels: Mapping[str, Channel], tenant_id: str, channel_id: UUID) -> dict:
    async with db.tenant(tenant_id) as conn:
        return channel_out(await store.get_channel(conn, channel_id), channels)


async def list_channels(
    db: Database, channels: Mapping[str, Channel], tenant_id: str, *, after: str | None, limit: int
) -> list[dict[str, Any]]:
    async with db.tenant(tenant_id) as conn:
        rows = await store.list_channels(conn, after=after, limit=limit)
    return [channel_out(r, channels) for r in rows]


async def update_channel(
    db: Database,
    keyring: Keyring,
    channels: Mapping[str, Channel],
    tenant_id: str,
    channel_id: UUID,
    body: ChannelPut,
    *,
    actor: str,
    request_id: str | None,
) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        row = await store.get_channel(conn, channel_id, lock=True)
        if body.type is not None and body.type != row["type"]:
            raise Invalid("a channel's type cannot change; create another channel", field="type")
        plugin = _plugin(channels, row["type"])
        stored = _stored(keyring, row["secrets_sealed"])
        raw = merge_secrets(config_model(plugin), body.config, stored.get("config") or {})
        public, hidden = split_secrets(plugin_config(plugin, raw))
        updated = await store.update_channel(
            conn,
            channel_id,
            name=body.name,
            config=public,
            secrets_sealed=_seal(keyring, hidden, list(stored.get("signing") or [])),
            enabled=body.enabled,
        )
        await _audit(
            conn, tenant_id, "channel.updated", actor, request_id, channel_id=str(channel_id), enabled=body.enabled
        )
    return channel_out(updated, channels)


async def rotate_secret(
    db: Database,
    keyring: Keyring,
    channels: Mapping[str, Channel],
    tenant_id: str,
    channel_id: UUID,
    *,
    overlap_seconds: int,
    actor: str,
    request_id: str | None,
) -> dict[str, Any]:
    """A new signing secret, returned once; the current one keeps signing beside it for the overlap."""
    async with db.tenant(tenant_id) as conn:
        row = await store.get_channel(conn, channel_id, lock=True)
        plugin = channels.get(row["type"])
        if not getattr(plugin, "signs", False):
            raise Conflict(f"channels of type {row['type']!r} have no signing secret")
        stored = _stored(keyring, row["secrets_sealed"])
        secret = random_secret()
        signing = [secret, *list(stored.get("signing") or [])[:1]]
        until = datetime.now(UTC) + timedelta(seconds=overlap_seconds)
        sealed = keyring.seal({"config": stored.get("config") or {}, "signing": signing})
        updated = await store.rotate_channel_secret(conn, channel_id, sealed, until)
        await _audit(conn, tenant_id, "channel.secret_rotated", actor, request_id, channel_id=str(channel_id))
    return channel_out(updated, channels, secret)


async def delete_channel(db: Database, tenant_id: str, channel_id: UUID, *, actor: str, request_id: str | None) -> None:
    async with db.tenant(tenant_id) as conn:
        await store.delete_channel(conn, channel_id)
        await _audit(conn, tenant_id, "channel.deleted", actor, request_id, channel_id=str(channel_id))


# -- subscriptions -----------------------------------------------------------------------------------


def subscription_out(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "channel_id", "event_types", "filter", "created_by", "created_at", "updated_at")}


def _filter(body: SubscriptionIn) -> dict[str, Any]:
    return body.filter.model_dump(exclude_none=True)


async def _channel_of_tenant(conn: Conn, channel_id: UUID) -> None:
    try:
        await store.get_channel(conn, channel_id)
    except NotFound:
        raise Invalid("no such channel", field="channel_id") from None


async def create_subscription(
    db: Database, tenant_id: str, body: SubscriptionIn, *, actor: str, request_id: str | None
) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        await _channel_of_tenant(conn, body.channel_id)
        row = await store.insert_subscription(
            conn,
            tenant_id,
            channel_id=body.channel_id,
            event_types=body.event_types,
            filter_=_filter(body),
            actor=actor,
        )
        await _audit(conn, tenant_id, "subscription.created", actor, request_id, subscription_id=str(row["id"]))
    return subscription_out(row)


async def get_subscription(db: Database, tenant_id: str, subscription_id: UUID) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        return subscription_out(await store.get_subscription(conn, subscription_id))


async def list_subscriptions(
    db: Database, tenant_id: str, *, channel_id: UUID | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    async with db.tenant(tenant_id) as conn:
        rows = await store.list_subscriptions(conn, channel_id=channel_id, after=after, limit=limit)
    return [subscription_out(r) for r in rows]


async def update_subscription(
    db: Database, tenant_id: str, subscription_id: UUID, body: SubscriptionIn, *, actor: str, request_id: str | None
) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        await store.get_subscription(conn, subscription_id)
        await _channel_of_tenant(conn, body.channel_id)
        row = await store.update_subscription(
            conn, subscription_id, channel_id=body.channel_id, event_types=body.event_types, filter_=_filter(body)
        )
        await _audit(conn, tenant_id, "subscription.updated", actor, request_id, subscription_id=str(subscription_id))
    return subscription_out(row)


async def delete_subscription(
    db: Database, tenant_id: str, subscription_id: UUID, *, actor: str, request_id: str | None
) -> None:
    async with db.tenant(tenant_id) as conn:
        await store.delete_subscription(conn, subscription_id)
        await _audit(conn, tenant_id, "subscription.deleted", actor, request_id, subscription_id=str(subscription_id))


# -- notifications and deliveries --------------------------------------------------------------------


async def notify(db: Database, tenant_id: str, body: NotificationIn, *, actor: str, request_id: str | None) -> UUID:
    """Queue one notification to one channel now; the delivery's id."""
    message_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    async with db.tenant(tenant_id) as conn:
        await _channel_of_tenant(conn, body.channel_id)
        qualified_name = None
        if body.asset_id is not None:
            facets = await store.asset_names(conn, [body.asset_id])
            if body.asset_id not in facets:
                raise Invalid("no such asset", field="asset_id")
            qualified_name = facets[body.asset_id]
        payload = {
            "id": message_id,
            "type": NOTIFICATION_TYPE,
            "tenant_id": tenant_id,
            "asset_id": str(body.asset_id) if body.asset_id else None,
            "qualified_name": qualified_name,
            "version": None,
            "changes": {"title": body.title, "message": body.message, "severity": body.severity},
            "actor": actor,
            "occurred_at": now.isoformat(),
            "origin": {"request_id": request_id},
        }
        await store.insert_deliveries(
            conn, tenant_id, [(body.channel_id, message_id, NOTIFICATION_TYPE, payload, now, 0.0)]
        )
        delivery_id = await store.delivery_id_of(conn, body.channel_id, message_id)
        await _audit(conn, tenant_id, "notification.sent", actor, request_id, delivery_id=str(delivery_id))
    return delivery_id


def delivery_out(row: Mapping[str, Any], attempts: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    state = row["state"]
    if state == "pending" and row["lease_owner"] is not None and row["next_attempt_at"] > now:
        state = "delivering"
    return {
        "id": row["id"],
        "channel_id": row["channel_id"],
        "message_id": row["message_id"],
        "event_type": row["event_type"],
        "state": state,
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "last_response": row["last_response"],
        "next_attempt_at": row["next_attempt_at"] if row["state"] == "pending" else None,
        "occurred_at": row["occurred_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "delivered_at": row["delivered_at"],
        "attempt_log": [
            {k: a[k] for k in ("attempt", "started_at", "duration_ms", "status", "error", "response")} for a in attempts
        ],
    }


async def list_deliveries(db: Database, tenant_id: str, **filters: Any) -> list[dict[str, Any]]:
    async with db.tenant(tenant_id) as conn:
        rows = await store.list_deliveries(conn, **filters)
        attempts = await store.attempts_of(conn, [r["id"] for r in rows])
        now = await store.now(conn)
    by_delivery: dict[UUID, list[dict[str, Any]]] = {}
    for a in attempts:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    return [delivery_out(r, by_delivery.get(r["id"], []), now) for r in rows]


async def get_delivery(db: Database, tenant_id: str, delivery_id: UUID) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        row = await store.get_delivery(conn, delivery_id)
        attempts = await store.attempts_of(conn, [delivery_id])
        now = await store.now(conn)
    return delivery_out(row, attempts, now)


async def retry_delivery(
    db: Database, tenant_id: str, delivery_id: UUID, *, actor: str, request_id: str | None
) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        row = await store.retry_delivery(conn, delivery_id)
        await _audit(conn, tenant_id, "delivery.retried", actor, request_id, delivery_id=str(delivery_id))
        now = await store.now(conn)
    return delivery_out(row, [], now)


async def retry_dead(db: Database, tenant_id: str, *, actor: str, request_id: str | None, **filters: Any) -> int:
    async with db.tenant(tenant_id) as conn:
        count = await store.retry_dead(conn, **filters)
        await _audit(conn, tenant_id, "delivery.replayed", actor, request_id, count=count)
    return count
