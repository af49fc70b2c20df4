"""The pgoutput decoder on hand-built messages (the integration tests cover what a real server sends;
these pin the rarer shapes: unchanged TOAST, key/old tuples, TRUNCATE options, origins)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from sources.replication.lsn import format_lsn, parse_lsn
from sources.replication.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    ProtocolError,
    Relation,
    Truncate,
    TypeInfo,
    Update,
    decode,
)

TS = 757_382_400_000_000  # 2024-01-01 00:00:00 UTC in microseconds since 2000-01-01


def tuple_data(*values: object) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += b"t" + struct.pack("!i", len(v)) + v
    return out


def test_transaction_boundaries() -> None:
    assert decode(b"B" + struct.pack("!QqI", 0x1_0000_0010, TS, 42)) == Begin(
        0x1_0000_0010, datetime(2024, 1, 1, tzinfo=UTC), 42)
    new_year = datetime(2024, 1, 1, tzinfo=UTC)
    assert decode(b"C" + struct.pack("!bQQq", 0, 0x10, 0x38, TS)) == Commit(0x10, 0x38, new_year)


def test_relation_and_type() -> None:
    body = struct.pack("!I", 16384) + b"\x00" + b"items\x00" + b"d" + struct.pack("!h", 2)
    body += b"\x01id\x00" + struct.pack("!Ii", 23, -1) + b"\x00name\x00" + struct.pack("!Ii", 1043, 24)
    relation = decode(b"R" + body)
    assert isinstance(relation, Relation) and relation.qualified == "pg_catalog.items"
    assert [(c.name, c.type_oid, c.typmod, c.key) for c in relation.columns] == [
        ("id", 23, -1, True), ("name", 1043, 24, False)]
    assert decode(b"Y" + struct.pack("!I", 90000) + b"app\x00mood\x00") == TypeInfo(90000, "app", "mood")


def test_row_changes_with_null_unchanged_and_old_tuples() -> None:
    assert decode(b"I" + struct.pack("!I", 7) + b"N" + tuple_data(b"1", None, b"")) == Insert(7, [b"1", None, b""])
    update = decode(b"U" + struct.pack("!I", 7) + b"N" + tuple_data(b"1", UNCHANGED))
    assert update == Update(7, None, [b"1", UNCHANGED])
    keyed = decode(b"U" + struct.pack("!I", 7) + b"K" + tuple_data(b"1", None) + b"N" + tuple_data(b"2", b"x"))
    assert keyed == Update(7, [b"1", None], [b"2", b"x"])
    full = decode(b"U" + struct.pack("!I", 7) + b"O" + tuple_data(b"1", b"a") + b"N" + tuple_data(b"1", b"b"))
    assert isinstance(full, Update) and full.old == [b"1", b"a"]
    assert decode(b"D" + struct.pack("!I", 7) + b"K" + tuple_data(b"1", None)) == Delete(7, [b"1", None])


def test_truncate_message_origin() -> None:
    assert decode(b"T" + struct.pack("!ib2I", 2, 3, 7, 8)) == Truncate((7, 8), True, True)
    assert decode(b"T" + struct.pack("!ibI", 1, 0, 7)) == Truncate((7,), False, False)
    message = decode(b"M" + struct.pack("!bQ", 0, 0x42) + b"aurora-sync\x00" + struct.pack("!i", 3) + b"abc")
    assert message == Message(False, 0x42, "aurora-sync", b"abc")
    assert decode(b"O" + struct.pack("!Q", 0x99) + b"upstream\x00") == Origin(0x99, "upstream")


def test_unknown_messages_fail_loudly() -> None:
    with pytest.raises(ProtocolError):
        decode(b"Z")
    with pytest.raises(ProtocolError):
        decode(b"I" + struct.pack("!I", 7) + b"N" + struct.pack("!h", 1) + b"x")


def test_lsn_text_round_trip() -> None:
    assert format_lsn(0x16_B374D848) == "16/B374D848"
    assert parse_lsn("16/B374D848") == 0x16_B374D848 and parse_lsn(None) is None
