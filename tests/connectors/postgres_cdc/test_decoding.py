"""pgoutput decoding and what a DDL row makes Lily read again: pure, no server."""

from __future__ import annotations

import struct

from lily.connectors.postgres_cdc.decoding import DdlRow, Decoder, affected, int_to_lsn, lsn_to_int


def _text(value: str | None) -> bytes:
    if value is None:
        return b"n"
    data = value.encode()
    return b"t" + struct.pack("!i", len(data)) + data


def _insert(relid: int, values: list[str | None]) -> bytes:
    return b"I" + struct.pack("!i", relid) + b"N" + struct.pack("!h", len(values)) + b"".join(_text(v) for v in values)


def _relation(relid: int, schema: str, name: str, columns: list[str]) -> bytes:
    out = b"R" + struct.pack("!i", relid) + schema.encode() + b"\0" + name.encode() + b"\0" + b"d"
    out += struct.pack("!h", len(columns))
    for c in columns:
        out += b"\0" + c.encode() + b"\0" + struct.pack("!ii", 25, -1)
    return out


BEGIN = b"B" + struct.pack("!qqi", 100, 0, 7)


def _commit(end: int) -> bytes:
    return b"C" + b"\0" + struct.pack("!qqq", 90, end, 0)


def test_a_transaction_of_ddl_rows_is_decoded_with_its_commit_end() -> None:
    decoder = Decoder(("lily_cdc", "ddl_log"))
    columns = [
        "id",
        "at",
        "command_tag",
        "object_type",
        "schema_name",
        "table_name",
        "old_schema_name",
        "old_table_name",
    ]
    messages = [
        BEGIN,
        _relation(16400, "lily_cdc", "ddl_log", columns),
        _insert(16400, ["1", "2026-01-01", "ALTER TABLE", "table", "shop", "clients", "shop", "customers"]),
        _insert(16400, ["2", "2026-01-01", "DROP TABLE", "table", "shop", "orders", None, None]),
        _commit(4242),
    ]
    out = [decoder.feed(i, m) for i, m in enumerate(messages)]
    assert out[:-1] == [None] * 4
    done = out[-1]
    assert done is not None and done.xid == 7 and done.lsn == 4242
    assert [r.table_name for r in done.rows] == ["clients", "orders"]
    assert affected(done.rows) == [("shop", "customers"), ("shop", "clients"), ("shop", "orders")]


def test_other_relations_and_unknown_messages_are_skipped() -> None:
    decoder = Decoder(("lily_cdc", "ddl_log"))
    decoder.feed(0, BEGIN)
    decoder.feed(1, _relation(1, "public", "other", ["id"]))
    decoder.feed(2, _insert(1, ["5"]))
    decoder.feed(3, b"Y" + b"\0" * 8)  # a message kind Lily does not read (Type)
    done = decoder.feed(4, _commit(10))
    assert done is not None and done.rows == []


def test_lsn_text_round_trips() -> None:
    assert lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert int_to_lsn(lsn_to_int("0/1F2A3B4C")) == "0/1F2A3B4C"


def test_a_row_without_a_table_touches_nothing() -> None:
    assert affected([DdlRow(1, "COMMENT", "table", None, None, None, None)]) == []
