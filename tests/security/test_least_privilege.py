"""`sources/postgres/grants.sql` is enough for every command, the connection budget holds, and doctor tells a
least-privilege role from an over-privileged one."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from local.postgres import LocalPostgres, find_bindir
from runner.exit_codes import ExitCode
from sources.postgres.limits import connection_budget
from tests.conftest import PROJECT_ROOT, execute, fresh_database
from tests.test_run_operations import aurora_sync

GRANTS = PROJECT_ROOT / "sources" / "postgres" / "grants.sql"


class PeakSessions:
    """Samples pg_stat_activity every 10 ms for the sessions of one role; `peak` is the most seen at once."""

    def __init__(self, admin_dsn: str, role: str) -> None:
        self.admin_dsn, self.role, self.peak = admin_dsn, role, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self.role,))
                self.peak = max(self.peak, cur.fetchone()[0])
                time.sleep(0.01)
        conn.close()

    def __enter__(self) -> PeakSessions:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture()
def granted(pg: LocalPostgres, tmp_path: Path) -> Iterator[tuple[dict[str, str], str, str]]:
    """A database with two schemas, and a role set up by grants.sql alone (plus a password)."""
    role = f"sync_{uuid.uuid4().hex[:8]}"
    with fresh_database(pg) as dsn:
        execute(dsn, "CREATE SCHEMA app", "CREATE SCHEMA other",
                "CREATE TABLE app.items (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now())",
                "CREATE TABLE other.things (id bigint PRIMARY KEY, n numeric(12, 4))",
                # more tables than the pools hold: they are read one after another ([extract] next_item_mode)
                *[f"CREATE TABLE app.t{i} (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now())"
                  for i in range(6)],
                "INSERT INTO app.items (id, v) SELECT g, 'v' || g FROM generate_series(1, 500) g",
                "INSERT INTO other.things SELECT g, g / 3.0 FROM generate_series(1, 200) g")
        # A role named rds_replication on a server that is not RDS confers nothing (the Vault tests' stand-in puts
        # one on this cluster): grants.sql must give REPLICATION all the same. Before, it granted the empty role when
        # the Vault tests had run first on this worker's cluster, and setup's replication connection was refused.
        execute(dsn, "DO $$ BEGIN CREATE ROLE rds_replication NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; "
                "END $$")
        budget = connection_budget(1)
        psql = subprocess.run(
            [str(find_bindir() / "psql"), dsn, "-q", "-v", f"sync_role={role}", "-v", "schemas=app, other",
             "-v", "publication=aurora_sync_customers_orders", "-v", f"connection_limit={budget}", "-f", str(GRANTS)],
            capture_output=True, text=True, check=False)
        assert psql.returncode == 0, psql.stderr
        # idempotent: a second run changes nothing and does not fail
        assert subprocess.run([str(find_bindir() / "psql"), dsn, "-q", "-v", f"sync_role={role}", "-v",
                               "schemas=app, other", "-v", "publication=aurora_sync_customers_orders", "-v",
                               f"connection_limit={budget}", "-f", str(GRANTS)], capture_output=True).returncode == 0
        execute(dsn, f"ALTER ROLE {role} PASSWORD 'pw-{role}'")
        role_dsn = dsn.replace(f"{pg.user}:{pg.password}@", f"{role}:pw-{role}@")
        env = {
            "SOURCES__POSTGRES__CREDENTIALS": role_dsn,
            "SOURCES__POSTGRES__SCHEMAS": '["app", "other"]',
            "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
            "DLT_DATA_DIR": str(tmp_path / "dlt"),
            "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
            "RUNNER__MAX_ATTEMPTS": "1",
            # slots are cluster-wide: a name of its own, whatever slot another test of this worker's cluster holds
            "SOURCES__POSTGRES__REPLICATION__SLOT_NAME": f"slot_{role}",
        }
        try:
            yield env, dsn, role
        finally:
            execute(dsn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE database = current_database()")
    execute(pg.url(), f"DROP ROLE {role}")


def test_grants_sql_is_all_every_command_needs_within_the_connection_budget(
        granted: tuple[dict[str, str], str, str]) -> None:
    env, admin_dsn, role = granted
    with PeakSessions(admin_dsn, role) as sessions:
        for command in (["run"], ["run", "--mode", "snapshot"], ["setup"], ["run", "--mode", "cdc"],
                        ["verify", "--checksum", "--json"], ["status"], ["teardown", "--yes"]):
            if command == ["run", "--mode", "cdc"]:
                execute(admin_dsn, "UPDATE app.items SET v = 'changed' WHERE id <= 10", "DELETE FROM other.things "
                        "WHERE id > 190")
            result = aurora_sync(env, *command)
            errors = [line for line in result.stderr.splitlines() if '"ERROR"' in line or "Error" in line]
            assert result.returncode == ExitCode.SUCCESS, f"{command}: " + "\n".join(errors[-5:])  # a str: never cut
    assert 0 < sessions.peak <= connection_budget(1), sessions.peak
    print(f"peak sessions of the sync role: {sessions.peak} (budget {connection_budget(1)})")


def test_doctor_is_silent_for_the_granted_role_and_warns_for_a_superuser(
        granted: tuple[dict[str, str], str, str]) -> None:
    env, admin_dsn, role = granted
    checks = {c["name"]: c for c in json.loads(aurora_sync(env, "doctor", "--json").stdout)["checks"]}
    for name in ("source: role privileges", "source: connection limit", "source: write privilege",
                 "source: replication privilege", "source: pg_read_all_stats", "source: SELECT privilege"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["source: connection limit"]["detail"] == f"{role} CONNECTION LIMIT {connection_budget(1)}"

    superuser = {**env, "SOURCES__POSTGRES__CREDENTIALS": admin_dsn}
    checks = {c["name"]: c for c in json.loads(aurora_sync(superuser, "doctor", "--json").stdout)["checks"]}
    assert checks["source: role privileges"]["status"] == "warn"
    assert checks["source: role privileges"]["detail"] == "postgres is a superuser"
    assert "grants.sql" in checks["source: role privileges"]["fix"]
    assert checks["source: connection limit"]["status"] == "warn"
    assert checks["source: write privilege"]["status"] == "warn"
    assert "app.items" in checks["source: write privilege"]["detail"]

    # a plain role that was given a write privilege on one table is caught too
    execute(admin_dsn, f"GRANT UPDATE ON other.things TO {role}")
    checks = {c["name"]: c for c in json.loads(aurora_sync(env, "doctor", "--json").stdout)["checks"]}
    assert checks["source: write privilege"]["status"] == "warn"
    assert checks["source: write privilege"]["detail"] == "can write to other.things"
    assert checks["source: role privileges"]["status"] == "ok"


def test_engine_pools_are_bounded_by_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from sources.postgres.session import make_engine

    engine = make_engine("postgresql://u:p@127.0.0.1:1/db", 1000)
    assert (engine.pool.size(), engine.pool._max_overflow) == (1, 1)
    monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__WORKERS", "4")
    engine = make_engine("postgresql://u:p@127.0.0.1:1/db", 1000)
    assert (engine.pool.size(), engine.pool._max_overflow) == (4, 1)
    assert connection_budget() == 2 * 5 + 3
    monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__WORKERS", "0")
    from sources.postgres.errors import SourceConfigError

    with pytest.raises(SourceConfigError, match=r"snapshot\.workers"):
        make_engine("postgresql://u:p@127.0.0.1:1/db", 1000)
