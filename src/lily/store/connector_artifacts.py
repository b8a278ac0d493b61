"""dbt artifacts uploaded to a connector (table ``connector_artifacts``, migration 0013), as the tenant."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from uuid import UUID

from lily.store.db import Conn


async def replace(conn: Conn, tenant_id: str, connector_id: UUID, files: Mapping[str, bytes], actor: str) -> None:
    """The connector's uploaded artifacts become ``files`` (an earlier upload's other files are dropped:
    an upload is one dbt invocation's set)."""
    await conn.execute(
        "DELETE FROM connector_artifacts WHERE tenant_id = %s AND connector_id = %s", [tenant_id, connector_id]
    )
    for name, body in files.items():
        await conn.execute(
            "INSERT INTO connector_artifacts (tenant_id, connector_id, name, body, bytes, uploaded_by)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [tenant_id, connector_id, name, gzip.compress(body, compresslevel=5), len(body), actor],
        )


async def load(conn: Conn, tenant_id: str, connector_id: UUID) -> dict[str, bytes]:
    cur = await conn.execute(
        "SELECT name, body FROM connector_artifacts WHERE tenant_id = %s AND connector_id = %s",
        [tenant_id, connector_id],
    )
    return {r["name"]: gzip.decompress(r["body"]) for r in await cur.fetchall()}
