"""One bulk item, parsed and validated exactly as ``POST /metadata`` parses and validates its body."""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import ValidationError

from lily.bulk.parse import Refused
from lily.domain.assets import AssetIn


def validate(raw: bytes | Refused | Any) -> dict[str, Any] | str:
    """The event payload for a valid item, or the reason it is refused.

    ``raw`` is the bytes of one item (a JSON-array element or an NDJSON line), already parsed JSON, or
    a :class:`Refused` bound. Bytes are parsed with the standard library's ``json.loads``, the parser the
    single endpoint's framework uses: integers of any size stay integers and a lone surrogate escape
    stays a lone surrogate, so the asset rules see (and refuse) exactly what they see there, never a
    silently rewritten value.
    """
    if isinstance(raw, Refused):
        return raw.reason
    if isinstance(raw, bytes | bytearray):
        try:
            raw = json.loads(raw)
        except RecursionError:
            return "malformed JSON: nested too deeply"
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            return f"malformed JSON: {exc}"
    try:
        body = AssetIn.model_validate(raw)
    except ValidationError as exc:
        return describe(exc)
    payload = body.model_dump(mode="json", exclude_unset=True)
    payload["qualified_name"], payload["type"] = body.qualified_name, body.type
    return payload


def to_json(payload: dict[str, Any]) -> str:
    """The payload as JSON text for the log, or ``Unstorable`` naming why it cannot be stored.

    orjson refuses integers beyond 64 bits, which the asset rules may let through (jsonb stores them
    exactly), and lone surrogates, which PostgreSQL cannot store: those few payloads take the slow path.
    """
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        text.encode()
    except UnicodeEncodeError:
        raise Unstorable("a value contains a lone surrogate (U+D800 to U+DFFF), which cannot be stored") from None
    return text


class Unstorable(ValueError):
    """A valid item whose payload PostgreSQL cannot hold; the item is refused with this reason."""


def describe(exc: ValidationError) -> str:
    """``field: message`` for the first few problems, as the API's validation errors name them."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        if err["type"] == "json_invalid":
            parts.append(f"malformed JSON: {err.get('ctx', {}).get('error', err['msg'])}")
            continue
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)
