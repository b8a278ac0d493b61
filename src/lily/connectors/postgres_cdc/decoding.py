"""pgoutput, decoded: the DDL rows the source's event triggers wrote, with the commit position of each.

Lily reads the slot through SQL (``pg_logical_slot_peek_binary_changes``; psycopg 3 has no replication
protocol), filtered by a publication of the DDL log table alone, so other tables' changes never reach
Lily. Only the messages that publication produces are handled: Begin, Relation, Insert, Commit
(protocol version 1); anything else (Truncate, Origin, Type …) is skipped. Pure: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# The DDL log's columns, in table order (see :mod:`.source`): used when a peek holds no Relation
# message for the table (the server sends it once per decoding session).
DDL_COLUMNS = (
    "id",
    "at",
    "command_tag",
    "object_type",
    "schema_name",
    "table_name",
    "old_schema_name",
    "old_table_name",
)


@dataclass(frozen=True, slots=True)
class DdlRow:
    id: int
    command_tag: str
    object_type: str
    schema_name: str | None
    table_name: str | None
    old_schema_name: str | None
    old_table_name: str | None


@dataclass(slots=True)
class Transaction:
    """One committed transaction's DDL rows; ``lsn`` is its commit's position (what the slot advances to)."""

    xid: int
    lsn: int
    rows: list[DdlRow] = field(default_factory=list)


def lsn_to_int(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("truncated pgoutput message")
        self.pos += n
        return out

    def byte(self) -> str:
        return self.take(1).decode("ascii")

    def int8(self) -> int:
        return int(self.take(1)[0])

    def int16(self) -> int:
        return int(struct.unpack("!h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack("!i", self.take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack("!q", self.take(8))[0])

    def string(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        out = self.data[self.pos : end].decode()
        self.pos = end + 1
        return out

    def tuple(self) -> list[str | None]:
        out: list[str | None] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "t":
                out.append(self.take(self.int32()).decode())
            elif kind == "b":  # binary format (protocol ≥ 2 with binary on): not asked for
                self.take(self.int32())
                out.append(None)
            else:  # 'n' null, 'u' unchanged TOAST
                out.append(None)
        return out


@dataclass(slots=True)
class Decoder:
    """Decodes peeked messages in order; keeps the column names of each relation it was told about.

    ``table`` is the DDL log's (schema, name): inserts into any other relation are ignored.
    """

    table: tuple[str, str]
    relations: dict[int, tuple[tuple[str, str], list[str]]] = field(default_factory=dict)
    _open: Transaction | None = None

    def feed(self, lsn: int, data: bytes) -> Transaction | None:
        """One message; returns the transaction it closes (a Commit), else None."""
        r = _Reader(bytes(data))
        kind = r.byte()
        if kind == "B":
            r.int64()  # final LSN
            r.int64()  # commit time
            self._open = Transaction(xid=r.int32(), lsn=lsn)
        elif kind == "R":
            relid = r.int32()
            namespace, name = r.string(), r.string()
            r.int8()  # replica identity
            columns = []
            for _ in range(r.int16()):
                r.int8()
                columns.append(r.string())
                r.int32()
                r.int32()
            self.relations[relid] = ((namespace, name), columns)
        elif kind == "I":
            relid = r.int32()
            r.byte()  # 'N'
            values = r.tuple()
            known = self.relations.get(relid)
            if known is not None and known[0] != self.table:
                return None
            columns = known[1] if known is not None else list(DDL_COLUMNS)
            row = dict(zip(columns, values, strict=False))
            if self._open is not None and row.get("id") is not None:
                self._open.rows.append(_ddl_row(row))
        elif kind == "C":
            r.int8()  # flags
            r.int64()  # commit LSN
            end = r.int64()  # end LSN of the commit: past it, the transaction is done
            done, self._open = self._open, None
            if done is not None:
                done.lsn = end
            return done
        return None


def _ddl_row(row: dict[str, str | None]) -> DdlRow:
    return DdlRow(
        id=int(row["id"] or 0),
        command_tag=row.get("command_tag") or "",
        object_type=row.get("object_type") or "",
        schema_name=row.get("schema_name"),
        table_name=row.get("table_name"),
        old_schema_name=row.get("old_schema_name"),
        old_table_name=row.get("old_table_name"),
    )


def affected(rows: list[DdlRow]) -> list[tuple[str, str]]:
    """The (schema, table) pairs whose catalog entry to read again, in first-seen order: each row's
    table, and a renamed table's old name (read again, it is gone: the asset is removed)."""
    out: dict[tuple[str, str], None] = {}
    for row in rows:
        if row.old_schema_name and row.old_table_name:
            out[(row.old_schema_name, row.old_table_name)] = None
        if row.schema_name and row.table_name:
            out[(row.schema_name, row.table_name)] = None
    return list(out)
