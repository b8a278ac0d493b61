"""A canonical, diffable description of the schema the migrations build.

``src/lily/store/schema.txt`` is the committed description; ``tests/store/test_migrations.py`` builds a
database from the migrations and fails if its description differs, so the migrations and the schema
we review cannot drift apart. After adding a migration, regenerate it::

    python -m lily.store.schema postgresql://postgres@127.0.0.1:5432/postgres > src/lily/store/schema.txt

The description is read from the catalog rather than from ``pg_dump``, whose client must be at least
the server's version and whose output changes between releases. Everything that shapes behaviour is
included — columns, constraints, indexes, row-level security and its policies, functions, triggers,
grants to the application roles, storage parameters — in a stable order, one line per fact, so a
review diff reads like the change. Function bodies are summarised by a hash: their text is in the
migrations.
"""

from __future__ import annotations

import hashlib
import sys

import psycopg

# Each query yields one line per row, in a stable order. NOT NULL constraints of PostgreSQL 18 are
# catalogued in pg_constraint (contype 'n'); they are already covered by the column lines.
_QUERIES: tuple[tuple[str, str], ...] = (
    (
        "table",
        """SELECT format('%s rls=%s force_rls=%s options=%s', c.relname, c.relrowsecurity, c.relforcerowsecurity,
                  coalesce(array_to_string(c.reloptions, ','), '')) || CASE c.relpersistence
                  WHEN 'u' THEN ' unlogged' ELSE '' END
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname""",
    ),
    (
        "column",
        """SELECT format('%s.%s %s%s%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                  coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''))
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY c.relname, a.attname""",
    ),
    (
        "constraint",
        """SELECT format('%s.%s %s', c.relname, k.conname, pg_get_constraintdef(k.oid))
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND k.contype IN ('p', 'u', 'f', 'c', 'x')
           ORDER BY c.relname, k.conname""",
    ),
    (
        "index",
        """SELECT pg_get_indexdef(i.indexrelid)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' ORDER BY c.relname""",
    ),
    (
        "policy",
        """SELECT format('%s.%s %s to=%s using=%s check=%s', tablename, policyname, cmd,
                  array_to_string(roles, ','), coalesce(qual, ''), coalesce(with_check, ''))
           FROM pg_policies WHERE schemaname = 'public' ORDER BY tablename, policyname""",
    ),
    (
        "function",
        """SELECT format('%s(%s) returns %s %s security_definer=%s body_md5=%s', p.proname,
                  pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid), l.lanname,
                  p.prosecdef, md5(p.prosrc))
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
           WHERE n.nspname = 'public' ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)""",
    ),
    (
        "trigger",
        """SELECT format('%s.%s %s', c.relname, t.tgname, md5(pg_get_triggerdef(t.oid)))
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY c.relname, t.tgname""",
    ),
    (
        "grant",
        """SELECT format('%s %s %s', table_name, grantee, string_agg(privilege_type, ',' ORDER BY privilege_type))
           FROM information_schema.role_table_grants
           WHERE table_schema = 'public' AND grantee IN ('lily_app', 'lily_pipeline')
           GROUP BY table_name, grantee ORDER BY table_name, grantee""",
    ),
    (
        "sequence",
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind = 'S' ORDER BY c.relname""",
    ),
)

# Bookkeeping of the migrator itself, not part of the application's schema.
_IGNORED_TABLES = ("schema_migrations",)


def describe(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The schema of ``conn``'s database as sorted lines, ``<kind> <fact>``."""
    lines: list[str] = []
    for kind, query in _QUERIES:
        for (fact,) in conn.execute(query.encode()).fetchall():
            text = " ".join(str(fact).split())  # one line per fact, whitespace normalised
            if text.split(".", 1)[0].split(" ", 1)[0] in _IGNORED_TABLES or any(
                f" ON public.{t} " in text for t in _IGNORED_TABLES
            ):
                continue
            lines.append(f"{kind} {text}")
    return "\n".join(lines) + "\n"


def fingerprint(description: str) -> str:
    return hashlib.sha256(description.encode()).hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lily.store.schema POSTGRES_ADMIN_URL > src/lily/store/schema.txt", file=sys.stderr)
        return 2
    from lily.store.migrate import build_scratch_database

    with build_scratch_database(argv[1]) as url, psycopg.connect(url) as conn:
        sys.stdout.write(describe(conn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
