"""Land and merge (`pipelines.landing`, `pipelines.merge`): batches land in the archive bucket and are confirmed
there; `merge` applies them to the warehouse later, in order, once per table per cycle, and ends exact.
Real PostgreSQL, a real bucket folder (`file://`; moto S3 in the outage tests) and DuckDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines.merge import merge_landed, merge_pipeline
from tests.cdc.conftest import DATASET, Harness

pytestmark = pytest.mark.slow


@pytest.fixture()
def landed(cdc: Harness, tmp_path: Path) -> Harness:
    cdc.configure(merge_interval_seconds=300, max_batch_rows=500)
    cdc.monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    return cdc


def merge(cdc: Harness) -> Any:
    return merge_landed(cdc.pipeline())


def same(cdc: Harness, table: str, columns: str, key: str = "id") -> None:
    source = cdc.source(f"SELECT {columns} FROM app.{table} ORDER BY {key}")
    assert cdc.dest_table(f"app__{table}", columns, key) == [tuple(r) for r in source]


def docs_set_up_and_merged(cdc: Harness, rows: int) -> None:
    """`app.docs` with a TOASTed `body` (out of line, uncompressed), copied by `setup` and merged."""
    cdc.sql("CREATE TABLE app.docs (id int PRIMARY KEY, body text, status text)",
            "ALTER TABLE app.docs ALTER COLUMN body SET STORAGE EXTERNAL",
            f"INSERT INTO app.docs SELECT g, repeat(md5(g::text), 200), 'new' FROM generate_series(1, {rows}) g")
    cdc.setup()
    merge(cdc)


def test_changes_land_first_and_merge_later_exactly(landed: Harness) -> None:
    cdc = landed
    cdc.sql("CREATE TABLE app.items (id int PRIMARY KEY, name text, qty int, note text)",
            "INSERT INTO app.items SELECT g, 'item ' || g, g, NULL FROM generate_series(1, 300) g")
    cdc.setup()
    # landing loads nothing into the warehouse (the first landing only reads it, for a direct pipeline's position)
    if Path(cdc.duck).exists():
        with duckdb.connect(cdc.duck, read_only=True) as duck:
            assert duck.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                                [DATASET]).fetchall() == []
    first = merge(cdc)
    assert first.failed_tables == {} and first.batches >= 1
    same(cdc, "items", "id, name, qty, note")

    # many batches (max_batch_rows = 500): updates, deletes, inserts, a key that changes and changes back
    cdc.sql("UPDATE app.items SET qty = qty + 1 WHERE id % 2 = 0",
            "DELETE FROM app.items WHERE id % 7 = 0",
            "INSERT INTO app.items SELECT g, 'new ' || g, g, 'n' FROM generate_series(1001, 2500) g",
            "UPDATE app.items SET qty = qty * 10 WHERE id > 2000",
            "UPDATE app.items SET id = 5000 WHERE id = 1", "UPDATE app.items SET id = 1 WHERE id = 5000",
            "DELETE FROM app.items WHERE id BETWEEN 2400 AND 2450")
    drained = cdc.drain()
    assert drained.lands and drained.batches >= 4
    assert drained.landing_lag_p95 is not None
    # the warehouse has not moved: landing never touches it
    assert cdc.dest("SELECT count(*) FROM {ds}.app__items") == [(300,)]
    second = merge(cdc)
    assert second.batches == drained.batches  # every landed batch, ...
    assert second.packages == 1  # ... in one merge of the table
    assert second.rows["app__items"] < second.changes["app__items"]  # folded: one row per key
    assert second.oldest_unmerged_age_s == 0.0
    same(cdc, "items", "id, name, qty, note")
    # nothing left: a cycle with nothing new merges nothing
    third = merge(cdc)
    assert third.batches == 0 and third.packages == 0


def test_unchanged_toast_values_come_from_earlier_batches_or_the_warehouse(landed: Harness) -> None:
    cdc = landed
    docs_set_up_and_merged(cdc, rows=20)
    # body unchanged in each update: pgoutput sends it as "unchanged TOAST"; some keys get a new body first
    cdc.sql("UPDATE app.docs SET status = 'a' WHERE id <= 10",
            "UPDATE app.docs SET body = repeat('x', 5000) || id WHERE id IN (3, 4)",
            "UPDATE app.docs SET status = 'b' WHERE id <= 5",
            "UPDATE app.docs SET status = 'c' WHERE id IN (3, 15)")
    cdc.configure(max_batch_rows=3)  # many small batches: the chains run across batches
    cdc.drain()
    summary = merge(cdc)
    assert summary.unresolved_toast_rows == 0
    same(cdc, "docs", "id, body, status")


def test_truncate_and_a_new_column_land_in_their_place(landed: Harness) -> None:
    cdc = landed
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)",
            "INSERT INTO app.t SELECT g, 'v' || g FROM generate_series(1, 50) g")
    cdc.setup()
    merge(cdc)
    cdc.sql("INSERT INTO app.t VALUES (100, 'before')", "TRUNCATE app.t",
            "INSERT INTO app.t VALUES (1, 'after'), (2, 'after')",
            "ALTER TABLE app.t ADD COLUMN extra int", "INSERT INTO app.t VALUES (3, 'after', 33)",
            "UPDATE app.t SET extra = 11 WHERE id = 1")
    cdc.drain()
    merge(cdc)
    same(cdc, "t", "id, v, extra")


def test_keyless_table_is_an_exact_multiset_after_merge(landed: Harness) -> None:
    cdc = landed
    cdc.sql("CREATE TABLE app.log (a int, b text)", "ALTER TABLE app.log REPLICA IDENTITY FULL",
            "INSERT INTO app.log VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, 'y')")
    cdc.setup()
    merge(cdc)
    cdc.sql("DELETE FROM app.log WHERE ctid IN (SELECT ctid FROM app.log WHERE a = 1 LIMIT 1)",
            "INSERT INTO app.log VALUES (3, 'z'), (3, 'z')",
            "UPDATE app.log SET b = 'w' WHERE a = 2")
    cdc.configure(max_batch_rows=1)
    cdc.drain()
    merge(cdc)
    source = cdc.source("SELECT a, b, count(*) FROM app.log GROUP BY a, b ORDER BY a, b")
    dest = cdc.dest(f"SELECT a, b, count(*) FROM {DATASET}.app__log GROUP BY a, b ORDER BY a, b")
    assert dest == [tuple(r) for r in source]


def test_a_fresh_merge_process_carries_on_from_the_warehouse(landed: Harness, tmp_path: Path) -> None:
    cdc = landed
    cdc.sql("CREATE TABLE app.items (id int PRIMARY KEY, v int)",
            "INSERT INTO app.items SELECT g, g FROM generate_series(1, 10) g")
    cdc.setup()
    merge(cdc)
    cdc.sql("UPDATE app.items SET v = v + 1")
    cdc.drain()
    # a new task: no local merge state at all, only the warehouse's
    merger = merge_pipeline(cdc.pipeline())
    merger.drop()
    summary = merge(cdc)
    assert summary.batches == 1  # only the batch not merged yet: the positions came back from the warehouse
    same(cdc, "items", "id, v")


def test_setup_again_after_teardown_is_merged(landed: Harness) -> None:
    """teardown forgets the CDC state (and with it the landing counter) but not the merge positions in the
    warehouse: what lands after a new setup must still be above them, or the new copy would be skipped."""
    from pipelines import cdc as cdc_pipeline

    cdc = landed
    cdc.sql("CREATE TABLE app.items (id int PRIMARY KEY, v int)",
            "INSERT INTO app.items SELECT g, g FROM generate_series(1, 10) g")
    cdc.setup()
    merge(cdc)
    cdc.sql("UPDATE app.items SET v = v * 10")
    cdc.drain()
    merge(cdc)
    cdc_pipeline.teardown(cdc.pipeline())
    cdc.sql("DELETE FROM app.items WHERE id > 5", "INSERT INTO app.items VALUES (50, 500)")  # not streamed
    cdc.setup()
    summary = merge(cdc)
    assert summary.batches >= 1
    same(cdc, "items", "id, v")


def test_a_version_known_nowhere_is_read_again_by_a_follower_on_an_empty_disk(landed: Harness,
                                                                               tmp_path: Path) -> None:
    """The merge writes a version whose unchanged TOAST value it finds nowhere as a tombstone and asks the follower,
    through the landing area, to read the key again (`pipelines.cdc.rereads`); the follower's repair chunk lands
    after it and wins. In the race soak (land-merge seed 347) the value was missing because the key moved from a row
    not merged yet; here the warehouse simply lost the row."""
    from pipelines.landing_area import LandingArea

    cdc = landed
    docs_set_up_and_merged(cdc, rows=6)
    with duckdb.connect(cdc.duck) as conn:
        conn.execute(f"DELETE FROM {DATASET}.app__docs WHERE id IN (2, 5)")
    cdc.sql("UPDATE app.docs SET status = 'changed' WHERE id IN (2, 3, 5)")  # body unchanged: not in the WAL
    cdc.drain()
    first = merge(cdc)
    assert first.unresolved_toast_rows == 2
    requests = LandingArea(cdc.pipeline()).rereads()
    assert [(r.table, sorted(r.keys)) for r in requests] == [("app__docs", [["2"], ["5"]])]
    assert cdc.dest_table("app__docs", "id", where="id IN (2, 3, 5)") == [(3,)]  # tombstones: hard deletes here

    cdc.pipelines_dir = tmp_path / "a-replacement-task"  # no DLT_DATA_DIR: the request lives in the landing area
    drained = cdc.drain()
    assert drained.repaired_rows == 2
    assert LandingArea(cdc.pipeline()).rereads() == []
    second = merge(cdc)
    assert second.unresolved_toast_rows == 0
    same(cdc, "docs", "id, body, status")
