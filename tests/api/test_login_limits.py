"""Login limits per account and per client address, trusted proxies, audited failures, argon2 off the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from lily import admin
from lily.auth.clients import address_key, client_address, parse_networks
from lily.auth.passwords import QUEUE_PER_THREAD, Hasher
from lily.config import Settings
from lily.domain.errors import TooManyRequests

from .helpers import assert_problem

PASSWORD = "correct horse battery"
PROXY = "10.0.0.1"
# Locks must outlast an attempt's own hashing on a loaded machine, or the next attempt would find them gone.
BACKOFF_BASE = 2.0
BACKOFF_MAX = 3.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "login_attempts_per_account": 3,
            "login_attempts_per_address": 6,
            "login_backoff_base_seconds": BACKOFF_BASE,
            "login_backoff_max_seconds": BACKOFF_MAX,
            "trusted_proxies": f"{PROXY}, 192.168.0.0/16",
            "password_hash_threads": 1,
        }
    )


@pytest.fixture
async def alice(app: Any, tenant: Any) -> dict[str, str]:
    await admin.create_user(app.state.runtime.db, tenant.tenant_id, "alice", PASSWORD, "editor")
    return {"tenant_id": tenant.tenant_id, "username": "alice", "password": PASSWORD}


def from_peer(app: Any, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 4321))
    return httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1")


async def attempt(client: httpx.AsyncClient, creds: dict[str, str], **headers: str) -> httpx.Response:
    return await client.post("/auth/login", json=creds, headers=headers)


def retry_after(r: httpx.Response) -> int:
    assert_problem(r, 429, "too-many-requests")
    value = int(r.headers["retry-after"])
    assert 1 <= value <= BACKOFF_MAX + 1
    return value


async def until_not_limited(client: httpx.AsyncClient, creds: dict[str, str], **headers: str) -> httpx.Response:
    """Poll (attempts while locked are not counted) until the lock lapses; fail past the backoff window."""
    deadline = time.monotonic() + BACKOFF_MAX + 5
    while time.monotonic() < deadline:
        r = await attempt(client, creds, **headers)
        if r.status_code != 429:
            return r
        await asyncio.sleep(0.05)  # between polls of the lock, not as synchronisation
    raise AssertionError("still locked after the configured backoff")


async def test_per_account_limit_then_the_right_password_works_again(app, alice):
    async with from_peer(app, "198.51.100.1") as one, from_peer(app, "198.51.100.2") as two:
        wrong = {**alice, "password": "wrong password!"}
        for _ in range(3):
            assert_problem(await attempt(one, wrong), 401)
        # Locked for that account, from any address, even with the right password.
        retry_after(await attempt(one, alice))
        retry_after(await attempt(two, alice))
        # Another account is not locked.
        assert_problem(await attempt(two, {**alice, "username": "bob"}), 401)
        # Once the short backoff passes, the right password works, and resets the account.
        r = await until_not_limited(one, alice)
        assert r.status_code == 200, r.text
        for _ in range(2):
            assert_problem(await attempt(one, wrong), 401)
        assert (await attempt(one, alice)).status_code == 200


async def account_lock(app: Any) -> tuple[int, float]:
    async with app.state.runtime.db.connection() as conn:
        cur = await conn.execute(
            "SELECT attempts, extract(epoch FROM locked_until - last_at)::float8 AS lock FROM login_attempts"
            " WHERE scope = 'account'"
        )
        row = await cur.fetchone()
    assert row is not None
    return row["attempts"], row["lock"]


async def test_backoff_grows_but_stays_bounded(app, alice):
    async with from_peer(app, "198.51.100.3") as c:
        wrong = {**alice, "password": "wrong password!"}
        locks = []
        for n in range(1, 5):
            assert_problem(await until_not_limited(c, wrong), 401)
            if n >= 3:
                attempts, lock = await account_lock(app)
                locks.append((attempts, round(lock, 3)))
    # From the third attempt on: 2 s, then doubling (4 s) but capped at LILY_LOGIN_BACKOFF_MAX_SECONDS.
    assert locks == [(3, BACKOFF_BASE), (4, BACKOFF_MAX)]


async def test_per_address_limit(app, alice):
    async with from_peer(app, "198.51.100.9") as c, from_peer(app, "198.51.100.10") as other:
        for i in range(6):  # six different accounts from one address
            assert_problem(await attempt(c, {**alice, "username": f"guess{i}"}), 401)
        retry_after(await attempt(c, {**alice, "username": "guess-more"}))
        retry_after(await attempt(c, alice))
        # Another address is not limited.
        assert (await attempt(other, alice)).status_code == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies(app, alice):
    creds = {**alice, "username": "nobody"}
    # From an untrusted peer, X-Forwarded-For is ignored: rotating it does not escape the address limit.
    async with from_peer(app, "203.0.113.50") as direct:
        for i in range(6):
            assert_problem(
                await attempt(direct, {**creds, "username": f"n{i}"}, **{"X-Forwarded-For": f"1.1.1.{i}"}), 401
            )
        retry_after(await attempt(direct, creds, **{"X-Forwarded-For": "1.1.1.99"}))
    # Through a trusted proxy, each client is its own address (the rightmost untrusted hop).
    async with from_peer(app, PROXY) as proxy:
        for i in range(8):
            r = await attempt(proxy, {**creds, "username": f"m{i}"}, **{"X-Forwarded-For": f"203.0.113.{i}"})
            assert_problem(r, 401)
        # A client that forges a hop to the left is still counted by its real address.
        for i in range(6):
            r = await attempt(proxy, {**creds, "username": f"f{i}"}, **{"X-Forwarded-For": f"9.9.9.{i}, 203.0.113.77"})
            assert_problem(r, 401)
        r = await attempt(proxy, creds, **{"X-Forwarded-For": "9.9.9.200, 203.0.113.77"})
        retry_after(r)
        # The same client through two trusted proxies is still that client.
        r = await attempt(proxy, creds, **{"X-Forwarded-For": "203.0.113.77, 192.168.3.4"})
        retry_after(r)


def test_client_address_rule() -> None:
    trusted = parse_networks("10.0.0.1, 192.168.0.0/16, ::1")
    assert client_address("203.0.113.1", ["6.6.6.6"], trusted) == "203.0.113.1"
    assert client_address("10.0.0.1", ["6.6.6.6, 203.0.113.9"], trusted) == "203.0.113.9"
    assert client_address("10.0.0.1", ["6.6.6.6", "203.0.113.9, 192.168.1.1"], trusted) == "203.0.113.9"
    assert client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", ["192.168.1.1"], trusted) == "192.168.1.1"
    assert client_address("::1", ["2001:db8::5"], trusted) == "2001:db8::5"
    assert client_address("10.0.0.1", ["not-an-ip"], trusted) == "not-an-ip"
    assert client_address(None, ["1.2.3.4"], trusted) == "unknown"
    assert client_address("10.0.0.9", ["1.2.3.4"], ()) == "10.0.0.9"
    # An IPv6 client is counted by its /64: rotating within it changes nothing.
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.1") == address_key("203.0.113.1")
    with pytest.raises(ValueError, match="nonsense"):
        parse_networks("10.0.0.1, nonsense")


async def test_failed_logins_are_audited_without_secrets(app, alice):
    async with from_peer(app, "198.51.100.20") as c:
        assert_problem(await attempt(c, {**alice, "password": "wrong password!"}, **{"X-Request-ID": "r1"}), 401)
        assert_problem(await attempt(c, {**alice, "username": "mallory"}), 401)
        assert (await attempt(c, alice)).status_code == 200
        assert_problem(await attempt(c, {**alice, "tenant_id": "no-such-tenant"}), 401)
    async with app.state.runtime.db.tenant(alice["tenant_id"]) as conn:
        cur = await conn.execute(
            "SELECT action, actor, request_id, detail FROM audit_log WHERE action LIKE 'auth.%' ORDER BY audit_id"
        )
        rows = await cur.fetchall()
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("auth.login_failed", "anonymous"),
        ("auth.login_failed", "anonymous"),
        ("auth.login", "user:alice"),
    ]
    assert rows[0]["request_id"] == "r1"
    assert rows[0]["detail"] == {"address": "198.51.100.20", "username": "alice", "reason": "wrong_password"}
    assert rows[1]["detail"]["reason"] == "unknown_user" and rows[1]["detail"]["username"] == "mallory"
    assert PASSWORD not in str(rows) and "wrong password!" not in str(rows)


async def test_a_disabled_user_is_refused_and_audited(app, alice):
    await admin.update_user(app.state.runtime.db, alice["tenant_id"], "alice", disabled=True)
    async with from_peer(app, "198.51.100.21") as c:
        assert_problem(await attempt(c, alice), 401)
    async with app.state.runtime.db.tenant(alice["tenant_id"]) as conn:
        cur = await conn.execute("SELECT detail FROM audit_log WHERE action = 'auth.login_failed'")
        assert [r["detail"]["reason"] for r in await cur.fetchall()] == ["disabled"]


async def test_argon2_runs_off_the_event_loop(app, alice, tenant):
    """While logins hash, the event loop keeps serving: a request sent after them finishes before them."""
    async with from_peer(app, "198.51.100.30") as c, from_peer(app, "198.51.100.31") as other:
        done: list[str] = []

        async def log_in(i: int) -> None:
            # Different accounts, so the per-account limit stays out of the way; all go to one hash thread.
            r = await attempt(c, {**alice, "username": f"user{i}"})
            assert r.status_code == 401
            done.append("login")

        logins = [asyncio.create_task(log_in(i)) for i in range(5)]
        await asyncio.sleep(0)  # let the logins start first
        r = await other.get("/auth/validate", headers=tenant.headers("viewer"))
        assert r.status_code == 200
        done.append("validate")
        await asyncio.gather(*logins)
    assert done.index("validate") < len(done) - 1, done
    assert any(t.name.startswith("lily-argon2") for t in threading.enumerate())


async def test_the_hash_queue_is_bounded() -> None:
    hasher = Hasher(1)
    hashed = await hasher.hash(PASSWORD)
    results = await asyncio.gather(
        *(hasher.verify(hashed, PASSWORD) for _ in range(2 * (1 + QUEUE_PER_THREAD))), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, TooManyRequests)]
    assert refused and all(r is True for r in results if not isinstance(r, TooManyRequests))
    assert len(results) - len(refused) == 1 + QUEUE_PER_THREAD
    assert await hasher.verify(hashed, PASSWORD) is True  # the queue drains


@pytest.fixture
async def server(app: Any) -> AsyncIterator[str]:
    """The app on a real loopback socket, configured as `lily serve` configures uvicorn."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", proxy_headers=False, log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)  # polling the server's start flag
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/lily/v1"
    srv.should_exit = True
    await task


async def test_over_a_real_socket_forwarded_for_from_loopback_is_not_believed(server, alice):
    # 127.0.0.1 is not in LILY_TRUSTED_PROXIES here, so its X-Forwarded-For must be ignored.
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        for i in range(6):
            r = await http.post(
                "/auth/login", json={**alice, "username": f"s{i}"}, headers={"X-Forwarded-For": f"5.5.5.{i}"}
            )
            assert_problem(r, 401)
        r = await http.post("/auth/login", json=alice, headers={"X-Forwarded-For": "5.5.5.100"})
        retry_after(r)
