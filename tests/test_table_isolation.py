"""One table never blocks another: a table whose extract or load fails is set aside (exit 1, a per-table metric,
`status`), every other table keeps syncing in the same run and in later runs, and the set-aside table comes
back by itself once its cause is fixed. A package an earlier run left behind that can no longer load never
wedges the pipeline. Real `aurora-sync` processes against the real PostgreSQL and DuckDB."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import duckdb
import pytest
from sqlalchemy.engine import make_url

from runner.exit_codes import ExitCode
from tests.conftest import execute
from tests.helpers import DATASET, duck_rows, pg_rows
from tests.test_run_operations import aurora_sync, events

TABLES = ("a", "b", "c")


@pytest.fixture()
def env(tmp_path: Path, database: str) -> dict[str, str]:
    execute(database, "CREATE SCHEMA app", *(
        f"CREATE TABLE app.{t} (id int PRIMARY KEY, note text, updated_at timestamptz NOT NULL DEFAULT now())"
        for t in TABLES), *(f"INSERT INTO app.{t} (id, note) SELECT g, '{t}' || g FROM generate_series(1, 50) g"
                            for t in TABLES))
    return {
        "SOURCES__POSTGRES__CREDENTIALS": database,
        "SOURCES__POSTGRES__SCHEMAS": '["app"]',
        "SOURCES__POSTGRES__LOOKBACK_SECONDS": "0",
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "RUNNER__MAX_ATTEMPTS": "1",
    }


def counts(env: dict[str, str]) -> dict[str, int]:
    out = {}
    duck = env["DESTINATION__DUCKDB__CREDENTIALS"]
    for t in TABLES:
        try:
            out[t] = duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__{t}")[0][0]
        except duckdb.CatalogException:
            out[t] = 0
    return out


def source_counts(env: dict[str, str]) -> dict[str, int]:
    return {t: pg_rows(env["SOURCES__POSTGRES__CREDENTIALS"], f"SELECT count(*) FROM app.{t}")[0][0] for t in TABLES}


def set_aside(env: dict[str, str]) -> dict[str, dict]:
    result = aurora_sync(env, "status", "--json")
    assert result.returncode == ExitCode.SUCCESS, result.stderr
    return dict(json.loads(result.stdout)["failed_tables"])


def test_a_table_the_sync_may_not_read_is_set_aside_and_comes_back_when_granted(env: dict[str, str]) -> None:
    admin = env["SOURCES__POSTGRES__CREDENTIALS"]
    role = f"limited_{uuid.uuid4().hex[:8]}"
    execute(admin, f"CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'", f"GRANT USAGE ON SCHEMA app TO {role}",
            f"GRANT SELECT ON app.a, app.c TO {role}")  # not app.b
    limited = {**env, "SOURCES__POSTGRES__CREDENTIALS": make_url(admin).set(
        username=role, password="limited-pw").render_as_string(hide_password=False)}

    first = aurora_sync(limited, "run")
    assert first.returncode == ExitCode.FAILURE, first.stderr
    assert counts(env) == {"a": 50, "b": 0, "c": 50}  # the readable tables were loaded in the same run
    messages = " ".join(e["message"] for e in events(first))
    assert "app__b" in messages and "permission denied" in messages
    assert [e["Table"] for e in events(first) if "TableFailures" in e] == ["app__b"]
    assert set(set_aside(limited)) == {"app__b"}

    # later runs keep syncing the others while b is still unreadable
    execute(admin, "INSERT INTO app.a (id, note) VALUES (51, 'a51')", "UPDATE app.c SET note = 'changed', "
            "updated_at = now() WHERE id = 7")
    second = aurora_sync(limited, "run")
    assert second.returncode == ExitCode.FAILURE
    assert counts(env) == {"a": 51, "b": 0, "c": 50}
    assert duck_rows(env["DESTINATION__DUCKDB__CREDENTIALS"], f"SELECT note FROM {DATASET}.app__c WHERE id = 7") == [
        ("changed",)]

    execute(admin, f"GRANT SELECT ON app.b TO {role}")  # the fix: the next run brings b back by itself
    third = aurora_sync(limited, "run")
    assert third.returncode == ExitCode.SUCCESS, third.stderr
    assert counts(env) == source_counts(env)
    assert set_aside(limited) == {}
    execute(admin, f"REVOKE ALL ON ALL TABLES IN SCHEMA app FROM {role}", f"REVOKE ALL ON SCHEMA app FROM {role}",
            f"DROP ROLE {role}")


def test_a_load_the_destination_rejects_sets_one_table_aside(env: dict[str, str]) -> None:
    assert aurora_sync(env, "run").returncode == ExitCode.SUCCESS
    duck = env["DESTINATION__DUCKDB__CREDENTIALS"]
    con = duckdb.connect(duck)  # someone adds a constraint in the warehouse that the source does not have
    con.execute(f"ALTER TABLE {DATASET}.app__c ALTER COLUMN note SET NOT NULL")
    con.close()
    execute(env["SOURCES__POSTGRES__CREDENTIALS"], *(f"UPDATE app.{t} SET note = NULL, updated_at = now() "
                                                     "WHERE id <= 5" for t in TABLES))
    failed = aurora_sync(env, "run")
    assert failed.returncode == ExitCode.FAILURE, failed.stderr
    assert [e["Table"] for e in events(failed) if "TableFailures" in e] == ["app__c"]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__a WHERE note IS NULL") == [(5,)]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__b WHERE note IS NULL") == [(5,)]
    assert set(set_aside(env)) == {"app__c"}

    con = duckdb.connect(duck)
    con.execute(f"ALTER TABLE {DATASET}.app__c ALTER COLUMN note DROP NOT NULL")
    con.close()
    fixed = aurora_sync(env, "run")
    assert fixed.returncode == ExitCode.SUCCESS, fixed.stderr
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__c WHERE note IS NULL") == [(5,)]
    assert set_aside(env) == {}


def test_a_package_left_by_a_crash_that_can_no_longer_load_never_wedges_the_pipeline(env: dict[str, str]) -> None:
    assert aurora_sync(env, "run").returncode == ExitCode.SUCCESS
    duck = env["DESTINATION__DUCKDB__CREDENTIALS"]
    execute(env["SOURCES__POSTGRES__CREDENTIALS"], *(f"UPDATE app.{t} SET note = NULL, updated_at = now() "
                                                     "WHERE id <= 3" for t in TABLES))
    crashed = aurora_sync({**env, "AURORA_SYNC_FAILPOINT": "load_start"}, "run")
    assert crashed.returncode != 0  # killed with a normalized package on disk
    con = duckdb.connect(duck)  # ... which the destination now rejects for one table
    con.execute(f"ALTER TABLE {DATASET}.app__b ALTER COLUMN note SET NOT NULL")
    con.close()

    rerun = aurora_sync(env, "run")
    assert rerun.returncode == ExitCode.FAILURE, rerun.stderr
    assert any("could not be loaded" in e["message"] and "discarded" in e["message"] for e in events(rerun))
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__a WHERE note IS NULL") == [(3,)]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__c WHERE note IS NULL") == [(3,)]
    assert json.loads(aurora_sync(env, "status", "--json").stdout)["packages"]["pending"] == []

    # the ways out work while the table is still failing ...
    assert aurora_sync(env, "resync", "--table", "app.a").returncode == ExitCode.SUCCESS
    assert aurora_sync(env, "run", "--full-refresh").returncode == ExitCode.FAILURE  # b still rejected, rest loaded
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__c") == [(50,)]
    # ... and once the cause is gone, everything is exact again
    con = duckdb.connect(duck)
    con.execute(f"ALTER TABLE {DATASET}.app__b ALTER COLUMN note DROP NOT NULL")
    con.close()
    assert aurora_sync(env, "run").returncode == ExitCode.SUCCESS
    assert counts(env) == source_counts(env)
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.app__b WHERE note IS NULL") == [(3,)]
