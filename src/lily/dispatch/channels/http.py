"""What every HTTP channel shares: how an answer (or no answer) becomes a :class:`DeliveryResult`."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from lily.netguard import BlockedAddress
from lily.plugins.protocols import DeliveryResult

RESPONSE_MAX_CHARS = 1000
USER_AGENT = "Lily-Dispatcher/1"
# Statuses worth another attempt: the receiver may do better later.
RETRYABLE = frozenset({408, 425, 429})


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), bounded to a day; None when absent."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return min(max(seconds, 0.0), 86_400.0)


def truncated(text: str, limit: int = RESPONSE_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def from_response(response: httpx.Response, *, gone_disables: bool = False) -> DeliveryResult:
    """2xx delivered; 408/425/429/5xx retried (``Retry-After`` honoured); 410 permanent (and, for
    channels that say so, disables the channel); any other status permanent."""
    status = response.status_code
    body = truncated(response.text) if response.content else None
    if 200 <= status < 300:
        return DeliveryResult(ok=True, status=status, response=body)
    if status in RETRYABLE or status >= 500:
        return DeliveryResult(
            ok=False, status=status, error=f"HTTP {status}", retry_after_seconds=retry_after(response), response=body
        )
    if status == 410:
        return DeliveryResult(
            ok=False,
            status=status,
            error="HTTP 410: the receiver is gone",
            permanent=True,
            disable=gone_disables,
            response=body,
        )
    return DeliveryResult(ok=False, status=status, error=f"HTTP {status}", permanent=True, response=body)


def from_exception(exc: BaseException, timeout: float) -> DeliveryResult:
    """A request that got no answer. A refused target is permanent; a timeout or a network error is not."""
    if isinstance(exc, BlockedAddress):
        return DeliveryResult(ok=False, error=str(exc), permanent=True)
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryResult(ok=False, error=f"no answer within {timeout:g} s ({type(exc).__name__})")
    if isinstance(exc, httpx.TooManyRedirects):
        return DeliveryResult(ok=False, error="too many redirects", permanent=True)
    if isinstance(exc, httpx.TransportError):
        # httpx messages name the host and errno, never a header or a body.
        return DeliveryResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
    return DeliveryResult(ok=False, error=f"{type(exc).__name__}")


async def attempt(send: Callable[[], Awaitable[DeliveryResult]], timeout: float) -> DeliveryResult:
    """Run one attempt's requests, turning anything that escapes them into a failed result."""
    try:
        return await send()
    except (httpx.HTTPError, BlockedAddress) as exc:
        return from_exception(exc, timeout)


def headers(extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {"User-Agent": USER_AGENT, "Content-Type": "application/json", **(extra or {})}
