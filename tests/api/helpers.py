"""Shared checks for the API tests: problem+json shape, and "nothing changed" fingerprints of a tenant."""

from __future__ import annotations

from typing import Any

import httpx

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
