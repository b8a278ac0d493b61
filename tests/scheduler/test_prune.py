"""The built-in ``prune_expired`` job: deletes only what has expired, in every tenant, in bounded batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from lily import admin
from lily.config import Settings
from lily.plugins import load_plugins
from lily.plugins.protocols import JobContext
from lily.scheduler import builtin
from lily.scheduler.builtin import PruneExpired
from lily.store.db import Database, as_pipeline

TENANTS = ("acme", "globex")


async def seed(db: Database, *, expired_tokens: int = 1) -> None:
    now = datetime.now(UTC)
    for tenant in TENANTS:
        await admin.create_tenant(db, tenant)
        async with db.tenant(tenant) as conn:
            for i in range(expired_tokens):
                await conn.execute(
                    "INSERT INTO revoked_tokens (tenant_id, jti, expires_at) VALUES (%s, %s, %s)",
                    [tenant, f"expired-{i}", now - timedelta(minutes=5)],
                )
            await conn.execute(
                "INSERT INTO revoked_tokens (tenant_id, jti, expires_at) VALUES (%s, 'live', %s)",
                [tenant, now + timedelta(hours=1)],
            )
            for key, age in (("old", timedelta(days=2)), ("fresh", timedelta(minutes=1))):
                await conn.execute(
                    "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response, created_at)"
                    " VALUES (%s, %s, 'h', '{}', %s)",
                    [tenant, key, now - age],
                )
    async with db.system() as conn:
        await as_pipeline(conn)
        for state, finished_days_ago in (("succeeded", 40), ("failed", 1)):
            finished = now - timedelta(days=finished_days_ago)
            await conn.execute(
                "INSERT INTO job_runs (run_id, job, trigger, scheduled_for, state, started_at, finished_at)"
                " VALUES (gen_random_uuid(), 'x', 'schedule', %s, %s, %s, %s)",
                [finished, state, finished, finished],
            )
        # Old but unfinished: never pruned (a new leader closes it instead).
        await conn.execute(
            "INSERT INTO job_runs (run_id, job, trigger, scheduled_for, state, started_at)"
            " VALUES (gen_random_uuid(), 'y', 'schedule', %s, 'running', %s)",
            [now - timedelta(days=50), now - timedelta(days=50)],
        )


async def left(db: Database, tenant: str) -> dict[str, list[str]]:
    async with db.tenant(tenant) as conn:
        tokens = await (await conn.execute("SELECT jti FROM revoked_tokens ORDER BY jti")).fetchall()
        keys = await (await conn.execute("SELECT key FROM idempotency_keys ORDER BY key")).fetchall()
    return {"tokens": [r["jti"] for r in tokens], "keys": [r["key"] for r in keys]}


def context(db: Database, settings: Settings) -> JobContext:
    return JobContext(db=db, settings=settings, scheduled_for=datetime.now(UTC), run_id="test")


async def test_prune_deletes_only_what_expired_in_every_tenant(db: Database, settings: Settings) -> None:
    await seed(db)
    result = await PruneExpired().run(context(db, settings))
    assert result == {"revoked_tokens": 2, "idempotency_keys": 2, "job_runs": 1}
    for tenant in TENANTS:
        assert await left(db, tenant) == {"tokens": ["live"], "keys": ["fresh"]}
    async with db.system() as conn:
        await as_pipeline(conn)
        cur = await conn.execute("SELECT job, state FROM job_runs ORDER BY job")
        assert await cur.fetchall() == [{"job": "x", "state": "failed"}, {"job": "y", "state": "running"}]
    # Nothing left to do: a second run deletes nothing.
    assert await PruneExpired().run(context(db, settings)) == {
        "revoked_tokens": 0,
        "idempotency_keys": 0,
        "job_runs": 0,
    }


async def test_the_age_limits_come_from_settings(db: Database, settings: Settings) -> None:
    await seed(db)
    strict = settings.model_copy(update={"idempotency_key_ttl_seconds": 3600, "job_runs_retention_days": 60})
    result = await PruneExpired().run(context(db, strict))
    assert result["idempotency_keys"] == 2 and result["job_runs"] == 0


async def test_a_backlog_is_pruned_in_batches(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(db, expired_tokens=7)
    monkeypatch.setattr(builtin, "BATCH", 3)
    result = await PruneExpired().run(context(db, settings))
    assert result["revoked_tokens"] == 14
    for tenant in TENANTS:
        assert (await left(db, tenant))["tokens"] == ["live"]


async def test_the_scheduler_role_cannot_delete_a_live_revocation_even_unrestricted(db: Database) -> None:
    """Defence in depth: the row policy, not only the job's WHERE, keeps live revocations (a deleted one
    would let a logged-out token back in)."""
    await seed(db)
    async with db.system() as conn:
        await as_pipeline(conn)
        deleted = (await conn.execute("DELETE FROM revoked_tokens")).rowcount
    assert deleted == 2
    # Nor may it touch tenant data it has no business with.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        async with db.system() as conn:
            await as_pipeline(conn)
            await conn.execute("DELETE FROM users")
    for tenant in TENANTS:
        assert (await left(db, tenant))["tokens"] == ["live"]


def test_prune_expired_is_registered_through_its_entry_point(settings: Settings) -> None:
    jobs: dict[str, Any] = dict(load_plugins(settings).jobs)
    assert isinstance(jobs["prune_expired"], PruneExpired)
    assert jobs["prune_expired"].schedule == "*/10 * * * *"
