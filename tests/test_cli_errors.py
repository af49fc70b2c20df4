"""Bad input gets one actionable sentence, a non-zero exit code and no stack trace (unless --debug).

These run the real `aurora-sync` console script in a subprocess against the real test PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local.postgres import LocalPostgres, free_port
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def aurora_sync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AURORA_SYNC, "--json-logs", *args], env=subprocess_env(env), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture()
def base_env(tmp_path: Path, database: str) -> dict[str, str]:
    return {
        "SOURCES__POSTGRES__CREDENTIALS": database,
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
    }


def messages(result: subprocess.CompletedProcess[str]) -> str:
    """The log messages, decoded from the JSON lines (so quotes read as the operator sees them)."""
    return "\n".join(json.loads(line)["message"] for line in result.stderr.splitlines() if line.startswith("{"))


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: ExitCode, *phrases: str) -> None:
    output = result.stdout + messages(result)
    assert result.returncode == code, result.stdout + result.stderr
    for phrase in phrases:
        assert phrase in output, output
    assert "Traceback" not in output


def test_unreachable_database(base_env: dict[str, str]) -> None:
    env = {**base_env, "SOURCES__POSTGRES__CREDENTIALS": f"postgresql://sync:pw@127.0.0.1:{free_port()}/app"}
    assert_clean_failure(aurora_sync(env, "run"), ExitCode.FAILURE, "Cannot reach PostgreSQL at sync@127.0.0.1")


def test_wrong_password_is_a_configuration_error(base_env: dict[str, str], pg: LocalPostgres) -> None:
    env = {**base_env, "SOURCES__POSTGRES__CREDENTIALS": pg.url(password="not-the-password-123")}
    result = aurora_sync(env, "run")
    assert_clean_failure(result, ExitCode.CONFIG_ERROR, "rejected the credentials", "sources.postgres.credentials")
    assert "not-the-password-123" not in result.stdout + result.stderr


def test_missing_schema(base_env: dict[str, str]) -> None:
    env = {**base_env, "SOURCES__POSTGRES__SCHEMAS": '["customers", "nope"]'}
    execute(base_env["SOURCES__POSTGRES__CREDENTIALS"], "CREATE SCHEMA customers")
    assert_clean_failure(aurora_sync(env, "run"), ExitCode.CONFIG_ERROR, "Schema(s) nope not found")


def test_unsupported_column_override(base_env: dict[str, str]) -> None:
    execute(base_env["SOURCES__POSTGRES__CREDENTIALS"], "CREATE SCHEMA app",
            "CREATE TABLE app.t (id int PRIMARY KEY, n numeric)")
    env = {**base_env, "SOURCES__POSTGRES__SCHEMAS": '["app"]',
           "SOURCES__POSTGRES__TABLES": '{"app.t": {"columns": {"n": {"data_type": "decimal(50,2)"}}}}'}
    assert_clean_failure(aurora_sync(env, "run"), ExitCode.CONFIG_ERROR, 'app.t".columns."n"', "decimal(p,s)")


def test_invalid_config_value(base_env: dict[str, str]) -> None:
    env = {**base_env, "SOURCES__POSTGRES__LOOKBACK_SECONDS": "ten"}
    assert_clean_failure(aurora_sync(env, "run"), ExitCode.CONFIG_ERROR, "lookback_seconds")
    env = {**base_env, "SOURCES__POSTGRES__LOOKBACK_SECONDS": "-5"}
    assert_clean_failure(aurora_sync(env, "run"), ExitCode.CONFIG_ERROR, "lookback_seconds", ">= 0")


def test_unknown_cursor_column_override(base_env: dict[str, str]) -> None:
    execute(base_env["SOURCES__POSTGRES__CREDENTIALS"], "CREATE SCHEMA app",
            "CREATE TABLE app.t (id int PRIMARY KEY, modified timestamptz)")
    env = {**base_env, "SOURCES__POSTGRES__SCHEMAS": '["app"]',
           "SOURCES__POSTGRES__TABLES": '{"app.t": {"cursor_column": "updated"}}'}
    assert_clean_failure(aurora_sync(env, "run"), ExitCode.CONFIG_ERROR, "is not a column of app.t", "modified")


def test_debug_shows_the_stack_trace(base_env: dict[str, str]) -> None:
    env = {**base_env, "SOURCES__POSTGRES__SCHEMAS": '["nope"]'}
    result = aurora_sync(env, "--debug", "run")
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert "Traceback" in result.stderr and "SchemaNotFound" in result.stderr


def test_success_exits_zero_with_json_lines(base_env: dict[str, str]) -> None:
    execute(base_env["SOURCES__POSTGRES__CREDENTIALS"], "CREATE SCHEMA app",
            "CREATE TABLE app.t (id int PRIMARY KEY, updated_at timestamptz DEFAULT now())",
            "INSERT INTO app.t VALUES (1), (2)")
    result = aurora_sync({**base_env, "SOURCES__POSTGRES__SCHEMAS": '["app"]'}, "run")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    done = [e for e in events if e["message"] == "run succeeded"]
    assert done and done[0]["rows"] == 2 and done[0]["pipeline"] == "customers_orders" and done[0]["run_id"]
