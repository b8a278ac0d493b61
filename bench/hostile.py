"""Hostile bodies against a real `lily serve`: time, server memory, and another tenant's latency.

    python bench/hostile.py                  # embedded PostgreSQL in a temporary LILY_HOME
    python bench/hostile.py --only nested gzip-members
    python bench/hostile.py --scale 0.1      # smaller bodies (for code that is still quadratic)

Starts `lily serve` on a loopback port, creates tenants A (the attacker) and B (the bystander), and for
each attack: sends tenant A's body while tenant B reads (``GET /metadata/search?limit=1``) every 20 ms.
It prints, per attack, A's answer and time, the peak RSS of the server process while the attack ran, and
B's worst and median read latency meanwhile. Figures are printed, never asserted. Each attack is capped
at ``--cap`` seconds (a request still running then is reported as "> cap").
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from tempfile import TemporaryDirectory

import httpx
import psutil

LILY = [sys.executable, "-c", "from lily.cli import main; main()"]


@dataclass
class Server:
    base: str
    port: int
    pid: int
    keys: dict[str, str]  # tenant → editor key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def lily(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*LILY, *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"lily {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip()


@contextmanager
def spawned(extra_env: dict[str, str]) -> Iterator[Server]:
    with TemporaryDirectory(prefix="lily-hostile-") as home:
        # Run as root, the embedded PostgreSQL runs as a user of its own and must be able to enter LILY_HOME.
        os.chmod(home, 0o711)
        env = {**os.environ, "LILY_HOME": home, "LILY_LOG_LEVEL": "WARNING", **extra_env}
        env.pop("LILY_DATABASE_URL", None)
        port = free_port()
        proc = subprocess.Popen([*LILY, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"lily serve exited with {proc.returncode}")
                try:
                    if httpx.get(f"{base}/lily/v1/system/health", timeout=2).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("lily serve did not start")
                time.sleep(0.2)
            keys = {}
            for tenant in ("attacker", "bystander"):
                lily(env, "admin", "create-tenant", tenant)
                keys[tenant] = lily(env, "admin", "create-api-key", tenant, "k", "--role", "editor")
            yield Server(base, port, proc.pid, keys)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---------------------------------------------------------------- attacks


def nested_body(depth: int) -> bytes:
    return b'[{"qualified_name":"pg://a/n","type":"t","attributes":{"a":' + b"[" * depth + b"]" * depth + b"}}]"


def post(server: Server, path: str, body: bytes, cap: float, **headers: str) -> str:
    h = {"Authorization": f"Bearer {server.keys['attacker']}", **headers}
    try:
        r = httpx.post(server.base + path, content=body, headers=h, timeout=cap)
        return str(r.status_code)
    except httpx.TimeoutException:
        return "no answer"


def raw(server: Server, head: bytes, body_parts: list[bytes], cap: float) -> str:
    """Send a request by hand (a lying Content-Length, a chunked body that stops) and read the status."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=cap) as s:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
        try:
            answer = s.recv(200)
        except TimeoutError:
            return "no answer"
        return answer.split(b" ", 2)[1].decode() if answer else "closed"


def short_content_length(server: Server, cap: float) -> str:
    body = b'{"qualified_name":"pg://a/x","type":"t"}'
    head = (
        f"POST /lily/v1/metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.keys['attacker']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) + 100}\r\n\r\n"
    ).encode()
    return raw(server, head, [body], cap)


def stalled_chunked(server: Server, cap: float, uploads: int = 4) -> str:
    """``uploads`` bulk uploads of tenant A that stop sending; then tenant B's bulk upload."""
    head = (
        f"POST /lily/v1/metadata/bulk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.keys['attacker']}\r\n"
        "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    line = b'{"qualified_name":"pg://a/s","type":"t"}\n'
    socks = []
    for _ in range(uploads):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=cap)
        s.sendall(head + f"{len(line):x}\r\n".encode() + line + b"\r\n")
        socks.append(s)
    time.sleep(0.5)  # bench only: let the server take the uploads before B asks
    b = httpx.post(
        server.base + "/lily/v1/metadata/bulk",
        content=b'{"qualified_name":"pg://b/x","type":"t"}\n',
        headers={"Authorization": f"Bearer {server.keys['bystander']}", "Content-Type": "application/x-ndjson"},
        timeout=cap,
    )
    statuses = []
    for s in socks:
        try:
            answer = s.recv(200)
            statuses.append(answer.split(b" ", 2)[1].decode() if answer else "closed")
        except TimeoutError:
            statuses.append("no answer")
        s.close()
    return f"B's bulk {b.status_code}; A's stalled uploads {','.join(statuses)}"


def attacks(scale: float, cap: float) -> dict[str, Callable[[Server], str]]:
    def depth_bytes(n: int) -> int:
        return int(n * scale) // 2

    members = gzip.compress(b"")
    # Whitespace inflates ~1000:1: a body of ~64 KB that is 63 MiB of valid JSON once inflated.
    bomb = gzip.compress(b"[" + b" " * (63 * 1024 * 1024) + b"]", compresslevel=9)
    return {
        "no attack (baseline)": lambda s: (time.sleep(3), "-")[1],
        "nested-32k": lambda s: post(s, "/lily/v1/metadata/bulk", nested_body(depth_bytes(32_000)), cap),
        "nested-200k": lambda s: post(s, "/lily/v1/metadata/bulk", nested_body(depth_bytes(200_000)), cap),
        "gzip-members": lambda s: post(
            s,
            "/api/v1/lineage",
            members * int(6.4 * 1024 * 1024 * scale / len(members)),
            cap,
            **{"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ),
        "gzip-members-60m": lambda s: post(
            s,
            "/api/v1/lineage/batch",
            members * int(60 * 1024 * 1024 * scale / len(members)),
            cap,
            **{"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ),
        "gzip-bomb": lambda s: post(
            s,
            "/api/v1/lineage/batch",
            bomb,
            cap,
            **{"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ),
        "short-content-length": lambda s: short_content_length(s, cap),
        "stalled-chunked": lambda s: stalled_chunked(s, cap),
    }


# ---------------------------------------------------------------- measuring


def measure(server: Server, name: str, attack: Callable[[Server], str]) -> None:
    proc = psutil.Process(server.pid)
    base_rss = proc.memory_info().rss
    done = threading.Event()
    peak = base_rss
    latencies: list[float] = []

    def watch() -> None:
        nonlocal peak
        with httpx.Client(
            base_url=server.base, headers={"Authorization": f"Bearer {server.keys['bystander']}"}, timeout=120
        ) as http:
            while not done.is_set():
                start = time.perf_counter()
                http.get("/lily/v1/metadata/search", params={"limit": 1})
                latencies.append(time.perf_counter() - start)
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.02)  # the reading pace, not a synchronisation

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    outcome = attack(server)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join(timeout=300)
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    print(
        f"| {name} | {outcome} | {seconds:.2f} s | {base_rss / 2**20:.0f} → {peak / 2**20:.0f} MiB"
        f" | {statistics.median(ms):.0f} / {ms[-1]:.0f} ms |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", nargs="*", help="attack names to run (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply body sizes by this")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds to wait for an answer")
    args = parser.parse_args()
    table = attacks(args.scale, args.cap)
    names = args.only or list(table)
    with spawned({}) as server:
        print("| attack | tenant A's answer | time | server RSS (before → peak) | tenant B read p50 / max |")
        print("|---|---|---|---|---|")
        for name in names:
            measure(server, name, table[name])


if __name__ == "__main__":
    main()
