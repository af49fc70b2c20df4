"""Fault tests with real processes: the sync is SIGKILLed at each step, the database restarts mid-run,
the destination is locked during a load. Each time the next run must leave source == destination,
with no duplicate keys and nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from local.postgres import LocalPostgres
from pipelines.progress import FAILPOINTS
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET, duck_rows, pg_rows

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")
TABLES = {"shop.orders": "id", "shop.order_lines": "order_id, line_no"}
COLUMNS = {"shop.orders": "id, status, amount, note, updated_at", "shop.order_lines": "order_id, line_no, sku, qty"}


def aurora_sync(env: dict[str, str], *args: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = {"AURORA_SYNC_FAILPOINT": failpoint} if failpoint else {}
    return subprocess.run([AURORA_SYNC, "--json-logs", *args], env=subprocess_env({**env, **extra}),
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240, check=False)


def create_shop(dsn: str, orders: int) -> None:
    execute(dsn, "CREATE SCHEMA shop",
            "CREATE TABLE shop.orders (id bigint PRIMARY KEY, status text, amount numeric(12,2), note text, "
            "updated_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE shop.order_lines (order_id bigint, line_no int, sku text, qty int, "
            "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (order_id, line_no))",
            f"INSERT INTO shop.orders SELECT g, 'new', g / 7.0, repeat('x', g % 50), now() - interval '1 hour' "
            f"FROM generate_series(1, {orders}) g",
            f"INSERT INTO shop.order_lines SELECT o, l, 'SKU' || l, l, now() - interval '1 hour' "
            f"FROM generate_series(1, {orders}) o, generate_series(1, 3) l")


def change_shop(dsn: str, round_no: int) -> None:
    base = 1_000_000 * round_no
    execute(dsn,
            f"INSERT INTO shop.orders (id, status, amount) SELECT {base} + g, 'new', g FROM generate_series(1, 500) g",
            f"INSERT INTO shop.order_lines (order_id, line_no, sku, qty) "
            f"SELECT {base} + g, 1, 'NEW', 1 FROM generate_series(1, 500) g",
            f"UPDATE shop.orders SET status = 'paid-{round_no}', updated_at = now() WHERE id % 97 = {round_no}")


def assert_exact_replica(dsn: str, duck: str) -> None:
    for table, key in TABLES.items():
        dest = f"{DATASET}.{table.replace('.', '__')}"
        source_rows = pg_rows(dsn, f"SELECT {COLUMNS[table]} FROM {table} ORDER BY {key}")
        dest_rows = duck_rows(duck, f"SELECT {COLUMNS[table]} FROM {dest} ORDER BY {key}")
        assert len(dest_rows) == len(source_rows), table
        assert dest_rows == source_rows, table
        (dupes,) = duck_rows(duck, f"SELECT count(*) - count(DISTINCT ({key})) FROM {dest}")[0]
        assert dupes == 0, table


@pytest.fixture()
def env(tmp_path: Path, database: str) -> dict[str, str]:
    create_shop(database, 20_000)
    return {
        "SOURCES__POSTGRES__CREDENTIALS": database,
        "SOURCES__POSTGRES__SCHEMAS": '["shop"]',
        "SOURCES__POSTGRES__BLOCK_SIZE_BYTES": "65536",  # many batches, so "mid extract" exists
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNNER__BACKOFF_INITIAL_SECONDS": "0.5",
    }


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_kill_9_at_each_step_then_rerun_is_exact(env: dict[str, str], failpoint: str) -> None:
    dsn, duck = env["SOURCES__POSTGRES__CREDENTIALS"], env["DESTINATION__DUCKDB__CREDENTIALS"]
    # 1. killed during the initial load
    killed = aurora_sync(env, "run", failpoint=failpoint)
    assert killed.returncode == -9, killed.stderr[-2000:]
    change_shop(dsn, 1)
    rerun = aurora_sync(env, "run")
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-2000:]
    assert_exact_replica(dsn, duck)
    # 2. killed during an incremental run, with changes before and after the crash
    change_shop(dsn, 2)
    time.sleep(0.2)
    assert aurora_sync(env, "run", failpoint=failpoint).returncode == -9
    change_shop(dsn, 3)
    rerun = aurora_sync(env, "run")
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-2000:]
    assert_exact_replica(dsn, duck)


@pytest.mark.slow
def test_postgres_restart_mid_run_fails_cleanly_then_catches_up(tmp_path: Path) -> None:
    with LocalPostgres() as pg:
        dsn = pg.url()
        create_shop(dsn, 200_000)
        env = {"SOURCES__POSTGRES__CREDENTIALS": dsn, "SOURCES__POSTGRES__SCHEMAS": '["shop"]',
               "SOURCES__POSTGRES__BLOCK_SIZE_BYTES": "65536",
               "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
               "DLT_DATA_DIR": str(tmp_path / "dlt"), "RUNNER__MAX_ATTEMPTS": "1"}
        process = subprocess.Popen([AURORA_SYNC, "--json-logs", "run"], env=subprocess_env(env), cwd=PROJECT_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # restart once the COPY is streaming
            active = pg_rows(dsn, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%'")[0][0]
            if active:
                break
            time.sleep(0.05)
        pg.restart()
        _, stderr = process.communicate(timeout=120)
        messages = [json.loads(line)["message"] for line in stderr.splitlines() if line.startswith("{")]
        assert process.returncode == ExitCode.FAILURE, stderr[-2000:]
        assert "Traceback" not in stderr and messages[-1], stderr
        change_shop(dsn, 1)
        rerun = aurora_sync(env, "run")
        assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-2000:]
        assert_exact_replica(dsn, env["DESTINATION__DUCKDB__CREDENTIALS"])


def test_destination_unavailable_during_load_then_next_run_completes(env: dict[str, str]) -> None:
    """Another process holds DuckDB's write lock while the sync loads; the pending package is kept
    and loaded by the next run."""
    dsn, duck = env["SOURCES__POSTGRES__CREDENTIALS"], env["DESTINATION__DUCKDB__CREDENTIALS"]
    duckdb.connect(duck).close()
    blocker_ready, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        holder = subprocess.Popen([sys.executable, "-c",
                                   f"import duckdb, sys; c = duckdb.connect({duck!r}); print('locked', flush=True); "
                                   "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout and holder.stdout.readline().strip() == "locked"
        blocker_ready.set()
        release.wait(120)
        holder.communicate("", timeout=30)

    blocker = threading.Thread(target=hold_lock)
    blocker.start()
    assert blocker_ready.wait(30)
    try:
        failed = aurora_sync({**env, "RUNNER__MAX_ATTEMPTS": "2"}, "run")
    finally:
        release.set()
        blocker.join()
    assert failed.returncode == ExitCode.FAILURE, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    change_shop(dsn, 1)
    rerun = aurora_sync(env, "run")
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-2000:]
    assert_exact_replica(dsn, duck)
