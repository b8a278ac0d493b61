"""The connector registry's rules: the request models, schedules, what a crawl changed, the fail-safe.

Pure: no I/O. The run machinery (:mod:`lily.scheduler.connectors`) and the registry API use these.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from lily.domain.storable import storable

# The event that makes the assets of a deleted connector instance passive (see lily.pipeline.apply.detached).
SOURCE_DETACHED = "asset.source_detached"

MIN_INTERVAL_SECONDS = 10
MAX_INTERVAL_SECONDS = 366 * 86_400
MAX_CONFIG_BYTES = 64 * 1024
RUN_ERROR_CHARS = 2000
MAX_RUN_ERRORS = 100

# Stale removal's fail-safe (DataHub #7934: a partial crawl must not wipe a catalogue): a run that
# would remove more than this share of the connector's objects AND more than this many removes none.
DEFAULT_MAX_REMOVAL_SHARE = 0.2
DEFAULT_MAX_REMOVAL_MIN = 10

ConnectorName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
ConnectorType = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
]


def source_of(connector_id: str) -> str:
    """The ``source`` every event of a connector instance carries (an active source: it reports changes)."""
    return f"connector:{connector_id}"


class Every(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    every_seconds: int = Field(ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS)


Schedule = Annotated[str, StringConstraints(min_length=1, max_length=200)] | Every | None


def check_cron(text: str) -> str:
    text = text.strip()
    if not croniter.is_valid(text):
        raise ValueError(f"{text!r} is not a cron expression (five fields, UTC)")
    return text


def stored_schedule(schedule: str | Every | None) -> dict[str, Any] | None:
    if schedule is None:
        return None
    if isinstance(schedule, Every):
        return {"every_seconds": schedule.every_seconds}
    return {"cron": schedule}


def shown_schedule(stored: Mapping[str, Any] | None) -> str | dict[str, int] | None:
    if not stored:
        return None
    if "cron" in stored:
        return str(stored["cron"])
    return {"every_seconds": int(stored["every_seconds"])}


def next_due(stored: Mapping[str, Any] | None, after: datetime) -> datetime | None:
    """When a connector with this schedule next runs after ``after`` (None: only on request)."""
    if not stored:
        return None
    if "cron" in stored:
        due: datetime = croniter(str(stored["cron"]), after).get_next(datetime)
        return due.astimezone(UTC)
    return after + timedelta(seconds=int(stored["every_seconds"]))


def retry_delay(failures: int, base_seconds: float, max_seconds: float) -> float:
    """Backoff before retrying a connector after ``failures`` consecutive failed runs (doubling, capped)."""
    return float(min(max_seconds, base_seconds * 2 ** max(0, failures - 1)))


class ConnectorIn(BaseModel):
    """A connector instance as ``POST`` and ``PUT`` take it. ``config`` is the connector type's own
    ``Config``; secret fields in it are write-only (a ``PUT`` that leaves one out keeps it)."""

    # Strict: ``"enabled": 0`` or ``"every_seconds": "60"`` are refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)

    name: ConnectorName
    type: ConnectorType
    config: dict[str, Any] = Field(default_factory=dict)
    schedule: Schedule = Field(
        default=None,
        description='A cron expression ("*/30 * * * *", UTC), {"every_seconds": N} (N ≥ 10), '
        "or null: runs on request only",
    )
    enabled: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | Every | None) -> str | Every | None:
        return check_cron(value) if isinstance(value, str) else value

    @field_validator("config")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        storable(value)  # no NUL, no lone surrogate, bounded depth: what jsonb can hold
        try:
            size = len(orjson.dumps(value))
        except TypeError:
            raise ValueError("config holds a number out of the 64-bit range") from None
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"a connector's config may hold at most {MAX_CONFIG_BYTES} bytes")
        return value


RunState = Literal["queued", "running", "succeeded", "failed"]


# -- what a crawl changed ---------------------------------------------------------------------------


def fingerprint(asset: Mapping[str, Any], lineage: Mapping[str, Any] | None) -> str:
    """A digest of what a crawl writes for one object: equal digests, nothing to append."""
    body = orjson.dumps([asset, lineage], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


@dataclass(slots=True)
class CrawlPlan:
    """What to do after a complete crawl: the names to write (new or changed), the stale names to
    remove (empty when the fail-safe held), and the counts the run reports."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    held: str | None = None  # why stale removal was held back
    stale: int = 0


def plan(
    previous: Mapping[str, str],
    seen: Mapping[str, str],
    *,
    complete: bool,
    max_share: float = DEFAULT_MAX_REMOVAL_SHARE,
    max_count: int = DEFAULT_MAX_REMOVAL_MIN,
) -> CrawlPlan:
    """Compare the fingerprints a crawl saw (``seen``) with the ones recorded (``previous``)."""
    out = CrawlPlan()
    for name, digest in seen.items():
        before = previous.get(name)
        if before is None:
            out.created.append(name)
        elif before != digest:
            out.updated.append(name)
        else:
            out.unchanged += 1
    if not complete:
        return out
    stale = sorted(set(previous) - set(seen))
    out.stale = len(stale)
    if stale and would_trip(len(stale), len(previous), max_share, max_count):
        out.held = (
            f"fail-safe: this run would remove {len(stale)} of {len(previous)} objects "
            f"(more than {max_share:.0%} and more than {max_count}); nothing was removed. "
            "If the objects are really gone, raise the connector's max_removal_share or max_removal_count "
            "for one run."
        )
    else:
        out.removed = stale
    return out


def would_trip(stale: int, total: int, max_share: float, max_count: int) -> bool:
    return total > 0 and stale > max_count and stale / total > max_share


def excluded(name: str, patterns: Set[str] | list[str]) -> bool:
    """Whether a dotted object name (``schema.table``) matches one of the exclude patterns
    (shell-style: ``*`` any run of characters, ``?`` one; case-sensitive)."""
    return any(_glob(p).fullmatch(name) for p in patterns)


def _glob(pattern: str) -> re.Pattern[str]:
    out = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(out)


def health_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """An instance's health from its registry row joined with its last runs (see the store's list)."""
    now = row.get("db_now") or datetime.now(UTC)
    if not row["active"]:
        state = "disabled"
    elif row.get("running"):
        state = "running"
    elif row.get("queued"):
        state = "queued"
    elif row.get("last_outcome") is None:
        state = "never_run"
    else:
        state = "failing" if row["last_outcome"] == "failed" else "healthy"
    success = row.get("last_success_at")
    return {
        "state": state,
        "last_run_id": row.get("last_run_id"),
        "last_run_at": row.get("last_run_at"),
        "last_outcome": row.get("last_outcome"),
        "last_error": row.get("last_error") if row.get("last_outcome") == "failed" else None,
        "last_success_at": success,
        "lag_seconds": round((now - success).total_seconds(), 3) if success else None,
        "consecutive_failures": int(row["failures"]),
        "next_run_at": row["next_run_at"],
        "detail": (row["state"] or {}).get("health"),
    }


def trimmed_error(text: str) -> str:
    return text[:RUN_ERROR_CHARS]
