"""Inserts, updates, deletes and TRUNCATE reach DuckDB through the slot, in hard and soft delete modes."""

from __future__ import annotations

import pytest

from sources.replication.errors import TruncateRefused
from sources.replication.lsn import parse_lsn

from .conftest import Harness

ITEMS = "id, name, qty, price, updated"

SCHEMA = [
    "CREATE TABLE app.items (id int PRIMARY KEY, name text NOT NULL, qty int, price numeric(10,2), "
    "updated timestamptz)",
    "INSERT INTO app.items SELECT g, 'item ' || g, g, g * 1.5, '2024-01-01'::timestamptz + g * interval '1 hour' "
    "FROM generate_series(1, 50) g",
    "CREATE TABLE app.pairs (k text, n int, label text, PRIMARY KEY (k, n))",
    "INSERT INTO app.pairs VALUES ('a', 1, 'first'), ('b', 2, 'second')",
]


def live(cdc: Harness, table: str, columns: str, delete_mode: str) -> list[tuple]:
    where = "_deleted_at IS NULL" if delete_mode == "soft" else "true"
    return cdc.dest_table(table, columns, where=where)


@pytest.mark.parametrize("delete_mode", ["hard", "soft"])
def test_inserts_updates_deletes_and_truncate_propagate(cdc: Harness, delete_mode: str) -> None:
    cdc.configure(delete_mode=delete_mode)
    cdc.sql(*SCHEMA)
    report = cdc.setup()
    assert report.slot_created and report.snapshots == {"app__items": 50, "app__pairs": 2}
    assert live(cdc, "app__items", ITEMS, delete_mode) == cdc.source(f"SELECT {ITEMS} FROM app.items ORDER BY 1")

    cdc.sql(
        "INSERT INTO app.items VALUES (100, 'hundred', 1, 9.99, '2024-05-05 10:00:00+02')",
        "UPDATE app.items SET qty = qty + 100 WHERE id <= 10",
        "DELETE FROM app.items WHERE id BETWEEN 20 AND 24",
        "UPDATE app.items SET name = 'renamed', price = NULL WHERE id = 30",
        "BEGIN; INSERT INTO app.items VALUES (101, 'short-lived', 0, 0, now()); DELETE FROM app.items WHERE id = 101;"
        " COMMIT",
        "DELETE FROM app.pairs WHERE k = 'a'",
        "INSERT INTO app.pairs VALUES ('c', 3, 'third')",
        "UPDATE app.pairs SET n = 20 WHERE k = 'b'",  # primary key change
    )
    summary = cdc.drain()
    items, pairs = summary.changes["app__items"], summary.changes["app__pairs"]
    assert (items.inserts, items.updates, items.deletes) == (2, 11, 6)
    assert (pairs.inserts, pairs.updates, pairs.deletes) == (1, 1, 1)
    assert live(cdc, "app__items", ITEMS, delete_mode) == cdc.source(f"SELECT {ITEMS} FROM app.items ORDER BY 1")
    assert live(cdc, "app__pairs", "k, n, label", delete_mode) == [("b", 20, "second"), ("c", 3, "third")]
    assert cdc.slot_position() == (parse_lsn(summary.end_lsn), False)
    if delete_mode == "soft":
        # deleted rows stay with their last values and the deleting commit's time, even one that lived
        # only inside the stream
        gone = cdc.dest_table("app__items", "id, name, qty, _deleted_at IS NOT NULL", where="_deleted_at IS NOT NULL")
        assert gone == [*((i, f"item {i}", i, True) for i in range(20, 25)), (101, "short-lived", 0, True)]
        assert cdc.dest_table("app__pairs", "k, n, label", where="_deleted_at IS NOT NULL") == [
            ("a", 1, "first"), ("b", 2, "second")]
    else:
        assert cdc.dest("SELECT count(*) FROM {ds}.app__items WHERE id BETWEEN 20 AND 24 OR id = 101") == [(0,)]

    cdc.sql("BEGIN; INSERT INTO app.pairs VALUES ('d', 4, 'before truncate'); TRUNCATE app.pairs; "
            "INSERT INTO app.pairs VALUES ('z', 26, 'after truncate'); COMMIT")
    summary = cdc.drain()
    assert summary.changes["app__pairs"].truncates == 1
    assert live(cdc, "app__pairs", "k, n, label", delete_mode) == [("z", 26, "after truncate")]
    if delete_mode == "soft":
        assert cdc.dest_table("app__pairs", "k, n", where="_deleted_at IS NOT NULL") == [
            ("a", 1), ("b", 2), ("b", 20), ("c", 3), ("d", 4)]
    # the other table is untouched
    assert live(cdc, "app__items", ITEMS, delete_mode) == cdc.source(f"SELECT {ITEMS} FROM app.items ORDER BY 1")
    assert cdc.dest("SELECT count(*), count(DISTINCT id) FROM {ds}.app__items WHERE _lsn IS NOT NULL")[0][0] == \
        cdc.dest("SELECT count(*) FROM {ds}.app__items")[0][0]


def test_truncate_refused_when_configured(cdc: Harness) -> None:
    cdc.configure(truncate_mode="fail")
    cdc.sql(*SCHEMA)
    cdc.setup()
    cdc.sql("INSERT INTO app.items VALUES (200, 'kept', 1, 1, now())", "TRUNCATE app.pairs")
    before = cdc.slot_position()
    with pytest.raises(TruncateRefused, match=r"TRUNCATE of app\.pairs"):
        cdc.drain()
    # the insert before the TRUNCATE may be loaded, but the slot never confirmed past the TRUNCATE
    after = cdc.slot_position()
    assert after is not None and before is not None and after[0] <= cdc.source(
        "SELECT pg_current_wal_lsn() - '0/0'")[0][0]
    assert cdc.dest_table("app__pairs", "k") == [("a",), ("b",)]
    cdc.configure(truncate_mode="apply")
    cdc.drain()
    assert cdc.dest_table("app__pairs", "k") == []
    assert cdc.dest_table("app__items", "name", where="id = 200") == [("kept",)]
