"""One bulk item, validated exactly as ``POST /metadata`` validates its body."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lily.domain.assets import AssetIn


def validate(raw: Any) -> dict[str, Any] | str:
    """The event payload for a valid item, or the reason it is refused.

    ``raw`` is parsed JSON (from a JSON array) or the bytes of one NDJSON line; pydantic parses the
    latter itself in one pass, and reports a malformed line like any other invalid item.
    """
    try:
        body = AssetIn.model_validate_json(raw) if isinstance(raw, bytes) else AssetIn.model_validate(raw)
    except ValidationError as exc:
        return describe(exc)
    payload = body.model_dump(mode="json", exclude_unset=True)
    payload["qualified_name"], payload["type"] = body.qualified_name, body.type
    return payload


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
