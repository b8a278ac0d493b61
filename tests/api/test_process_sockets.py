"""The listening sockets of several API processes (lily.api.processes)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from lily.api import processes

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT balances connections on Linux only"
)


def test_each_helper_socket_gets_a_share_of_new_connections() -> None:
    main = processes.bind("127.0.0.1", 0)
    helper = processes.own_socket(socket.socket(fileno=os.dup(main.fileno())))  # as a helper inherits it
    try:
        port = main.getsockname()[1]
        assert helper.getsockname()[1] == port and helper.fileno() != main.fileno()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        accepted = {}
        for name, listener in (("main", main), ("helper", helper)):
            listener.setblocking(False)
            count = 0
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted[name] = count
        # Every connection reached one of the two, and each got some (all 64 on one side: p = 2**-63).
        assert accepted["main"] + accepted["helper"] == 64, accepted
        assert accepted["main"] > 0 and accepted["helper"] > 0, accepted
        for c in clients:
            c.close()
    finally:
        main.close()
        helper.close()


def test_a_second_server_on_a_taken_port_is_refused() -> None:
    main = processes.bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError) as taken:
            processes.bind("127.0.0.1", main.getsockname()[1])
        assert taken.value.errno == errno.EADDRINUSE
    finally:
        main.close()


def test_on_stop_the_api_processes_go_first_and_the_pipeline_process_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request still in flight may wait for its write's apply: the pipeline process is stopped only by
    ``wait``, once the main process has finished its own requests."""
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(self: processes.Children, i: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "60"])  # stands in for the child: SIGTERM ends it at once
        spawned.append(proc)
        return proc

    monkeypatch.setattr(processes.Children, "_spawn", spawn)
    main = processes.bind("127.0.0.1", 0)
    children = processes.Children([processes.helper_command(main), processes.pipeline_command()], "postgresql:", "info")
    try:
        children.start()
        helper, pipeline = spawned
        children.stop()
        assert helper.wait(10) == -signal.SIGTERM
        assert pipeline.poll() is None  # not signalled: it goes on applying
        children.wait(10)
        assert pipeline.returncode == -signal.SIGTERM
    finally:
        for proc in spawned:
            proc.kill()
            proc.wait()
        main.close()
