"""DDL at the source while changes stream: the new shape reaches the destination through dlt's schema
evolution, and a table created later is copied on its own without stopping the others."""

from __future__ import annotations

from .conftest import Harness


def start(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, name varchar(10), qty int)",
            "INSERT INTO app.t SELECT g, 'n' || g, g FROM generate_series(1, 5) g")
    cdc.setup()


def test_add_column(cdc: Harness) -> None:
    start(cdc)
    cdc.sql("INSERT INTO app.t VALUES (6, 'before', 6)",  # same drain, same batch before the DDL
            "ALTER TABLE app.t ADD COLUMN note text",
            "INSERT INTO app.t VALUES (7, 'after', 7, 'hello')",
            "UPDATE app.t SET note = 'noted' WHERE id = 1")
    summary = cdc.drain()
    assert summary.batches >= 2  # a batch holds one shape per table
    assert cdc.dest_table("app__t", "id, name, qty, note") == cdc.source(
        "SELECT id, name, qty, note FROM app.t ORDER BY 1")
    assert cdc.dest_table("app__t", "id, note", where="id IN (1, 6, 7)") == [(1, "noted"), (6, None), (7, "hello")]


def test_drop_column_keeps_the_destination_column(cdc: Harness) -> None:
    start(cdc)
    cdc.sql("ALTER TABLE app.t DROP COLUMN qty",
            "INSERT INTO app.t VALUES (8, 'eight')",
            "UPDATE app.t SET name = 'one' WHERE id = 1")
    cdc.drain()
    # dlt never drops columns: untouched rows keep their value, rows written after the DROP have NULL
    assert cdc.dest_table("app__t", "id, name, qty") == [
        (1, "one", None), (2, "n2", 2), (3, "n3", 3), (4, "n4", 4), (5, "n5", 5), (8, "eight", None)]


def test_widened_types(cdc: Harness) -> None:
    start(cdc)
    types_before = cdc.dest("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = '{ds}' AND table_name = 'app__t' ORDER BY 1")
    cdc.sql("ALTER TABLE app.t ALTER COLUMN qty TYPE bigint, ALTER COLUMN name TYPE text",
            "INSERT INTO app.t VALUES (9, 'a name much longer than ten characters', 9000000000)",
            "UPDATE app.t SET qty = -9000000000 WHERE id = 2")
    cdc.drain()
    assert cdc.dest_table("app__t", "id, name, qty") == cdc.source("SELECT id, name, qty FROM app.t ORDER BY 1")
    assert cdc.dest_table("app__t", "id, qty", where="id IN (2, 9)") == [(2, -9000000000), (9, 9000000000)]
    assert cdc.dest("SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = '{ds}' AND table_name = 'app__t' ORDER BY 1") == types_before


def test_new_table_is_snapshotted_alone_while_others_stream(cdc: Harness) -> None:
    start(cdc)
    cdc.sql("INSERT INTO app.t VALUES (10, 'ten', 10)",
            "CREATE TABLE app.fresh (code text PRIMARY KEY, amount numeric(8, 2))",
            "INSERT INTO app.fresh SELECT 'c' || g, g * 1.25 FROM generate_series(1, 20) g",
            "UPDATE app.t SET qty = 100 WHERE id = 1")
    summary = cdc.drain()
    assert summary.snapshots == {"app__fresh": 20}
    assert cdc.source("SELECT tablename FROM pg_publication_tables ORDER BY 1") == [("fresh",), ("t",)]
    assert cdc.dest_table("app__fresh", "code, amount") == cdc.source("SELECT code, amount FROM app.fresh ORDER BY 1")
    assert cdc.dest_table("app__t", "id, name, qty") == cdc.source("SELECT id, name, qty FROM app.t ORDER BY 1")

    cdc.sql("INSERT INTO app.fresh VALUES ('new', 1)", "DELETE FROM app.fresh WHERE code = 'c1'",
            "UPDATE app.fresh SET amount = 0 WHERE code = 'c2'", "INSERT INTO app.t VALUES (11, 'eleven', 11)")
    summary = cdc.drain()
    assert summary.snapshots == {}
    assert summary.changes["app__fresh"].inserts == 1
    assert cdc.dest_table("app__fresh", "code, amount") == cdc.source("SELECT code, amount FROM app.fresh ORDER BY 1")
    assert cdc.dest_table("app__t", "id, name, qty") == cdc.source("SELECT id, name, qty FROM app.t ORDER BY 1")
