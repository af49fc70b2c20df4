"""Large tables are read in chunks: short transactions on the source, resumable after kill -9 at the first
unfinished chunk, parallel, paced by the throttle and the source guard, and exact at the end. Real `aurora-sync`
processes against the real PostgreSQL; chunks are made tiny (1 MiB) so a small table has many."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET, duck_rows
from tests.test_run_operations import AURORA_SYNC, aurora_sync, events

pytestmark = [pytest.mark.slow]
# The two guard tests time the source's load (sessions that must still be busy when the sync's first chunk starts;
# a CPU probe that one test saturates on purpose): make test runs them last, one at a time, with nothing else on the
# machine. The others read their own worker's cluster with the guards off and hold on a loaded machine.

ROWS = 120_000


@pytest.fixture()
def env(tmp_path: Path, database: str) -> dict[str, str]:
    execute(database, "CREATE SCHEMA big",
            "CREATE TABLE big.orders (id bigint PRIMARY KEY, note text, total numeric(12, 2), "
            "updated_at timestamptz NOT NULL DEFAULT now())",
            f"INSERT INTO big.orders SELECT g, repeat('n', 60) || g, g * 0.25, now() - interval '1 day' "
            f"FROM generate_series(1, {ROWS}) g",
            "CREATE TABLE big.lines (v text, n int)",  # no key: chunked by heap blocks
            "INSERT INTO big.lines SELECT repeat('l', 90), g FROM generate_series(1, 40000) g",
            "CREATE TABLE big.tiny (id int PRIMARY KEY, v text)", "INSERT INTO big.tiny VALUES (1, 'one')",
            "ANALYZE big.orders", "ANALYZE big.lines")
    return {
        "SOURCES__POSTGRES__CREDENTIALS": database,
        "SOURCES__POSTGRES__SCHEMAS": '["big"]',
        "SOURCES__POSTGRES__SNAPSHOT__CHUNK_BYTES": str(1 << 20),
        "SOURCES__POSTGRES__SNAPSHOT__WORKERS": "2",
        # the server shares this machine's cores with pytest and the sync: the CPU guard would count them as
        # the source's load; its own test below turns it on
        "SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE": "0",
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "RUNNER__MAX_ATTEMPTS": "1",
    }


def chunks_read(result_events: list[dict[str, Any]], table: str = "big__orders") -> list[int]:
    return [e["chunk"] for e in result_events if e.get("message") == "chunk read" and e.get("table") == table]


def verify_exact(env: dict[str, str], *tables: str) -> None:
    result = aurora_sync(env, "verify", "--checksum", "--json", *(["--tables", *tables] if tables else []))
    assert result.returncode == ExitCode.SUCCESS, result.stdout[-3000:] + result.stderr[-2000:]


class OldestTransaction(threading.Thread):
    """Samples the age of the oldest open transaction of the sync on the source, every 50 ms."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.oldest = dsn, threading.Event(), 0.0

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute("SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'aurora-snowflake-sync%' AND xact_start IS NOT NULL")
                self.oldest = max(self.oldest, float(cur.fetchone()[0]))
                time.sleep(0.05)
        conn.close()


def test_a_large_table_is_read_in_short_chunks_in_parallel_and_lands_exact(env: dict[str, str]) -> None:
    watcher = OldestTransaction(env["SOURCES__POSTGRES__CREDENTIALS"])
    watcher.start()
    try:
        result = aurora_sync({**env, "SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND": "60000"},
                             "run", "--mode", "snapshot")
    finally:
        watcher.stop.set()
        watcher.join()
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    read = chunks_read(events(result))
    assert len(read) >= 8 and sorted(read) == list(range(len(read))), read  # every chunk once
    assert len(chunks_read(events(result), "big__lines")) >= 3  # the keyless table, by block ranges
    assert chunks_read(events(result), "big__tiny") == []  # a small table is one read in the shared package
    # the throttle (60,000 rows/s per worker) made the run take a while; no transaction lived through it
    duration = next(e["duration_s"] for e in events(result) if e["message"] == "run succeeded")
    assert duration > ROWS / (2 * 60_000)
    assert watcher.oldest < 5.0, f"a source transaction lived {watcher.oldest:.1f} s"
    verify_exact(env)


def test_kill_9_mid_snapshot_resumes_at_the_first_unfinished_chunk(env: dict[str, str]) -> None:
    slow = {**env, "SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND": "40000"}
    process = subprocess.Popen([AURORA_SYNC, "--json-logs", "run", "--mode", "snapshot", "--tables", "big.orders"],
                               env=subprocess_env(slow), cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)
    first: list[dict[str, Any]] = []
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("{"):
            first.append(json.loads(line))
        loaded = [e for e in first if e.get("message") == "chunks loaded"]
        if loaded and loaded[-1]["done"] >= loaded[-1]["of"] // 2:
            os.kill(process.pid, signal.SIGKILL)  # about half the chunks are in, others in flight
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    total = next(e["of"] for e in first if e.get("message") == "chunks loaded")
    landed = duck_rows(env["DESTINATION__DUCKDB__CREDENTIALS"], f"SELECT count(*) FROM {DATASET}.big__orders")
    assert 0 < landed[0][0] < ROWS

    rerun = aurora_sync(env, "run", "--mode", "snapshot", "--tables", "big.orders")
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-3000:]
    again = set(chunks_read(first)) & set(chunks_read(events(rerun)))
    assert len(again) <= 2, f"re-read {sorted(again)}: more than the chunks in flight (workers = 2)"
    assert set(chunks_read(first)) | set(chunks_read(events(rerun))) == set(range(total))
    verify_exact(env, "big.orders")


def test_a_new_task_after_a_kill_mid_load_deletes_the_rows_of_the_unfinished_load(env: dict[str, str]) -> None:
    """An ECS task killed during the load of an appended chunk leaves its rows in the table without a completed
    load, and its successor (a fresh disk: no package to finish) reads that chunk again. Those first rows must go,
    or they are there twice."""
    killed = aurora_sync({**env, "AURORA_SYNC_FAILPOINT": "load_mid", "AURORA_SYNC_FAILPOINT_STEP_RUN": "3",
                          "AURORA_SYNC_FAILPOINT_JOBS": "2"},
                         "run", "--mode", "snapshot", "--tables", "big.orders")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    replica = env["DESTINATION__DUCKDB__CREDENTIALS"]
    unfinished = duck_rows(replica, f"SELECT count(*) FROM {DATASET}.big__orders WHERE _dlt_load_id NOT IN "
                                    f"(SELECT load_id FROM {DATASET}._dlt_loads WHERE status = 0)")[0][0]
    assert unfinished > 0  # the kill landed after the chunk rows were in, before the load completed
    shutil.rmtree(env["DLT_DATA_DIR"])  # a new ECS task: the interrupted package is gone with the old disk

    rerun = aurora_sync(env, "run", "--mode", "snapshot", "--tables", "big.orders")
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-3000:]
    deleted = [e for e in events(rerun) if "loads that never completed" in e.get("message", "")]
    assert deleted and deleted[0]["rows"] == unfinished, deleted
    verify_exact(env, "big.orders")


def test_the_first_incremental_load_in_chunks_then_merges_only_changes(env: dict[str, str]) -> None:
    first = aurora_sync(env, "run", "--tables", "big.orders")
    assert first.returncode == ExitCode.SUCCESS, first.stderr[-3000:]
    assert len(chunks_read(events(first))) >= 8  # appended chunk by chunk: no merge of the whole table
    execute(env["SOURCES__POSTGRES__CREDENTIALS"],
            "UPDATE big.orders SET note = 'changed', updated_at = now() WHERE id % 1000 = 0",
            "INSERT INTO big.orders VALUES (999999, 'new', 1, now())")
    second = aurora_sync(env, "run", "--tables", "big.orders")
    assert second.returncode == ExitCode.SUCCESS, second.stderr[-3000:]
    assert chunks_read(events(second)) == []  # incremental from the cursor the snapshot left
    rows = next(e["rows"] for e in events(second) if e.get("message") == "table loaded")
    assert rows == ROWS // 1000 + 1
    assert duck_rows(env["DESTINATION__DUCKDB__CREDENTIALS"],
                     f"SELECT count(*) FROM {DATASET}.big__orders WHERE note = 'changed'") == [(ROWS // 1000,)]
    verify_exact(env, "big.orders")


@pytest.mark.serial
@pytest.mark.alone
def test_the_guard_pauses_while_the_source_is_busy_but_never_stalls(env: dict[str, str]) -> None:
    busy = [psycopg2.connect(env["SOURCES__POSTGRES__CREDENTIALS"]) for _ in range(3)]
    threads = [threading.Thread(target=lambda c=c: c.cursor().execute("SELECT pg_sleep(4)"), daemon=True)
               for c in busy]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        result = aurora_sync({**env, "SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_ACTIVE_SESSIONS_ABOVE": "2",
                              "SOURCES__POSTGRES__SNAPSHOT__MAX_PAUSE_SECONDS": "2"},
                             "run", "--mode", "snapshot", "--tables", "big.orders")
    finally:
        for thread in threads:
            thread.join()
        for conn in busy:
            conn.close()
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    paused = [e["paused_s"] for e in events(result) if e.get("message") == "chunk read"]
    assert max(paused) >= 1.0, paused  # it waited while three sessions were busy ...
    assert max(paused) < 4.0, paused  # ... but no longer than max_pause_seconds (plus a check)
    verify_exact(env, "big.orders")


@pytest.mark.serial
@pytest.mark.alone
def test_the_cpu_guard_waits_while_the_source_has_no_idle_core(env: dict[str, str]) -> None:
    """Sessions burning every core of the server (twice over) for a few seconds: the snapshot's first chunks
    wait for them to end (the CPU probe runs several times slower), then the snapshot reads on, exact."""
    burn_seconds = 15  # well beyond the sync's start-up (interpreter, imports, discovery: ~5 s on a busy CI box)
    busy = [psycopg2.connect(env["SOURCES__POSTGRES__CREDENTIALS"]) for _ in range(2 * (os.cpu_count() or 2))]

    def burn(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = '{burn_seconds}s'")
            with contextlib.suppress(psycopg2.errors.QueryCanceled):
                cur.execute("SELECT count(*) FROM generate_series(1, 10000000000)")

    threads = [threading.Thread(target=burn, args=(c,), daemon=True) for c in busy]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    try:
        result = aurora_sync({**env, "SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE": "1.5",
                              "SOURCES__POSTGRES__SNAPSHOT__MAX_PAUSE_SECONDS": "60"},
                             "run", "--mode", "snapshot", "--tables", "big.orders")
    finally:
        for thread in threads:
            thread.join()
        for conn in busy:
            conn.close()
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    reads = [e for e in events(result) if e.get("message") == "chunk read"]
    first_paused = max(e["paused_s"] for e in reads)
    assert first_paused >= 2.0, [e["paused_s"] for e in reads]  # it waited for the burners ...
    assert first_paused < 30.0  # ... and went on once they were gone, long before max_pause_seconds
    assert time.monotonic() - started >= burn_seconds
    verify_exact(env, "big.orders")
