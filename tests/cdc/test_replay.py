"""A replacement task starts on an empty disk (issue: exact under races and crashes, scenarios 3 and 4).

dlt resumes a half-loaded package only from its local pipeline folder; an ECS replacement task has none. So a batch
applied in part before a `kill -9` is extracted again and applied onto a destination that already holds part of it:
keyless duplicates must not lose a second copy, and a key that moved in that batch must keep its TOASTed value. In
land/merge mode, a follower killed between writing a landing load's state and its `_dlt_loads` entry must not resume
after a batch that `merge` will never read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.destinations import LANDING_STATE_WRITTEN
from pipelines.merge import merge_landed
from pipelines.progress import FAILPOINT_ENV, FAILPOINT_JOBS_ENV, FAILPOINT_STEP_RUN_ENV
from tests.conftest import PROJECT_ROOT

from .conftest import DATASET, Harness

pytestmark = pytest.mark.slow
DOCS = "id, n, md5(big)"


def seed(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.docs (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, big text)",
            "ALTER TABLE app.docs ALTER COLUMN big SET STORAGE EXTERNAL",
            "INSERT INTO app.docs SELECT g, 0, repeat(md5(g::text), 100) FROM generate_series(1, 400) g",
            "CREATE TABLE app.bag (x int, y text)", "ALTER TABLE app.bag REPLICA IDENTITY FULL",
            "INSERT INTO app.bag SELECT g % 10, 'dup' FROM generate_series(1, 60) g")


def round_of_changes(cdc: Harness, round_: int) -> None:
    """One transaction: a duplicated keyless row loses ONE copy, keys move with their TOASTed value unchanged, other
    rows change a small column only."""
    base = 10_000 * (round_ + 1)
    cdc.sql(f"""BEGIN;
        INSERT INTO app.bag VALUES ({100 + round_}, 'r'), ({100 + round_}, 'r'), ({100 + round_}, 'r');
        DELETE FROM app.bag WHERE ctid = (SELECT ctid FROM app.bag WHERE x = {round_ % 10} LIMIT 1);
        DELETE FROM app.bag WHERE ctid = (SELECT ctid FROM app.bag WHERE x = {100 + round_} LIMIT 1);
        UPDATE app.docs SET id = id + {base} WHERE id IN (SELECT id FROM app.docs WHERE id < 10000 ORDER BY id
                                                          LIMIT 15);
        UPDATE app.docs SET n = n + 1 WHERE id IN (SELECT id FROM app.docs WHERE id < 10000 ORDER BY id DESC
                                                   LIMIT 20);
        INSERT INTO app.docs SELECT {base} + 5000 + g, 5, repeat(md5('r' || g), 100) FROM generate_series(1, 5) g;
        COMMIT""")


def worker(cdc: Harness, pipelines_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.cdc.cdc_worker", cdc.pipeline_name, str(pipelines_dir), DATASET],
        cwd=PROJECT_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def assert_exact(cdc: Harness) -> None:
    source = cdc.source(f"SELECT {DOCS} FROM app.docs ORDER BY id")
    dest = cdc.dest_table("app__docs", DOCS, "id")
    assert not [r for r in dest if r[2] is None], "a moved key lost its TOASTed value"
    assert dest == [tuple(r) for r in source]
    bag = cdc.source("SELECT x, y, count(*) FROM app.bag GROUP BY 1, 2 ORDER BY 1, 2")
    assert cdc.dest("SELECT x, y, count(*) FROM {ds}.app__bag GROUP BY 1, 2 ORDER BY 1, 2") == [tuple(r) for r in bag]


def test_a_package_applied_in_part_is_replayed_exactly_from_an_empty_disk(cdc: Harness, tmp_path: Path) -> None:
    """kill -9 after each number of a package's load jobs in turn, then a replacement process on an empty disk."""
    seed(cdc)
    cdc.setup()
    crashes = 0
    for jobs in range(1, 12):
        round_of_changes(cdc, jobs)
        crashed = worker(cdc, tmp_path / f"disk-{jobs}-a", **{FAILPOINT_ENV: "load_mid", FAILPOINT_JOBS_ENV: str(jobs)})
        if crashed.returncode == 0:
            break  # the package has fewer jobs than this: every kill point was tried
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
        crashes += 1
        replay = worker(cdc, tmp_path / f"disk-{jobs}-b")  # a replacement task: nothing on disk
        assert replay.returncode == 0, replay.stderr[-3000:]
        assert_exact(cdc)
    assert crashes >= 3, "the package was killed after several different numbers of jobs"
    assert_exact(cdc)


def test_the_same_kill_on_the_same_disk_also_ends_exact(cdc: Harness, tmp_path: Path) -> None:
    seed(cdc)
    cdc.setup()
    disk = tmp_path / "disk"
    for jobs in (1, 2, 3):
        round_of_changes(cdc, jobs)
        crashed = worker(cdc, disk, **{FAILPOINT_ENV: "load_mid", FAILPOINT_JOBS_ENV: str(jobs)})
        assert crashed.returncode in (0, -signal.SIGKILL), crashed.stderr[-3000:]
        assert worker(cdc, disk).returncode == 0
        assert_exact(cdc)


def test_a_landing_state_written_before_its_load_completed_is_not_resumed_from(cdc: Harness, tmp_path: Path) -> None:
    """Issue scenario 4: killed between a landing load's state file and its `_dlt_loads` entry, then restarted on an
    empty disk: the batch is landed again (was: 500 inserts, 100 updates and 51 deletes never reached the
    warehouse)."""
    cdc.configure(merge_interval_seconds=300)
    cdc.monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)",
            "INSERT INTO app.t SELECT g, 'v' || g FROM generate_series(1, 1000) g")
    cdc.setup()
    merge_landed(cdc.pipeline())
    cdc.sql("INSERT INTO app.t SELECT g, 'new' FROM generate_series(1001, 1500) g",
            "UPDATE app.t SET v = 'changed' WHERE id <= 100",
            "DELETE FROM app.t WHERE id % 20 = 0 AND id > 100")
    crashed = worker(cdc, tmp_path / "disk", **{FAILPOINT_ENV: LANDING_STATE_WRITTEN, FAILPOINT_STEP_RUN_ENV: "1"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert worker(cdc, tmp_path / "replacement").returncode == 0
    merge_landed(cdc.pipeline())
    source = cdc.source("SELECT id, v FROM app.t ORDER BY 1")
    assert cdc.dest_table("app__t", "id, v", "id") == [tuple(r) for r in source]


def test_a_merge_that_fails_half_way_changes_nothing(cdc: Harness) -> None:
    """A table's merge (DELETE the changed keys, INSERT their new versions) is one transaction: when the INSERT fails,
    the DELETE is undone. Was: dlt 1.31 ran it in autocommit for DuckDB and Snowflake, so a failure or a kill -9
    between the two left the keys deleted (the empty-disk replay above then found them gone)."""
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, n int)",
            "INSERT INTO app.t SELECT g, 1 FROM generate_series(1, 100) g")
    # the warehouse refuses n >= 100 (a CHECK constraint dlt keeps: it only adds missing columns)
    with duckdb.connect(cdc.duck) as duck:
        duck.execute(f"CREATE SCHEMA {DATASET}")
        duck.execute(f"CREATE TABLE {DATASET}.app__t (id INTEGER NOT NULL, n INTEGER CHECK (n < 100), "
                     "_lsn BIGINT, _lsn_ordinal BIGINT, _deleted BOOLEAN)")
    cdc.setup()
    assert cdc.dest_table("app__t", "count(*)") == [(100,)]
    cdc.sql("UPDATE app.t SET n = 500 WHERE id <= 10")
    summary = cdc.drain()
    assert "app__t" in summary.failed_tables, summary.failed_tables  # the INSERT failed: the table is set aside
    assert cdc.dest_table("app__t", "id, n", "id") == [(i, 1) for i in range(1, 101)], "the DELETE was undone"


def test_a_keyless_copy_inserted_in_a_partly_applied_package_then_deleted_is_not_kept(cdc: Harness,
                                                                                       tmp_path: Path) -> None:
    """Race soak, setup-chunked-N seed 104: a package that inserted a keyless copy was loaded in part (its bag job
    done) and killed; the source then deleted that copy; the replay read the insert and the delete in one batch,
    where they cancel out, so the copy the first attempt had loaded stayed for ever (one extra row)."""
    seed(cdc)
    cdc.setup()
    exercised = 0
    for jobs in range(1, 12):
        x = 500 + jobs
        cdc.sql(f"INSERT INTO app.bag VALUES ({x}, 'solo')", "UPDATE app.docs SET n = n + 1 WHERE id = 400")
        crashed = worker(cdc, tmp_path / f"disk-{jobs}-a", **{FAILPOINT_ENV: "load_mid", FAILPOINT_JOBS_ENV: str(jobs)})
        if crashed.returncode == 0:
            break
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
        loaded = cdc.dest(f"SELECT count(*) FROM {{ds}}.app__bag WHERE x = {x}")[0][0]
        exercised += loaded
        cdc.sql(f"DELETE FROM app.bag WHERE x = {x}")
        replay = worker(cdc, tmp_path / f"disk-{jobs}-b")  # insert and delete now in one batch
        assert replay.returncode == 0, replay.stderr[-3000:]
        assert_exact(cdc)
    assert exercised, "no kill point left the keyless insert loaded before the package completed"


def test_a_keyless_delete_replayed_alone_never_takes_a_copy_inserted_after_it(cdc: Harness, tmp_path: Path) -> None:
    """Race soak, setup-chunked-1 seed 503: a package holding a keyless delete and a later insert of the same values
    was loaded in part (the insert's copy written, the delete's decision not committed) and killed. The replay cut
    its batches between the two, so the delete, alone, saw the newer copy too, took it (the smallest key: a change's
    sorts before a snapshot's), and the insert wrote it back: the copy the source deleted stayed (one extra row)."""
    seed(cdc)  # 6 snapshot copies of each (x, 'dup'), x in 0..9
    cdc.setup()
    exercised = 0
    for jobs in range(1, 10):
        x = jobs
        cdc.sql(f"DELETE FROM app.bag WHERE ctid = (SELECT ctid FROM app.bag WHERE x = {x} LIMIT 1)",
                f"INSERT INTO app.bag VALUES ({x}, 'dup')", "UPDATE app.docs SET n = n + 1 WHERE id = 400")
        crashed = worker(cdc, tmp_path / f"disk-{jobs}-a", **{FAILPOINT_ENV: "load_mid", FAILPOINT_JOBS_ENV: str(jobs)})
        if crashed.returncode == 0:
            break
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
        exercised += cdc.dest(f"SELECT count(*) FROM {{ds}}.app__bag WHERE x = {x}")[0][0] > 6
        replay = worker(cdc, tmp_path / f"disk-{jobs}-b", SOURCES__POSTGRES__REPLICATION__MAX_BATCH_ROWS="1")
        assert replay.returncode == 0, replay.stderr[-3000:]
        assert_exact(cdc)
    assert exercised, "no kill point left the newer copy loaded beside the older ones"
