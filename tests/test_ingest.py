"""``lily ingest`` end to end: the real CLI uploads to a real ``lily serve`` over loopback HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import TEST_PARTITIONS

LILY = [sys.executable, "-c", "from lily.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """``lily serve`` on a loopback port, on the test's database; its URL once it accepts requests."""
    port = free_port()
    env = {
        **os.environ,
        "LILY_DATABASE_URL": database_url,
        "LILY_HOME": str(tmp_path),
        "LILY_PARTITIONS": str(TEST_PARTITIONS),
        "LILY_PORT": str(port),
    }
    proc = await asyncio.create_subprocess_exec(*LILY, "serve", env=env, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        # uvicorn logs this line once the socket is bound and the lifespan has run: no polling needed.
        async with asyncio.timeout(30):
            while b"Application startup complete" not in (line := await proc.stderr.readline()):
                assert line, "lily serve exited before it was ready"
        drain = asyncio.create_task(proc.stderr.read())  # keep the pipe from filling up
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()
    drain.cancel()


async def run_ingest(*args: str, token: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *LILY,
        "ingest",
        *args,
        env={**os.environ, "LILY_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def assets(db: Any, tenant_id: str) -> dict[str, dict[str, Any]]:
    async with db.tenant(tenant_id) as conn:
        cur = await conn.execute("SELECT qualified_name, version, tags FROM assets")
        return {row["qualified_name"]: row for row in await cur.fetchall()}


async def test_ingest_ndjson_and_json_files(server: str, tenant: Any, db: Any, tmp_path: Path) -> None:
    ndjson = tmp_path / "assets.ndjson"
    ndjson.write_bytes(
        b"".join(
            orjson.dumps({"qualified_name": f"pg://wh/s.t{i}", "type": "table", "tags": ["bulk"]}) + b"\n"
            for i in range(500)
        )
    )
    code, out, err = await run_ingest(str(ndjson), "--url", server, token=tenant.keys["editor"])
    assert code == 0, out + err
    assert "succeeded" in out and "applied 500, failed 0" in out
    assert "upload assets.ndjson" in err  # the progress bar went to stderr
    rows = await assets(db, tenant.tenant_id)
    assert len(rows) == 500 and rows["pg://wh/s.t7"]["tags"] == ["bulk"]

    # A JSON array with no telling extension, one bad item: reported by index, exit status 3.
    array = tmp_path / "export.txt"
    array.write_bytes(
        orjson.dumps(
            [{"qualified_name": "pg://wh/s.t1", "type": "view"}, {"qualified_name": "pg://wh/s.bad", "type": "9"}]
        )
    )
    code, out, _ = await run_ingest(str(array), "--url", server, "--no-progress", token=tenant.keys["editor"])
    assert code == 3, out
    assert "partial" in out and "item 1: type:" in out
    assert (await assets(db, tenant.tenant_id))["pg://wh/s.t1"]["version"] == 2


async def test_ingest_refused(server: str, tenant: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'[{"qualified_name": "pg://x", "type": "table"}]')
    code, _, err = await run_ingest(str(path), "--url", server, token=tenant.keys["viewer"])
    assert code == 1 and "403" in err
