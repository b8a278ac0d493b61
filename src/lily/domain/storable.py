"""What PostgreSQL can store: one set of rules that every input calls, whatever endpoint or body format.

A value that passes here can be written as ``text`` or ``jsonb`` and indexed; one that fails is refused
at the API with 422 naming the field, never rewritten and never accepted only to fail in the pipeline:

- no U+0000 (``text`` and ``jsonb`` cannot hold it) and no lone surrogate (not encodable as UTF-8);
- integers within signed 64 bits (less 1,024 at each end, see below; psycopg and orjson cannot dump
  larger ones, and orjson reads them back as floats, so they could not be given back exactly);
  floats finite (NaN and infinities are not JSON);
- indexed text at most :data:`MAX_KEY_BYTES` UTF-8 bytes, since a btree row holds about 2,704 bytes.

:func:`storable` checks parsed JSON (attributes, facets); :data:`StorableText` and :func:`key_text` are
pydantic types for strings. Both raise :class:`Unstorable` (a ``ValueError``), so pydantic reports it
on the field; :attr:`Unstorable.path` locates it inside nested JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field, GetJsonSchemaHandler, StringConstraints, TypeAdapter, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from typing_extensions import TypeAliasType

# Signed 64 bits, less 1,024 at each end: 2**63 - 1024 is the largest double below 2**63, so JSON Schema
# tools (which compare bounds as doubles) and Lily agree on which integers are in range.
INT64_MIN, INT64_MAX = -(2**63) + 1024, 2**63 - 1024
# Leaves room for the tenant id and tuple overhead in composite keys (tenant_id, qualified_name, …).
MAX_KEY_BYTES = 2048
MAX_JSON_DEPTH = 32
# The same rules as a JSON-Schema pattern, for the OpenAPI document: no U+0000.
NO_NUL = r"^[^\x00]*$"


class Unstorable(ValueError):
    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    if value.isascii():
        return "contains U+0000, which PostgreSQL text cannot hold" if "\x00" in value else None
    if "\x00" in value:
        return "contains U+0000, which PostgreSQL text cannot hold"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (U+{ord(value[exc.start]):04X}), which is not valid Unicode text"
    return None


def check_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise Unstorable(problem)
    return value


def check_key_bytes(value: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    check_text(value)
    if not value.isascii() and len(value.encode("utf-8")) > max_bytes:
        raise Unstorable(f"is {len(value.encode('utf-8'))} bytes in UTF-8; at most {max_bytes} (it is indexed)")
    return value


# Column lineage's primary key holds two column names: each gets half of the btree row.
MAX_COLUMN_BYTES = 1024


def check_column_bytes(value: str) -> str:
    return check_key_bytes(value, MAX_COLUMN_BYTES)


def storable(value: Any, path: str = "", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``value`` (parsed JSON) unchanged if PostgreSQL can store it as ``jsonb``; else :class:`Unstorable`
    whose ``path`` (``a.b[2]``, relative to ``value``) names the first offending member."""
    _walk(value, path, 1, max_depth)
    return value


def _walk(node: Any, path: str, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise Unstorable(f"nests deeper than {max_depth} levels", path)
    if isinstance(node, str):
        problem = text_problem(node)
        if problem:
            raise Unstorable(problem, path)
    elif isinstance(node, dict):
        for key, child in node.items():
            child_path = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                problem = text_problem(key)
                if problem:
                    raise Unstorable(f"a key {problem}", path)
            _walk(child, child_path, depth + 1, max_depth)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _walk(child, f"{path}[{i}]", depth + 1, max_depth)
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int):
        if not INT64_MIN <= node <= INT64_MAX:
            raise Unstorable("is an integer beyond 64 bits; send it as a string to keep it exact", path)
    elif isinstance(node, float) and not math.isfinite(node):
        raise Unstorable(f"is {node}, which JSON cannot represent", path)


def _text(value: str) -> str:
    return check_text(value)


def _key(value: str) -> str:
    return check_key_bytes(value)


# Pydantic types. Constraints also go into the OpenAPI document (pattern, maxLength).
StorableText = Annotated[str, StringConstraints(pattern=NO_NUL), AfterValidator(_text)]
KeyText = Annotated[str, StringConstraints(pattern=NO_NUL), AfterValidator(_key)]
"""Indexed text: storable, and at most :data:`MAX_KEY_BYTES` UTF-8 bytes."""

# Idempotency keys are printable ASCII, so their byte length is their length (a btree key).
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN)]

# The JSON Schema of storable JSON, for the OpenAPI document of free-form fields (``attributes``): what
# :func:`storable` accepts, so generated clients and fuzzers send what is kept. Only documented: the
# field is validated as plain JSON plus :func:`storable` (one walk), not through this recursive union.
_NoNulText = Annotated[str, StringConstraints(pattern=NO_NUL)]
# As an object's key: a pattern there would become ``patternProperties``, which lets other keys through.
_NoNulKey = Annotated[str, WithJsonSchema({"type": "string", "not": {"pattern": "\\x00"}})]
_Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
# Non-integral: an integer-valued number is an integer to JSON Schema, and those are bounded above.
_Float = Annotated[float, WithJsonSchema({"type": "number", "not": {"type": "integer"}})]
StorableJSON = TypeAliasType(
    "StorableJSON",
    "bool | _Int64 | _Float | _NoNulText | list[StorableJSON] | dict[_NoNulKey, StorableJSON] | None",
)


class DocumentedAs:
    """Annotate a type with another's JSON Schema (``Annotated[dict[str, Any], DocumentedAs(T)]``)."""

    def __init__(self, documented: Any) -> None:
        self.core_schema = TypeAdapter(documented).core_schema

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(self.core_schema)


JSONObject = Annotated[dict[str, Any], DocumentedAs(dict[_NoNulKey, StorableJSON])]
"""A free-form JSON object (``attributes``): documented as storable JSON; check it with :func:`storable`."""
