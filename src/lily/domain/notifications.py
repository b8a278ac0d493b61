"""Notifications: the API's shapes for channels, subscriptions and manual notifications, and the pure
rules of subscription matching and the retry schedule."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lily.domain.changes import FILTER_PATTERN, type_matches

NOTIFICATION_TYPE = "notification.sent"
NAME = r"^[^\x00-\x1f\x7f]{1,200}$"
Severity = Literal["info", "warning", "error", "critical"]
DeliveryState = Literal["pending", "delivering", "delivered", "dead"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChannelIn(_Strict):
    """POST /notifications/channels. Secret fields of ``config`` are write-only."""

    name: str = Field(pattern=NAME)
    type: str = Field(min_length=1, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class ChannelPut(_Strict):
    """PUT /notifications/channels/{id}: a GET document edited. A secret field left out (or null) keeps
    its value; ``enabled: true`` re-enables a channel the dispatcher disabled (a 410). Read-only fields
    of the GET document are accepted and ignored; ``type`` must not change."""

    name: str = Field(pattern=NAME)
    type: str | None = Field(default=None, min_length=1, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    id: UUID | None = None
    disabled_reason: str | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    signing_secret: str | None = None


class SubscriptionFilter(_Strict):
    """Every given criterion must hold (an empty list or null: no criterion). ``types``, ``tags`` and
    ``classifications`` match the asset as it is when the event is dispatched; a classification matches
    itself and its children (``PII`` matches ``PII.Email``)."""

    qualified_name_prefix: str | None = Field(default=None, min_length=1, max_length=1000)
    types: list[str] | None = Field(default=None, max_length=50)
    tags: list[str] | None = Field(default=None, max_length=50)
    classifications: list[str] | None = Field(default=None, max_length=50)

    def needs_asset(self) -> bool:
        return bool(self.types or self.tags or self.classifications)


class SubscriptionIn(_Strict):
    channel_id: UUID
    event_types: list[str] = Field(min_length=1, max_length=50)
    filter: SubscriptionFilter = Field(default_factory=SubscriptionFilter)
    # Read-only fields of a GET document, accepted on PUT and ignored.
    id: UUID | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("event_types")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not FILTER_PATTERN.match(pattern) or len(pattern) > 100:
                raise ValueError(f"{pattern[:100]!r} is not an event type, 'subject.*' or '*'")
        return value


class NotificationIn(_Strict):
    """POST /metadata/notifications: one message to one channel, now."""

    channel_id: UUID
    asset_id: UUID | None = None
    title: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=10_000)
    severity: Severity = "info"


def _under(value: str, wanted: list[str]) -> bool:
    return any(value == w or value.startswith(w + ".") for w in wanted)


def matches(
    event_types: list[str], filter_: Mapping[str, Any], event: Mapping[str, Any], asset: Mapping[str, Any] | None
) -> bool:
    """Whether a subscription takes a change event. ``asset``: the event's asset (type, tags,
    classifications), needed only when the filter names types, tags or classifications."""
    if not type_matches(str(event["type"]), event_types):
        return False
    prefix = filter_.get("qualified_name_prefix")
    if prefix and not str(event.get("qualified_name") or "").startswith(prefix):
        return False
    types, tags, classes = filter_.get("types"), filter_.get("tags"), filter_.get("classifications")
    if not (types or tags or classes):
        return True
    if asset is None:
        return False
    if types and asset.get("type") not in types:
        return False
    if tags and not set(tags) & set(asset.get("tags") or ()):
        return False
    return not classes or any(_under(c, classes) for c in asset.get("classifications") or ())


def parse_schedule(text: str) -> tuple[float, ...]:
    """``LILY_DELIVERY_RETRY_SCHEDULE``: seconds before each attempt, the first usually 0."""
    try:
        out = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"LILY_DELIVERY_RETRY_SCHEDULE must be comma-separated seconds, got {text!r}") from None
    if not out or any(s < 0 or s > 7 * 86_400 for s in out):
        raise ValueError("LILY_DELIVERY_RETRY_SCHEDULE needs at least one interval, each 0 to 604800 s")
    return out


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    """``seconds`` ±20 %, so receivers that failed together are not retried together."""
    if seconds <= 0:
        return 0.0
    return seconds * (rng or random).uniform(0.8, 1.2)


def next_step(
    schedule: tuple[float, ...], tries: int, *, ok: bool, permanent: bool, retry_after: float | None
) -> tuple[DeliveryState, float]:
    """(state, seconds to the next attempt) after the ``tries``-th attempt of this round ended so."""
    if ok:
        return "delivered", 0.0
    if permanent or tries >= len(schedule):
        return "dead", 0.0
    delay = jittered(schedule[tries])
    if retry_after is not None:
        delay = max(delay, min(retry_after, 86_400.0))
    return "pending", delay
