"""``/notifications``: channels, subscriptions and deliveries; ``POST /metadata/notifications`` (stewards
and admins). Secrets are write-only: responses show secret config fields as ``null``, and a PUT that
leaves them out keeps them. The logic is in :mod:`lily.dispatch.manage`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from lily.api import pagination
from lily.api.deps import RequestId, RuntimeDep, Steward
from lily.api.errors import problem_responses
from lily.api.models import IsoDatetime
from lily.crypto import Keyring
from lily.dispatch import manage
from lily.domain.ids import is_uuid_text
from lily.domain.notifications import (
    ChannelIn,
    ChannelPut,
    DeliveryState,
    NotificationIn,
    SubscriptionFilter,
    SubscriptionIn,
)
from lily.plugins.protocols import Channel

router = APIRouter(prefix="/notifications", tags=["notifications"])
notify_router = APIRouter(prefix="/metadata/notifications", tags=["notifications"])


async def _keyring(request: Request) -> Keyring:
    keyring: Keyring = request.app.state.keyring
    return keyring


async def _channels(request: Request) -> Mapping[str, Channel]:
    channels: Mapping[str, Channel] = request.app.state.plugins.channels
    return channels


KeyringDep = Annotated[Keyring, Depends(_keyring)]
ChannelsDep = Annotated[Mapping[str, Channel], Depends(_channels)]
Limit = Annotated[int, Query(ge=1, le=500)]
EVENT_TYPE_FILTER = r"^(\*|[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$"


class ChannelOut(BaseModel):
    id: UUID
    name: str
    type: str
    config: dict[str, Any] = Field(description="Secret fields are always null (write-only)")
    enabled: bool
    disabled_reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    signing_secret: str | None = Field(
        description="The webhook signing secret (whsec_…): only in the answers of create and rotate-secret"
    )


class ChannelPage(BaseModel):
    items: list[ChannelOut]
    next_cursor: str | None


class SubscriptionOut(BaseModel):
    id: UUID
    channel_id: UUID
    event_types: list[str]
    filter: SubscriptionFilter
    created_by: str
    created_at: datetime
    updated_at: datetime


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]
    next_cursor: str | None


class Attempt(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: int
    status: int | None
    error: str | None
    response: str | None


class DeliveryOut(BaseModel):
    id: UUID
    channel_id: UUID
    message_id: str = Field(description="The webhook-id: the change event's id, the same on every attempt")
    event_type: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    last_response: str | None = Field(description="The receiver's last answer, truncated")
    next_attempt_at: datetime | None
    occurred_at: datetime
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    attempt_log: list[Attempt] = Field(description="The latest attempts, newest first")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class Queued(BaseModel):
    delivery_id: UUID
    state: DeliveryState


class ReplayDead(BaseModel):
    """Which dead-lettered deliveries to send again; every field given must match."""

    model_config = ConfigDict(extra="forbid")

    channel_id: UUID | None = None
    event_type: str | None = Field(
        default=None, max_length=100, pattern=r"^(\*|[a-z][a-z0-9_]*\.(\*|[a-z][a-z0-9_]*))$"
    )
    since: IsoDatetime | None = Field(default=None, description="Created at or after")
    limit: int = Field(default=500, ge=1, le=5000)


class Replayed(BaseModel):
    replayed: int


def _uuid_cursor(position: Any) -> bool:
    return isinstance(position, str) and is_uuid_text(position)


def _uuid_page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return pagination.page(items, limit, lambda r: str(r["id"]))


# -- channels ----------------------------------------------------------------------------------------


@router.post("/channels", status_code=201, response_model=ChannelOut, responses=problem_responses(409))
async def create_channel(
    body: ChannelIn,
    principal: Steward,
    runtime: RuntimeDep,
    keyring: KeyringDep,
    channels: ChannelsDep,
    request_id: RequestId,
) -> dict[str, Any]:
    """A channel. For a webhook, the answer holds its signing secret (``whsec_…``): the only time it is shown."""
    return await manage.create_channel(
        runtime.db, keyring, channels, principal.tenant_id, body, actor=principal.actor, request_id=request_id
    )


@router.get("/channels", response_model=ChannelPage, responses=problem_responses())
async def list_channels(
    principal: Steward,
    runtime: RuntimeDep,
    channels: ChannelsDep,
    cursor: pagination.Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    after = pagination.decode(cursor, valid=_uuid_cursor)
    rows = await manage.list_channels(runtime.db, channels, principal.tenant_id, after=after, limit=limit + 1)
    return _uuid_page(rows, limit)


@router.get("/channels/{channel_id}", response_model=ChannelOut, responses=problem_responses(404))
async def get_channel(
    channel_id: UUID, principal: Steward, runtime: RuntimeDep, channels: ChannelsDep
) -> dict[str, Any]:
    return await manage.get_channel(runtime.db, channels, principal.tenant_id, channel_id)


@router.put("/channels/{channel_id}", response_model=ChannelOut, responses=problem_responses(404, 409))
async def update_channel(
    channel_id: UUID,
    body: ChannelPut,
    principal: Steward,
    runtime: RuntimeDep,
    keyring: KeyringDep,
    channels: ChannelsDep,
    request_id: RequestId,
) -> dict[str, Any]:
    """Replace name, config and enabled. Secret fields left out or null keep their value; ``enabled: true``
    re-enables a channel the dispatcher disabled."""
    return await manage.update_channel(
        runtime.db,
        keyring,
        channels,
        principal.tenant_id,
        channel_id,
        body,
        actor=principal.actor,
        request_id=request_id,
    )


@router.delete("/channels/{channel_id}", status_code=204, response_class=Response, responses=problem_responses(404))
async def delete_channel(channel_id: UUID, principal: Steward, runtime: RuntimeDep, request_id: RequestId) -> Response:
    """Delete the channel with its subscriptions and deliveries."""
    await manage.delete_channel(
        runtime.db, principal.tenant_id, channel_id, actor=principal.actor, request_id=request_id
    )
    return Response(status_code=204)


@router.post("/channels/{channel_id}/rotate-secret", response_model=ChannelOut, responses=problem_responses(404, 409))
async def rotate_secret(
    channel_id: UUID,
    principal: Steward,
    runtime: RuntimeDep,
    keyring: KeyringDep,
    channels: ChannelsDep,
    request_id: RequestId,
) -> dict[str, Any]:
    """A new signing secret, shown once; the previous one keeps signing beside it for
    ``LILY_WEBHOOK_SECRET_OVERLAP_SECONDS``."""
    return await manage.rotate_secret(
        runtime.db,
        keyring,
        channels,
        principal.tenant_id,
        channel_id,
        overlap_seconds=runtime.settings.webhook_secret_overlap_seconds,
        actor=principal.actor,
        request_id=request_id,
    )


# -- subscriptions -----------------------------------------------------------------------------------


@router.post("/subscriptions", status_code=201, response_model=SubscriptionOut, responses=problem_responses())
async def create_subscription(
    body: SubscriptionIn, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Deliver the change events of these types (``asset.*``, ``*``) that pass the filter, from now on."""
    return await manage.create_subscription(
        runtime.db, principal.tenant_id, body, actor=principal.actor, request_id=request_id
    )


@router.get("/subscriptions", response_model=SubscriptionPage, responses=problem_responses())
async def list_subscriptions(
    principal: Steward,
    runtime: RuntimeDep,
    channel_id: UUID | None = None,
    cursor: pagination.Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    after = pagination.decode(cursor, valid=_uuid_cursor)
    rows = await manage.list_subscriptions(
        runtime.db, principal.tenant_id, channel_id=channel_id, after=after, limit=limit + 1
    )
    return _uuid_page(rows, limit)


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut, responses=problem_responses(404))
async def get_subscription(subscription_id: UUID, principal: Steward, runtime: RuntimeDep) -> dict[str, Any]:
    return await manage.get_subscription(runtime.db, principal.tenant_id, subscription_id)


@router.put("/subscriptions/{subscription_id}", response_model=SubscriptionOut, responses=problem_responses(404))
async def update_subscription(
    subscription_id: UUID, body: SubscriptionIn, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    return await manage.update_subscription(
        runtime.db, principal.tenant_id, subscription_id, body, actor=principal.actor, request_id=request_id
    )


@router.delete(
    "/subscriptions/{subscription_id}", status_code=204, response_class=Response, responses=problem_responses(404)
)
async def delete_subscription(
    subscription_id: UUID, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> Response:
    await manage.delete_subscription(
        runtime.db, principal.tenant_id, subscription_id, actor=principal.actor, request_id=request_id
    )
    return Response(status_code=204)


# -- deliveries --------------------------------------------------------------------------------------


def _delivery_cursor(position: Any) -> bool:
    return pagination.time_and_id(position)


@router.get("/deliveries", response_model=DeliveryPage, responses=problem_responses())
async def list_deliveries(
    principal: Steward,
    runtime: RuntimeDep,
    state: DeliveryState | None = None,
    channel_id: UUID | None = None,
    event_type: Annotated[str | None, Query(max_length=100, pattern=EVENT_TYPE_FILTER)] = None,
    since: Annotated[IsoDatetime | None, Query(description="Created at or after")] = None,
    cursor: pagination.Cursor = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Deliveries, newest first, with their latest attempts."""
    position = pagination.decode(cursor, valid=_delivery_cursor)
    after = (datetime.fromisoformat(position[0]), UUID(position[1])) if position else None
    rows = await manage.list_deliveries(
        runtime.db,
        principal.tenant_id,
        state=state,
        channel_id=channel_id,
        event_type=event_type,
        since=since,
        after=after,
        limit=limit + 1,
    )
    return pagination.page(rows, limit, lambda r: [r["created_at"].isoformat(), str(r["id"])])


@router.get("/deliveries/{delivery_id}", response_model=DeliveryOut, responses=problem_responses(404))
async def get_delivery(delivery_id: UUID, principal: Steward, runtime: RuntimeDep) -> dict[str, Any]:
    return await manage.get_delivery(runtime.db, principal.tenant_id, delivery_id)


@router.post("/deliveries/retry", response_model=Replayed, responses=problem_responses())
async def replay_dead(
    body: ReplayDead, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Send dead-lettered deliveries again (with a fresh retry schedule), up to ``limit`` per call."""
    count = await manage.retry_dead(
        runtime.db,
        principal.tenant_id,
        actor=principal.actor,
        request_id=request_id,
        channel_id=body.channel_id,
        event_type=body.event_type,
        since=body.since,
        limit=body.limit,
    )
    return {"replayed": count}


@router.post("/deliveries/{delivery_id}/retry", response_model=DeliveryOut, responses=problem_responses(404, 409))
async def retry_delivery(
    delivery_id: UUID, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Send it again now with a fresh retry schedule (409 while an attempt is in flight)."""
    return await manage.retry_delivery(
        runtime.db, principal.tenant_id, delivery_id, actor=principal.actor, request_id=request_id
    )


# -- POST /metadata/notifications --------------------------------------------------------------------


@notify_router.post("", status_code=202, response_model=Queued, responses=problem_responses())
async def send_notification(
    body: NotificationIn, principal: Steward, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Send one notification to one channel now; the answer names its delivery (see /notifications/deliveries)."""
    delivery_id = await manage.notify(
        runtime.db, principal.tenant_id, body, actor=principal.actor, request_id=request_id
    )
    return {"delivery_id": delivery_id, "state": "pending"}
