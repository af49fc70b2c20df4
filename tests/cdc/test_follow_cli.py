"""`aurora-sync run --mode cdc --follow` as ECS runs it: streams, reports liveness, and on SIGTERM
finishes the batch in flight, confirms it and exits 0 with nothing lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET, duck_rows, pg_rows

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def test_follow_reports_liveness_and_stops_cleanly_on_sigterm(tmp_path: Path, database: str) -> None:
    execute(database, "CREATE SCHEMA shop",
            "CREATE TABLE shop.orders (id int PRIMARY KEY, status text, updated_at timestamptz DEFAULT now())",
            "INSERT INTO shop.orders (id, status) SELECT g, 'new' FROM generate_series(1, 100) g")
    env = subprocess_env({
        "SOURCES__POSTGRES__CREDENTIALS": database, "SOURCES__POSTGRES__SCHEMAS": '["shop"]',
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"), "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "RUNNER__LIVENESS_SECONDS": "1", "SOURCES__POSTGRES__REPLICATION__MAX_BATCH_SECONDS": "1",
    })
    setup = subprocess.run([AURORA_SYNC, "--json-logs", "setup"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                           text=True, timeout=120, check=False)
    assert setup.returncode == ExitCode.SUCCESS, setup.stderr[-2000:]

    follower = subprocess.Popen([AURORA_SYNC, "--json-logs", "run", "--mode", "cdc", "--follow"], env=env,
                                cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        for i in range(5):
            execute(database, f"UPDATE shop.orders SET status = 'paid-{i}' WHERE id = {i + 1}",
                    f"DELETE FROM shop.orders WHERE id = {50 + i}")
            time.sleep(0.7)
        # SIGTERM right after the last commit: that change is still in flight and must be flushed, not lost
        execute(database, "INSERT INTO shop.orders (id, status) VALUES (1000, 'last')")
        follower.send_signal(signal.SIGTERM)
        _, stderr = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert follower.returncode == ExitCode.SUCCESS, stderr[-3000:]
    liveness = [e for e in events if e.get("RunSucceeded") == 1]
    assert len(liveness) >= 2, "follow mode must report liveness while it runs, not only at the end"
    assert events[-1]["message"] == "run succeeded" and events[-1]["stopped_by"] == "stop"
    source = pg_rows(database, "SELECT id, status FROM shop.orders ORDER BY id")
    dest = duck_rows(str(tmp_path / "replica.duckdb"), f"SELECT id, status FROM {DATASET}.shop__orders ORDER BY id")
    assert dest == source
    status = subprocess.run([AURORA_SYNC, "--json-logs", "status", "--json"], env=env, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert status.returncode == ExitCode.SUCCESS, status.stderr[-2000:]
    report = json.loads(status.stdout)
    assert report["positions"]["_cdc"]["confirmed_lsn"] == report["replication_slot"]["confirmed_flush_lsn"]
    assert report["replication_slot"]["wal_status"] == "reserved"
    assert 0 <= report["replication_slot"]["retained_wal_bytes"] < 1 << 20
    assert report["last_runs"][0]["mode"] == "cdc-follow" and report["last_runs"][0]["outcome"] == "succeeded"
