"""Decoder for the pgoutput logical-replication protocol, version 1 (PostgreSQL 10+).

Values stay as the bytes the server's output function printed (`'t'` text format): they are parsed
into typed Arrow columns later, in bulk, by the same CSV conversion the snapshot uses. Two markers are
not values: `None` is SQL NULL, `UNCHANGED` is an unchanged TOASTed value the server did not resend.

Message layouts: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

_I8, _I16, _I32, _U32, _I64 = (struct.Struct(f) for f in ("!b", "!h", "!i", "!I", "!q"))
_U64 = struct.Struct("!Q")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!bQQq")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class _Unchanged:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = bytes | None | _Unchanged


def pg_timestamp(microseconds: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=microseconds)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # LSN of the commit record: orders transactions exactly
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # restarting at this LSN skips this transaction and nothing after it
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    key: bool  # part of the replica identity


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    schema: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[RelationColumn, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: list[Value]


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old: list[Value] | None  # key ('K') or whole old row ('O') when the key changed / REPLICA IDENTITY FULL
    new: list[Value]


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: list[Value]


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


Decoded = Begin | Commit | Relation | TypeInfo | Insert | Update | Delete | Truncate | Message | Origin


class ProtocolError(ValueError):
    """A message we do not understand: better to stop than to guess."""


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int, _length: Any = _I32.unpack_from) -> tuple[list[Value], int]:
    """The values of a TupleData at `pos`, and the position after it (the per-change hot loop: text first)."""
    (count,) = _I16.unpack_from(data, pos)
    pos += 2
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary (never requested)
            (length,) = _length(data, pos + 1)
            pos += 5
            append(data[pos:pos + length])
            pos += length
        elif kind == 0x6E:  # 'n' NULL
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u' unchanged TOAST
            append(UNCHANGED)
            pos += 1
        else:
            raise ProtocolError(f"unknown tuple value kind {chr(kind)!r}")
    return values, pos


ROW_KINDS: Final = frozenset(b"IUD")  # first byte of Insert, Update, Delete


def decode_row(data: bytes) -> tuple[str, int, list[Value] | None, list[Value] | None]:
    """`(op, relid, old, new)` of an Insert, Update or Delete (op I, U, D): what `decode` returns as a message
    object, without one. The stream decodes one of these per change, so the object is worth avoiding."""
    kind = data[0]
    (relid,) = _U32.unpack_from(data, 1)
    if kind == 0x49:  # 'I'
        if data[5] != 0x4E:
            raise ProtocolError("Insert without a new tuple")
        return "I", relid, None, _tuple(data, 6)[0]
    if kind == 0x55:  # 'U'
        pos, old = 5, None
        if data[pos] in (0x4B, 0x4F):  # 'K' key, 'O' old row
            old, pos = _tuple(data, pos + 1)
        if data[pos] != 0x4E:
            raise ProtocolError("Update without a new tuple")
        return "U", relid, old, _tuple(data, pos + 1)[0]
    if kind == 0x44:  # 'D'
        return "D", relid, _tuple(data, 6)[0], None
    raise ProtocolError(f"not a row change: {chr(kind)!r}")


def decode(data: bytes) -> Decoded:
    kind = data[0]
    if kind in ROW_KINDS:
        op, relid, old, new = decode_row(data)
        if op == "I":
            return Insert(relid, new)  # type: ignore[arg-type]
        if op == "U":
            return Update(relid, old, new)  # type: ignore[arg-type]
        return Delete(relid, old)  # type: ignore[arg-type]
    if kind == 0x42:  # 'B'
        final_lsn, ts, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, pg_timestamp(ts), xid)
    if kind == 0x43:  # 'C'
        _, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(data, 1)
        return Commit(commit_lsn, end_lsn, pg_timestamp(ts))
    if kind == 0x52:  # 'R'
        (relid,) = _U32.unpack_from(data, 1)
        schema, pos = _cstring(data, 5)
        name, pos = _cstring(data, pos)
        identity = chr(data[pos])
        (ncols,) = _I16.unpack_from(data, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = data[pos]
            column, pos = _cstring(data, pos + 1)
            (type_oid,) = _U32.unpack_from(data, pos)
            (typmod,) = _I32.unpack_from(data, pos + 4)
            pos += 8
            columns.append(RelationColumn(column, type_oid, typmod, bool(flags & 1)))
        return Relation(relid, schema or "pg_catalog", name, identity, tuple(columns))
    if kind == 0x59:  # 'Y'
        (oid,) = _U32.unpack_from(data, 1)
        schema, pos = _cstring(data, 5)
        name, _ = _cstring(data, pos)
        return TypeInfo(oid, schema, name)
    if kind == 0x54:  # 'T'
        (count,) = _I32.unpack_from(data, 1)
        options = data[5]
        relids = struct.unpack_from(f"!{count}I", data, 6)
        return Truncate(tuple(relids), bool(options & 1), bool(options & 2))
    if kind == 0x4D:  # 'M'
        flags = data[1]
        (lsn,) = _U64.unpack_from(data, 2)
        prefix, pos = _cstring(data, 10)
        (length,) = _I32.unpack_from(data, pos)
        return Message(bool(flags & 1), lsn, prefix, data[pos + 4:pos + 4 + length])
    if kind == 0x4F:  # 'O'
        (lsn,) = _U64.unpack_from(data, 1)
        return Origin(lsn, _cstring(data, 9)[0])
    raise ProtocolError(f"unknown pgoutput message type {chr(kind)!r}")
