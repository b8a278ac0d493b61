"""When a job is due: cron expressions (via croniter) and fixed intervals, in UTC. Pure: no I/O.

Due times are a function of the schedule and the clock only, never of when a process started, so
every scheduler process computes the same ones and a run's key ``(job, scheduled_for)`` means the same
thing whichever process leads. Intervals are aligned to the Unix epoch (``every 60s`` is due at every
whole minute), for the same reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

_EVERY = re.compile(r"every\s+(\d+)\s*(s|m|h)", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# croniter answers at second resolution; a hair past ``now`` makes an exact fire time count as due.
_TICK = timedelta(microseconds=1)
MAX_INTERVAL_SECONDS = 366 * 86400


class ScheduleError(ValueError):
    """A schedule that is neither a cron expression nor ``every <N>s|m|h``."""


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    interval_seconds: int | None  # None: a cron expression

    def latest_due(self, now: datetime) -> datetime:
        """The last due time at or before ``now``."""
        now = _utc(now)
        if self.interval_seconds is not None:
            step = timedelta(seconds=self.interval_seconds)
            return _EPOCH + ((now - _EPOCH) // step) * step
        due: datetime = croniter(self.text, now + _TICK).get_prev(datetime)
        return due.astimezone(UTC)

    def next_due(self, now: datetime) -> datetime:
        """The first due time strictly after ``now``."""
        now = _utc(now)
        if self.interval_seconds is not None:
            return self.latest_due(now) + timedelta(seconds=self.interval_seconds)
        due: datetime = croniter(self.text, now).get_next(datetime)
        return due.astimezone(UTC)


def parse(text: str) -> Schedule:
    """A schedule from a job's ``schedule``: ``"*/5 * * * *"`` (UTC; a sixth field is seconds) or
    ``"every 30s"`` / ``"every 5m"`` / ``"every 2h"``."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError("a schedule must be a cron expression or 'every <N>s'")
    text = text.strip()
    every = _EVERY.fullmatch(text)
    if every:
        seconds = int(every.group(1)) * _UNIT_SECONDS[every.group(2).lower()]
        if not 1 <= seconds <= MAX_INTERVAL_SECONDS:
            raise ScheduleError(f"{text!r}: an interval must be between 1 second and 366 days")
        return Schedule(text, seconds)
    if text.lower().startswith("every"):
        raise ScheduleError(f"{text!r}: write an interval as 'every <N>s', 'every <N>m' or 'every <N>h'")
    if not croniter.is_valid(text):
        raise ScheduleError(f"{text!r} is neither a cron expression nor 'every <N>s'")
    return Schedule(text, None)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("scheduler times must be timezone-aware")
    return moment.astimezone(UTC)
