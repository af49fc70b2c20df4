"""An UPDATE that leaves a TOASTed value alone does not resend it ('u' in pgoutput): the destination
must keep the value it has, never NULL it."""

from __future__ import annotations

import json

import pytest

from .conftest import Harness

BIG = 100_000  # bytes: far above the ~2 KB TOAST threshold; EXTERNAL storage so it is not compressed inline


def make_table(cdc: Harness) -> None:
    cdc.sql(
        "CREATE TABLE app.docs (id int PRIMARY KEY, title text, body text, meta jsonb, blob bytea)",
        "ALTER TABLE app.docs ALTER COLUMN body SET STORAGE EXTERNAL, ALTER COLUMN meta SET STORAGE EXTERNAL, "
        "ALTER COLUMN blob SET STORAGE EXTERNAL",
        f"INSERT INTO app.docs SELECT g, 'title ' || g, repeat(chr(64 + g), {BIG}), "
        f"jsonb_build_object('pad', repeat('j', {BIG}), 'n', g), decode(repeat('ab', {BIG}), 'hex') "
        "FROM generate_series(1, 5) g",
    )


def body_lengths(cdc: Harness, where: str = "true") -> list[tuple]:
    return cdc.dest_table("app__docs", "id, title, length(body), left(body, 1), octet_length(blob)", where=where)


def assert_source_equals_destination(cdc: Harness, where: str = "true") -> None:
    source = cdc.source(f"SELECT id, title, body, meta::text, blob FROM app.docs WHERE {where} ORDER BY id")
    dest = cdc.dest_table("app__docs", "id, title, body, meta, blob", where=where)
    assert [(r[0], r[1], r[2], json.loads(r[3]), bytes(r[4])) for r in source] == \
           [(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in dest]


def test_unchanged_toast_keeps_the_destination_value(cdc: Harness) -> None:
    make_table(cdc)
    cdc.setup()
    cdc.sql("UPDATE app.docs SET title = 'renamed 1' WHERE id = 1")  # body/meta/blob not resent
    summary = cdc.drain()
    assert summary.filled_rows == 1 and summary.unresolved_toast_rows == 0
    assert body_lengths(cdc, "id = 1") == [(1, "renamed 1", BIG, "A", BIG)]
    assert_source_equals_destination(cdc)

    # in one batch: insert, then two updates that leave the TOASTed columns alone
    cdc.sql(f"INSERT INTO app.docs VALUES (10, 'ten', repeat('T', {BIG}), '{{\"n\": 10}}', '\\x0a')",
            "UPDATE app.docs SET title = 'ten again' WHERE id = 10",
            "UPDATE app.docs SET title = 'ten, third time' WHERE id = 10",
            "UPDATE app.docs SET body = repeat('Z', 3000) WHERE id = 2",   # the TOASTed value itself changes
            "UPDATE app.docs SET title = 'two' WHERE id = 2",              # ... then is left alone
            "UPDATE app.docs SET id = 30 WHERE id = 3")                    # key change: values come from id 3
    cdc.drain()
    assert body_lengths(cdc, "id IN (2, 3, 10, 30)") == [
        (2, "two", 3000, "Z", BIG), (10, "ten, third time", BIG, "T", 1), (30, "title 3", BIG, "C", BIG)]
    assert_source_equals_destination(cdc)


def test_unchanged_toast_across_batches_of_one_transaction(cdc: Harness) -> None:
    cdc.configure(max_batch_rows=2)
    make_table(cdc)
    cdc.setup()
    cdc.sql("BEGIN; UPDATE app.docs SET title = 'a' WHERE id = 4; UPDATE app.docs SET title = 'b' WHERE id = 4; "
            "UPDATE app.docs SET title = 'c' WHERE id = 4; UPDATE app.docs SET title = 'd' WHERE id = 5; COMMIT")
    summary = cdc.drain()
    assert summary.batches >= 2
    assert body_lengths(cdc, "id >= 4") == [(4, "c", BIG, "D", BIG), (5, "d", BIG, "E", BIG)]
    assert_source_equals_destination(cdc)


@pytest.mark.parametrize("delete_mode", ["soft"])
def test_soft_delete_keeps_toasted_values(cdc: Harness, delete_mode: str) -> None:
    cdc.configure(delete_mode=delete_mode)
    make_table(cdc)
    cdc.setup()
    cdc.sql("DELETE FROM app.docs WHERE id = 1")  # the WAL only has the key
    cdc.drain()
    columns = "id, title, length(body), meta->>'n', octet_length(blob), _deleted_at IS NOT NULL"
    assert cdc.dest_table("app__docs", columns, where="id = 1") == [(1, "title 1", BIG, "1", BIG, True)]
