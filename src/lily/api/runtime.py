"""Everything a request needs, built once per process by the app factory (no import-time globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from lily.auth.tokens import TokenConfig
from lily.config import Settings
from lily.pipeline.writer import Writer
from lily.store.db import Database


@dataclass
class Runtime:
    settings: Settings
    db: Database
    writer: Writer
    tokens: TokenConfig
    background: list[asyncio.Task[None]] = field(default_factory=list)
