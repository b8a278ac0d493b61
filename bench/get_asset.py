"""``GET /metadata/{id}`` of an asset with a 20-version history: what the response model costs.

    python bench/get_asset.py                      # fresh database on --admin-url, app in-process
    python bench/get_asset.py --requests 5000

The app runs in-process (``httpx.ASGITransport``, no sockets), one client, so the figure is the
server-side cost of a read: routing, authentication, two queries, rendering. It prints the p50/p99 and
mean of the route as it is, and beside it the cost of validating the same answer through the declared
response model (``AssetDocument``), which the route avoids by returning an already-serialised response.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import figures  # bench/figures.py, beside this script
import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.api.app import create_app
from lily.config import Settings
from lily.store.migrate import migrate


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def report(name: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p50, p99 = figures.percentile(ordered, 50) * 1000, figures.percentile(ordered, 99) * 1000
    print(f"{name:<48} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms   mean {statistics.fmean(ordered) * 1000:6.3f} ms")


async def scenario(url: str, requests: int) -> None:
    settings = Settings(database_url=url, home=Path(tempfile.mkdtemp()), jwt_secret="bench-" + "x" * 32, partitions=8)
    app = create_app(settings, url, run_workers=True)
    async with app.router.lifespan_context(app):
        db = app.state.runtime.db
        await admin.create_tenant(db, "bench")
        key = await admin.create_api_key(db, "bench", "bench", "editor")
        headers = {"Authorization": f"Bearer {key}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench/lily/v1", headers=headers) as http:
            asset = None
            for i in range(20):
                r = await http.post(
                    "/metadata",
                    json={"qualified_name": "pg://bench/s.t", "type": "table", "attributes": {"i": i, "k": "v" * 40}},
                )
                r.raise_for_status()
                asset = r.json()
            assert asset is not None and asset["version"] == 20
            path = f"/metadata/{asset['asset_id']}"
            for _ in range(200):  # warm-up
                (await http.get(path)).raise_for_status()
            route: list[float] = []
            for _ in range(requests):
                t = time.perf_counter()
                r = await http.get(path)
                route.append(time.perf_counter() - t)
                r.raise_for_status()
            body = r.json()
    report("GET /metadata/{id} (20 versions), as served", route)
    try:
        from lily.api.models import AssetWithHistory as AssetDocument
    except ImportError:
        print("(no AssetDocument response model in this tree: nothing to compare)")
        return
    validate: list[float] = []
    for _ in range(requests):
        t = time.perf_counter()
        AssetDocument.model_validate(body).model_dump(mode="json")
        validate.append(time.perf_counter() - t)
    report("  + validating it through the response model", validate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    name = f"lily_bench_get_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        url = with_dbname(args.admin_url, name)
        migrate(url, partitions=8)
        asyncio.run(scenario(url, args.requests))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
