"""Scheduler leadership: how long until another ``lily scheduler`` process leads after the leader dies.

    python bench/scheduler.py                       # 3 processes, 10 kills with SIGKILL, poll 1 s (the default)
    python bench/scheduler.py --poll 0.2 --kills 20 --processes 4
    python bench/scheduler.py --signal TERM         # a clean stop instead: the leader resigns

It creates a fresh database on ``--admin-url`` (a role that may create databases; default
``postgresql://postgres@127.0.0.1:5432/postgres``) and starts ``--processes`` schedulers against it.
Then, ``--kills`` times: it waits until every process has its leadership session open, kills the
leader, measures the time until another process holds the lock (read from ``pg_locks``), and starts a
replacement so the count stays the same. It prints each takeover and the p50/max, and checks that no
due time ran twice (``job_runs``). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from tempfile import TemporaryDirectory

import psycopg
from psycopg.conninfo import make_conninfo

LILY = [sys.executable, "-c", "from lily.cli import main; main()", "scheduler"]
LOCK = (0x4C4A4F42, 0)  # lily.store.jobs.LEADER_LOCK

LEADER = """
SELECT l.node FROM scheduler_leader l WHERE EXISTS (
    SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted AND k.classid = %s AND k.objid = %s
    AND k.objsubid = 2 AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


def leader_pid(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    row = conn.execute(LEADER, list(LOCK)).fetchone()
    return int(str(row[0]).split(":")[1]) if row else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--poll", type=float, default=1.0, help="LILY_SCHEDULER_POLL_SECONDS")
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    args = parser.parse_args()

    name = f"lily_bench_sched_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(args.admin_url, dbname=name)
    sig = signal.SIGKILL if args.signal == "KILL" else signal.SIGTERM
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        with TemporaryDirectory() as home:
            env = {
                **os.environ,
                "LILY_DATABASE_URL": url,
                "LILY_HOME": home,
                "LILY_SCHEDULER_POLL_SECONDS": str(args.poll),
                "LILY_LOG_LEVEL": "WARNING",
            }

            def spawn() -> None:
                p = subprocess.Popen(LILY, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs[p.pid] = p

            spawn()  # the first one migrates alone, then the rest join
            with psycopg.connect(url, autocommit=True) as watch:
                deadline = time.monotonic() + 60
                while leader_pid_safe(watch) is None:
                    assert time.monotonic() < deadline, "no scheduler started leading"
                    time.sleep(0.05)
                for _ in range(args.processes - 1):
                    spawn()
                takeovers: list[float] = []
                for i in range(args.kills):
                    # Every process up and trying to lead (a starting one would time its start-up, not a takeover).
                    deadline = time.monotonic() + 60
                    while sessions(watch) < args.processes:
                        assert time.monotonic() < deadline, "the schedulers did not all connect"
                        time.sleep(0.05)
                    leader = leader_pid(watch)
                    assert leader in procs, f"leader {leader} is not one of ours"
                    procs[leader].send_signal(sig)
                    killed = time.monotonic()
                    while (now := leader_pid(watch)) in (None, leader):
                        assert time.monotonic() - killed < 60, "no takeover within 60 s"
                        time.sleep(0.005)
                    takeovers.append(time.monotonic() - killed)
                    print(f"kill {i + 1}: pid {leader} → pid {now} leads after {takeovers[-1]:.3f} s")
                    procs.pop(leader).wait(timeout=30)
                    spawn()
                twice = watch.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM job_runs WHERE trigger = 'schedule'"
                    " GROUP BY job, tenant_id, scheduled_for HAVING count(*) > 1) d"
                ).fetchone()
            print(
                f"\n{args.processes} scheduler processes, poll {args.poll} s, SIG{args.signal}, {args.kills} kills:"
                f" takeover p50 {statistics.median(takeovers):.3f} s, max {max(takeovers):.3f} s;"
                f" due times run twice: {twice[0] if twice else '?'}"
            )
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def sessions(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Scheduler processes with a leader-lock session open (leading or trying to)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'lily-scheduler %'"
    ).fetchone()
    return int(str(row[0])) if row else 0


def leader_pid_safe(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """``leader_pid`` before the first process has created the schema."""
    try:
        return leader_pid(conn)
    except psycopg.errors.UndefinedTable:
        return None


if __name__ == "__main__":
    sys.exit(main())
