"""The acceptance test of leadership: two real ``lily scheduler`` processes, the leader killed with ``kill -9``.

Both run the ``test_beat`` job (due every second) from the test plugin distribution, which also writes
its own trace of every run it makes. The leader is killed while it has a run in hand; the other process
must lead within 10 s and go on running the job, and afterwards no due time has run twice — neither in
the scheduler's records nor in the job's own trace — and no run is left 'running'.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from lily.config import Settings
from lily.store.db import APP_ROLE, PIPELINE_ROLE
from tests.pipeline.support import until

from .conftest import JOB_PLUGINS, OPERATOR_TOKEN

TAKEOVER_LIMIT_SECONDS = 10


def spawn_scheduler(
    database_url: str, settings: Settings, home: Path, name: str, **extra_env: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LILY_DATABASE_URL": database_url,
        "LILY_PARTITIONS": str(settings.partitions),
        "LILY_HOME": str(home),
        "LILY_SCHEDULER_POLL_SECONDS": "0.2",
        "LILY_TEST_JOB_EFFECTS": "1",
        "LILY_LOG_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(JOB_PLUGINS), os.environ.get("PYTHONPATH", "")]),
        **extra_env,
    }
    with open(home / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-c", "from lily.cli import main; main()", "scheduler"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def fetch(conn: psycopg.AsyncConnection[dict[str, Any]], sql: str, params: list[Any] | None = None) -> Any:
    return await (await conn.execute(sql, params)).fetchall()


async def leader_pid(conn: psycopg.AsyncConnection[dict[str, Any]]) -> int | None:
    """The pid of the process holding the leader lock now (None if none does)."""
    rows = await fetch(
        conn,
        "SELECT l.node FROM scheduler_leader l WHERE EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory'"
        " AND k.granted AND k.classid = %s AND k.objid = 0 AND k.objsubid = 2"
        " AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        [0x4C4A4F42],
    )
    return int(rows[0]["node"].split(":")[1]) if rows else None


async def beats(conn: psycopg.AsyncConnection[dict[str, Any]], pid: int, after: Any = None) -> int:
    rows = await fetch(
        conn,
        "SELECT count(*) AS n FROM job_runs WHERE job = 'test_beat' AND state = 'succeeded'"
        " AND split_part(runner, ':', 2)::int = %s AND (%s::timestamptz IS NULL OR scheduled_for > %s)",
        [pid, after, after],
    )
    return int(rows[0]["n"])


async def test_kill_9_the_leader_and_the_other_process_leads_within_seconds(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(
            "CREATE TABLE test_job_effects (job text NOT NULL, scheduled_for timestamptz NOT NULL,"
            " run_id uuid NOT NULL, pid integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        owner.execute(f"GRANT SELECT, INSERT ON test_job_effects TO {APP_ROLE}, {PIPELINE_ROLE}")
    procs = [spawn_scheduler(database_url, settings, tmp_path, f"scheduler-{i}") for i in range(2)]
    watch = await psycopg.AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row)
    await watch.execute(f"SET ROLE {PIPELINE_ROLE}")
    try:
        pids = {p.pid: p for p in procs}

        async def leading() -> int | None:
            pid = await leader_pid(watch)
            return pid if pid in pids and await beats(watch, pid) >= 3 else None

        victim_pid = await until(leading, timeout=60, interval=0.05, what="a leader that has run the job 3 times")
        victim = pids.pop(victim_pid)
        [survivor] = pids.values()

        async def mid_run() -> bool:
            # The worst moment: the leader has a run in hand (claimed, not finished), started so recently
            # that it is sure to be still working (each run works for 200 ms) when the signal lands.
            rows = await fetch(
                watch,
                "SELECT 1 FROM job_runs WHERE state = 'running' AND job = 'test_beat'"
                " AND started_at > clock_timestamp() - interval '50 milliseconds'",
            )
            return bool(rows)

        await until(mid_run, timeout=10, interval=0.005, what="the leader to be mid-run")
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert victim.wait(timeout=10) == -signal.SIGKILL
        [[killed_at]] = [list(r.values()) for r in await fetch(watch, "SELECT clock_timestamp() AS t")]

        async def taken_over() -> bool:
            return await leader_pid(watch) == survivor.pid

        await until(taken_over, timeout=TAKEOVER_LIMIT_SECONDS, interval=0.02, what="the survivor to lead")
        takeover = time.monotonic() - killed

        async def survivor_runs() -> bool:
            return await beats(watch, survivor.pid, after=killed_at) >= 3

        await until(survivor_runs, timeout=15, interval=0.05, what="the survivor to run the job")
        assert survivor.poll() is None, "the surviving scheduler must still be running"
        survivor.send_signal(signal.SIGTERM)  # a clean stop: finishes its run, gives up the lock, exits 0
        assert survivor.wait(timeout=20) == 0
        assert await leader_pid(watch) is None

        runs = await fetch(watch, "SELECT * FROM job_runs WHERE job = 'test_beat' ORDER BY scheduled_for")
        due_times = [r["scheduled_for"] for r in runs]
        assert len(due_times) == len(set(due_times)), "a due time ran twice"
        effects = await fetch(watch, "SELECT * FROM test_job_effects ORDER BY scheduled_for")
        traced = [e["scheduled_for"] for e in effects]
        assert len(traced) == len(set(traced)), "the job itself saw a due time twice"
        # Every run the job made was a claimed run, by the process that claimed it.
        by_id = {str(r["run_id"]): r for r in runs}
        for e in effects:
            run = by_id[str(e["run_id"])]
            assert run["scheduled_for"] == e["scheduled_for"] and run["runner"].split(":")[1] == str(e["pid"])
        assert {r["state"] for r in runs} <= {"succeeded", "failed"}, "no run left running"
        victims = [r for r in runs if r["runner"].split(":")[1] == str(victim_pid)]
        cut = [r for r in victims if r["state"] == "failed"]
        assert cut and all(r["error"].startswith("abandoned") for r in cut), "the killed run is closed as abandoned"
        # The survivor did not replay the seconds it missed one by one: its first run is the latest due
        # time when it took over, and its runs are one per second from there.
        theirs = [r["scheduled_for"] for r in runs if r["runner"].split(":")[1] == str(survivor.pid)]
        assert theirs and theirs[0] >= max(r["scheduled_for"] for r in victims)
        assert theirs[0] >= killed_at.replace(microsecond=0), "missed due times must not be replayed in a burst"
        print(f"\nleader killed mid-run; the other scheduler process led after {takeover:.2f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        await watch.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_standalone_scheduler_serves_its_metrics_to_the_operator(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    proc = spawn_scheduler(
        database_url,
        settings,
        tmp_path,
        "scheduler-metrics",
        LILY_METRICS_PORT=str(port),
        LILY_OPERATOR_TOKEN=OPERATOR_TOKEN,
        LILY_TEST_JOB_EFFECTS="0",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def leading_and_ran() -> str | None:
                try:
                    r = await client.get(url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
                except httpx.TransportError:
                    return None  # not listening yet
                text = r.text
                ran = 'lily_scheduler_runs_total{job="test_beat",outcome="succeeded"}' in text
                return text if "lily_scheduler_leader 1.0" in text and ran else None

            await until(leading_and_ran, timeout=60, interval=0.1, what="the scheduler's metrics to show it leads")
            assert (await client.get(url)).status_code == 401
            assert (await client.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_metrics_port_without_an_operator_token_stops_start_up(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    proc = spawn_scheduler(database_url, settings, tmp_path, "scheduler-nometrics", LILY_METRICS_PORT=str(free_port()))
    assert proc.wait(timeout=60) != 0
    assert "LILY_OPERATOR_TOKEN" in (tmp_path / "scheduler-nometrics.log").read_text()
