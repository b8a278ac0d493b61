"""Search benchmark: N assets of one tenant, then the search query mix at 1 and 8 clients.

    python bench/search.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/search.py --url ... --assets 200000            # smaller run
    python bench/search.py --url ... --keep / --reuse DBNAME     # keep the database, measure it again

Data (tenant ``bench``, plus a noise tenant with a tenth of the volume): realistic names
(``fct_orders_daily``, ``stg_customer_events`` …) under ``<system>://<db>/<schema>.<name>``, 8 types,
0-3 tags from 50, 0-2 owners from 40, 3-12 column names, descriptions of 10-30 words drawn from a Zipf-
skewed vocabulary of 5,000 words. Loaded by COPY with the search indexes dropped and rebuilt, then
VACUUM ANALYZE.

Every query goes the way ``GET /metadata/search`` goes: ``lily.store.search.queue`` on the application
pool (``lily_app``, RLS on, one pipelined read-only transaction per call: one round trip), as a viewer
with ``--policies N`` access policies in force, all of them applying to it; ``--policy-scope`` says how
much they hide. p50/p99 at 1 client and at 8 concurrent clients (one pool of 8). The reference: the
rare-word predicate as raw SQL on a superuser connection.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import figures  # bench/figures.py, beside this script
import machine  # bench/machine.py, beside this script
import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily.domain.access import Caller
from lily.domain.search import Filters, Sort
from lily.store import search
from lily.store.db import Database
from lily.store.migrate import migrate

TENANT, NOISE = "bench", "noise"
TYPES = ["table"] * 10 + ["view"] * 4 + ["topic"] * 2 + ["dashboard"] * 2 + ["job"] * 2 + ["model", "file", "metric"]
TAGS = [f"tag{i:02d}" for i in range(48)] + ["finance", "pii"]
OWNERS = [f"owner{i:02d}" for i in range(40)]
PREFIXES = ["fct", "dim", "stg", "raw", "int", "agg", "rpt", "tmp"]
ENTITIES = [
    "orders", "customers", "payments", "invoices", "products", "sessions", "events", "shipments", "refunds",
    "accounts", "users", "clicks", "campaigns", "inventory", "suppliers", "returns", "ledger", "budgets",
    "subscriptions", "tickets", "devices", "employees", "contracts", "leads", "visits",
]  # fmt: skip
SUFFIXES = ["", "_daily", "_hourly", "_v2", "_snapshot", "_latest", "_history", "_agg"]
SYSTEMS = ["pg://warehouse", "snowflake://analytics", "kafka://prod", "looker://bi", "s3://lake"]
INDEXES = ("assets_search_doc_filters", "assets_name_prefix", "assets_by_name", "assets_by_updated",
           "assets_qn_prefix", "assets_type")  # fmt: skip
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "da", "gor", "lin", "tar", "ven", "qui", "zel"]


def vocabulary(rng: random.Random, size: int = 5000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def rows(tenant: str, first: int, count: int, rng: random.Random, vocab: list[str]) -> io.BytesIO:
    """COPY text for assets ``first`` to ``first + count``."""
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf, s = 1
    now = datetime(2026, 1, 1, tzinfo=UTC)
    out = io.StringIO()
    for i in range(first, first + count):
        name = f"{rng.choice(PREFIXES)}_{rng.choice(ENTITIES)}{rng.choice(SUFFIXES)}_{i}"
        qn = f"{rng.choice(SYSTEMS)}/s{i % 97}.{name}"
        words = rng.choices(vocab, weights=weights, k=rng.randint(10, 30))
        tags = "{" + ",".join(rng.sample(TAGS, rng.randint(0, 3))) + "}"
        owners = "{" + ",".join(rng.sample(OWNERS, rng.randint(0, 2))) + "}"
        columns = [{"name": f"{rng.choice(ENTITIES)[:-1]}_{c}"} for c in range(rng.randint(3, 12))]
        attrs = orjson.dumps({"columns": columns}).decode().replace("\\", "\\\\")
        stamp = (now - timedelta(seconds=rng.randint(0, 86400 * 365))).isoformat()
        fields = [tenant, str(uuid.UUID(int=rng.getrandbits(128))), qn, rng.choice(TYPES), name, " ".join(words),
                  owners, tags, attrs, "1", stamp, stamp, "api"]  # fmt: skip
        out.write("\t".join(fields) + "\n")
    return io.BytesIO(out.getvalue().encode())


def load(url: str, assets: int, seed: int) -> None:
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (tenant_id, name) VALUES (%s, %s), (%s, %s)", [TENANT, TENANT, NOISE, NOISE])
        defs = {
            name: d
            for name, d in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'assets' AND indexname = ANY(%s)",
                [list(INDEXES)],
            ).fetchall()
        }
        for name in defs:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        t0 = time.perf_counter()
        for tenant, n in ((TENANT, assets), (NOISE, assets // 10)):
            for start in range(0, n, 50_000):
                data = rows(tenant, start, min(50_000, n - start), rng, vocab)
                with conn.cursor().copy(
                    "COPY assets (tenant_id, asset_id, qualified_name, type, name, description, owners, tags,"
                    " attributes, version, created_at, updated_at, source) FROM STDIN"
                ) as copy:
                    while chunk := data.read(1 << 20):
                        copy.write(chunk)
        print(f"loaded {assets + assets // 10} assets in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for d in defs.values():
            conn.execute(d.encode())
        # Every table the load fills: the name-word tables are filled by triggers, and where autovacuum is
        # off (as on this machine's shared server) nothing else would give the planner their statistics.
        conn.execute("VACUUM ANALYZE assets, asset_name_words, asset_name_tokens")
        print(f"indexed and analysed in {time.perf_counter() - t0:.0f} s", flush=True)


Call = Callable[[Database, Caller], Awaitable[Any]]  # one search as the route makes it


def pct(times: list[float], p: float) -> float:
    return figures.percentile(times, p) * 1000


# The searching principal, as the API sets it: every search then applies its access policies. With
# --policies N every query is timed, interleaved, as CALLER (all N policies apply to it) and as
# UNBOUND (a viewer none of them names: the search without policies), so both see the same load.
CALLER = Caller("viewer", ("everyone", "group:analysts", "role:viewer", "user:bench"))
UNBOUND = Caller("viewer", ("everyone", "role:viewer", "user:nobody"))


def add_policies(url: str, n: int, scope: str = "broad") -> None:
    """Replace the tenant's access policies with ``n``, all of them applying to the searching principal
    (CALLER), none to UNBOUND; none selects every asset. A fifth each deny reading a tag, deny reading a
    qualified-name prefix, deny reading a type+tag pair, allow writes on a type, deny writes on a tag.

    ``scope`` says how much the read denials select. ``broad``: each of 20 tags (of 50), 20 prefixes of a
    schema in one system, 20 type+tag pairs; together half of the tenant. ``narrow``: the same kinds and
    counts, as governance usually writes them: two sensitive tags (not the two the query mix filters on,
    which would make those queries contradict the policies and answer nothing at once) and 18 lists of
    asset ids, a schema of one system each, and rarer type+tag pairs; together about a tenth. The cost of
    a bounded scan (a page of a rare filter, a count, the facets) grows with the share it must skip, the
    cost of the policies themselves with their number: the two scopes tell them apart."""
    rng = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        first = "SELECT asset_id FROM assets WHERE tenant_id = %s ORDER BY asset_id LIMIT 2000"  # the same every run
        ids = [r[0] for r in conn.execute(first, [TENANT])]
        conn.execute("DELETE FROM access_policies WHERE tenant_id = %s", [TENANT])
        for i in range(n):
            who = ["group:analysts"] if i % 2 == 0 else ["user:bench"]
            kind = i % 5
            tag = TAGS[(i // 5) % 48]
            asset_ids = None
            effect, actions, prefix, types, tags = {
                0: ("deny", ["read"], None, None, [tag]),
                1: ("deny", ["read"], f"{SYSTEMS[i % len(SYSTEMS)]}/s{i % 97}.", None, None),
                2: ("deny", ["read"], None, [TYPES[-1 - i % 8]], [TAGS[20 + (i // 5) % 28]]),
                3: ("allow", ["write"], None, [TYPES[-1 - i % 8]], None),
                4: ("deny", ["write"], None, None, [tag]),
            }[kind]
            if scope == "narrow" and kind == 0:
                if i < 10:
                    tags = [TAGS[46 + i // 5]]
                else:
                    tags, asset_ids = None, rng.sample(ids, 10)
            elif scope == "narrow" and kind == 1:
                prefix = f"{SYSTEMS[i % len(SYSTEMS)]}/s{i % 97}.{PREFIXES[i % len(PREFIXES)]}_"
            elif scope == "narrow" and kind == 2:
                types = [TYPES[-1 - i % 4]]  # model, file, metric, job: the rarer types
            conn.execute(
                "INSERT INTO access_policies (tenant_id, name, effect, actions, principals, asset_ids,"
                " qualified_name_prefix, types, tags, created_by, updated_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'bench', 'bench')",
                [TENANT, f"p{i}", effect, actions, who, asset_ids, prefix, types, tags],
            )
        conn.execute("ANALYZE access_policies")


async def run(
    db: Database, call: Call, clients: int, per_client: int, callers: Sequence[Caller] = (CALLER,)
) -> list[list[float]]:
    """Times per caller; each client calls once as each caller in turn, ``per_client`` times."""
    times: list[list[float]] = [[] for _ in callers]

    async def client() -> None:
        for _ in range(per_client):
            for i, caller in enumerate(callers):
                t0 = time.perf_counter()
                await call(db, caller)
                times[i].append(time.perf_counter() - t0)

    await asyncio.gather(*(client() for _ in range(clients)))
    return times


async def find(
    db: Database, caller: Caller, filters: Filters, sort: Sort, after: list[Any] | None = None, **more: Any
) -> search.Found:
    """As the route: the page (and facets, total) sent in one pipelined read, fetched after it."""
    async with db.read(TENANT, caller) as conn:
        queued = await search.queue(conn, filters, sort=sort, after=after, **more)
    return await queued.results()


def mix(words: dict[str, str]) -> dict[str, Call]:
    def page(filters: Filters, sort: Sort | None = None, limit: int = 20) -> Call:
        order = sort or (Sort.relevance if filters.q else Sort.name)

        async def call(db: Database, caller: Caller) -> Any:
            return await find(db, caller, filters, order, limit=limit + 1)

        return call

    async def facets(db: Database, caller: Caller) -> Any:
        f = Filters(q=words["common"])
        found = await find(db, caller, f, Sort.relevance, limit=21, facet_names=("type", "tag", "owner"), total=True)
        assert found.total is not None  # the facets' pass counted it: no second statement

    async def deep(db: Database, caller: Caller) -> Any:
        f, after = Filters(types=("table",)), None
        for _ in range(5):
            found = (await find(db, caller, f, Sort.name, after, limit=21)).page
            last = found.hits[19].position
            after = [last["sort_name"], str(last["asset_id"])]

    return {
        f"rare word ({words['rare']})": page(Filters(q=words["rare"])),
        f"common word ({words['common']})": page(Filters(q=words["common"])),
        "type=view & tag=finance": page(Filters(types=("view",), tags=("finance",))),
        f"word+type ({words['mid']}, table)": page(Filters(q=words["mid"], types=("table",))),
        "prefix (fct_ord)": page(Filters(q="fct_ord")),
        "typo (custmers)": page(Filters(q="custmers")),
        "no filter, by name": page(Filters()),
        "updated_at sort, tag=pii": page(Filters(tags=("pii",)), Sort.updated_at),
        "facets type,tag,owner + total (common)": facets,
        "five pages deep (type=table, by name)": deep,
    }


async def measure(url: str, rounds: int, policies: int = 0) -> None:
    with psycopg.connect(url) as conn:
        counts = conn.execute(
            # A repeatable sample: the same words in every run on one database, so runs compare.
            "SELECT word, ndoc FROM ts_stat($$SELECT to_tsvector('simple', description) FROM assets"
            " TABLESAMPLE BERNOULLI (5) REPEATABLE (1) WHERE tenant_id = 'bench'$$) ORDER BY ndoc DESC, word"
        ).fetchall()
    common = counts[0][0]
    mid = counts[len(counts) // 20][0]
    rare = counts[-1][0]  # the least frequent word of the sample (a 5% sample of 1M sees every word)
    words = {"common": common, "mid": mid, "rare": rare}
    print(machine.describe(url))
    db = Database(url, min_size=8, max_size=8, timeout=30)
    await db.open()
    try:
        print(f"{'query':<58}{'1 client p50':>14}{'p99':>8}{'8 clients p50':>15}{'p99':>8}   ms")
        callers = {"": CALLER} if not policies else {" [no policy]": UNBOUND, f" [{policies} policies]": CALLER}
        for label, call in mix(words).items():
            await run(db, call, 1, 5, list(callers.values()))  # warm-up
            ones = await run(db, call, 1, rounds, list(callers.values()))
            eights = await run(db, call, 8, rounds, list(callers.values()))
            for suffix, one, eight in zip(callers, ones, eights, strict=True):
                print(
                    f"{label + suffix:<58}{pct(one, 50):>14.1f}{pct(one, 99):>8.1f}"
                    f"{pct(eight, 50):>15.1f}{pct(eight, 99):>8.1f}"
                )
        async with db.tenant(TENANT, CALLER) as conn:
            found = await search.page(conn, Filters(q=common), sort=Sort.relevance, after=None, limit=21)
            total = await search.count(conn, Filters(q=common))
            print(f"common word: ranked {found.ranked} candidates (bounded), total {total}")
        if policies:
            # What the policies hide decides how many more rows a bounded scan (a count, the facets, a
            # rare tag by date) reads to find the same number of readable ones.
            seen = {}
            for who, caller in (("no policy", UNBOUND), ("policies", CALLER)):
                async with db.tenant(TENANT, caller) as conn:
                    seen[who] = (await search.count(conn, Filters(), bound=1_000_000))[0]
            print(f"the policies' caller may read {seen['policies'] / seen['no policy']:.0%} of the tenant's assets")
    finally:
        await db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        query = (
            "SELECT asset_id FROM assets WHERE tenant_id = %s AND deleted_at IS NULL"
            " AND search_doc @@ websearch_to_tsquery('simple', %s) LIMIT 21"
        )
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            conn.execute(query, [TENANT, rare]).fetchall()
            times.append(time.perf_counter() - t0)
        print(f"raw SQL reference (rare word, superuser, no RLS): p50 {pct(times, 50):.2f} p99 {pct(times, 99):.2f} ms")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("LILY_BENCH_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--assets", type=int, default=int(os.environ.get("LILY_BENCH_ASSETS", 1_000_000)))
    parser.add_argument("--rounds", type=int, default=100, help="calls per client per query")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", metavar="DBNAME")
    parser.add_argument(
        "--policies", type=int, default=0, help="access policies in force for the searching principal (0-500)"
    )
    parser.add_argument(
        "--policy-scope",
        choices=["broad", "narrow"],
        default="broad",
        help="how much the read denials hide: broad about half of the tenant, narrow about a tenth",
    )
    args = parser.parse_args(argv)
    name = args.reuse or f"lily_bench_search_{uuid.uuid4().hex[:8]}"
    url = make_conninfo("", **{**conninfo_to_dict(args.url), "dbname": name})
    with psycopg.connect(args.url, autocommit=True) as admin:
        if not args.reuse:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate(url, partitions=4)  # a kept database too: it is measured with this checkout's functions
        if not args.reuse:
            load(url, args.assets, args.seed)
        add_policies(url, args.policies, args.policy_scope)
        print(f"access policies: {args.policies} ({args.policy_scope})", flush=True)
        asyncio.run(measure(url, args.rounds, args.policies))
    finally:
        if args.keep or args.reuse:
            print(f"database kept: {name}", file=sys.stderr)
        else:
            with psycopg.connect(args.url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
