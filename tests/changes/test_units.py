"""Pure rules of change events: type checks, bounds, the changes shape, the types filter, cursors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from lily.changes.feed import END_OF_TRANSACTION, type_patterns, valid_position
from lily.domain.assets import Asset
from lily.domain.changes import MEMBER_MAX_BYTES, ChangeEvent, bound, cut, member_changes, type_matches
from lily.domain.errors import Invalid
from lily.domain.versions import NextVersion
from lily.pipeline.apply.changes import change_event_of


def test_a_change_event_type_is_subject_dot_verb() -> None:
    for bad in ("asset", "Asset.created", "asset.created.now", "asset created", "", "a." + "b" * 100):
        with pytest.raises(ValueError, match="subject"):
            ChangeEvent(id=uuid.uuid4(), type=bad, tenant_id="t", actor="a", occurred_at=datetime.now(UTC))
    assert ChangeEvent(id=uuid.uuid4(), type="quality.failed", tenant_id="t", actor="a", occurred_at=datetime.now(UTC))


def test_bound_replaces_only_the_members_that_are_too_large() -> None:
    small = {"name": {"from": "a", "to": "b"}}
    assert bound(small) == small
    big = {"name": {"from": "a", "to": "b"}, "description": {"from": None, "to": "x" * MEMBER_MAX_BYTES}}
    out = bound(big)
    assert out["name"] == small["name"]
    assert out["description"]["truncated"] is True and out["description"]["bytes"] > MEMBER_MAX_BYTES


def test_member_changes_narrow_attributes_to_the_keys_that_changed() -> None:
    changes = {
        "attributes": {"from": {"a": 1, "b": 2, "gone": 0}, "to": {"a": 1, "b": 3, "new": 4}},
        "tags": {"from": [], "to": ["x"]},
    }
    assert member_changes(changes) == {
        "attributes": {"from": {"b": 2, "gone": 0, "new": None}, "to": {"b": 3, "gone": None, "new": 4}},
        "tags": {"from": [], "to": ["x"]},
    }
    created = {"attributes": {"from": None, "to": {"a": 1}}}
    assert member_changes(created) == {"attributes": {"from": {"a": None}, "to": {"a": 1}}}


def test_lists_are_cut_with_their_count() -> None:
    assert cut(list(range(250))) == {"items": list(range(100)), "count": 250}


def test_types_filter_patterns() -> None:
    assert type_patterns(None) is None and type_patterns([]) is None and type_patterns(["*"]) is None
    assert type_patterns(["asset.*", "lineage.added,classification.added"]) == [
        "asset.%",
        "classification.added",
        "lineage.added",
    ]
    assert type_patterns(["asset.upstream_changed"]) == ["asset.upstream\\_changed"]
    for bad in (["asset."], ["%"], ["asset.c%"], ["*.x"], ["x" * 101 + ".y"], ["a.b"] * 21):
        with pytest.raises(Invalid) as err:
            type_patterns(bad)
        assert err.value.to_problem()["errors"][0]["field"] == "types"
    assert type_matches("asset.updated", ["asset.*"]) and not type_matches("lineage.added", ["asset.*"])
    assert type_matches("lineage.added", ["*"]) and type_matches("lineage.added", ["lineage.added"])


def test_positions() -> None:
    assert valid_position([0, 0]) and valid_position([5, END_OF_TRANSACTION])
    for bad in ([1], [1, 2, 3], ["1", 2], [1.0, 2], [-1, 0], [1, 2**63], [True, 1], {"a": 1}, None):
        assert not valid_position(bad)


def _asset(**over: object) -> Asset:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "asset_id": uuid.uuid4(),
        "qualified_name": "pg://x/s.t",
        "type": "table",
        "name": "t",
        "description": None,
        "owners": [],
        "tags": [],
        "attributes": {},
        "placeholder": False,
        "source": "api",
        "has_active_source": False,
        "version": 2,
        "created_at": now,
        "updated_at": now,
        "deleted_at": None,
    }
    fields.update(over)
    return Asset(**fields)  # type: ignore[arg-type]


def test_every_version_action_maps_to_a_change_event_type() -> None:
    asset = _asset()
    cases = {
        "asset.created": "asset.created",
        "asset.updated": "asset.updated",
        "asset.replaced": "asset.updated",
        "asset.restored": "asset.restored",
        "asset.deleted": "asset.deleted",
        "some.future_action": "asset.updated",  # unknown: an update, never a failed batch
    }
    for action, expected in cases.items():
        type_, _ = change_event_of(NextVersion(asset, asset, action, {"name": {"from": "s", "to": "t"}}))
        assert type_ == expected, action
    type_, changes = change_event_of(NextVersion(None, _asset(placeholder=True), "asset.placeholder_created", {}))
    assert (type_, changes["placeholder"]) == ("asset.created", {"from": None, "to": True})
