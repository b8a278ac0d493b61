"""Password hashing with argon2id (argon2-cffi's defaults follow RFC 9106's recommendations).

A hash costs tens of milliseconds of CPU. :class:`Hasher` runs it in a small thread pool of its own
(argon2-cffi releases the GIL), so logins never stall the event loop, and it refuses work beyond a
bounded queue, so a login flood costs other requests neither the loop nor unbounded memory.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lily.domain.errors import TooManyRequests

_hasher = PasswordHasher()

# Hashes queued per thread before further logins are answered 429.
QUEUE_PER_THREAD = 8


@cache
def _dummy_hash() -> str:
    # Verifying against this when the user does not exist keeps login time the same either way. Built on
    # first use, not at import: a hash costs tens of milliseconds and most commands never need it.
    return _hasher.hash("lily-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        # UnicodeEncodeError: a lone surrogate in the password given, which no stored password can contain.
        return False


def default_threads() -> int:
    """Half the CPUs: the other half stays free for the event loop and PostgreSQL."""
    return max(1, (os.cpu_count() or 2) // 2)


class Hasher:
    """argon2 off the event loop, in ``threads`` threads, with at most ``QUEUE_PER_THREAD`` waiting each."""

    def __init__(self, threads: int) -> None:
        self.threads = threads or default_threads()
        # Idle pool threads exit when the pool is garbage-collected, so no shutdown hook is needed.
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="lily-argon2")
        self._limit = self.threads * (1 + QUEUE_PER_THREAD)
        self._running = 0

    async def verify(self, password_hash: str | None, password: str) -> bool:
        self._enter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, verify_password, password_hash, password
            )
        finally:
            self._running -= 1

    async def hash(self, password: str) -> str:
        self._enter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, hash_password, password)
        finally:
            self._running -= 1

    def _enter(self) -> None:
        # Counted on the event loop's thread only, so a plain integer is enough.
        if self._running >= self._limit:
            raise TooManyRequests("too many logins are being checked right now; try again", retry_after_seconds=1)
        self._running += 1
