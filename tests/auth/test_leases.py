"""Rate-limit tokens held in one API process (lily.auth.leases): what is asked of the database, and when."""

from __future__ import annotations

import asyncio

from lily.auth.leases import MAX_BATCH, TokenLeases, batch_of
from lily.auth.limits import Bucket, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def leases(per_key: float = 500, per_tenant: float = 1000, clock: Clock | None = None) -> TokenLeases:
    limits = RateLimits(Bucket(per_key, max(1.0, per_key * 2)), Bucket(per_tenant, max(1.0, per_tenant * 2)))
    return TokenLeases(limits, lease_seconds=0.05, ttl=1.0, clock=clock or Clock())


def test_the_batch_is_a_slice_of_the_rate_within_bounds():
    assert batch_of(Bucket(500, 1000), 0.05) == 25
    assert batch_of(Bucket(100_000, 200_000), 0.05) == MAX_BATCH
    # A slow bucket is taken one token at a time, and never more than it holds.
    assert batch_of(Bucket(0.5, 2), 0.05) == 1
    assert batch_of(Bucket(1000, 3), 1.0) == 3
    assert batch_of(Bucket(500, 1000), 0) == 1


def test_an_empty_process_asks_for_a_batch_of_each_bucket_and_then_spends_locally():
    held = leases()
    assert held.take("t", "key:a") == (25, 50)
    # The database granted a batch of each; the request spent one of each.
    held.settle("t", "key:a", (25, 50), (25, 50), admitted=True)
    for _ in range(24):
        assert held.take("t", "key:a") == (0, 0)
    # The key's batch is spent; the tenant's still holds 26.
    assert held.take("t", "key:a") == (25, 0)


def test_keys_share_the_tenants_tokens_but_not_their_own():
    held = leases()
    held.settle("t", "key:a", (25, 50), (25, 50), admitted=True)
    assert held.take("t", "key:b") == (25, 0)
    assert held.take("u", "key:a") == (25, 50)


def test_a_partial_grant_is_kept_and_a_refusal_gives_back_what_was_taken():
    held = leases()
    held.settle("t", "key:a", (25, 50), (3, 1), admitted=True)  # the buckets held little
    assert held.take("t", "key:a") == (0, 50)
    held.settle("t", "key:a", (0, 50), (0, 50), admitted=True)
    assert held.take("t", "key:a") == (0, 0)
    assert held.take("t", "key:a") == (25, 0)
    # Refused with nothing granted: the request that took the key's tokens locally gives them back.
    held = leases()
    held.settle("t", "key:a", (25, 50), (2, 2), admitted=True)
    assert held.take("t", "key:a") == (0, 0)
    held.settle("t", "key:a", (0, 0), (0, 0), admitted=False)
    assert [held.take("t", "key:a") for _ in range(2)] == [(0, 0), (25, 50)]
    # The tenant's bucket refused: the key's tokens granted first are held for later.
    held = leases()
    held.settle("t", "key:a", (25, 50), (25, 0), admitted=False)
    assert held.take("t", "key:a") == (0, 50)


def test_unspent_tokens_are_dropped_after_the_ttl():
    clock = Clock()
    held = leases(clock=clock)
    held.settle("t", "key:a", (25, 50), (25, 50), admitted=True)
    clock.now += 0.99
    assert held.take("t", "key:a") == (0, 0)
    clock.now += 0.02
    assert held.take("t", "key:a") == (25, 50)


def test_a_limit_of_zero_asks_nothing_and_holds_nothing():
    held = leases(per_key=0, per_tenant=0)
    assert held.take("t", "key:a") == (0, 0)
    held.settle("t", "key:a", (0, 0), (0, 0), admitted=False)
    assert held.take("t", "key:a") == (0, 0)
    only_tenant = leases(per_key=0)
    assert only_tenant.take("t", "key:a") == (0, 50)


def test_memory_is_bounded():
    limits = RateLimits(Bucket(500, 1000), Bucket(1000, 2000))
    held = TokenLeases(limits, capacity=10)
    for i in range(100):
        held.settle(f"t{i}", "key:a", (25, 50), (25, 50), admitted=True)
    assert len(held._held) <= 10


def test_while_one_request_leases_a_batch_the_others_ask_for_their_own_token():
    """Concurrent requests that find a bucket empty do not each lease a batch: a process holds one batch."""
    held = leases()
    assert held.take("t", "key:a") == (25, 50)
    assert [held.take("t", "key:a") for _ in range(3)] == [(1, 1)] * 3
    for _ in range(3):
        held.settle("t", "key:a", (1, 1), (1, 1), admitted=True)
    held.settle("t", "key:a", (25, 50), (25, 50), admitted=True)
    assert held._held[("t", "key:a")].tokens == 24 and held._held[("t", "tenant")].tokens == 49
    # The batch is spent: the next request leases again.
    for _ in range(24):
        assert held.take("t", "key:a") == (0, 0)
    assert held.take("t", "key:a") == (25, 0)


def test_a_lease_that_got_no_answer_lets_the_next_request_lease():
    held = leases()
    assert held.take("t", "key:a") == (25, 50)
    held.settle("t", "key:a", (25, 50), (0, 0), admitted=False)  # the database did not answer
    assert held.take("t", "key:a") == (25, 50)


async def test_requests_that_find_the_bucket_empty_while_a_batch_is_leased_wait_for_it_and_spend_from_it():
    held = leases()
    assert held.take("t", "key:a") == (25, 50)  # the lease's round trip is on its way
    waiting = [asyncio.ensure_future(held.take_waiting("t", "key:a", timeout=30)) for _ in range(3)]
    await asyncio.sleep(0)  # let them run up to their wait
    assert not any(task.done() for task in waiting)
    held.settle("t", "key:a", (25, 50), (25, 50), admitted=True)
    # None of them asks the database: each spends a token of the batch that came back.
    assert await asyncio.gather(*waiting) == [(0, 0)] * 3
    assert held._held[("t", "key:a")].tokens == 21 and held._held[("t", "tenant")].tokens == 46


async def test_the_wait_for_another_requests_lease_is_bounded():
    held = leases()
    assert held.take("t", "key:a") == (25, 50)  # never answered
    # After the bound the request asks for its own token, as it did before waiting was possible.
    assert await held.take_waiting("t", "key:a", timeout=0.05) == (1, 1)


async def test_a_lease_that_got_no_answer_wakes_the_waiters_and_one_of_them_leases_anew():
    held = leases()
    assert held.take("t", "key:a") == (25, 50)
    first, second = (asyncio.ensure_future(held.take_waiting("t", "key:a", timeout=30)) for _ in range(2))
    await asyncio.sleep(0)
    held.settle("t", "key:a", (25, 50), (0, 0), admitted=False)  # the database did not answer
    assert await first == (25, 50)
    await asyncio.sleep(0)
    assert not second.done()  # it waits for the new lease, not for a token of its own
    held.settle("t", "key:a", (25, 50), (25, 50), admitted=True)
    assert await second == (0, 0)
