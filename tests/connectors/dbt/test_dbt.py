"""The ``dbt`` connector with a real ``dbt build`` (dbt-core 1.10, dbt-postgres 1.9) of a small project
against the local PostgreSQL: models, sources and seeds as assets named like their relations, lineage
and column lineage, test results, the same relation's OpenLineage event on the same asset; uploads;
and the paths a config may not reach.

dbt-core 1.10 pins ``pathspec<0.13`` and Lily's mypy needs ``pathspec>=1``, so dbt cannot join Lily's
``[test]`` extra: it lives in its own virtualenv (``LILY_DBT_VENV``, default
``~/.cache/lily/dbt-1.10-pg-1.9``), created from the package registry by the first run; the real-dbt
tests skip, saying why, when it cannot be made.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest

from lily.config import Settings
from lily.connectors.dbt import artifacts
from lily.connectors.dbt.translate import translate
from lily.domain.errors import Invalid
from lily.scheduler.connectors import ConnectorPolls
from lily.store import assets as store_assets
from tests.conftest import TEST_PARTITIONS

PROJECT = Path(__file__).parent / "project"
VENV = Path(os.environ.get("LILY_DBT_VENV", "~/.cache/lily/dbt-1.10-pg-1.9")).expanduser()
PINS = ["dbt-core~=1.10.0", "dbt-postgres~=1.9.0"]
NAMESPACE = "postgres://127.0.0.1:5432"


# ---------------------------------------------------------------- paths (no dbt needed)


def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "manifest.json").write_text('{"nodes": {}}')
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "manifest.json").write_text('{"nodes": {}}')
    (root / "escape").symlink_to(outside)
    (root / "ok2").mkdir()
    (root / "ok2" / "manifest.json").symlink_to(outside / "manifest.json")

    assert artifacts.from_directory(root, "ok").manifest == {"nodes": {}}
    for bad, why in [
        ("../secret", "'..'"),
        ("ok/../../secret", "'..'"),
        (str(outside), "relative"),
        ("escape", "outside"),
        ("missing", "not a directory"),
    ]:
        with pytest.raises(Invalid) as err:
            artifacts.from_directory(root, bad)
        assert why in err.value.detail and err.value.extra["errors"][0]["field"] == "config.path"
    with pytest.raises(Invalid, match="cannot be read"):  # a symlinked file is not followed
        artifacts.from_directory(root, "ok2")


def test_artifacts_are_bounded_and_checked(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "manifest.json").write_text('{"nodes": {}, "pad": "' + "x" * 5000 + '"}')
    with pytest.raises(Invalid, match="larger than 1024 bytes"):
        artifacts.from_directory(tmp_path, "big", max_bytes=1024)
    with pytest.raises(Invalid, match=r"manifest\.json is required"):
        artifacts.from_files({"catalog.json": b"{}"})
    with pytest.raises(Invalid, match="not JSON") as err:
        artifacts.from_files({"manifest.json": b"{nope"})
    assert err.value.extra["errors"][0]["field"] == "files.manifest.json"
    with pytest.raises(Invalid, match="no 'nodes'"):
        artifacts.from_files({"manifest.json": b'{"sources": {}}'})


def test_ephemeral_models_are_looked_through() -> None:
    def node(uid: str, kind: str, materialized: str, deps: list[str], **extra: Any) -> dict[str, Any]:
        name = uid.rsplit(".", 1)[1]
        return {
            "unique_id": uid,
            "resource_type": kind,
            "name": name,
            "alias": name,
            "database": "wh",
            "schema": "s",
            "config": {"materialized": materialized, "tags": ["x"]},
            "depends_on": {"nodes": deps},
            **extra,
        }

    manifest = {
        "metadata": {"adapter_type": "postgres"},
        "nodes": {
            "seed.p.a": node("seed.p.a", "seed", "seed", []),
            "model.p.eph": node("model.p.eph", "model", "ephemeral", ["seed.p.a"]),
            "model.p.out": node("model.p.out", "model", "table", ["model.p.eph"], meta={"owner": ["ann", "bob"]}),
        },
        "sources": {},
    }
    out = {t.qualified_name: t for t in translate(manifest, None, None, "postgres://h:5432").objects}
    assert sorted(out) == ["postgres://h:5432/wh.s.a", "postgres://h:5432/wh.s.out"]  # no asset for the ephemeral
    table = out["postgres://h:5432/wh.s.out"]
    assert table.asset["owners"] == ["ann", "bob"] and table.asset["tags"] == ["x"]
    assert table.lineage is not None and table.lineage["upstreams"] == ["postgres://h:5432/wh.s.a"]


# ---------------------------------------------------------------- a real dbt build


def _dbt() -> Path:
    """The dbt executable of the test virtualenv, made from the package registry when missing."""
    exe = VENV / "bin" / "dbt"
    if exe.exists():
        return exe
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", *PINS], check=True, capture_output=True, timeout=900
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(VENV, ignore_errors=True)
        pytest.skip(f"cannot install {' and '.join(PINS)} into {VENV} from the package registry: {exc}")
    return exe


@pytest.fixture(scope="module")
def dbt_build(source_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(artifacts root, warehouse database): the project built into a fresh database, its artifacts in
    ``root/shop`` (manifest and run_results from ``dbt build``, catalog from ``dbt docs generate``)."""
    pg_admin_url = source_server_url
    url = urlsplit(pg_admin_url)
    if not url.hostname or url.hostname.startswith("/"):
        pytest.skip(f"dbt needs a PostgreSQL on TCP: {pg_admin_url} is not")
    port = url.port or 5432
    dbt = _dbt()
    database = f"lily_dbt_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database}")
        conn.execute(f"CREATE DATABASE {database}")
    warehouse = pg_admin_url.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA raw;"
            " CREATE TABLE raw.orders"
            " (order_id int PRIMARY KEY, customer_id int, amount_cents int, ordered_at timestamptz);"
            " CREATE TABLE raw.customers (customer_id int PRIMARY KEY, name text, country_code text);"
            " INSERT INTO raw.customers VALUES (1, 'Ada', 'FR'), (2, 'Bo', 'JP');"
            " INSERT INTO raw.orders VALUES (10, 1, 1250, now()), (11, 2, 300, now());"
        )
    work = tmp_path_factory.mktemp("dbt")
    project = work / "project"
    shutil.copytree(PROJECT, project)
    (work / "profiles.yml").write_text(
        "lily_shop:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n"
        f"      host: {url.hostname}\n      port: {port}\n      user: {url.username or 'postgres'}\n"
        f'      password: "{url.password or ""}"\n      dbname: {database}\n      schema: analytics\n      threads: 2\n'
    )
    root = work / "root"
    shop = root / "shop"
    shop.mkdir(parents=True)
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}
    common = ["--profiles-dir", str(work), "--log-path", str(work / "logs")]
    for command, target in (["build"], work / "build"), (["docs", "generate"], work / "docs"):
        done = subprocess.run(
            [str(dbt), *command, *common, "--target-path", str(target)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:]
    for name, target in (("manifest.json", "build"), ("run_results.json", "build"), ("catalog.json", "docs")):
        shutil.copy(work / target / name, shop / name)
    yield root, database
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


@pytest.fixture
def settings(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    root = request.getfixturevalue("dbt_build")[0] if "dbt_build" in request.fixturenames else tmp_path
    return Settings(
        database_url=database_url,
        home=tmp_path,
        jwt_secret="test-secret-" + "x" * 32,
        partitions=TEST_PARTITIONS,
        pool_min_size=1,
        pool_max_size=8,
        dbt_artifacts_root=root,
    )


class Lily:
    def __init__(self, app: Any, client: Any, tenant: Any) -> None:
        self.runtime, self.client, self.tenant = app.state.runtime, client, tenant

    async def connector(self, config: dict[str, Any], name: str = "shop-dbt") -> str:
        r = await self.client.post(
            f"/connectors/{self.tenant.tenant_id}",
            json={"name": name, "type": "dbt", "config": config},
            headers=self.tenant.headers("admin"),
        )
        assert r.status_code == 201, r.text
        return str(r.json()["connector_id"])

    async def run(self, connector_id: str, queue: bool = True) -> dict[str, Any]:
        if queue:
            r = await self.client.post(
                f"/connectors/{self.tenant.tenant_id}/{connector_id}/run", headers=self.tenant.headers("admin")
            )
            assert r.status_code == 202, r.text
        assert await ConnectorPolls().start_due(self.runtime.db, self.runtime.settings, wait=True) >= 1
        r = await self.client.get(
            f"/connectors/{self.tenant.tenant_id}/{connector_id}/runs", headers=self.tenant.headers("admin")
        )
        run: dict[str, Any] = r.json()["items"][0]
        return run

    async def assets(self, names: list[str], deadline: float = 10.0) -> dict[str, Any]:
        """The assets, once the pipeline applied every one of them (polled with a deadline)."""
        end = time.monotonic() + deadline
        while True:
            async with self.runtime.db.tenant(self.tenant.tenant_id) as conn:
                found = await store_assets.current_by_names(conn, self.tenant.tenant_id, names)
            if len(found) == len(names) and all(not a.placeholder for a in found.values()):
                return found
            assert time.monotonic() < end, f"not applied in {deadline} s: {sorted(set(names) - set(found))}"
            await asyncio.sleep(0.05)


def qn(database: str, relation: str) -> str:
    return f"{NAMESPACE}/{database}.{relation}"


async def test_a_real_dbt_build_lands_as_assets_lineage_and_test_results(
    dbt_build: tuple[Path, str], app: Any, client: Any, tenant: Any
) -> None:
    _, database = dbt_build
    lily = Lily(app, client, tenant)
    connector_id = await lily.connector({"namespace": NAMESPACE, "path": "shop"})
    run = await lily.run(connector_id)
    assert run["state"] == "succeeded", run
    assert (run["seen"], run["created"], run["removed"]) == (6, 6, 0)

    names = {
        r: qn(database, r)
        for r in (
            "analytics.customer_revenue",
            "analytics.stg_orders",
            "analytics.stg_customers",
            "analytics.country_codes",
            "raw.orders",
            "raw.customers",
        )
    }
    found = await lily.assets(list(names.values()))
    revenue = found[names["analytics.customer_revenue"]]
    assert revenue.type == "table" and revenue.description == "Revenue per customer, all time."
    assert revenue.owners == ["finance-analytics"] and revenue.tags == ["finance", "daily"]
    assert [c["name"] for c in revenue.attributes["columns"]] == [
        "customer_id",
        "customer_name",
        "country_name",
        "revenue",
    ]
    assert revenue.attributes["columns"][3]["type"] == "numeric"
    assert revenue.source == f"connector:{connector_id}"
    tests = {t["test"]: t for t in revenue.attributes["dbt_tests"]}
    assert tests["accepted_values"]["status"] == "warn" and tests["accepted_values"]["failures"] == 2
    assert tests["accepted_values"]["column"] == "revenue"
    assert tests["unique"]["status"] == "pass" and tests["not_null"]["node"] == "model.lily_shop.customer_revenue"
    assert found[names["analytics.stg_orders"]].type == "view"
    assert found[names["raw.customers"]].owners == ["crm-team"]
    source_tests = {t["test"] for t in found[names["raw.orders"]].attributes["dbt_tests"]}
    assert source_tests == {"not_null", "unique"}

    # Model lineage and column lineage from the compiled SQL.
    r = await client.get(
        f"/metadata/lineage/{revenue.asset_id}",
        params={"direction": "upstream", "depth": 5, "columns": "true"},
        headers=tenant.headers("viewer"),
    )
    assert r.status_code == 200, r.text
    graph = r.json()
    upstream = {n["qualified_name"] for n in graph["nodes"]}
    assert {names["analytics.stg_orders"], names["raw.orders"], names["analytics.country_codes"]} <= upstream
    text = orjson.dumps(graph).decode()
    assert '"amount"' in text and '"amount_cents"' in text  # revenue ← stg_orders.amount ← raw.orders.amount_cents

    # A second run of the same artifacts writes nothing.
    again = await lily.run(connector_id)
    assert (again["state"], again["unchanged"], again["events"]) == ("succeeded", 6, 0)

    # The same relation's OpenLineage event lands on the same asset.
    event = {
        "eventType": "COMPLETE",
        "eventTime": "2026-12-05T00:00:00Z",
        "producer": "https://example.com/test",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "dbt", "name": "lily_shop.customer_revenue"},
        "inputs": [{"namespace": NAMESPACE, "name": f"{database}.analytics.stg_orders"}],
        "outputs": [{"namespace": NAMESPACE, "name": f"{database}.analytics.customer_revenue"}],
    }
    r = await client.post("http://lily.test/api/v1/lineage", json=event, headers=tenant.headers("editor"))
    assert r.status_code == 201, r.text
    end = time.monotonic() + 10
    while True:
        after = (await lily.assets([names["analytics.customer_revenue"]]))[names["analytics.customer_revenue"]]
        if after.source == "openlineage":
            break
        assert time.monotonic() < end, "the OpenLineage event was not applied"
        await asyncio.sleep(0.05)
    assert after.asset_id == revenue.asset_id and after.description == revenue.description


async def test_upload_runs_and_refuses_bad_files(
    dbt_build: tuple[Path, str], app: Any, client: Any, tenant: Any, other_tenant: Any
) -> None:
    root, database = dbt_build
    lily = Lily(app, client, tenant)
    connector_id = await lily.connector({"namespace": NAMESPACE})  # no path: uploads only
    url = f"/connectors/{tenant.tenant_id}/{connector_id}/artifacts"
    body = {name: (name, (root / "shop" / name).read_bytes(), "application/json") for name in artifacts.FILES}

    # Not the caller's tenant, not a dbt connector, not a connector: byte for byte the same 404.
    other = other_tenant.headers("admin")
    crossed = await client.post(
        f"/connectors/{other_tenant.tenant_id}/{connector_id}/artifacts", files=body, headers=other
    )
    unknown = str(uuid.uuid4())
    missing = await client.post(f"/connectors/{other_tenant.tenant_id}/{unknown}/artifacts", files=body, headers=other)
    crawler = await client.post(
        f"/connectors/{tenant.tenant_id}",
        json={"name": "pg", "type": "postgres", "config": {"dsn": "postgresql://u@db.example.com/x"}},
        headers=tenant.headers("admin"),
    )
    crawler_id = crawler.json()["connector_id"]
    not_dbt = await client.post(f"/connectors/{tenant.tenant_id}/{crawler_id}/artifacts", files=body, headers=other)
    assert crossed.status_code == missing.status_code == 404 and not_dbt.status_code in (404, 403)
    assert crossed.content.replace(connector_id.encode(), b"X") == missing.content.replace(unknown.encode(), b"X")
    not_dbt = await client.post(
        f"/connectors/{tenant.tenant_id}/{crawler_id}/artifacts", files=body, headers=tenant.headers("editor")
    )
    assert not_dbt.status_code == 404
    assert not_dbt.content.replace(crawler_id.encode(), b"X") == missing.content.replace(unknown.encode(), b"X")
    r = await client.post(url, params={"dry": "1"}, files=body, headers=tenant.headers("editor"))
    assert r.status_code == 422 and r.json()["errors"][0] == {
        "field": "dry",
        "message": "unknown query parameter",
        "in": "query",
    }
    assert (await client.post(url, files=body, headers=tenant.headers("viewer"))).status_code == 403

    # Bad files are refused, naming the file; nothing is stored or run.
    r = await client.post(
        url, files={"manifest.json": ("m", b"{nope", "application/json")}, headers=tenant.headers("editor")
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.manifest.json"
    r = await client.post(
        url, files={"catalog.json": ("c", b"{}", "application/json")}, headers=tenant.headers("editor")
    )
    assert r.status_code == 422 and "manifest.json is required" in r.text
    r = await client.post(url, files={"notes.txt": ("n", b"{}", "text/plain")}, headers=tenant.headers("editor"))
    assert r.status_code == 422
    runs = await client.get(f"/connectors/{tenant.tenant_id}/{connector_id}/runs", headers=tenant.headers("admin"))
    assert runs.json()["items"] == []

    r = await client.post(url, files=body, headers=tenant.headers("editor"))
    assert r.status_code == 202, r.text
    assert r.json()["relations"] == 6 and r.json()["state"] == "queued"
    run = await lily.run(connector_id, queue=False)
    assert run["state"] == "succeeded" and run["created"] == 6, run
    await lily.assets([qn(database, "analytics.customer_revenue")])


async def test_a_path_outside_the_root_fails_the_run(
    dbt_build: tuple[Path, str], app: Any, client: Any, tenant: Any
) -> None:
    lily = Lily(app, client, tenant)
    connector_id = await lily.connector({"namespace": NAMESPACE, "path": "../etc"})
    run = await lily.run(connector_id)
    assert run["state"] == "failed" and "'..'" in run["error"]
