"""``lily ingest``: upload a JSON array or NDJSON file to the bulk API and follow the job to the end.

The file is streamed from disk (never read whole) through the same endpoint every client uses, so the
CLI exercises exactly what the API promises: size limits, per-item errors, the job status.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

BULK_PATH = "/lily/v1/metadata/bulk"
CHUNK = 256 * 1024
NDJSON_SUFFIXES = (".ndjson", ".jsonl")


class IngestError(Exception):
    """The server refused the upload (or could not be reached); the message says why."""


def is_ndjson_file(path: Path) -> bool:
    """By extension, else by the first non-blank byte: ``[`` opens a JSON array, anything else is NDJSON."""
    suffix = path.suffix.lower()
    if suffix in NDJSON_SUFFIXES:
        return True
    if suffix == ".json":
        return False
    with path.open("rb") as f:
        while chunk := f.read(4096):
            head = chunk.lstrip()
            if head:
                return not head.startswith(b"[")
    return True


def ingest(path: Path, url: str, token: str, *, wait: bool = True, progress: bool = True) -> dict[str, Any]:
    """Upload ``path``; the job's final status (or the 202 answer when ``wait`` is false)."""
    ndjson = is_ndjson_file(path)
    size = path.stat().st_size
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/x-ndjson" if ndjson else "application/json",
        # Declared up front, so a file over the server's limit is refused before it is sent.
        "Content-Length": str(size),
    }
    timeout = httpx.Timeout(30.0, read=300.0)
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
        with tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"upload {path.name}", disable=not progress
        ) as bar:
            try:
                r = client.post(BULK_PATH, content=_chunks(path, bar), headers=headers)
            except httpx.TransportError as exc:
                raise IngestError(f"could not upload to {url}: {exc}") from exc
        if r.status_code != 202:
            raise IngestError(_explain(r))
        job: dict[str, Any] = r.json()
        if not wait:
            return job
        return _follow(client, job, token, progress)


def _chunks(path: Path, bar: tqdm) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            bar.update(len(chunk))
            yield chunk


def _follow(client: httpx.Client, job: dict[str, Any], token: str, progress: bool) -> dict[str, Any]:
    """Long-poll the job status (the server holds each request until the job ends, or 10 s pass)."""
    headers = {"Authorization": f"Bearer {token}"}
    with tqdm(total=job["total"], unit="item", desc="apply", disable=not progress) as bar:
        while True:
            r = client.get(
                f"{BULK_PATH}/status/{job['job_id']}",
                params={"wait": 10, "max_errors": 20},
                headers=headers,
                timeout=httpx.Timeout(30.0),
            )
            if r.status_code != 200:
                raise IngestError(_explain(r))
            status: dict[str, Any] = r.json()
            bar.update(status["applied"] + status["failed"] - bar.n)
            if status["state"] not in ("queued", "running"):
                return status


def _explain(r: httpx.Response) -> str:
    try:
        body = r.json()
        return f"{r.status_code} {body.get('title', '')}: {body.get('detail', r.text)}"
    except ValueError:
        return f"{r.status_code}: {r.text[:500]}"
