"""The login and request rate limits, as read from the settings once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from lily.auth.clients import Network, parse_networks
from lily.config import Settings


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Attempts before backoff starts, per account and per client address, and the backoff itself."""

    per_account: int
    per_address: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    window_seconds: float
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def of(cls, settings: Settings) -> LoginLimits:
        return cls(
            settings.login_attempts_per_account,
            settings.login_attempts_per_address,
            settings.login_backoff_base_seconds,
            settings.login_backoff_max_seconds,
            settings.login_window_seconds,
            parse_networks(settings.trusted_proxies),
        )


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``rate`` requests per second sustained, ``capacity`` at once. Rate 0 is no limit."""

    rate: float
    capacity: float


@dataclass(frozen=True, slots=True)
class RateLimits:
    per_principal: Bucket
    per_tenant: Bucket

    @classmethod
    def of(cls, settings: Settings) -> RateLimits:
        burst = settings.rate_limit_burst_seconds
        return cls(
            Bucket(settings.rate_limit_per_key, max(1.0, settings.rate_limit_per_key * burst)),
            Bucket(settings.rate_limit_per_tenant, max(1.0, settings.rate_limit_per_tenant * burst)),
        )
