"""Due-time computation: cron and interval schedules, in UTC, independent of when a process started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lily.scheduler.schedule import ScheduleError, parse


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_cron_latest_and_next_due() -> None:
    s = parse("*/10 * * * *")
    assert s.interval_seconds is None
    assert s.latest_due(at("2026-03-01T12:17:42")) == at("2026-03-01T12:10:00")
    assert s.next_due(at("2026-03-01T12:17:42")) == at("2026-03-01T12:20:00")


def test_an_exact_fire_time_is_due_and_the_next_is_strictly_after() -> None:
    s = parse("0 3 * * *")
    assert s.latest_due(at("2026-03-01T03:00:00")) == at("2026-03-01T03:00:00")
    assert s.next_due(at("2026-03-01T03:00:00")) == at("2026-03-02T03:00:00")
    # Before today's fire time the latest due one is yesterday's.
    assert s.latest_due(at("2026-03-01T02:59:59.999999")) == at("2026-02-28T03:00:00")


def test_cron_with_a_seconds_field() -> None:
    s = parse("* * * * * */15")
    assert s.latest_due(at("2026-03-01T12:00:44")) == at("2026-03-01T12:00:30")
    assert s.next_due(at("2026-03-01T12:00:44")) == at("2026-03-01T12:00:45")


def test_cron_times_are_utc_whatever_the_zone_of_now() -> None:
    s = parse("0 3 * * *")
    paris = timezone(timedelta(hours=1))
    # 04:30 in Paris is 03:30 UTC: today's 03:00 UTC has passed.
    due = s.latest_due(datetime(2026, 3, 1, 4, 30, tzinfo=paris))
    assert due == at("2026-03-01T03:00:00") and due.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "seconds"), [("every 1s", 1), ("every 90s", 90), ("every 5m", 300), ("every 2h", 7200), ("EVERY 3 S", 3)]
)
def test_intervals(text: str, seconds: int) -> None:
    assert parse(text).interval_seconds == seconds


def test_intervals_are_aligned_to_the_epoch() -> None:
    s = parse("every 60s")
    assert s.latest_due(at("2026-03-01T12:17:42.5")) == at("2026-03-01T12:17:00")
    assert s.next_due(at("2026-03-01T12:17:42.5")) == at("2026-03-01T12:18:00")
    # On the boundary: due now, next one a full interval later.
    assert s.latest_due(at("2026-03-01T12:17:00")) == at("2026-03-01T12:17:00")
    assert s.next_due(at("2026-03-01T12:17:00")) == at("2026-03-01T12:18:00")
    # Two processes whose clocks differ within one interval agree on the due time.
    seven = parse("every 7s")
    assert seven.latest_due(at("2026-03-01T00:00:03")) == seven.latest_due(at("2026-03-01T00:00:04"))
    due = seven.latest_due(at("2026-03-01T00:00:03"))
    assert int(due.timestamp()) % 7 == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cron expression or 'every <N>s'"),
        ("   ", "cron expression or 'every <N>s'"),
        ("every", "'every <N>s'"),
        ("every 0s", "between 1 second and 366 days"),
        ("every 400d", "'every <N>s'"),
        ("every 8785h", "between 1 second and 366 days"),
        ("every -5s", "'every <N>s'"),
        ("61 * * * *", "neither a cron expression"),
        ("hourly", "neither a cron expression"),
        ("* * *", "neither a cron expression"),
    ],
)
def test_bad_schedules_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse(text)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse("every 1s").latest_due(datetime(2026, 3, 1, 12, 0))
