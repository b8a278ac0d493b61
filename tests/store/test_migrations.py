"""The migrations reach the canonical schema, and an applied migration can never change silently."""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from lily.store import migrate as migrations
from lily.store.schema import describe
from tests.conftest import TEST_PARTITIONS, with_dbname
from tests.test_cli import env, lily  # noqa: F401  (env is a fixture)

SCHEMA_FILE = Path(str(resources.files("lily.store").joinpath("schema.txt")))


def test_migrations_build_the_canonical_schema(pg_admin_url: str, template_db: str) -> None:
    with psycopg.connect(with_dbname(pg_admin_url, template_db)) as conn:
        built = describe(conn)
    expected = SCHEMA_FILE.read_text()
    if built != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), built.splitlines(keepends=True), "schema.txt", "migrations"
            )
        )
        pytest.fail(
            "the migrations build a schema that differs from src/lily/store/schema.txt; if the change is "
            "intended, regenerate it with `python -m lily.store.schema <admin-url> > src/lily/store/schema.txt`"
            f":\n{diff}"
        )


def test_the_description_sees_what_matters(pg_admin_url: str, template_db: str) -> None:
    """A schema description that missed RLS, an index or a policy would let exactly that drift."""
    with psycopg.connect(with_dbname(pg_admin_url, template_db)) as conn:
        lines = describe(conn).splitlines()
    assert "table assets rls=t force_rls=t options=" in lines
    assert any(line.startswith("index CREATE UNIQUE INDEX") and " ON public.assets " in line for line in lines)
    assert any(line.startswith("policy assets.tenant_isolation ALL") for line in lines)
    assert any(line.startswith("function lily_append_event(") for line in lines)
    assert any(line.startswith("grant assets lily_app ") for line in lines)
    assert not any("schema_migrations" in line for line in lines)


def test_checksums_are_recorded(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT name, checksum FROM schema_migrations ORDER BY version").fetchall()
    shipped = {name: migrations.checksum(sql) for _, name, sql in migrations.available()}
    assert rows and dict(rows) == shipped


def test_a_changed_migration_stops_start_up(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = migrations.available()
    number, name, sql = shipped[0]
    monkeypatch.setattr(migrations, "available", lambda: [(number, name, sql + "\n-- edited"), *shipped[1:]])
    with pytest.raises(migrations.MigrationDrift, match=re.escape(f"{name} was changed after it was applied")):
        migrations.migrate(database_url, partitions=TEST_PARTITIONS)


def test_an_unknown_applied_migration_stops_start_up(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, '9999_future.sql', 'x')")
    with pytest.raises(migrations.MigrationDrift, match=re.escape("9999_future.sql applied, which this release")):
        migrations.migrate(database_url, partitions=TEST_PARTITIONS)


def test_lily_migrate_reports_drift_in_one_line(env: dict[str, str], database_url: str) -> None:  # noqa: F811
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")
    r = lily(env, "migrate")
    assert r.returncode == 1
    assert "Error: migration 0001_baseline.sql was changed after it was applied" in r.stderr
    assert "Traceback" not in r.stderr
