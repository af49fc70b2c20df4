"""The catalog comparison of `sources.postgres.shapes` without DDL capture: DDL that changes existing rows without
any row event (a column dropped and added again, a rewrite in place) is found by comparing a stored shape with
the catalog, and shapes stored before the relfilenode was recorded keep classifying as they did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from sources.postgres.catalog import TableSpec
from sources.postgres.shapes import (
    REWRITTEN_REASON,
    SchemaChange,
    Shape,
    classify,
    read_relfilenodes,
    read_shapes,
    shape_storage,
)
from tests.conftest import execute

ITEMS = TableSpec("app", "items", ("id",), None)
EVENTS = TableSpec("app", "events", (), None)  # partitioned
REWRITTEN = SchemaChange("reread", REWRITTEN_REASON, rewritten=True)


@pytest.fixture()
def conn(database: str) -> Iterator[Any]:
    execute(database, "CREATE SCHEMA app",
            "CREATE TABLE app.items (id int PRIMARY KEY, c text, v numeric)",
            "INSERT INTO app.items SELECT g, 'c' || g, g / 4.0 FROM generate_series(1, 50) g",
            "CREATE TABLE app.events (at date NOT NULL, n int) PARTITION BY RANGE (at)",
            "CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
            "INSERT INTO app.events VALUES ('2024-05-01', 1)")
    connection = psycopg2.connect(database)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def shape(conn: Any, spec: TableSpec = ITEMS) -> Shape:
    """As stored in dlt state: through JSON."""
    return json.loads(json.dumps(read_shapes(conn, [spec])[spec.qualified]))


def change_after(conn: Any, *statements: str, spec: TableSpec = ITEMS, compare_storage: bool = True) -> SchemaChange:
    before = shape(conn, spec)
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    return classify(before, shape(conn, spec), compare_storage)


def test_column_dropped_and_added_again_is_reread(conn: Any) -> None:
    change = change_after(conn, "ALTER TABLE app.items DROP COLUMN c", "ALTER TABLE app.items ADD COLUMN c text")
    assert change.kind == "reread"
    assert change.reason == "column(s) dropped and added again, their values changed in every existing row: c"
    # in one statement too, and with another destination type it is a reload
    change = change_after(conn, "ALTER TABLE app.items DROP COLUMN c, ADD COLUMN c int")
    assert change == SchemaChange("reload", "column type changed: c (dropped and added again)")
    # a dropped column alone changes nothing, as before
    assert change_after(conn, "ALTER TABLE app.items DROP COLUMN c").kind == "none"


def test_same_type_rewrite_is_reread(conn: Any) -> None:
    change = change_after(conn, "ALTER TABLE app.items ALTER COLUMN v TYPE numeric USING v * 100")
    assert change == REWRITTEN
    change = change_after(conn, "ALTER TABLE app.items RENAME COLUMN c TO c2",
                          "ALTER TABLE app.items ALTER COLUMN v TYPE numeric USING v * 2")
    assert change == SchemaChange("reread", f"renamed c -> c2; {REWRITTEN_REASON}", rewritten=True)
    # what only the relfilenode tells: with DDL capture announcing rewrites, the comparison can leave it out
    assert change_after(conn, "ALTER TABLE app.items ALTER COLUMN v TYPE numeric USING v * 100",
                        compare_storage=False).kind == "none"


def test_vacuum_full_cluster_and_truncate_are_reread_too(conn: Any) -> None:
    # the documented cost: the catalog cannot tell them from a rewrite that changed values
    for statement in ("VACUUM FULL app.items", "CLUSTER app.items USING items_pkey", "TRUNCATE app.items"):
        assert change_after(conn, statement) == REWRITTEN, statement
    for statement in ("VACUUM app.items", "ANALYZE app.items", "REINDEX TABLE app.items",
                      "UPDATE app.items SET c = 'x'"):
        assert change_after(conn, statement).kind == "none", statement


def test_add_column_without_default_is_none(conn: Any) -> None:
    assert change_after(conn, "ALTER TABLE app.items ADD COLUMN extra text") == SchemaChange("none")
    # with a default it still is a reread, as before
    assert change_after(conn, "ALTER TABLE app.items ADD COLUMN d int DEFAULT 7").kind == "reread"


def legacy_classify(previous: Shape | None, current: Shape) -> SchemaChange:
    """`classify` as it was before relfilenodes were recorded (and before dropped-and-added-again columns)."""
    if not previous:
        return SchemaChange("none")
    before = {int(c[0]): c for c in previous}
    changed_type = [c[1] for c in current if c[0] in before and before[c[0]][2] != c[2]]
    if changed_type:
        return SchemaChange("reload", f"column type changed: {', '.join(changed_type)}")
    renamed = [f"{before[c[0]][1]} -> {c[1]}" for c in current if c[0] in before and before[c[0]][1] != c[1]]
    filled = [c[1] for c in current if c[0] not in before and c[3]]
    if renamed or filled:
        parts = ([f"renamed {', '.join(renamed)}"] if renamed else []) + (
            [f"new column(s) with values in existing rows: {', '.join(filled)}"] if filled else [])
        return SchemaChange("reread", "; ".join(parts))
    return SchemaChange("none")


@pytest.mark.parametrize("statement", [
    "SELECT 1", "VACUUM FULL app.items", "CLUSTER app.items USING items_pkey", "TRUNCATE app.items",
    "ALTER TABLE app.items ALTER COLUMN v TYPE numeric USING v * 100", "ALTER TABLE app.items ADD COLUMN n int",
    "ALTER TABLE app.items ADD COLUMN n int DEFAULT 1", "ALTER TABLE app.items RENAME COLUMN c TO c2",
    "ALTER TABLE app.items DROP COLUMN c", "ALTER TABLE app.items ALTER COLUMN v TYPE text",
    "ALTER TABLE app.items ALTER COLUMN id TYPE bigint",
])
def test_shapes_stored_before_relfilenodes_classify_as_before(conn: Any, statement: str) -> None:
    stored = [row[:4] for row in shape(conn)]  # what dlt state holds from earlier versions: no storage
    assert shape_storage(stored) is None
    with conn.cursor() as cur:
        cur.execute(statement)
    current = shape(conn)
    assert shape_storage(current) is not None
    assert classify(stored, current) == legacy_classify(stored, [row[:4] for row in current])
    # the other way round (the current shape read without storage) compares columns only
    assert classify(shape(conn), read_shapes(conn, [ITEMS], storage=False)["app.items"]) == SchemaChange("none")


def test_storage_is_json_friendly_and_only_on_the_first_row(conn: Any) -> None:
    current = read_shapes(conn, [ITEMS, EVENTS])
    items, events = current["app.items"], current["app.events"]
    assert json.loads(json.dumps(current)) == current
    assert [len(row) for row in items] == [5, 4, 4] and [len(row) for row in events] == [5, 4]
    assert items[0][4] == [list(r) for r in read_relfilenodes(conn, [ITEMS])["app.items"]]
    oid = {name: int(v) for name, v in query(conn, "SELECT relname, oid FROM pg_class WHERE relname LIKE 'events%'")}
    assert [relid for relid, _ in events[0][4]] == [oid["events_2024"]]  # the leaf, not the partitioned root
    assert classify(items, items) == SchemaChange("none")


def test_partitions(conn: Any) -> None:
    # a new (empty) partition is no change; a rewritten one is
    assert change_after(conn, "CREATE TABLE app.events_2025 PARTITION OF app.events "
                        "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')", spec=EVENTS).kind == "none"
    assert change_after(conn, "VACUUM FULL app.events_2024", spec=EVENTS) == REWRITTEN
    assert change_after(conn, "ALTER TABLE app.events ALTER COLUMN n TYPE int USING n + 1",
                        spec=EVENTS) == REWRITTEN
    assert change_after(conn, "DROP TABLE app.events_2025", spec=EVENTS).kind == "none"


def query(conn: Any, statement: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement)
        return list(cur.fetchall())
