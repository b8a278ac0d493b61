"""Which apply failures are worth retrying.

An event that failed because of what it *is* (a value PostgreSQL cannot store, a limit it exceeds, a
constraint it violates, a payload our code cannot handle) fails the same way on every attempt: retrying
it only delays its subject and costs worker time, so it is dead-lettered at once. A failure of the
*moment* (a lost connection, a deadlock, a serialization failure, a lock or statement timeout, a
plugin's remote service down) may pass, so it is retried with backoff.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg


class Transient(Exception):
    """Raise (or subclass) this from a plugin to have the event retried whatever the cause.

    Any exception with a true ``transient`` attribute counts the same, so a plugin can mark its own
    exception classes without importing Lily.
    """

    transient = True


# Said by the value: the same statement on the same data fails again.
_PERMANENT_SQL: tuple[type[psycopg.Error], ...] = (
    psycopg.DataError,  # invalid text representation, out of range, untranslatable character, …
    psycopg.IntegrityError,  # unique, foreign key, check, not null
    pg.ProgramLimitExceeded,  # index row too large, too many columns, statement too complex
    psycopg.NotSupportedError,
)
# Said by our own code about a payload (pydantic's ValidationError is a ValueError).
_PERMANENT_PYTHON: tuple[type[BaseException], ...] = (ValueError, TypeError, UnicodeError)


def is_permanent(exc: BaseException) -> bool:
    """True if ``exc``, raised while applying an event, will be raised again by every retry."""
    if getattr(exc, "transient", False):
        return False
    if isinstance(exc, psycopg.Error):
        # ProgramLimitExceeded is an OperationalError subclass: test the permanent classes first.
        return isinstance(exc, _PERMANENT_SQL)
    return isinstance(exc, _PERMANENT_PYTHON)
