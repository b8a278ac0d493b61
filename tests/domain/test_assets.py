"""Asset rules without I/O: input models, merge and diff, ETags."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from lily.domain import assets as rules


def test_asset_in_normalises() -> None:
    a = rules.AssetIn.model_validate(
        {"qualified_name": "  pg://db/s.t  ", "type": " Table ", "tags": ["a", "a", "b"], "owners": [" ann "]}
    )
    assert a.qualified_name == "pg://db/s.t" and a.type == "table"
    assert a.tags == ["a", "b"] and a.owners == ["ann"]


@pytest.mark.parametrize(
    "body",
    [
        {"type": "table"},
        {"qualified_name": "x"},
        {"qualified_name": "x", "type": "1table"},
        {"qualified_name": "x", "type": "ta ble"},
        {"qualified_name": "x", "type": "t" * 65},
        {"qualified_name": "x", "type": "table", "extra": 1},
        {"qualified_name": "", "type": "table"},
        {"qualified_name": "x", "type": "table", "tags": [""]},
    ],
)
def test_asset_in_rejects(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        rules.AssetIn.model_validate(body)


def test_merge_upsert_keeps_and_replace_resets() -> None:
    current = {
        "qualified_name": "pg://db/s.t",
        "type": "table",
        "name": "t",
        "description": "d",
        "owners": ["ann"],
        "tags": ["x"],
        "attributes": {"k": 1},
    }
    upsert = rules.merge(current, {"qualified_name": "pg://db/s.t", "type": "table", "tags": ["y"]}, replace=False)
    assert upsert == {**{k: current[k] for k in rules.MUTABLE_FIELDS}, "tags": ["y"]}
    replaced = rules.merge(current, {"type": "view"}, replace=True)
    assert replaced == {"type": "view", "name": "t", "description": None, "owners": [], "tags": [], "attributes": {}}
    created = rules.merge(None, {"qualified_name": "kafka://c/topic-a", "type": "topic"}, replace=False)
    assert created["name"] == "topic-a"


def test_diff() -> None:
    before: dict[str, object] = {
        "type": "table",
        "name": "t",
        "description": None,
        "owners": [],
        "tags": [],
        "attributes": {},
    }
    assert rules.diff(before, dict(before)) == {}
    assert rules.diff(before, {**before, "tags": ["a"]}) == {"tags": {"from": [], "to": ["a"]}}
    assert set(rules.diff(None, before)) == set(rules.MUTABLE_FIELDS)


def test_default_name() -> None:
    assert rules.default_name("pg://warehouse/public.orders") == "orders"
    assert rules.default_name("///") == "///"


def test_etags() -> None:
    asset_id = uuid.uuid4()
    tag = rules.etag(asset_id, 7)
    assert tag == f'"{asset_id}:7"'
    assert rules.parse_if_match(tag, asset_id) == 7
    assert rules.parse_if_match(f"W/{tag}", asset_id) == 7
    assert rules.parse_if_match(" * ", asset_id) == 0
    assert rules.parse_if_match(rules.etag(uuid.uuid4(), 7), asset_id) == -1
    for bad in ("", '""', "garbage", f'"{asset_id}:"', f'"{asset_id}:-1"', f'"{asset_id}:1.5"'):
        assert rules.parse_if_match(bad, asset_id) == -1, bad
