"""The event envelope: what the log holds, independent of how it is stored or consumed."""

from __future__ import annotations

import os
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

# Event kinds. Handlers for each are registered by the pipeline's apply stage.
ASSET_UPSERT = "asset.upsert"
ASSET_REPLACE = "asset.replace"
ASSET_DELETE = "asset.delete"
LINEAGE_UPSERT = "lineage.upsert"
LINEAGE_DELETE = "lineage.delete"
UPSTREAM_CHANGED = "asset.upstream_changed"
# Classification (lily.pipeline.apply.classification): a steward's set and remove, the classifiers'
# proposals, and one lineage step of propagation or of its retraction.
CLASSIFICATION_SET = "classification.set"
CLASSIFICATION_REMOVE = "classification.remove"
CLASSIFICATION_RULES = "classification.rules"
CLASSIFICATION_PROPAGATE = "classification.propagate"
CLASSIFICATION_RETRACT = "classification.retract"

STATES = ("accepted", "applied", "failed", "dead_lettered")


def partition_of(tenant_id: str, subject: str, partitions: int) -> int:
    """``hash(tenant, subject) mod P``: stable across processes and releases (crc32, not ``hash()``)."""
    return zlib.crc32(f"{tenant_id}\x00{subject}".encode()) % partitions


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 v7), so event ids index in arrival order."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


@dataclass(slots=True)
class NewEvent:
    """An event about to be appended to the log."""

    tenant_id: str
    subject: str
    kind: str
    payload: dict[str, Any]
    actor: str
    request_id: str | None = None
    source: str = "api"
    bulk_job_id: uuid.UUID | None = None
    item_index: int | None = None
    event_id: uuid.UUID = field(default_factory=uuid7)


@dataclass(slots=True)
class Accepted:
    event_id: uuid.UUID
    partition: int
    seq: int
