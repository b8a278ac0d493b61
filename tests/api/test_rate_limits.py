"""Per-key and per-tenant rate limits: 429 with Retry-After, counted in PostgreSQL for the whole deployment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from lily import admin
from lily.api.app import create_app
from lily.config import Settings

from .helpers import assert_problem

# Requests per second, and a burst of 4 s: a key's bucket holds 2 and a tenant's 3. Slow refills (one
# token per 2 s and 1.3 s), so a loaded machine cannot refill a bucket between a test's requests.
PER_KEY = 0.5
PER_TENANT = 0.75
BURST_SECONDS = 4.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "rate_limit_per_key": PER_KEY,
            "rate_limit_per_tenant": PER_TENANT,
            "rate_limit_burst_seconds": BURST_SECONDS,
        }
    )


async def validate(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.get("/auth/validate", headers=headers)


def limited(r: httpx.Response) -> int:
    problem = assert_problem(r, 429, "too-many-requests")
    assert "rate limit" in problem["detail"]
    seconds = int(r.headers["retry-after"])
    assert seconds >= 1 and problem["retry_after_seconds"] == seconds
    return seconds


async def until_allowed(client: httpx.AsyncClient, headers: dict[str, str], within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        r = await validate(client, headers)
        if r.status_code != 429:
            return r
        await asyncio.sleep(0.05)  # polling for the bucket to refill, not as synchronisation
    raise AssertionError("still limited past the refill time")


async def test_per_key_limit_answers_429_with_retry_after_then_refills(client, tenant):
    viewer = tenant.headers("viewer")
    assert [(await validate(client, viewer)).status_code for _ in range(2)] == [200, 200]
    assert 1 <= limited(await validate(client, viewer)) <= 1 / PER_KEY
    # Asking again while refused takes nothing, so the key recovers at the bucket's rate all the same.
    for _ in range(5):
        limited(await validate(client, viewer))
    r = await until_allowed(client, viewer, within=1 / PER_KEY + 2)
    assert r.status_code == 200


async def test_keys_have_their_own_buckets_and_share_the_tenants(client, tenant, other_tenant):
    for role in ("viewer", "editor"):
        r = await validate(client, tenant.headers(role))
        assert r.status_code == 200, (role, r.text)
    r = await validate(client, tenant.headers("steward"))  # the tenant's third request in the burst
    assert r.status_code == 200
    # The tenant's bucket (3) is empty now: every key of it waits, though its own bucket is full.
    limited(await validate(client, tenant.headers("admin")))
    # Another tenant is not affected at all.
    assert (await validate(client, other_tenant.headers("admin"))).status_code == 200


async def test_users_are_limited_like_keys(client, app, tenant):
    await admin.create_user(app.state.runtime.db, tenant.tenant_id, "alice", "correct horse battery", "viewer")
    r = await client.post(
        "/auth/login", json={"tenant_id": tenant.tenant_id, "username": "alice", "password": "correct horse battery"}
    )
    token = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert [(await validate(client, token)).status_code for _ in range(2)] == [200, 200]
    limited(await validate(client, token))
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT bucket FROM rate_buckets ORDER BY bucket")
        assert [r["bucket"] for r in await cur.fetchall()] == ["tenant", "user:alice"]


async def test_refused_credentials_take_nothing_from_the_tenant(client, app, tenant):
    tenant_part, key_id, secret = tenant.keys["admin"].removeprefix("lily_").split(".")
    forged = {"Authorization": f"Bearer lily_{tenant_part}.{key_id}.{secret[:-2]}xx"}
    for _ in range(10):
        assert_problem(await validate(client, forged), 401)
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM rate_buckets")
        assert (await cur.fetchone())["n"] == 0
    assert (await validate(client, tenant.headers("admin"))).status_code == 200


@pytest.fixture
async def second_process(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process on the same database: its own pool and runtime, nothing shared in memory."""
    other = create_app(settings, database_url, run_workers=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
            yield c


async def test_the_limit_holds_across_api_processes(client, second_process, app, tenant):
    viewer = tenant.headers("viewer")
    assert (await validate(client, viewer)).status_code == 200
    assert (await validate(second_process, viewer)).status_code == 200
    # Two requests in all, through two processes: the key's bucket of 2 is empty in both.
    limited(await validate(client, viewer))
    limited(await validate(second_process, viewer))
    assert second_process is not client and app.state.runtime is not None


async def test_a_rate_of_zero_turns_the_limit_off(settings, database_url, tenant):
    unlimited = settings.model_copy(update={"rate_limit_per_key": 0.0, "rate_limit_per_tenant": 0.0})
    other = create_app(unlimited, database_url, run_workers=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
            codes = [(await validate(c, tenant.headers("viewer"))).status_code for _ in range(20)]
    assert codes == [200] * 20


async def test_concurrent_requests_never_take_more_than_the_bucket_holds(client, tenant):
    viewer = tenant.headers("viewer")
    start = time.monotonic()
    codes = [r.status_code for r in await asyncio.gather(*(validate(client, viewer) for _ in range(6)))]
    elapsed = time.monotonic() - start
    # A bucket of 2, plus what it refilled while the burst ran (none, unless the machine is very slow).
    assert 2 <= codes.count(200) <= 2 + int(elapsed * PER_KEY), (codes, elapsed)
    assert set(codes) == {200, 429}


async def test_processes_lease_tokens_in_batches_and_never_admit_more_than_the_bucket(settings, database_url, tenant):
    """A bucket of 20 (refilling one token per 10 s) leased 10 at a time: the first process to ask holds 10,
    the second 10, and every request past those is refused in both — leasing moves tokens, never makes them."""
    leased = settings.model_copy(
        update={
            "rate_limit_per_key": 0.1,
            "rate_limit_per_tenant": 0.0,
            "rate_limit_burst_seconds": 200.0,
            "rate_limit_lease_seconds": 100.0,
        }
    )
    viewer = tenant.headers("viewer")
    a, b = create_app(leased, database_url, run_workers=False), create_app(leased, database_url, run_workers=False)
    async with (
        a.router.lifespan_context(a),
        b.router.lifespan_context(b),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://lily.test/lily/v1") as ca,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=b), base_url="http://lily.test/lily/v1") as cb,
    ):
        start = time.monotonic()
        assert (await validate(ca, viewer)).status_code == 200  # a leases 10, spends 1
        async with a.state.runtime.db.tenant(tenant.tenant_id) as conn:
            cur = await conn.execute("SELECT tokens FROM rate_buckets WHERE bucket LIKE 'key:%%'")
            assert 10 <= (await cur.fetchone())["tokens"] < 11
        from_b = [(await validate(cb, viewer)).status_code for _ in range(12)]
        from_a = [(await validate(ca, viewer)).status_code for _ in range(10)]
        elapsed = time.monotonic() - start
    refilled = int(elapsed * 0.1)
    assert 1 + from_b.count(200) + from_a.count(200) <= 20 + refilled, (from_a, from_b, elapsed)
    if refilled == 0:
        assert from_b == [200] * 10 + [429] * 2
        assert from_a == [200] * 9 + [429]


async def test_concurrent_requests_of_one_process_lease_one_batch(settings, database_url, tenant):
    """Twelve requests at once find the process's lease empty: one leases a batch, the others one token
    each, so the process never holds more than a batch and nothing beyond the bucket is admitted."""
    leased = settings.model_copy(
        update={
            "rate_limit_per_key": 0.1,
            "rate_limit_per_tenant": 0.0,
            "rate_limit_burst_seconds": 200.0,
            "rate_limit_lease_seconds": 100.0,
        }
    )
    viewer = tenant.headers("viewer")
    a = create_app(leased, database_url, run_workers=False)
    async with (
        a.router.lifespan_context(a),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://lily.test/lily/v1") as ca,
    ):
        await validate(ca, viewer)  # caches the credential (and leases the first batch)
        codes = [r.status_code for r in await asyncio.gather(*(validate(ca, viewer) for _ in range(12)))]
        leases = a.state.runtime.leases
        held = sum(h.tokens for h in leases._held.values())
        async with a.state.runtime.db.tenant(tenant.tenant_id) as conn:
            cur = await conn.execute("SELECT tokens FROM rate_buckets WHERE bucket LIKE 'key:%%'")
            left = (await cur.fetchone())["tokens"]
    assert held <= leases.principal_batch == 10
    assert 1 + codes.count(200) + held + int(left) <= 20, (codes, held, left)
    assert codes.count(200) >= 9
