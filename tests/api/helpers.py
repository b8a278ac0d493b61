"""Shared checks for the API tests: problem+json shape, and "nothing changed" fingerprints of a tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from lily.store.db import Database

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM, response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


def fields_of(problem: dict[str, Any]) -> set[str]:
    return {e["field"] for e in problem.get("errors", [])}


async def fingerprint(db: Database, tenant_id: str) -> dict[str, Any]:
    """Everything a write could touch for ``tenant_id``: assets, versions, audit entries, events, tokens."""
    async with db.tenant(tenant_id) as conn:
        out: dict[str, Any] = {}
        for name, sql in {
            "assets": "SELECT asset_id, version, type, name, description, owners, tags, attributes, deleted_at"
            " FROM assets ORDER BY asset_id",
            "versions": "SELECT asset_id, version FROM asset_versions ORDER BY asset_id, version",
            "audit": "SELECT audit_id, action FROM audit_log ORDER BY audit_id",
            "events": "SELECT event_id, status FROM events ORDER BY event_id",
            "revoked": "SELECT jti FROM revoked_tokens ORDER BY jti",
        }.items():
            cur = await conn.execute(sql)
            out[name] = await cur.fetchall()
    return out


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], qualified_name: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post(
        "/metadata", json={"qualified_name": qualified_name, "type": "table", **fields}, headers=headers
    )
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def count_round_trips(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """From now on, per connection ``db`` checks out, the I/O psycopg waited for (one entry per round trip:
    ``BaseCursor._execute_gen`` for one statement, pipeline generators for a pipeline)."""
    checkouts: list[list[str]] = []
    real = db._checkout

    @asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        waits: list[str] = []
        checkouts.append(waits)
        async with real() as conn:
            wait = conn.wait

            async def noted(gen: Any, *args: Any, **kwargs: Any) -> Any:
                waits.append(gen.__qualname__)
                return await wait(gen, *args, **kwargs)

            conn.wait = noted  # type: ignore[method-assign]
            try:
                yield conn
            finally:
                del conn.wait  # the pooled connection goes back as it was

    monkeypatch.setattr(db, "_checkout", counted)
    return checkouts


async def deny_viewers_finance(client: httpx.AsyncClient, tenant: Any) -> None:
    """A steward's deny-read policy: viewers may not read assets tagged ``finance``."""
    policy = {
        "name": "no finance for viewers",
        "effect": "deny",
        "actions": ["read"],
        "principals": ["role:viewer"],
        "resources": {"tags": ["finance"]},
    }
    r = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
    assert r.status_code == 201, r.text
