"""A failed `setup` leaves nothing behind on the source and never waits in silence (issue: exact under races and
crashes, scenarios 8 and 9)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import duckdb
import psycopg2
import pytest

from pipelines.cdc import copies
from runner.exit_codes import ExitCode
from sources.replication.errors import SlotCreationTimeout
from tests.conftest import PROJECT_ROOT, subprocess_env
from tests.test_run_operations import AURORA_SYNC

from .conftest import Harness


def slots(cdc: Harness) -> list[str]:
    return [r[0] for r in cdc.source("SELECT slot_name FROM pg_replication_slots")]


def test_invalid_snapshot_settings_fail_before_the_slot_is_created(cdc: Harness, tmp_path: Path) -> None:
    """Was: `setup` exited 2 for chunk_bytes below its floor only after it created the slot, which held WAL."""
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY)", "INSERT INTO app.t VALUES (1)")
    env = subprocess_env({"SOURCES__POSTGRES__CREDENTIALS": cdc.dsn, "SOURCES__POSTGRES__SCHEMAS": '["app"]',
                          "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "r.duckdb"),
                          "DLT_DATA_DIR": str(tmp_path / "dlt"), "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dl"),
                          "SOURCES__POSTGRES__SNAPSHOT__CHUNK_BYTES": "1000"})
    result = subprocess.run([AURORA_SYNC, "setup"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr[-2000:]
    assert "chunk_bytes" in result.stderr
    assert slots(cdc) == []


def test_a_setup_that_fails_after_creating_the_slot_drops_it(cdc: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY)", "INSERT INTO app.t VALUES (1)")

    def broken(*args: object, **kwargs: object) -> list[object]:
        assert slots(cdc) == [cdc.slot], "the slot exists when the copy starts"
        raise RuntimeError("the destination went away mid-copy")

    monkeypatch.setattr(copies, "snapshot", broken)
    with pytest.raises(RuntimeError, match="went away"):
        cdc.setup()
    assert slots(cdc) == [], "a failed setup dropped the slot it created: it holds no WAL"
    monkeypatch.undo()


def test_slot_creation_names_the_transactions_it_waits_for_and_gives_up_cleanly(
        cdc: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Was: `setup` logged nothing for 90 s behind one open transaction, and the server kept waiting after it was
    killed."""
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY)", "INSERT INTO app.t VALUES (1)")
    cdc.configure(slot_create_timeout_seconds=8)
    blocker = psycopg2.connect(cdc.dsn, application_name="long-report")
    try:
        with blocker.cursor() as cur:  # a write transaction left open: slot creation waits for it
            cur.execute("INSERT INTO app.t VALUES (2)")
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="aurora_sync.cdc"), pytest.raises(SlotCreationTimeout) as failure:
            cdc.setup()
        waited = time.monotonic() - started
        assert 8 <= waited < 60
        assert f"pid {pid}" in str(failure.value) and "long-report" in str(failure.value)
        reports = [r for r in caplog.records if "waits for" in r.getMessage()]
        assert len(reports) >= 1
        assert any(b["application_name"] == "long-report" for b in getattr(reports[0], "fields", {}).get(
            "waiting_for", [])), json.dumps(getattr(reports[0], "fields", {}), default=str)
        # nothing is left waiting on the server, and no slot was created
        time.sleep(0.5)
        assert cdc.source("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'transactionid' OR "
                          "query LIKE 'CREATE_REPLICATION_SLOT%'") == [(0,)]
        assert slots(cdc) == []
    finally:
        blocker.rollback()
        blocker.close()
    cdc.setup()  # once the transaction ended, setup succeeds
    assert slots(cdc) == [cdc.slot]


def test_a_setup_killed_after_creating_the_slot_is_named_by_status_and_doctor_and_finished_by_the_next(
        cdc: Harness, tmp_path: Path) -> None:
    """kill -9 cannot drop anything: a slot then holds WAL with no run consuming it. status and doctor say so and
    what to do, and the next `setup` (a replacement task: an empty disk) finishes it exactly."""
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)",
            "INSERT INTO app.t SELECT g, 'v' || g FROM generate_series(1, 500) g")
    base = {"SOURCES__POSTGRES__CREDENTIALS": cdc.dsn, "SOURCES__POSTGRES__SCHEMAS": '["app"]',
            "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "r.duckdb"),
            "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dl")}

    def aurora_sync(*args: str, disk: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = subprocess_env({**base, "DLT_DATA_DIR": str(tmp_path / disk), **extra})
        return subprocess.run([AURORA_SYNC, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=180, check=False)

    killed = aurora_sync("setup", disk="disk-1", AURORA_SYNC_FAILPOINT="slot_created")
    assert killed.returncode == -9, killed.stderr[-2000:]
    (slot_name,) = slots(cdc)

    status = aurora_sync("status", "--json", disk="disk-2")
    assert status.returncode == ExitCode.SUCCESS, status.stderr[-2000:]
    attention = json.loads(status.stdout)["replication_slot"]["attention"]
    assert slot_name in attention and "no setup finished" in attention and "aurora-sync teardown" in attention
    doctor = aurora_sync("doctor", "--json", disk="disk-2")
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "source: replication slot")
    assert check["status"] == "warn" and "no setup finished" in check["detail"], check

    finished = aurora_sync("setup", disk="disk-3")
    assert finished.returncode == ExitCode.SUCCESS, finished.stderr[-2000:]
    assert slots(cdc) == [slot_name]
    assert json.loads(aurora_sync("status", "--json", disk="disk-3").stdout)["replication_slot"]["attention"] is None
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as duck:
        ((schema,),) = duck.sql("SELECT table_schema FROM information_schema.tables WHERE table_name = 'app__t' "
                                "AND table_schema NOT LIKE '%staging%'").fetchall()
        copied = duck.sql(f"SELECT id, v FROM {schema}.app__t ORDER BY id").fetchall()
    assert copied == cdc.source("SELECT id, v FROM app.t ORDER BY id")


def test_a_publication_created_meanwhile_by_a_killed_tasks_backend_is_taken_as_it_is(cdc: Harness) -> None:
    """Race soak, land-merge seed 633: a setup killed inside CREATE PUBLICATION leaves its backend finishing it; the
    replacement's setup saw no publication, created it too, and failed on the unique name (exit 2, telling an
    administrator to create what already existed). Made deterministic: another session holds the same CREATE
    uncommitted while `ensure_publication` runs, then commits."""
    import threading

    from sources.postgres.catalog import discover_tables
    from sources.postgres.session import make_engine
    from sources.replication.slot import connect, ensure_publication, publication_tables

    cdc.sql("CREATE TABLE app.a (id int PRIMARY KEY)", "CREATE TABLE app.b (id int PRIMARY KEY)")
    engine = make_engine(cdc.dsn, 60_000)
    try:
        specs = [s for s in discover_tables(engine, ["app"], ["*"], [], "updated_at", {}) if s.name in ("a", "b")]
    finally:
        engine.dispose()
    other = psycopg2.connect(cdc.dsn)  # the dead task's backend, mid-CREATE: its name is taken, not yet committed
    other.cursor().execute('CREATE PUBLICATION "raced" FOR TABLE app.a')
    conn = connect(cdc.dsn, read_only=False)
    outcome: list[object] = []

    def replacement() -> None:
        try:
            outcome.append(ensure_publication(conn, "raced", specs))
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=replacement)
    thread.start()
    time.sleep(1.0)  # the replacement's CREATE waits on the name the other transaction holds
    other.commit()
    other.close()
    thread.join(30)
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert publication_tables(conn, "raced") == {"app.a", "app.b"}
    conn.close()
