"""The pure rules: retry schedule, subscription matching, Retry-After parsing."""

from __future__ import annotations

import httpx
import pytest

from lily.dispatch.channels.http import from_response, retry_after
from lily.domain.notifications import matches, next_step, parse_schedule

SCHEDULE = parse_schedule("0,5,300,1800,7200,18000,36000,36000")


def test_the_default_schedule_is_about_27_hours_and_ends_dead() -> None:
    assert len(SCHEDULE) == 8 and 26 * 3600 < sum(SCHEDULE) < 28 * 3600
    state, delay = next_step(SCHEDULE, 1, ok=False, permanent=False, retry_after=None)
    assert state == "pending" and 4 <= delay <= 6  # 5 s ±20 %
    assert next_step(SCHEDULE, 8, ok=False, permanent=False, retry_after=None)[0] == "dead"
    assert next_step(SCHEDULE, 1, ok=False, permanent=True, retry_after=None)[0] == "dead"
    assert next_step(SCHEDULE, 3, ok=True, permanent=False, retry_after=None) == ("delivered", 0.0)
    # Retry-After only ever pushes later.
    assert next_step(SCHEDULE, 1, ok=False, permanent=False, retry_after=120)[1] == 120
    assert next_step(SCHEDULE, 2, ok=False, permanent=False, retry_after=1)[1] >= 300 * 0.8


@pytest.mark.parametrize("text", ["", "a,b", "-1", "1,999999999"])
def test_a_bad_schedule_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="LILY_DELIVERY_RETRY_SCHEDULE"):
        parse_schedule(text)


def test_subscription_matching() -> None:
    event = {"type": "classification.added", "qualified_name": "pg://h/db.s.users"}
    asset = {"type": "table", "tags": ["gold"], "classifications": ["PII", "PII.Email"]}
    assert matches(["classification.*"], {}, event, None)
    assert not matches(["asset.*"], {}, event, None)
    assert matches(["*"], {"qualified_name_prefix": "pg://h/"}, event, None)
    assert not matches(["*"], {"qualified_name_prefix": "pg://x/"}, event, None)
    assert matches(["*"], {"classifications": ["PII"], "types": ["table"]}, event, asset)
    assert not matches(["*"], {"classifications": ["PII.Phone"]}, event, asset)
    assert not matches(["*"], {"tags": ["silver"]}, event, asset)
    assert not matches(["*"], {"tags": ["gold"]}, event, None)  # no asset: an asset criterion cannot hold


def test_answers_become_results() -> None:
    request = httpx.Request("POST", "https://x.example")
    assert from_response(httpx.Response(204, request=request)).ok
    for status in (408, 429, 500, 503):
        result = from_response(httpx.Response(status, request=request, headers={"Retry-After": "3"}))
        assert not result.ok and not result.permanent and result.retry_after_seconds == 3
    for status in (400, 401, 404, 413):
        assert from_response(httpx.Response(status, request=request)).permanent
    gone = from_response(httpx.Response(410, request=request), gone_disables=True)
    assert gone.permanent and gone.disable
    dated = httpx.Response(503, request=request, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after(dated) == 0.0  # a date in the past: retry when the schedule says
