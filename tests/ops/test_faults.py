"""Fault tests with real processes: ``kill -9`` of the embedded postmaster, and SIGTERM of ``lily serve``,
each in the middle of a write load. No acknowledged write may be lost or applied twice."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .processes import (
    ACKNOWLEDGED,
    Load,
    Serve,
    assert_each_acknowledged_write_once,
    postmasters,
    serve_on_embedded,
    wait_for,
)

OUTAGE_ANSWER_SECONDS = 1.5  # an answer during the outage: 503 at once, never a 30 s wait
RECOVERY_SECONDS = 30.0
SIGTERM_EXIT_SECONDS = 10.0


def tenant_with_key(serve: Serve, tenant: str = "acme") -> str:
    serve.lily("admin", "create-tenant", tenant)
    return serve.lily("admin", "create-api-key", tenant, "load", "--role", "editor")


def kill_postmaster_mid_load(serve: Serve, load: Load, *, before: int) -> dict[str, float | None]:
    """Kill -9 the postmaster once ``before`` writes are acknowledged; figures of the outage it causes.

    Requests sent during the outage must answer 503 fast (nothing else: no 500, no dropped connection);
    requests in flight at the kill may also end acknowledged (their event was in the log already).
    If the supervisor brings the server back before any request is sent, there may be no 503 at all.
    """
    wait_for(lambda: load.count_acknowledged() >= before, timeout=60, what=f"{before} acknowledged writes")
    old_pid = serve.postmaster_pid()
    killed = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)

    def recovered() -> list[float]:
        return [a.ended for a in load.snapshot() if a.began > killed and a.status in ACKNOWLEDGED]

    try:
        back = min(wait_for(recovered, timeout=RECOVERY_SECONDS, what="writes to succeed again"))
    except AssertionError:
        after = [(round(a.began - killed, 2), round(a.ended - a.began, 2), a.status) for a in load.snapshot()]
        raise AssertionError(f"no recovery: {after[-20:]}\n{serve.output()[-3000:]}") from None
    during = [a for a in load.snapshot() if a.began > killed and a.ended < back]
    in_flight = [a for a in load.snapshot() if a.began <= killed < a.ended]
    assert all(a.status == 503 for a in during), {a.status for a in during}  # no 500, no dropped connection
    assert all(a.status in ACKNOWLEDGED | {503} for a in in_flight), {a.status for a in in_flight}
    slowest = max((a.ended - a.began for a in during), default=0.0)
    assert slowest < OUTAGE_ANSWER_SECONDS, f"a 503 took {slowest:.2f}s"
    failed = [a.ended for a in [*during, *in_flight] if a.status == 503]
    assert serve.proc is not None and serve.proc.poll() is None, "lily serve died with its database"
    assert serve.postmaster_pid() != old_pid, "the postmaster was not restarted"
    return {
        "time_to_503": min(failed) - killed if failed else None,
        "recovery": back - killed,
        "slowest_503": slowest,
        "answered_503": len(failed),
    }


def test_kill_9_of_the_postmaster_mid_load() -> None:
    with serve_on_embedded() as serve:
        key = tenant_with_key(serve)
        with Load(serve.base, key, threads=3) as load:
            figures = kill_postmaster_mid_load(serve, load, before=30)
            settled = load.count_acknowledged()
            wait_for(lambda: load.count_acknowledged() >= settled + 30, timeout=30, what="writes after recovery")
        assert_each_acknowledged_write_once(serve, "acme", load.acknowledged)
        print(f"kill -9: {figures} acknowledged={len(load.acknowledged)}")
        assert serve.terminate() < SIGTERM_EXIT_SECONDS
        assert postmasters(serve.home) == []


def test_sigterm_of_lily_serve_mid_load() -> None:
    with serve_on_embedded() as serve:
        key = tenant_with_key(serve)
        with Load(serve.base, key, threads=3) as load:
            wait_for(lambda: load.count_acknowledged() >= 50, timeout=60, what="50 acknowledged writes")
            exit_seconds = serve.terminate()
        assert serve.proc is not None and serve.proc.returncode == 0, serve.output()
        assert exit_seconds < SIGTERM_EXIT_SECONDS, exit_seconds
        assert postmasters(serve.home) == [], "lily serve left its embedded PostgreSQL running"
        print(f"SIGTERM mid-load: exited in {exit_seconds:.2f}s, acknowledged={len(load.acknowledged)}")
        serve.start()  # restarted: every acknowledged write is there, once
        assert_each_acknowledged_write_once(serve, "acme", load.acknowledged)
        assert serve.terminate() < SIGTERM_EXIT_SECONDS


def test_sigterm_while_the_database_is_down_exits_at_once() -> None:
    with serve_on_embedded() as serve:
        key = tenant_with_key(serve)
        with Load(serve.base, key, threads=2) as load:
            wait_for(lambda: load.count_acknowledged() >= 10, timeout=60, what="10 acknowledged writes")
            os.kill(serve.postmaster_pid(), signal.SIGKILL)
            exit_seconds = serve.terminate()
        assert exit_seconds < SIGTERM_EXIT_SECONDS, exit_seconds
        print(f"SIGTERM during an outage: exited in {exit_seconds:.2f}s")
        serve.start()
        assert_each_acknowledged_write_once(serve, "acme", load.acknowledged)
        assert serve.terminate() < SIGTERM_EXIT_SECONDS


@pytest.mark.slow
def test_two_processes_sharing_a_home_restart_one_server() -> None:
    """``lily worker`` joined to ``lily serve``'s LILY_HOME: both supervise, only one server comes back."""
    with serve_on_embedded() as serve:
        key = tenant_with_key(serve)
        worker, worker_log = serve.spawn("worker")
        try:
            wait_for(lambda: "consuming" in worker_log.read_text(), timeout=60, what="lily worker to start")
            with Load(serve.base, key, threads=2) as load:
                kill_postmaster_mid_load(serve, load, before=10)
                settled = load.count_acknowledged()
                wait_for(lambda: load.count_acknowledged() >= settled + 10, timeout=30, what="writes after recovery")
            assert worker.poll() is None, worker_log.read_text()
            assert len([p for p in postmasters(serve.home) if p == serve.postmaster_pid()]) == 1
            assert len(postmasters(serve.home)) == 1, postmasters(serve.home)  # one postmaster, not two
            assert_each_acknowledged_write_once(serve, "acme", load.acknowledged)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(SIGTERM_EXIT_SECONDS)
        assert worker.returncode == 0
        assert serve.terminate() < SIGTERM_EXIT_SECONDS
        assert postmasters(serve.home) == []


@pytest.mark.slow
def test_repeated_kills_under_a_heavier_load() -> None:
    with serve_on_embedded() as serve:
        key = tenant_with_key(serve)
        with Load(serve.base, key, threads=8) as load:
            for round_ in range(3):
                figures = kill_postmaster_mid_load(serve, load, before=200 * (round_ + 1))
                print(f"kill -9 round {round_}: {figures}")
            exit_seconds = serve.terminate()  # SIGTERM mid-load, too
        assert exit_seconds < SIGTERM_EXIT_SECONDS
        serve.start()
        assert_each_acknowledged_write_once(serve, "acme", load.acknowledged)
        print(f"acknowledged={len(load.acknowledged)} attempts={len(load.attempts)}")
        assert serve.terminate() < SIGTERM_EXIT_SECONDS
