"""The name-words trigger (migrations 0012, 0019): writing one asset probes the tenant's word index for
the name's words; it never reads the whole dictionary, however many words the tenant has. And
``lily_name_words``, the words of a name, is inlined into the trigger's statements (migration 0025: called
as a function, each call planned its query again, 0.4 ms for every name the pipeline wrote)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.store.test_search_isolation import plans_of


async def test_one_new_asset_probes_the_words_index(database_url: str, tenant: Any) -> None:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "INSERT INTO asset_name_words (tenant_id, word) SELECT %s, 'word' || g FROM generate_series(1, 5000) g",
            [tenant.tenant_id],
        )
        conn.execute("ANALYZE asset_name_words")
        conn.execute("LOAD 'auto_explain'")
        conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
            " SET client_min_messages = log"
        )
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant.tenant_id])
            plan = plans_of(
                conn,
                "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, version, created_at, updated_at)"
                " VALUES (%s, gen_random_uuid(), 'pg://db/s/fct_orders_zebra', 'table', 'fct_orders_zebra', 1, now(),"
                " now()) RETURNING asset_id",
                [tenant.tenant_id],
            )
        words = [p for p in plan.split("Query Text:") if "INSERT INTO asset_name_words" in p]
        assert len(words) == 1, plan
        assert "asset_name_words_pkey on asset_name_words x" in words[0], words[0]
        assert "Hash" not in words[0] and "Seq Scan on asset_name_words" not in words[0], words[0]
        found = conn.execute(
            "SELECT word FROM asset_name_words WHERE tenant_id = %s AND word IN ('fct', 'orders', 'zebra')",
            [tenant.tenant_id],
        ).fetchall()
        assert sorted(r["word"] for r in found) == ["fct", "orders", "zebra"]


def _words(conn: psycopg.Connection[Any], name: str | None) -> list[str]:
    rows = conn.execute("SELECT w FROM lily_name_words(%s) w ORDER BY w", [name]).fetchall()
    return [r[0] for r in rows]


def _functions_scanned(plan: dict[str, Any]) -> set[str]:
    found = {plan["Function Name"]} if plan.get("Node Type") == "Function Scan" else set()
    for child in plan.get("Plans", []):
        found |= _functions_scanned(child)
    return found


def test_the_words_of_a_name(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Lower case, split at anything not alphanumeric, 3 to 64 characters, no bare numbers, each once.
        assert _words(conn, "Fct_Orders-2024.daily_ORDERS_v2_" + "x" * 65) == ["daily", "fct", "orders"]
        assert _words(conn, "ab") == []
        assert _words(conn, None) == []


def test_the_trigger_statements_inline_it(database_url: str) -> None:
    """As the trigger calls it (a lateral call per changed row): no scan of lily_name_words remains, only of
    the split it is made of."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT DISTINCT c.t, w FROM (VALUES ('a', 'fct_orders_daily')) c(t, n),"
            " lily_name_words(c.n) w"
        ).fetchone()
        assert row is not None
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        assert _functions_scanned(plan[0]["Plan"]) == {"regexp_split_to_table"}
