"""``next_version``: how every kind of change becomes an asset's next version (pure, no I/O), and the
asset model the store, the version snapshot and the API document are all derived from."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, get_type_hints

import pytest

from lily.api.models import AssetDocument
from lily.domain import assets as rules
from lily.domain.errors import NotFound, PreconditionFailed
from lily.domain.rules import check_if_match
from lily.domain.versions import (
    UPSTREAM_ATTRIBUTE,
    Delete,
    LineageRemoved,
    Placeholder,
    Replace,
    Upsert,
    UpstreamChanged,
    Writer,
    is_active_source,
    next_version,
)
from lily.store import assets as store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
QN = "pg://wh/public.orders"
API = Writer("acme", "api", T1)
OPENLINEAGE = Writer("acme", "openlineage", T1)


def existing(**overrides: Any) -> rules.Asset:
    fields: dict[str, Any] = {
        "asset_id": rules.asset_id_for("acme", QN),
        "qualified_name": QN,
        "type": "table",
        "name": "orders",
        "description": "all orders",
        "owners": ["ann"],
        "tags": ["pii"],
        "attributes": {"rows": 10, "format": "parquet"},
        "placeholder": False,
        "source": "api",
        "has_active_source": False,
        "version": 3,
        "created_at": T0,
        "updated_at": T0,
        "deleted_at": None,
    }
    return rules.Asset(**{**fields, **overrides})


def test_create() -> None:
    v = next_version(None, QN, Upsert({"qualified_name": QN, "type": "table", "tags": ["pii"]}), API)
    assert v is not None and v.created and v.action == "asset.created"
    a = v.asset
    assert a.asset_id == rules.asset_id_for("acme", QN)
    assert (a.version, a.name, a.tags, a.owners, a.attributes) == (1, "orders", ["pii"], [], {})
    assert (a.created_at, a.updated_at, a.deleted_at, a.placeholder) == (T1, T1, None, False)
    assert (a.source, a.has_active_source) == ("api", False)
    assert set(v.changes) == set(rules.MUTABLE_FIELDS)


def test_create_by_an_active_source_marks_it_active() -> None:
    v = next_version(None, QN, Upsert({"type": "dataset"}), OPENLINEAGE)
    assert v is not None and (v.asset.source, v.asset.has_active_source) == ("openlineage", True)


def test_update_merges_and_says_what_changed() -> None:
    before = existing()
    v = next_version(before, QN, Upsert({"attributes": {"rows": 11, "format": None}, "tags": ["pii", "gold"]}), API)
    assert v is not None and not v.created and v.action == "asset.updated"
    assert v.asset.attributes == {"rows": 11}  # a null removes the key; the rest merges
    assert v.asset.description == "all orders" and v.asset.owners == ["ann"]
    assert (v.asset.version, v.asset.created_at, v.asset.updated_at) == (4, T0, T1)
    assert v.changes == {
        "attributes": {"from": {"rows": 10, "format": "parquet"}, "to": {"rows": 11}},
        "tags": {"from": ["pii"], "to": ["pii", "gold"]},
    }
    assert before.version == 3 and before.attributes == {"rows": 10, "format": "parquet"}  # untouched


def test_the_same_write_again_changes_nothing() -> None:
    before = existing()
    assert next_version(before, QN, Upsert({"type": "table", "tags": ["pii"], "owners": ["ann"]}), API) is None
    same = {f: getattr(before, f) for f in rules.MUTABLE_FIELDS}
    assert next_version(before, QN, Replace(same), API) is None


def test_a_new_source_alone_is_a_version_and_an_active_source_stays() -> None:
    before = existing()
    v = next_version(before, QN, Upsert({"type": "table"}), OPENLINEAGE)
    assert v is not None and v.changes == {
        "source": {"from": "api", "to": "openlineage"},
        "has_active_source": {"from": False, "to": True},
    }
    # An API edit of an asset an active source feeds: the source is "api" now, but it is still fed.
    w = next_version(v.asset, QN, Upsert({"description": "edited"}), API)
    assert w is not None and (w.asset.source, w.asset.has_active_source) == ("api", True)


def test_attributes_patch_of_enrich_hooks_lands_over_the_payload() -> None:
    v = next_version(existing(), QN, Upsert({"attributes": {"rows": 12}}, {"lily.source": "api", "rows": 13}), API)
    assert v is not None and v.asset.attributes == {"rows": 13, "format": "parquet", "lily.source": "api"}


def test_replace_resets_what_it_leaves_out_and_checks_if_match() -> None:
    before = existing()
    v = next_version(before, QN, Replace({"type": "view"}, if_version=3), API)
    assert v is not None and v.action == "asset.replaced"
    a = v.asset
    assert (a.type, a.name, a.description, a.owners, a.tags, a.attributes) == ("view", "orders", None, [], [], {})
    assert a.version == 4
    with pytest.raises(PreconditionFailed) as stale:
        next_version(before, QN, Replace({"type": "view"}, if_version=2), API)
    assert stale.value.extra["current_version"] == 3 and "version 3" in stale.value.detail
    with pytest.raises(NotFound):
        next_version(None, QN, Replace({"type": "view"}), API)
    with pytest.raises(NotFound):
        next_version(existing(deleted_at=T0), QN, Replace({"type": "view"}), API)


def test_delete_then_restore() -> None:
    before = existing()
    deleted = next_version(before, QN, Delete(if_version=None), API)
    assert deleted is not None and deleted.action == "asset.deleted"
    assert (deleted.asset.deleted_at, deleted.asset.version, deleted.asset.description) == (T1, 4, "all orders")
    assert deleted.changes == {}
    with pytest.raises(NotFound):
        next_version(deleted.asset, QN, Delete(), API)
    with pytest.raises(PreconditionFailed):
        next_version(before, QN, Delete(if_version=-1), API)  # an ETag of another asset

    later = Writer("acme", "api", T1 + timedelta(minutes=1))
    restored = next_version(deleted.asset, QN, Upsert({"qualified_name": QN, "type": "table"}), later)
    assert restored is not None and restored.action == "asset.restored" and not restored.created
    a = restored.asset
    assert (a.deleted_at, a.version, a.created_at) == (None, 5, T0)
    # A restore starts from nothing, like a create: the fields it did not send are the defaults.
    assert (a.description, a.tags) == (None, [])
    assert set(restored.changes) == set(rules.MUTABLE_FIELDS)


def test_placeholder_and_its_fill() -> None:
    v = next_version(None, QN, Placeholder("unknown"), OPENLINEAGE)
    assert v is not None and v.action == "asset.placeholder_created" and v.changes == {}
    p = v.asset
    assert (p.placeholder, p.type, p.name, p.version) == (True, "unknown", "orders", 1)
    assert not p.has_active_source  # nobody feeds a placeholder, whoever named it
    assert next_version(existing(), QN, Placeholder("unknown"), API) is None  # the asset exists

    filled = next_version(p, QN, Upsert({"qualified_name": QN, "type": "table", "tags": ["x"]}), API)
    assert filled is not None and filled.action == "asset.updated"
    assert (filled.asset.placeholder, filled.asset.type, filled.asset.version) == (False, "table", 2)
    assert filled.changes["placeholder"] == {"from": True, "to": False}
    assert filled.changes["type"] == {"from": "unknown", "to": "table"}
    assert filled.asset.asset_id == p.asset_id  # the same id: both derive from tenant and name


def test_lineage_only_change() -> None:
    removed = {"removed": [{"edge_id": "e1"}], "direction": "both"}
    v = next_version(existing(), QN, LineageRemoved(removed), API)
    assert v is not None and v.action == "lineage.removed" and v.changes == {"lineage": removed}
    assert v.asset.version == 4 and v.asset.attributes == existing().attributes
    # Lineage of a deleted asset can still be removed; of no asset, not.
    assert next_version(existing(deleted_at=T0), QN, LineageRemoved(removed), API) is not None
    with pytest.raises(NotFound):
        next_version(None, QN, LineageRemoved(removed), API)


def test_upstream_change() -> None:
    origin = {"qualified_name": "pg://wh/raw.orders", "change": {"kind": "deprecated"}, "event_id": "e"}
    propagation = Writer("acme", "propagation", T1)
    v = next_version(existing(), QN, UpstreamChanged(origin), propagation)
    assert v is not None and v.action == "asset.upstream_changed" and v.changes == {"upstream": origin}
    note = v.asset.attributes[UPSTREAM_ATTRIBUTE]
    assert note == {"from": "pg://wh/raw.orders", "change": {"kind": "deprecated"}, "at": T1.isoformat()}
    assert v.asset.attributes["rows"] == 10 and v.asset.description == "all orders"  # the owners' fields stay
    assert (v.asset.source, v.asset.has_active_source) == ("propagation", False)
    assert next_version(existing(deleted_at=T0), QN, UpstreamChanged(origin), propagation) is None
    assert next_version(None, QN, UpstreamChanged(origin), propagation) is None


def test_active_sources() -> None:
    assert [s for s in ("api", "bulk", "propagation") if is_active_source(s)] == []
    assert all(is_active_source(s) for s in ("openlineage", "connector:pg-prod"))


def test_if_match_rule() -> None:
    check_if_match(None, 3)
    check_if_match(0, 3)  # "*"
    check_if_match(3, 3)
    for wanted in (2, -1):
        with pytest.raises(PreconditionFailed):
            check_if_match(wanted, 3)


def test_store_snapshot_and_document_derive_from_the_model() -> None:
    names = [f.name for f in dataclasses.fields(rules.Asset)]
    assert "source" in names and "has_active_source" in names
    assert store.ASSET_COLUMNS.split(", ") == names
    assert [part.split()[0] for part in store._ASSET_RECORD.split(", ")] == names
    doc = rules.to_document(existing())
    assert list(doc) == names
    assert doc["asset_id"] == str(existing().asset_id) and doc["created_at"] == T0.isoformat()
    assert doc["deleted_at"] is None and doc["source"] == "api" and doc["has_active_source"] is False
    # The API's documented response model is derived from the same fields, and accepts the document.
    assert list(AssetDocument.model_fields) == names
    validated = AssetDocument.model_validate(doc)
    assert (validated.asset_id, validated.created_at) == (existing().asset_id, T0)  # type: ignore[attr-defined]


def test_a_new_field_needs_only_the_model() -> None:
    """A model with one more field: the store's statements and the document follow without an edit."""

    @dataclasses.dataclass(slots=True)
    class Wider(rules.Asset):
        certified_at: datetime | None = None

    assert store._sql_type(get_type_hints(Wider)["certified_at"]) == "timestamptz"
    assert rules._json_expression("certified_at", datetime | None) == (
        "(None if a.certified_at is None else a.certified_at.isoformat())"
    )
