"""The CDC copy of a large table in chunks, reconciled with the stream by watermarks (DBLog): exact under
continuous writes with no long transaction on the source, resumable after kill -9, and read from a reader endpoint
only once the reader replayed past each chunk's low watermark."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from local.postgres import LocalPostgres
from pipelines import customers_orders
from replica.verify import VerifyOptions, verify
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, subprocess_env
from tests.test_run_operations import AURORA_SYNC

from .conftest import Harness

ROWS = 100_000
pytestmark = pytest.mark.slow


def big_table(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.big (id bigint PRIMARY KEY, v text, n int NOT NULL DEFAULT 0)",
            f"INSERT INTO app.big SELECT g, repeat('v', 80) || g, 0 FROM generate_series(1, {ROWS}) g",
            "CREATE TABLE app.small (id int PRIMARY KEY, v text)", "INSERT INTO app.small VALUES (1, 'one')",
            "ANALYZE app.big")
    cdc.configure(max_batch_seconds=0.5)
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__CHUNK_BYTES", str(1 << 20))
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__WORKERS", "2")
    # the writers below and the server share this machine's two cores: the CPU guard would (rightly) wait for
    # them; its behaviour is tested in tests/test_chunked_snapshot.py
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE", "0")


class Writer(threading.Thread):
    """pgbench-like: updates, deletes, inserts and key updates on the big table, as fast as it can."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.writes = dsn, threading.Event(), 0

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        rng, next_id = random.Random(11), ROWS * 10
        with conn.cursor() as cur:
            while not self.stop.is_set():
                key, op = rng.randint(1, ROWS), rng.random()
                if op < 0.4:
                    cur.execute("UPDATE app.big SET n = n + 1, v = 'updated' WHERE id = %s", (key,))
                elif op < 0.6:
                    cur.execute("DELETE FROM app.big WHERE id = %s", (key,))
                elif op < 0.8:
                    next_id += 1
                    cur.execute("INSERT INTO app.big (id, v, n) VALUES (%s, 'new', 1)", (next_id,))
                else:  # the key moves: the old one is deleted, maybe into a range already copied
                    cur.execute("UPDATE app.big SET id = id + %s WHERE id = %s", (ROWS * 5, key))
                self.writes += 1
        conn.close()


class OldestTransaction(threading.Thread):
    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.oldest = dsn, threading.Event(), 0.0

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute("SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'aurora-snowflake-sync%%' AND xact_start IS NOT NULL "
                            "AND backend_type = 'client backend'")
                self.oldest = max(self.oldest, float(cur.fetchone()[0]))
                time.sleep(0.05)
        conn.close()


def assert_exact(cdc: Harness, pipeline: Any = None) -> None:
    report = verify(pipeline or cdc.pipeline(), options=VerifyOptions(checksum=True))
    assert report.outcome == "ok", json.dumps(report.as_json(), default=str)[:3000]


def test_setup_under_continuous_writes_ends_exact_without_a_long_transaction(cdc: Harness) -> None:
    big_table(cdc)
    writer, watcher = Writer(cdc.dsn), OldestTransaction(cdc.dsn)
    writer.start()
    watcher.start()
    try:
        report = cdc.setup()
    finally:
        writer.stop.set()
        writer.join()
        watcher.stop.set()
        watcher.join()
    assert not report.failed_tables and report.snapshots["app__big"] > 0
    assert writer.writes > 1000, "the copy ran under a steady stream of writes"
    assert watcher.oldest < 10.0, f"a source transaction of the sync lived {watcher.oldest:.1f} s"
    cdc.drain()  # what was written after setup returned
    assert_exact(cdc)
    assert cdc.source("SELECT count(*) FROM app.big") == cdc.dest("SELECT count(*) FROM {ds}.app__big")


def test_a_copy_killed_midway_resumes_and_reads_again_only_the_chunks_in_flight(cdc: Harness, tmp_path: Path) -> None:
    big_table(cdc)
    env = {**{k: v for k, v in os.environ.items() if k.startswith(("SOURCES__", "DESTINATION__", "DLT_"))},
           "SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND": "30000"}
    process = subprocess.Popen([AURORA_SYNC, "--json-logs", "setup"], env=subprocess_env(env), cwd=PROJECT_ROOT,
                               stderr=subprocess.PIPE, text=True)
    first: list[dict[str, Any]] = []
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("{"):
            first.append(json.loads(line))
        total = next((e["chunks"] for e in first if e.get("message") == "chunked copy begun"), None)
        landed = [e for e in first if e.get("message") == "chunk read"]
        if total and len(landed) >= total // 2:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    cdc.sql("UPDATE app.big SET n = 7 WHERE id % 97 = 0", "DELETE FROM app.big WHERE id % 89 = 0")

    rerun = subprocess.run([AURORA_SYNC, "--json-logs", "run", "--mode", "cdc"], env=subprocess_env(env),
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-3000:]
    second = [json.loads(line) for line in rerun.stderr.splitlines() if line.startswith("{")]
    before = {e["chunk"] for e in first if e.get("message") == "chunk read" and e["table"] == "app__big"}
    after = {e["chunk"] for e in second if e.get("message") == "chunk read" and e["table"] == "app__big"}
    assert any(e.get("message") == "resuming a chunked copy" for e in second)
    assert not before & after, "a chunk that landed before the kill was read again"
    assert len(before | after) == total
    assert_exact(cdc, customers_orders.make_pipeline())  # the CLI's pipeline


def test_chunks_are_read_from_the_reader_only_once_it_replayed_past_their_low_watermark(
        cdc: Harness, pg: LocalPostgres) -> None:
    big_table(cdc)
    reader = pg.standby()
    try:
        database = cdc.dsn.rsplit("/", 1)[1]
        cdc.monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__READER_CREDENTIALS", reader.url(database=database))
        pause = psycopg2.connect(reader.url(database=database))
        pause.autocommit = True
        pause.cursor().execute("SELECT pg_wal_replay_pause()")
        done: list[Any] = []
        setup = threading.Thread(target=lambda: done.append(cdc.setup()), daemon=True)
        setup.start()
        time.sleep(4)
        # the reader is behind every low watermark: no chunk may have been read from it yet
        assert not done and cdc.dest("SELECT count(*) FROM {ds}.app__big") == [(0,)]
        pause.cursor().execute("SELECT pg_wal_replay_resume()")
        pause.close()
        setup.join(timeout=180)
        assert done and done[0].snapshots["app__big"] == ROWS
        assert_exact(cdc)
    finally:
        reader.cleanup()


def test_spill_directories_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A CDC process killed with kill -9 never closes its chunk readers: the next one on the same disk removes what
    they spilled, and nothing of a process still alive (or of an owner it cannot tell)."""
    import sys

    from sources.replication.chunked_copy import SPILL_PREFIX, remove_stale_spill_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{SPILL_PREFIX}{gone.pid}-a1b2"
    live = tmp_path / f"{SPILL_PREFIX}{os.getpid()}-c3d4"
    unknown = tmp_path / f"{SPILL_PREFIX}x7y8z9"  # the name before pids were in it
    for directory in (stale, live, unknown, tmp_path / "unrelated"):
        directory.mkdir()
        (directory / "generation-0-0.arrow").write_bytes(b"spilled chunk")
    assert remove_stale_spill_dirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and unknown.exists() and (tmp_path / "unrelated").exists()
