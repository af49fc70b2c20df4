"""`aurora-sync doctor` on tables whose names need quoting (capitals, spaces, a double quote) in a schema whose
name needs it too: no check may error out because of a name, and the fixes it prints quote them."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa

from local.postgres import LocalPostgres
from runner.commands.checks import Check
from runner.commands.doctor_security import write_privilege_check
from runner.exit_codes import ExitCode
from sources.postgres.catalog import TableSpec
from sources.replication.ddl import install_ddl_capture
from tests.conftest import PROJECT_ROOT, execute, subprocess_env

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")
SCHEMA = "Odd Shop"
TABLES = ["Every Type", "MiXeD", "with space", 'quote"d', "plain"]


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture()
def odd(database: str) -> str:
    execute(database, f"CREATE SCHEMA {quoted(SCHEMA)}",
            *(f"CREATE TABLE {quoted(SCHEMA)}.{quoted(t)} (id int PRIMARY KEY, {quoted('Value')} text, "
              f"updated_at timestamptz NOT NULL DEFAULT now())" for t in TABLES),
            *(f"INSERT INTO {quoted(SCHEMA)}.{quoted(t)} (id, {quoted('Value')}) VALUES (1, 'x')" for t in TABLES))
    return database


def doctor(env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    result = subprocess.run([AURORA_SYNC, "--json-logs", "doctor", "--json"], env=subprocess_env(env),
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert result.stdout.startswith("{"), result.stderr[-3000:]
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_doctor_checks_tables_whose_names_need_quoting(odd: str, tmp_path: Path) -> None:
    env = {
        "SOURCES__POSTGRES__CREDENTIALS": odd,
        "SOURCES__POSTGRES__SCHEMAS": json.dumps([SCHEMA]),
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
    }
    code, checks = doctor(env)
    failed = {name: c for name, c in checks.items() if c["status"] == "fail"}
    assert not failed, failed
    assert "source" not in checks, checks.get("source")  # the catch-all: a source check raised
    assert code == ExitCode.SUCCESS
    assert checks["source: tables and keys"]["detail"].startswith(f"{len(TABLES)} table(s) in {SCHEMA}")
    assert checks["source: SELECT privilege"]["status"] == "ok"
    # the test role is a superuser: it may write to every table, and the fix names them quoted
    write = checks["source: write privilege"]
    assert write["status"] == "warn"
    assert write["detail"] == "can write to " + ", ".join(f"{SCHEMA}.{t}" for t in sorted(TABLES))
    assert '"Odd Shop"."quote""d"' in write["fix"] and '"Odd Shop"."MiXeD"' in write["fix"]
    # DDL capture is not installed yet: a warning with the SQL to run, never a failure
    ddl = checks["source: DDL capture"]
    assert ddl["status"] == "warn" and "not installed" in ddl["detail"]
    assert "CREATE EVENT TRIGGER aurora_sync_ddl" in ddl["fix"]

    conn = psycopg2.connect(odd)
    conn.autocommit = True
    assert install_ddl_capture(conn).active
    conn.close()
    code, checks = doctor(env)
    assert code == ExitCode.SUCCESS
    assert checks["source: DDL capture"]["status"] == "ok", checks["source: DDL capture"]
    assert checks["source: DDL capture"]["fix"] == ""


@pytest.fixture()
def reader(pg: LocalPostgres, odd: str) -> Iterator[sa.Engine]:
    """A role that may read every table and update one, connected through SQLAlchemy as doctor is."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    execute(odd, f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'",
            f"GRANT USAGE ON SCHEMA {quoted(SCHEMA)} TO {role}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {quoted(SCHEMA)} TO {role}",
            f"GRANT UPDATE ON {quoted(SCHEMA)}.{quoted(TABLES[3])} TO {role}")
    engine = sa.create_engine(odd.replace(f"{pg.user}:{pg.password}@", f"{role}:pw-{role}@"))
    try:
        yield engine
    finally:
        engine.dispose()
        execute(odd, f"DROP OWNED BY {role}")
        execute(pg.url(), f"DROP ROLE {role}")


def test_write_privilege_check_by_oid(reader: sa.Engine) -> None:
    specs = [TableSpec(SCHEMA, t, ("id",), "updated_at") for t in TABLES]
    missing = TableSpec(SCHEMA, "Gone Since Discovery", ("id",), None)  # dropped between discovery and the check
    with reader.connect() as conn:
        check: Any = write_privilege_check(conn, [*specs, missing])
        assert check == Check("source: write privilege", "warn", f'can write to {SCHEMA}.quote"d',
                              'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON "Odd Shop"."quote""d" FROM <sync role> '
                              "(or do not sync as the table owner)")
        assert write_privilege_check(conn, specs[1:3]).status == "ok"
        assert write_privilege_check(conn, []).status == "ok"
