"""The API is its contract: schemathesis (every check, and the stateful phase) finds 0 failures.

The app runs as a real HTTP server on loopback (uvicorn in a thread, with its pipeline workers) on a
fresh database, with an admin API key; schemathesis reads ``/openapi.json`` from it. The seed is fixed
and the examples bounded, so a run is repeatable and fits CI.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import psycopg
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck

from lily import admin
from lily.api.app import create_app
from lily.config import Settings
from lily.store.db import Database
from tests.conftest import TEST_PARTITIONS, with_dbname

from .helpers import assert_problem

SEED = 20261201
EXAMPLES = 12  # per operation
STATEFUL_EXAMPLES = 15
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


# A schema-valid request may still break a rule JSON Schema cannot state: a cursor or ETag this API did
# not issue, a read-only member that differs from the stored value, a self-loop in lineage. Lily answers
# those 422 (or 412 for a stale ETag) naming the field, which the positive-data check must accept.
# Malformed input (400) and server errors stay failures.
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "checks": {
            # A body over the size limit is refused before it is parsed (413), invalid or not.
            "negative_data_rejection": {
                "expected-statuses": [
                    "400",
                    "401",
                    "403",
                    "404",
                    "405",
                    "406",
                    "409",
                    "413",
                    "415",
                    "422",
                    "428",
                    "429",
                ],
            },
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "412", "422", "429"],
            },
        },
    }
)


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    """``GET /changes`` long-polls up to ``wait`` seconds (30) when nothing is new, past the client's
    timeout: a valid wait is cut to 0.2 s here (invalid ones stay, to be refused). Waiting itself is
    tested in tests/changes."""
    query = case.query
    if case.operation.path.endswith("/changes") and isinstance(query, dict) and "wait" in query:
        try:
            wait = float(query["wait"])
        except (TypeError, ValueError):
            return
        if 0.2 < wait <= 30:
            query["wait"] = 0.2


LIVE_DATABASES: dict[int, str] = {}  # port → database of the live server, for per-scenario tenants


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _admin_key(database_url: str, tenant_id: str = "acme") -> str:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        await admin.create_tenant(db, tenant_id)
        return await admin.create_api_key(db, tenant_id, "contract", "admin")
    finally:
        await db.close()


@pytest.fixture(scope="module")
def live(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str]]]:
    """A running server on its own database, and the headers of an admin of tenant ``acme``. One for
    the module: a server per operation would cost more than the operations' examples."""
    name = f"lily_contract_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY WAL_LOG")
    database_url = with_dbname(pg_admin_url, name)
    settings = Settings(
        database_url=database_url,
        home=tmp_path_factory.mktemp("contract"),
        jwt_secret="test-secret-" + "x" * 32,
        partitions=TEST_PARTITIONS,
        write_wait_seconds=10.0,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        max_attempts=3,
    )
    key = asyncio.run(_admin_key(database_url))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, database_url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    LIVE_DATABASES[port] = database_url
    yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    server.should_exit = True
    thread.join(timeout=15)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def api_schema(live: tuple[str, dict[str, str]]) -> Any:
    base, _ = live
    # The app builds its OpenAPI document once, on the first request; on a loaded machine that takes
    # longer than the loader's 10 s read timeout, so build it first without one.
    httpx.get(f"{base}/openapi.json", timeout=120).raise_for_status()
    return schemathesis.openapi.from_url(f"{base}/openapi.json", config=CONFIG)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def auth(live: tuple[str, dict[str, str]]) -> dict[str, str]:
    return live[1]


@schema.parametrize()
@hypothesis.seed(SEED)
@SETTINGS
def test_every_operation_keeps_its_contract(case: Any, auth: dict[str, str]) -> None:
    case.call_and_validate(headers=auth)


def test_stateful_sequences_keep_the_contract(api_schema: Any, live: tuple[str, dict[str, str]]) -> None:
    database_url = LIVE_DATABASES[int(live[0].rsplit(":", 1)[1])]
    machine = api_schema.as_state_machine()
    answered: list[tuple[str, int]] = []
    scenarios = iter(range(10**6))

    class Workflow(machine):  # type: ignore[misc,valid-type]
        # Each scenario starts in a tenant of its own, so the same choices meet the same answers, as
        # Hypothesis requires (with one shared, growing tenant it reports the generation as flaky).
        def setup(self) -> None:
            key = asyncio.run(_admin_key(database_url, f"flow{next(scenarios)}"))
            self.headers = {"Authorization": f"Bearer {key}"}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": self.headers}

        def after_call(self, response: Any, case: Any) -> None:
            answered.append((case.operation.label, response.status_code))

    hypothesis.seed(SEED)(Workflow)
    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],  # a failing sequence is reported as found, unshrunk
        )
    )
    # The phase did not run empty: it made calls, and some of them succeeded (links were followed).
    assert len(answered) >= STATEFUL_EXAMPLES, answered
    assert any(200 <= status < 300 for _, status in answered), answered


async def test_a_wrong_method_is_405_with_allow(client: Any, tenant: Any) -> None:
    h = tenant.headers("admin")
    some_id = "6c1f4c57-0b8e-4c8a-9d0f-4c1f1a7e5e11"
    for method, url, allow in [
        ("PATCH", f"/metadata/{some_id}", "DELETE, GET, PUT"),
        ("DELETE", "/metadata/search", "GET"),  # not taken for /metadata/{asset_id}
        ("PUT", "/metadata/bulk", "POST"),
        ("GET", "/admin/dead-letters/replay", "POST"),
        ("POST", f"/events/{some_id}", "GET"),
    ]:
        r = await client.request(method, url, headers=h)
        assert_problem(r, 405, "method-not-allowed")
        assert r.headers["allow"] == allow, (method, url, r.headers.get("allow"))
