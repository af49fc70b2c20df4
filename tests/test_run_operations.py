"""Run-level operations against real processes: the pipeline lock, retries, metrics and dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg2
import pytest

from local.postgres import LocalPostgres, free_port
from runner.exit_codes import ExitCode
from runner.lock import lock_key
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET, duck_rows

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def aurora_sync(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AURORA_SYNC, "--json-logs", *args], env=subprocess_env(env), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def events(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


@pytest.fixture()
def env(tmp_path: Path, database: str) -> dict[str, str]:
    execute(database, "CREATE SCHEMA app",
            "CREATE TABLE app.items (id int PRIMARY KEY, price numeric, updated_at timestamptz NOT NULL DEFAULT now())",
            "INSERT INTO app.items (id, price) SELECT g, g * 1.5 FROM generate_series(1, 100) g")
    return {
        "SOURCES__POSTGRES__CREDENTIALS": database,
        "SOURCES__POSTGRES__SCHEMAS": '["app"]',
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "RUNNER__BACKOFF_INITIAL_SECONDS": "0.5",
    }


def test_second_concurrent_run_exits_with_lock_held(env: dict[str, str]) -> None:
    holder = psycopg2.connect(env["SOURCES__POSTGRES__CREDENTIALS"])
    holder.autocommit = True
    holder.cursor().execute("SELECT pg_advisory_lock(%s)", (lock_key("customers_orders"),))
    try:
        result = aurora_sync(env, "run")
        assert result.returncode == ExitCode.LOCK_HELD, result.stderr
        assert any("holds the lock" in e["message"] for e in events(result))
    finally:
        holder.close()
    result = aurora_sync(env, "run")  # the lock is released with the holder's session
    assert result.returncode == ExitCode.SUCCESS, result.stderr


def test_lock_is_released_after_every_run(env: dict[str, str]) -> None:
    assert aurora_sync(env, "run").returncode == ExitCode.SUCCESS
    assert aurora_sync(env, "run", "--tables", "no.such_table").returncode == ExitCode.CONFIG_ERROR
    probe = psycopg2.connect(env["SOURCES__POSTGRES__CREDENTIALS"])
    with probe.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("customers_orders"),))
        assert cur.fetchone()[0] is True
    probe.close()


def test_metrics_are_embedded_metric_format(env: dict[str, str]) -> None:
    result = aurora_sync(env, "run")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    metric_lines = [e for e in events(result) if "_aws" in e]
    by_table = {e.get("Table"): e for e in metric_lines}
    assert by_table["app__items"]["RowsLoaded"] == 100
    directive = by_table["app__items"]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "AuroraSnowflakeSync" and directive["Dimensions"] == [["Pipeline", "Table"]]
    totals = [e for e in metric_lines if "RunSucceeded" in e]
    assert totals and totals[0]["RunSucceeded"] == 1 and totals[0]["Pipeline"] == "customers_orders"
    assert all(e["run_id"] == metric_lines[0]["run_id"] for e in metric_lines)


def test_transient_outage_is_retried_until_the_database_is_back(tmp_path: Path, env: dict[str, str]) -> None:
    """The source is down when the run starts and comes up ~2 s later: the run retries and succeeds."""
    late = LocalPostgres(port=free_port())
    run_env = {**env, "SOURCES__POSTGRES__CREDENTIALS": late.url(), "SOURCES__POSTGRES__SCHEMAS": '["late"]',
               "RUNNER__MAX_ATTEMPTS": "6", "RUNNER__BACKOFF_INITIAL_SECONDS": "1"}

    def start_later() -> None:
        time.sleep(2)
        late.start()
        execute(late.url(), "CREATE SCHEMA late", "CREATE TABLE late.t (id int PRIMARY KEY, updated_at timestamptz)",
                "INSERT INTO late.t VALUES (1, now())")

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        result = aurora_sync(run_env, "run")
    finally:
        starter.join()
        late.cleanup()
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    assert any(e.get("phase") == "retry" for e in events(result))


def test_permanent_failure_is_not_retried(env: dict[str, str]) -> None:
    result = aurora_sync({**env, "SOURCES__POSTGRES__SCHEMAS": '["missing"]', "RUNNER__MAX_ATTEMPTS": "5"}, "run")
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert not any(e.get("phase") == "retry" for e in events(result))
    failures = [e for e in events(result) if "RunFailures" in e]
    assert failures and failures[0]["RunFailures"] == 1


# unconstrained numeric is carried losslessly as text by default; a user who knows the data asks for a typed
# column, and then a value that does not fit is the clear error (a dead letter) that they asked for
TYPED_PRICE = '{"app.items": {"columns": {"price": {"data_type": "decimal(38,9)"}}}}'


def test_unconvertible_rows_are_dead_lettered_and_replayed(env: dict[str, str], tmp_path: Path) -> None:
    dsn = env["SOURCES__POSTGRES__CREDENTIALS"]
    env = {**env, "SOURCES__POSTGRES__TABLES": TYPED_PRICE}
    # 12 fractional digits do not fit the configured DECIMAL(38,9) exactly
    execute(dsn, "UPDATE app.items SET price = 0.123456789012 WHERE id IN (7, 42)")
    result = aurora_sync(env, "run")
    assert result.returncode == ExitCode.FAILURE, result.stderr  # policy "fail": good rows loaded, run fails
    assert any("2 row(s) could not be converted" in e["message"] for e in events(result))
    duck = env["DESTINATION__DUCKDB__CREDENTIALS"]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__items") == [(98,)]
    assert [e["DeadLetters"] for e in events(result) if "DeadLetters" in e] == [2]

    listing = aurora_sync(env, "dlq", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    records = json.loads(listing.stdout)["records"]
    assert sorted(r["source_key"]["id"] for r in records) == [7, 42]
    assert all(r["column"] == "price" and "0.123456789012" in r["reason"] and "decimal(38,9)" in r["reason"]
               for r in records)

    # a replay of unfixed rows dead-letters them again and fails
    assert aurora_sync(env, "dlq", "replay").returncode == ExitCode.FAILURE

    execute(dsn, "UPDATE app.items SET price = 0.123456789 WHERE id IN (7, 42)")  # the fix, at the source
    replay = aurora_sync(env, "dlq", "replay")
    assert replay.returncode == ExitCode.SUCCESS, replay.stderr
    assert duck_rows(duck, f"SELECT id, price FROM {DATASET}.app__items WHERE id IN (7, 42) ORDER BY id") == [
        (7, Decimal("0.123456789")), (42, Decimal("0.123456789"))]
    assert duck_rows(duck, f"SELECT count(*), count(DISTINCT id) FROM {DATASET}.app__items") == [(100, 100)]
    assert json.loads(aurora_sync(env, "dlq", "list", "--json").stdout)["rows"] == 0


def test_continue_policy_exits_zero_but_counts_dead_letters(env: dict[str, str]) -> None:
    execute(env["SOURCES__POSTGRES__CREDENTIALS"], "UPDATE app.items SET price = 1e-12 WHERE id = 3")
    result = aurora_sync({**env, "RUNNER__DEAD_LETTER_POLICY": "continue", "SOURCES__POSTGRES__TABLES": TYPED_PRICE},
                         "run")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    assert [e["DeadLetters"] for e in events(result) if "DeadLetters" in e] == [1]


def test_status_reports_runs_positions_and_lag_from_the_destination(env: dict[str, str], tmp_path: Path) -> None:
    assert aurora_sync(env, "run").returncode == ExitCode.SUCCESS
    # a fresh machine (empty DLT_DATA_DIR) still sees history and cursors: they live in the destination
    fresh = {**env, "DLT_DATA_DIR": str(tmp_path / "fresh")}
    result = aurora_sync(fresh, "status", "--json")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    status = json.loads(result.stdout)
    assert status["last_runs"][0]["outcome"] == "succeeded"
    assert status["last_runs"][0]["rows"] == {"app__items": 100}
    assert status["positions"]["app__items"]["cursor"] == "updated_at"
    assert status["positions"]["app__items"]["last_value"]
    assert 0 <= status["lag_seconds"] < 120
    assert status["packages"] == {"pending": [], "failed_jobs": {}}
    assert status["replication_slot"] is None  # CDC not set up


def test_doctor_names_what_is_missing_and_how_to_fix_it(env: dict[str, str]) -> None:
    dsn = env["SOURCES__POSTGRES__CREDENTIALS"]
    execute(dsn, "CREATE ROLE limited LOGIN PASSWORD 'limited-pw'", "GRANT USAGE ON SCHEMA app TO limited")
    limited = dsn.replace("postgres:", "limited:", 1).split("@", 1)
    limited_dsn = f"postgresql://limited:limited-pw@{limited[1]}"
    result = aurora_sync({**env, "SOURCES__POSTGRES__CREDENTIALS": limited_dsn}, "doctor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == ExitCode.CONFIG_ERROR and report["ok"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["source: SELECT privilege"]["status"] == "fail"
    assert "app.items" in checks["source: SELECT privilege"]["detail"]
    assert "GRANT SELECT" in checks["source: SELECT privilege"]["fix"]
    assert checks["source: replication privilege"]["status"] == "warn"
    assert checks["source: pg_read_all_stats"]["status"] == "warn"
    assert "limited-pw" not in result.stdout + result.stderr

    healthy = aurora_sync(env, "doctor", "--json")
    assert healthy.returncode == ExitCode.SUCCESS, healthy.stdout


def test_resync_replaces_one_table_from_the_source(env: dict[str, str]) -> None:
    dsn, duck = env["SOURCES__POSTGRES__CREDENTIALS"], env["DESTINATION__DUCKDB__CREDENTIALS"]
    assert aurora_sync(env, "run").returncode == ExitCode.SUCCESS
    # damage the replica behind the pipeline's back, and delete at the source (invisible to cursors)
    con = duckdb.connect(duck)
    con.execute(f"UPDATE {DATASET}.app__items SET price = -1 WHERE id <= 10")
    con.close()
    execute(dsn, "DELETE FROM app.items WHERE id > 90")
    result = aurora_sync(env, "resync", "--table", "app.items")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    assert duck_rows(duck, f"SELECT count(*), min(price::DECIMAL(18, 3)) FROM {DATASET}.app__items") == [
        (90, Decimal("1.5"))]  # unconstrained numeric is carried as its exact text


def test_rollback_prints_time_travel_statements_and_refuses_non_snowflake(env: dict[str, str]) -> None:
    from runner.commands.rollback import rollback_sql

    statements = rollback_sql('"RAW"."CUSTOMERS_ORDERS"', "ORDERS__ORDERS", "2026-11-27T09:00:00Z", "20261127")
    assert statements[0] == ('CREATE TABLE "RAW"."CUSTOMERS_ORDERS".ORDERS__ORDERS__restored_20261127 CLONE '
                             '"RAW"."CUSTOMERS_ORDERS".ORDERS__ORDERS AT (TIMESTAMP => '
                             "'2026-11-27T09:00:00Z'::TIMESTAMP_TZ)")
    assert statements[1].startswith('ALTER TABLE "RAW"."CUSTOMERS_ORDERS".ORDERS__ORDERS SWAP WITH')
    result = aurora_sync(env, "rollback", "--table", "app.items", "--at", "2026-11-27T09:00:00Z")
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert aurora_sync(env, "rollback", "--table", "app.items", "--at", "x'; DROP").returncode == ExitCode.CONFIG_ERROR
