"""The embedded server's supervisor when another process sharing LILY_HOME restarted the server.

``lily worker`` joined to ``lily serve``'s home supervises too, and whichever notices a dead postmaster
first starts it again. The library stops the server when the last process using it exits, but only the
postmaster that process's handle knows: one that never saw the restart must still stop the new server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from lily.embedded import Supervisor, embedded_database_url, stop_embedded

from .processes import postmasters

# Started in another process: joins (or starts) the server under the home, and leaves it running.
_START_ELSEWHERE = (
    "import sys, pathlib; from lily.embedded import embedded_database_url as e; e(pathlib.Path(sys.argv[1]))"
)


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # between polls of process state, not as synchronisation


def test_the_last_process_stops_a_server_another_process_restarted(server_home: Path) -> None:
    home = server_home / "shared-home"
    embedded_database_url(home)  # this process's handle, as `lily serve`'s
    try:
        [first] = postmasters(home)
        old_children = psutil.Process(first).children()
        os.kill(first, signal.SIGKILL)
        # Gone for good: reaped (a zombie's pid still looks alive to the library, which would join it) and
        # its orphans exited (PostgreSQL refuses to start while they hold its shared memory).
        _wait(
            lambda: not any(psutil.pid_exists(p) for p in [first, *(c.pid for c in old_children)]),
            "the old server to go",
        )
        # Another process sharing the home restarts it before this one's supervisor looks.
        subprocess.run([sys.executable, "-c", _START_ELSEWHERE, str(home)], check=True, timeout=120)
        [second] = postmasters(home)
        assert second != first
        supervisor = Supervisor(home, interval=0.05)
        supervisor.start()
        supervisor.stop()
        assert supervisor.restarts == 0  # it never saw the server down
    finally:
        stop_embedded(home)  # the last user exits
    left = postmasters(home)
    for pid in left:  # not left behind for the rest of the run when this fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the last process to exit left the restarted server running"
