"""Reading dbt artifacts safely: from a directory under the configured root only, or from an upload.

A connector's ``path`` is relative to ``LILY_DBT_ARTIFACTS_ROOT`` and may never leave it: an absolute
path, a ``..`` segment or a symbolic link that resolves outside the root is refused, and each file is
opened without following a final symlink, so an editor cannot make Lily read an arbitrary server file.
Every file is bounded in size before it is parsed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import orjson

from lily.domain.errors import Invalid

MANIFEST, CATALOG, RUN_RESULTS = "manifest.json", "catalog.json", "run_results.json"
FILES = (MANIFEST, CATALOG, RUN_RESULTS)
DEFAULT_MAX_BYTES = 100 * 1024 * 1024  # a large project's manifest is tens of MB


@dataclass(slots=True)
class Artifacts:
    manifest: dict[str, Any]
    catalog: dict[str, Any] | None = None
    run_results: dict[str, Any] | None = None


def resolve_under(root: Path, relative: str, field: str = "config.path") -> Path:
    """``root/relative``, refusing anything that is not a directory inside ``root`` once resolved."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("\\") or relative[1:2] == ":":  # also C:\ and \\server
        raise Invalid("must be a path relative to the dbt artifacts root", field=field)
    if any(part == ".." for part in pure.parts) or "\x00" in relative:
        raise Invalid("may not contain '..'", field=field)
    base = root.resolve()
    target = (base / pure).resolve()
    if target != base and not target.is_relative_to(base):
        raise Invalid("resolves outside the dbt artifacts root (a symbolic link?)", field=field)
    if not target.is_dir():
        raise Invalid("is not a directory under the dbt artifacts root", field=field)
    return target


def _read_bounded(directory: Path, name: str, max_bytes: int) -> bytes | None:
    try:
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: the file is a symlink
        raise Invalid(f"{name} cannot be read ({exc.strerror})", field="config.path") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Invalid(f"{name} is larger than {max_bytes} bytes", field="config.path")
    return data


def parse(name: str, data: bytes, field: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"{name} is not JSON: {exc}", field=field) from None
    if not isinstance(value, dict):
        raise Invalid(f"{name} must be a JSON object", field=field)
    return value


def check_manifest(manifest: dict[str, Any], field: str) -> None:
    if not isinstance(manifest.get("nodes"), dict):
        raise Invalid("manifest.json has no 'nodes' object: is it a dbt manifest?", field=field)
    for key in ("sources",):
        if key in manifest and not isinstance(manifest[key], dict):
            raise Invalid(f"manifest.json '{key}' must be an object", field=field)


def from_files(files: dict[str, bytes], field: str = "files") -> Artifacts:
    """Artifacts from raw file bodies by name; ``manifest.json`` is required."""
    if MANIFEST not in files:
        raise Invalid("manifest.json is required", field=field)
    manifest = parse(MANIFEST, files[MANIFEST], f"{field}.{MANIFEST}")
    check_manifest(manifest, f"{field}.{MANIFEST}")
    catalog = parse(CATALOG, files[CATALOG], f"{field}.{CATALOG}") if CATALOG in files else None
    results = parse(RUN_RESULTS, files[RUN_RESULTS], f"{field}.{RUN_RESULTS}") if RUN_RESULTS in files else None
    return Artifacts(manifest, catalog, results)


def from_directory(root: Path, relative: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Artifacts:
    directory = resolve_under(root, relative)
    files = {name: data for name in FILES if (data := _read_bounded(directory, name, max_bytes)) is not None}
    return from_files(files, field="config.path")
