"""Crash recovery and slot health: a process killed after loading but before confirming replays the
batch harmlessly; a missing, consumed or lagging slot is reported clearly (or resnapshotted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pipelines.cdc import AFTER_LOAD_BEFORE_ACK, CRASH_ENV
from sources.replication.errors import RetainedWalExceeded, SlotAheadOfState, SlotInvalidated, SlotMissing
from sources.replication.lsn import parse_lsn
from tests.conftest import PROJECT_ROOT

from .conftest import DATASET, Harness

COLUMNS = "id, name, qty"


def seed(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, name text, qty int)",
            "INSERT INTO app.t SELECT g, 'n' || g, g FROM generate_series(1, 1000) g")


def changes(cdc: Harness) -> None:
    cdc.sql("INSERT INTO app.t SELECT g, 'new ' || g, g FROM generate_series(1001, 3000) g",
            "UPDATE app.t SET qty = qty * 10 WHERE id % 3 = 0",
            "DELETE FROM app.t WHERE id % 7 = 0",
            "UPDATE app.t SET name = 'last' WHERE id = 2999")


def worker(cdc: Harness, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.cdc.cdc_worker", cdc.pipeline_name, str(cdc.pipelines_dir), DATASET],
        cwd=PROJECT_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=180)


def assert_exact(cdc: Harness) -> None:
    assert cdc.dest_table("app__t", COLUMNS) == cdc.source(f"SELECT {COLUMNS} FROM app.t ORDER BY 1")
    assert cdc.dest("SELECT count(*) = count(DISTINCT id) FROM {ds}.app__t") == [(True,)]


def test_killed_after_load_before_ack_replays_exactly(cdc: Harness) -> None:
    cdc.configure(max_batch_rows=1500)
    seed(cdc)
    cdc.setup()
    before = cdc.slot_position()
    changes(cdc)

    crashed = worker(cdc, **{CRASH_ENV: AFTER_LOAD_BEFORE_ACK})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    # the first batch is in DuckDB but the server never heard about it
    assert cdc.slot_position() == before
    loaded = cdc.dest("SELECT count(*) FROM {ds}.app__t WHERE id > 1000")[0][0]
    assert 0 < loaded < 2000

    finished = worker(cdc)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_exact(cdc)
    end_lsn = parse_lsn(json.loads(finished.stdout.strip().splitlines()[-1])["end_lsn"])
    assert cdc.slot_position() == (end_lsn, False)


def test_missing_slot_is_an_error_or_a_resnapshot(cdc: Harness) -> None:
    with pytest.raises(SlotMissing, match="never set up"):
        seed(cdc)
        cdc.drain()
    cdc.setup()
    cdc.sql(f"SELECT pg_drop_replication_slot('{cdc.slot}')")
    changes(cdc)  # made while no slot recorded them
    with pytest.raises(SlotMissing, match=r"no longer exists.*resnapshot"):
        cdc.drain()
    cdc.configure(on_slot_lost="resnapshot")
    summary = cdc.drain()
    assert summary.snapshots == {"app__t": cdc.source("SELECT count(*) FROM app.t")[0][0]}
    assert_exact(cdc)
    cdc.sql("UPDATE app.t SET qty = 0 WHERE id = 1")
    cdc.drain()
    assert_exact(cdc)


def test_slot_advanced_elsewhere_means_lost_changes(cdc: Harness) -> None:
    seed(cdc)
    cdc.setup()
    changes(cdc)
    # someone else consumes the slot: those changes never reach us
    cdc.sql(f"SELECT pg_replication_slot_advance('{cdc.slot}', pg_current_wal_lsn())")
    with pytest.raises(SlotAheadOfState, match="another consumer advanced the slot"):
        cdc.drain()
    cdc.configure(on_slot_lost="resnapshot")
    cdc.drain()
    assert_exact(cdc)


def test_idle_slot_advances_and_retained_wal_is_enforced(cdc: Harness) -> None:
    seed(cdc)
    cdc.sql("CREATE TABLE app.unpublished_noise (x text)")
    cdc.configure(exclude='["unpublished_noise"]')
    cdc.setup()
    # WAL the slot has no interest in (another table, another database would do the same)
    cdc.sql("INSERT INTO app.unpublished_noise SELECT repeat('x', 1000) FROM generate_series(1, 3000)")
    cdc.configure(idle_ack_bytes=1 << 40, retained_wal_fail_bytes=1 << 20, retained_wal_warn_bytes=1 << 19)
    with pytest.raises(RetainedWalExceeded, match="retains"):
        cdc.drain()
    # confirming idle positions lets the slot advance although no replicated row changed
    cdc.configure(idle_ack_bytes=0)
    summary = cdc.drain()
    assert summary.total_changes == 0
    assert summary.retained_wal_bytes < 1 << 19  # warned at the start, fine at the end
    assert any("MiB of WAL" in w for w in summary.warnings)
    assert cdc.slot_position()[0] == parse_lsn(summary.end_lsn)  # type: ignore[index]


def test_tables_argument_recopies_a_table_alone(cdc: Harness) -> None:
    seed(cdc)
    cdc.sql("CREATE TABLE app.other (id int PRIMARY KEY)", "INSERT INTO app.other VALUES (1)")
    cdc.setup()
    import duckdb

    con = duckdb.connect(cdc.duck)  # damage the replica behind the pipeline's back
    con.execute(f"DELETE FROM {DATASET}.app__t WHERE id <= 500")
    con.close()
    cdc.sql("UPDATE app.t SET name = 'changed' WHERE id = 600")
    summary = cdc.drain(tables=["app.t"])
    assert summary.snapshots == {"app__t": 1000}
    assert_exact(cdc)
    assert cdc.dest_table("app__other", "id") == [(1,)]


@pytest.mark.slow
def test_invalidated_slot(cdc: Harness) -> None:
    seed(cdc)
    cdc.setup()
    changes(cdc)
    try:  # PostgreSQL drops WAL the slot still needs once it exceeds max_slot_wal_keep_size
        cdc.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'", "SELECT pg_reload_conf()")
        for _ in range(4):
            cdc.sql("INSERT INTO app.t SELECT g, 'filler', 0 FROM generate_series(100000, 100100) g",
                    "DELETE FROM app.t WHERE name = 'filler'", "SELECT pg_switch_wal()")
        cdc.sql("CHECKPOINT")
        assert cdc.source(f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{cdc.slot}'") == [("lost",)]
    finally:
        cdc.sql("ALTER SYSTEM RESET max_slot_wal_keep_size", "SELECT pg_reload_conf()")
    with pytest.raises(SlotInvalidated, match="invalidated"):
        cdc.drain()
    cdc.configure(on_slot_lost="resnapshot")
    cdc.drain()
    assert_exact(cdc)


def test_a_slot_postgresql_cannot_decode_is_not_retried_forever() -> None:
    """Race soak, follow seed 8: every START_REPLICATION failed at once with PostgreSQL's "could not map filenode";
    taken for a dropped stream, each run exited 1 to be retried, for ever. It must ask for a resnapshot instead."""
    from runner.errors import classify
    from runner.exit_codes import ExitCode
    from sources.replication.errors import SlotUndecodable, StreamInterrupted
    from sources.replication.walstream import classify_start_error

    message = 'ERROR:  could not map filenode "base/16384/16779" to relation OID\n'
    error = classify_start_error(message, "race_slot")
    assert isinstance(error, SlotUndecodable)
    code, text = classify(error)
    assert code == ExitCode.CONFIG_ERROR and "setup --resnapshot" in text and "16779" in text
    dropped = classify_start_error("server closed the connection unexpectedly", "race_slot")
    assert isinstance(dropped, StreamInterrupted) and classify(dropped)[0] == ExitCode.FAILURE
