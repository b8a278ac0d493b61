"""What a stage sees besides the events: the transaction, the tenant, settings and plugins."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lily.config import Settings
from lily.store.db import Conn


@dataclass(slots=True)
class BatchContext:
    conn: Conn
    tenant_id: str
    settings: Settings
    now: datetime
    # Follow-up events a stage wants appended in the same transaction (e.g. downstream propagation).
    follow_ups: list[Any] = field(default_factory=list)
