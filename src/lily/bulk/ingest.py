"""Receiving a bulk job (stream → validate → stage → append) and reporting on it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from lily.bulk.items import Unstorable, to_json, validate
from lily.bulk.parse import json_array_items, ndjson_lines
from lily.config import Settings
from lily.domain.errors import Conflict, PayloadTooLarge, TooManyRequests
from lily.domain.events import ASSET_UPSERT, partition_of, uuid7
from lily.pipeline.waiter import AppliedWaiter
from lily.store import bulk as store
from lily.store import idempotency
from lily.store import log as store_log
from lily.store.db import Conn, Database

# Whether the caller may write this item: None if so, else why not. (Not given the job's connection:
# that one is busy with the COPY that stages the items.)
Admit = Callable[[dict[str, Any]], Awaitable[str | None]]


@dataclass(slots=True)
class Receipt:
    job_id: UUID
    total: int
    rejected: int
    replayed: bool = False  # an Idempotency-Key matched an earlier job; nothing new was appended


async def receive(
    db: Database,
    settings: Settings,
    *,
    tenant_id: str,
    actor: str,
    request_id: str | None,
    chunks: AsyncIterator[bytes],
    ndjson: bool,
    idempotency_key: str | None = None,
    admit: Admit | None = None,
) -> Receipt:
    """Take a whole bulk body in one transaction; the log sees its items only if all of it arrived.

    ``admit`` (the API's access check) may refuse an item: it is then reported like an invalid one.

    Any exception while the body streams in (the size limit, a broken JSON array, too many items)
    rolls back the transaction and with it every staged item: nothing is applied, no job exists.
    """
    digest = hashlib.sha256(b"ndjson\n" if ndjson else b"json\n")

    async def hashed() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            digest.update(chunk)
            yield chunk

    # An item is bounded like the single endpoint's body (LILY_MAX_ASSET_BODY_BYTES), while it streams in.
    limit = settings.max_asset_body_bytes
    items: AsyncIterator[tuple[int, Any]] = (
        ndjson_lines(hashed(), max_item_bytes=limit) if ndjson else json_array_items(hashed(), max_item_bytes=limit)
    )
    job_id = uuid7()
    counts: Counter[int] = Counter()
    errors: list[dict[str, Any]] = []
    total = rejected = 0
    async with db.tenant(tenant_id) as conn:
        # Before reading a byte: a slot is held by this transaction and freed when it ends, however it ends.
        await _take_slot(conn, settings, tenant_id)
        await store.create_stage(conn)
        async with store.stager(conn) as stage:
            async for index, raw in items:
                total = index + 1
                if index % 128 == 127:  # a 64 KiB chunk holds hundreds of items: let other requests in
                    await asyncio.sleep(0)
                if total > settings.max_bulk_items:
                    raise PayloadTooLarge(
                        f"a bulk job holds at most {settings.max_bulk_items} items", limit=settings.max_bulk_items
                    )
                payload = validate(raw)
                if not isinstance(payload, str):
                    try:
                        payload_json = to_json(payload)
                    except Unstorable as exc:
                        payload = str(exc)
                if not isinstance(payload, str) and admit is not None:
                    payload = await admit(payload) or payload
                if isinstance(payload, str):
                    rejected += 1
                    if len(errors) < store.MAX_KEPT_ERRORS:
                        errors.append({"index": index, "error": payload})
                    continue
                subject = payload["qualified_name"]
                part = partition_of(tenant_id, subject, settings.partitions)
                if stage.add(event_id(), part, counts[part], subject, payload_json, index):
                    await stage.flush()
                counts[part] += 1
        if idempotency_key:
            fingerprint = digest.hexdigest()
            first = await idempotency.claim(conn, tenant_id, idempotency_key, fingerprint, {"job_id": str(job_id)})
            if first is not None:
                if first["request_hash"] != fingerprint:
                    raise Conflict(
                        "this Idempotency-Key was used with a different request", idempotency_key=idempotency_key
                    )
                # The staged rows are dropped with the temp table at commit; nothing else was written.
                return Receipt(UUID(first["response"]["job_id"]), total, rejected, replayed=True)
        await store.create_job(conn, tenant_id, job_id, actor, total, rejected, errors)
        await store.append_staged(conn, tenant_id, job_id, actor, request_id, ASSET_UPSERT, counts)
    return Receipt(job_id, total, rejected)


async def _take_slot(conn: Conn, settings: Settings, tenant_id: str) -> None:
    total, share = settings.max_concurrent_bulk, settings.bulk_slots_per_tenant()
    mine, any_slot = await store.take_slot(conn, tenant_id, total, share)
    if not mine:
        raise TooManyRequests(
            f"this tenant already runs {share} bulk uploads, its share of {total}; retry when one ends",
            retry_after_seconds=1,
        )
    if not any_slot:
        raise TooManyRequests(f"{total} bulk uploads are already running; retry shortly", retry_after_seconds=1)


def event_id() -> str:
    """A UUIDv7 (time-ordered, like ``domain.events.uuid7``) as 32 hex digits, ready for COPY.

    Built from strings rather than through ``uuid.UUID``: this runs once per item of a bulk job.
    """
    r = os.urandom(10).hex()
    return f"{time.time_ns() // 1_000_000:012x}7{r[1:4]}{_VARIANT[int(r[4], 16) & 3]}{r[5:20]}"


_VARIANT = "89ab"  # RFC 9562 variant bits 10xx in the first hex digit of the fourth group


async def wait_done(db: Database, waiter: AppliedWaiter, tenant_id: str, job_id: UUID, timeout: float) -> bool:
    """Wait (bounded) until every partition the job touched has moved past the job's last event.

    Uses the same applied-offset notifications as single writes, so a client can long-poll the status
    instead of spinning on it.
    """
    async with db.tenant(tenant_id) as conn:
        heads = await store.last_seqs(conn, tenant_id, job_id)
        offsets = await store_log.applied_offsets(conn, list(heads))
    # Only partitions still behind are waited on (each wait costs the waiter a query).
    behind = {p: seq for p, seq in heads.items() if offsets.get(p, 0) < seq}
    done = await asyncio.gather(*(waiter.wait(p, seq, timeout) for p, seq in behind.items()))
    return all(done)


async def status(db: Database, tenant_id: str, job_id: UUID, *, max_errors: int = 20) -> dict[str, Any] | None:
    """The job's state and counts, or None if this tenant has no such job."""
    async with db.tenant(tenant_id) as conn:
        job = await store.get_job(conn, tenant_id, job_id)
        if job is None:
            return None
        by_status = await store.event_counts(conn, tenant_id, job_id)
        failures = await store.event_failures(conn, tenant_id, job_id, max_errors)
    applied = by_status.get("applied", 0)
    pipeline_failed = by_status.get("failed", 0) + by_status.get("dead_lettered", 0)
    pending = by_status.get("accepted", 0)
    failed = job["rejected"] + pipeline_failed
    errors = sorted(
        [{"index": e["index"], "error": e["error"], "stage": "validation"} for e in job["errors"]]
        + [{"index": f["index"], "error": f["error"], "stage": f["status"]} for f in failures],
        key=lambda e: e["index"],
    )[:max_errors]
    return {
        "job_id": str(job_id),
        "state": _state(applied, failed, pending, started=applied + pipeline_failed > 0),
        "total": job["total"],
        "applied": applied,
        "failed": failed,
        "pending": pending,
        "rejected": job["rejected"],
        "errors": errors,
        "created_at": job["created_at"].isoformat(),
    }


def _state(applied: int, failed: int, pending: int, *, started: bool) -> str:
    if pending:
        return "running" if started else "queued"
    if failed == 0:
        return "succeeded"  # including an empty job: nothing was asked, nothing failed
    return "failed" if applied == 0 else "partial"
