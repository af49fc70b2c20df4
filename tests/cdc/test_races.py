"""The initial copy raced against the application (issue: exact under races and crashes).

A table with a large text column stored out of line (TOAST) is copied in chunks by `setup` while the application keeps
updating *other* columns of its rows: every such update reaches the stream with the large value unchanged (pgoutput's
`u`), so it can only be completed from the chunk's row. Also raced: key updates (the value moves to a new key), and
TRUNCATE + refill, in direct and in land/merge mode. The destination must end equal to the source, value for value.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pipelines.merge import merge_landed

from .conftest import Harness

pytestmark = pytest.mark.slow
ROWS = 6000


def docs_table(cdc: Harness, rows: int = ROWS, chunk_rows: int = 300, workers: int = 2) -> None:
    """`big` is stored out of line (EXTERNAL: TOASTed without compression once over ~2 kB)."""
    cdc.sql("CREATE TABLE app.docs (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, small text, big text)",
            "ALTER TABLE app.docs ALTER COLUMN big SET STORAGE EXTERNAL",
            f"INSERT INTO app.docs SELECT g, 0, 's' || g, repeat(md5(g::text), 100) FROM generate_series(1, {rows}) g",
            "ANALYZE app.docs")
    cdc.configure(max_batch_seconds=0.5, max_batch_rows=2000)
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__CHUNK_ROWS", str(chunk_rows))
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__WORKERS", str(workers))


class App(threading.Thread):
    """The application: updates of `n`/`small` only (the TOASTed `big` stays unchanged), and optionally key moves
    and TRUNCATE + refill."""

    def __init__(self, dsn: str, rows: int, *, moves: bool = False, truncates: int = 0, seed: int = 1) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rows, self.moves, self.truncates = dsn, rows, moves, truncates
        self.stop, self.writes, self.rng = threading.Event(), 0, random.Random(seed)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = psycopg2.connect(self.dsn)
            conn.autocommit = True
            next_id = self.rows * 10
            started = time.monotonic()
            truncated = 0
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    if truncated < self.truncates and time.monotonic() - started > 1.5 * (truncated + 1):
                        truncated += 1
                        cur.execute("BEGIN; TRUNCATE app.docs; INSERT INTO app.docs SELECT g, 1, 'after', "
                                    "repeat(md5('t' || g), 100) FROM generate_series(1, 200) g; COMMIT")
                        continue
                    key = self.rng.randint(1, self.rows)
                    if self.moves and self.rng.random() < 0.1:
                        next_id += 1
                        cur.execute("UPDATE app.docs SET id = %s, n = n + 1 WHERE id = %s", (next_id, key))
                    else:
                        cur.execute("UPDATE app.docs SET n = n + 1, small = %s WHERE id = %s", (f"u{self.writes}", key))
                    self.writes += 1
                    time.sleep(0.002)  # a busy application, not one that outruns any replica on a 2-core box
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def racing(cdc: Harness, action: Any, **app: Any) -> tuple[Any, App]:
    writer = App(cdc.dsn, ROWS, **app)
    writer.start()
    try:
        result = action()
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None, writer.error
    return result, writer


COLUMNS = "id, n, small, md5(big), length(big)"


def assert_same(cdc: Harness) -> None:
    source = cdc.source(f"SELECT {COLUMNS} FROM app.docs ORDER BY id")
    dest = cdc.dest_table("app__docs", COLUMNS, "id")
    missing = [r for r in source if r not in set(dest)]
    assert not [r for r in dest if r[3] is None], f"{sum(1 for r in dest if r[3] is None)} rows lost their big value"
    assert dest == [tuple(r) for r in source], f"{len(missing)} rows differ, e.g. {missing[:3]}"


def test_toasted_values_survive_a_chunked_copy_under_updates_of_other_columns(cdc: Harness) -> None:
    """Issue scenario 1: `setup` (chunked, 2 workers) direct mode; was: thousands of rows with `big` NULL."""
    docs_table(cdc)
    report, writer = racing(cdc, cdc.setup)
    assert not report.failed_tables and writer.writes > 200
    cdc.drain()
    assert_same(cdc)


def test_a_chunk_never_overwrites_a_newer_change_when_landed_and_merged(cdc: Harness, tmp_path: Path) -> None:
    """Issue scenario 2: the same race with land + merge; was: thousands of rows with an older value than the source."""
    docs_table(cdc)
    cdc.configure(merge_interval_seconds=300)
    cdc.monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    report, writer = racing(cdc, cdc.setup, moves=True)
    assert not report.failed_tables and writer.writes > 200
    cdc.drain()
    merged = merge_landed(cdc.pipeline())
    assert merged.failed_tables == {}
    assert_same(cdc)


def test_key_moves_during_a_chunked_copy_keep_their_toasted_values(cdc: Harness) -> None:
    """A key update carries no TOASTed value either: the new key takes it from the old key's chunk row, or is read
    again when that row is in no chunk read yet."""
    docs_table(cdc)
    report, writer = racing(cdc, cdc.setup, moves=True, seed=7)
    assert not report.failed_tables and writer.writes > 200
    cdc.drain()
    assert_same(cdc)


@pytest.mark.parametrize("lands", [False, True], ids=["direct", "land-merge"])
def test_truncate_and_refill_during_a_chunked_copy(cdc: Harness, tmp_path: Path, lands: bool) -> None:
    """Issue scenarios 6 and 7: TRUNCATE + refill twice while `setup` copies a throttled table. Was (land/merge): every
    merge after it failed with SchemaNotFoundError; and a TRUNCATE inside a chunk's window brought its rows back."""
    docs_table(cdc, chunk_rows=200)
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND", "1500")
    if lands:
        cdc.configure(merge_interval_seconds=300)
        cdc.monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    report, _ = racing(cdc, cdc.setup, truncates=2)
    assert not report.failed_tables
    cdc.drain()
    if lands:
        for _ in range(2):  # the second cycle has nothing left: it must not fail either
            assert merge_landed(cdc.pipeline()).failed_tables == {}
    assert_same(cdc)
    assert cdc.source("SELECT count(*) FROM app.docs") == cdc.dest("SELECT count(*) FROM {ds}.app__docs")


def test_a_truncate_inside_a_chunks_window_does_not_bring_its_rows_back(cdc: Harness) -> None:
    """Issue scenario 7: the chunk's read (before the TRUNCATE) must not be written after it (it was: every row of
    the chunks being read came back)."""
    docs_table(cdc, chunk_rows=400, workers=1)
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND", "800")  # half a second per chunk

    def truncate_midway() -> None:
        time.sleep(2.25)
        cdc.sql("TRUNCATE app.docs")

    truncator = threading.Thread(target=truncate_midway, daemon=True)
    truncator.start()
    report = cdc.setup()
    truncator.join()
    assert not report.failed_tables
    cdc.drain()
    assert cdc.dest("SELECT count(*) FROM {ds}.app__docs") == [(0,)]
