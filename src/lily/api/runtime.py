"""Everything a request needs, built once per process by the app factory (no import-time globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from lily.auth.cache import CredentialCache, PolicyCache
from lily.auth.leases import TokenLeases
from lily.auth.limits import LoginLimits, RateLimits
from lily.auth.passwords import Hasher
from lily.auth.tokens import TokenConfig
from lily.changes.waker import ChangeWaker
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
    # Wakes long-polling /changes readers (its LISTEN connection opens on the first wait).
    change_waker: ChangeWaker | None = None
    # Credentials this process has checked in full (see lily.auth.cache): never trusted without the epoch.
    credentials: CredentialCache = field(default_factory=CredentialCache)
    # Access policies per tenant, as last read (see lily.auth.cache): never trusted without the epoch.
    policies: PolicyCache = field(default_factory=PolicyCache)
    hasher: Hasher = field(init=False)
    login_limits: LoginLimits = field(init=False)
    rate_limits: RateLimits = field(init=False)
    # Rate-limit tokens this process holds, leased from the shared buckets (see lily.auth.leases).
    leases: TokenLeases = field(init=False)

    def __post_init__(self) -> None:
        self.hasher = Hasher(self.settings.password_hash_threads)
        self.login_limits = LoginLimits.of(self.settings)
        self.rate_limits = RateLimits.of(self.settings)
        self.leases = TokenLeases(self.rate_limits, lease_seconds=self.settings.rate_limit_lease_seconds)
