"""`verify --checksum --repair` on a CDC pipeline: the drifting ranges' keys are asked of the follower, which reads
them under its watermarks (`pipelines.cdc.rereads`), so the repair is exact while the application writes.
The CLI as ECS runs it, against a real PostgreSQL, a `file://` bucket and DuckDB."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET

pytestmark = pytest.mark.slow

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AURORA_SYNC, "--json-logs", *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def verify(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = cli(env, "verify", "--json", "--checksum", "--chunk-rows", "100", "--narrow-rows", "10", *args)
    assert done.stdout, done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def tamper(duck_file: Path) -> None:
    """Drift of three kinds: a changed value, a lost row, a phantom row."""
    with duckdb.connect(str(duck_file)) as conn:
        conn.execute(f"UPDATE {DATASET}.shop__orders SET status = 'tampered' WHERE id = 140")
        conn.execute(f"DELETE FROM {DATASET}.shop__orders WHERE id = 260")
        conn.execute(f"INSERT INTO {DATASET}.shop__orders SELECT * REPLACE (9000 AS id) FROM {DATASET}.shop__orders "
                     "WHERE id = 1")


@pytest.fixture()
def env(tmp_path: Path, database: str) -> dict[str, str]:
    execute(database, "CREATE SCHEMA shop",
            "CREATE TABLE shop.orders (id int PRIMARY KEY, status text, n int DEFAULT 0)",
            "INSERT INTO shop.orders (id, status) SELECT g, 'new' FROM generate_series(1, 400) g")
    return subprocess_env({
        "SOURCES__POSTGRES__CREDENTIALS": database, "SOURCES__POSTGRES__SCHEMAS": '["shop"]',
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DESTINATION__FILESYSTEM__BUCKET_URL": (tmp_path / "bucket").as_uri(),
        "DLT_DATA_DIR": str(tmp_path / "dlt"), "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "SOURCES__POSTGRES__REPLICATION__MAX_BATCH_SECONDS": "1",
        "SOURCES__POSTGRES__REPLICATION__REREAD_CHECK_SECONDS": "1",
    })


def test_direct_cdc_repair_is_read_by_the_next_follower_run(env: dict[str, str], tmp_path: Path) -> None:
    """Direct mode, no follower running: the request waits in the bucket, the next drain (a replacement task on an
    empty disk) reads the keys, and the replica is exact; the phantom row is deleted."""
    assert cli(env, "setup").returncode == ExitCode.SUCCESS
    tamper(tmp_path / "replica.duckdb")
    code, report = verify(env, "--repair", "--repair-wait-seconds", "0")
    assert code == ExitCode.DRIFT_FOUND
    [repair] = report["repairs"]
    assert repair["table"] == "shop.orders" and repair["action"] == "skipped", repair
    assert "the follower reads it when it runs" in repair["reason"]
    status = json.loads(cli(env, "status", "--json").stdout)
    assert [(w["table"], w["keys"] >= 3) for w in status["rereads_waiting"]] == [("shop__orders", True)]
    execute(env["SOURCES__POSTGRES__CREDENTIALS"], "UPDATE shop.orders SET n = n + 1 WHERE id = 260")
    fresh = {**env, "DLT_DATA_DIR": str(tmp_path / "replacement-task")}
    drained = cli(fresh, "run", "--mode", "cdc")
    assert drained.returncode == ExitCode.SUCCESS, drained.stderr[-3000:]
    assert "keys to read again" in drained.stderr
    code, report = verify(env)
    assert code == ExitCode.SUCCESS, report["tables"]
    assert json.loads(cli(env, "status", "--json").stdout)["rereads_waiting"] == []


def test_landing_cdc_repair_while_the_follower_and_the_application_run(env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    """Landing mode with the follower running and the application writing: `verify --repair` asks, waits until the
    follower has landed the keys, and after the next merge the replica is exact."""
    env = {**env, "SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS": "60"}
    dsn = env["SOURCES__POSTGRES__CREDENTIALS"]
    assert cli(env, "setup").returncode == ExitCode.SUCCESS
    assert cli(env, "merge").returncode == ExitCode.SUCCESS
    tamper(tmp_path / "replica.duckdb")

    stop = threading.Event()

    def application() -> None:  # writes all along, to rows the drift is not in (and one it is in)
        i = 0
        while not stop.is_set():
            i += 1
            execute(dsn, f"UPDATE shop.orders SET n = n + 1 WHERE id = {300 + i % 50}",
                    f"INSERT INTO shop.orders (id, status) VALUES ({1000 + i}, 'live')")
            stop.wait(0.05)
        execute(dsn, "UPDATE shop.orders SET status = 'after' WHERE id = 140")

    follower = subprocess.Popen([AURORA_SYNC, "--json-logs", "run", "--mode", "cdc", "--follow"], env=env,
                                cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    writer = threading.Thread(target=application)
    writer.start()
    try:
        time.sleep(2)
        started = time.monotonic()
        code, report = verify(env, "--repair", "--repair-wait-seconds", "90")
        waited = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
        time.sleep(3)  # the last writes land
        follower.terminate()
        _, stderr = follower.communicate(timeout=120)
    assert follower.returncode == ExitCode.SUCCESS, stderr[-3000:]
    [repair] = report["repairs"]
    assert repair["action"] == "requested" and repair["keys_requested"] >= 3, repair
    assert waited < 90, "the follower should take the request within a few of its 1 s checks"
    assert "keys to read again" in stderr
    assert cli(env, "merge").returncode == ExitCode.SUCCESS
    code, report = verify(env)
    assert code == ExitCode.SUCCESS, report["tables"]
