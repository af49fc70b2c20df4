"""The adversarial suite: `zoo`'s every type and edge value, through every mode, checked after every step by
`verify --checksum` against what the mode promises.

- snapshot, CDC drain, CDC follow, CDC landed in a bucket then merged (`cdc-land`): exact after every step;
- incremental: exact for everything a timestamp cursor can see, and `verify` reports exactly the rest (the
  keys each step changed or deleted without moving the cursor), no more and no less.
Nothing may be dead-lettered and no run may fail. The time of each step is printed (`-s`) for the closing note.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import psycopg2
import pytest

from pipelines import cdc as cdc_pipeline
from pipelines import customers_orders
from replica.verify import VerifyOptions, VerifyReport, verify
from sources.postgres import dead_letters
from tests.conftest import execute
from tests.snowflake.conftest import bucket, fake_sf, key_pair, s3, sf_env  # noqa: F401  (fixtures)

from . import zoo

MODES = ["snapshot", "incremental", "cdc", "cdc-follow", "cdc-land"]
pytestmark = pytest.mark.slow


def drop_slots(dsn: str) -> None:
    database = dsn.rsplit("/", 1)[1]
    admin = psycopg2.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE database = %s AND active_pid IS NOT NULL", (database,))
        for _ in range(50):
            cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active", (database,))
            for (slot,) in cur.fetchall():
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s", (database,))
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.1)
    admin.close()


class Sync:
    """One mode's way to bring the replica up to date with the source."""

    def __init__(self, mode: str, dsn: str, pipeline: dlt.Pipeline) -> None:
        self.mode, self.dsn, self.pipeline = mode, dsn, pipeline
        self.stop = threading.Event()
        self.follower: threading.Thread | None = None
        self.follow_error: list[BaseException] = []

    def start(self) -> None:
        if self.mode in ("snapshot", "incremental"):
            self.sync()
            return
        report = cdc_pipeline.setup(self.pipeline)
        assert not report.failed_tables, report.failed_tables
        if self.mode == "cdc-land":
            self.merge()
        if self.mode == "cdc-follow":
            def follow() -> None:
                try:
                    cdc_pipeline.run_cdc(self.pipeline, follow=True, stop=self.stop)
                except BaseException as exc:  # surfaced by the test
                    self.follow_error.append(exc)

            self.follower = threading.Thread(target=follow, name="cdc-follower", daemon=True)
            self.follower.start()

    def sync(self) -> None:
        if self.mode in ("snapshot", "incremental"):
            customers_orders.run(mode=self.mode, pipeline=self.pipeline).raise_on_failures()
        elif self.mode in ("cdc", "cdc-land"):
            summary = cdc_pipeline.run_cdc(self.pipeline)
            assert not summary.failed_tables and not summary.dead_lettered, summary.as_fields()
            assert summary.lands == (self.mode == "cdc-land")
            if self.mode == "cdc-land":
                self.merge()
        else:
            assert not self.follow_error, self.follow_error

    def merge(self) -> None:
        """What `aurora-sync merge` does once: everything landed so far into the warehouse."""
        from pipelines.merge import merge_landed

        merged = merge_landed(self.pipeline)
        assert not merged.failed_tables and merged.oldest_unmerged_age_s == 0.0, merged.as_fields()

    def close(self) -> None:
        self.stop.set()
        if self.follower is not None:
            self.follower.join(timeout=60)
            assert not self.follower.is_alive(), "the follower did not stop on its stop event"
        assert not self.follow_error, self.follow_error


def drift(report: VerifyReport) -> dict[str, dict[str, list[Any]]]:
    """What verify reports, by table and kind, as comparable sets of keys (JSON forms)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for table in report.tables:
        assert table.error is None, f"{table.table}: {table.error}"
        kinds: dict[str, list[Any]] = {}
        for r in table.ranges:
            for kind in ("missing", "extra", "changed"):
                kinds.setdefault(kind, []).extend(getattr(r, kind))
        kinds = {k: v for k, v in kinds.items() if v}
        if table.status != "ok":
            problems = {"missing_columns": table.missing_columns, "problems": table.problems}
            out[table.destination_table] = {**kinds, **{k: v for k, v in problems.items() if v}} or {
                "unexplained": [table.as_json()]}
    return out


def as_set(keys: list[Any]) -> set[str]:
    return {repr(k) for k in keys}


def check(report: VerifyReport, expected: dict[str, dict[str, list[Any]]], where: str) -> None:
    present = {t.destination_table for t in report.tables}
    wanted = {t: {k: as_set(v) for k, v in kinds.items() if v} for t, kinds in expected.items() if t in present}
    wanted = {t: kinds for t, kinds in wanted.items() if kinds}
    found = {t: {k: as_set(v) for k, v in kinds.items()} for t, kinds in drift(report).items()}
    assert found == wanted, f"{where}: verify reported {found}, the mode promises {wanted}"


@pytest.fixture()
def zoo_db(database: str) -> Iterator[str]:
    execute(database, *zoo.DDL, *zoo.SEED)
    try:
        yield database
    finally:
        drop_slots(database)


@pytest.mark.parametrize("mode", MODES)
def test_every_type_and_every_change_in_every_mode(mode: str, zoo_db: str, dlt_env: dict[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["zoo"]')
    monkeypatch.setenv("SOURCES__POSTGRES__LOOKBACK_SECONDS", "0")
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__IDLE_ACK_BYTES", "0")
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__MAX_BATCH_SECONDS", "0.5")
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__NEW_TABLE_CHECK_SECONDS", "1")
    if mode == "cdc-land":
        monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS", "300")
        monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    dead_letters.DEAD_LETTERS_THIS_RUN.clear()
    pipeline = dlt.pipeline(pipeline_name=f"zoo_{zoo_db.rsplit('/', 1)[1]}", destination="duckdb",
                            dataset_name="zoo_replica", pipelines_dir=str(tmp_path / "pipelines"), progress=None)
    sync = Sync(mode, zoo_db, pipeline)
    options = VerifyOptions(checksum=True)
    expected: dict[str, dict[str, list[Any]]] = {}
    timings: list[tuple[str, float]] = []
    started = time.monotonic()
    sync.start()
    try:
        check(verify(pipeline, options=options), expected, f"{mode}: initial copy")
        timings.append(("initial copy", time.monotonic() - started))
        for step in zoo.STEPS:
            begun = time.monotonic()
            if step.during_sync is not None:
                late = step.during_sync(zoo_db)
                sync.sync()  # the transaction is still open: its rows are invisible to this sync
                late.commit()
                late.close()
            execute(zoo_db, *step.sql) if step.sql else None
            sync.sync()
            if mode == "incremental":
                for table in step.refreshes:
                    expected.pop(table, None)
                for table in step.rereads:
                    expected.get(table, {}).pop("changed", None)
                for table, kinds in step.invisible.items():
                    for kind, keys in kinds.items():
                        expected.setdefault(table, {}).setdefault(kind, []).extend(keys)
            if mode == "cdc-follow":
                _until_exact(pipeline, options, f"{mode}: {step.name}")
            else:
                check(verify(pipeline, options=options), expected, f"{mode}: {step.name}")
            timings.append((step.name, time.monotonic() - begun))
    finally:
        sync.close()
    assert not dead_letters.DEAD_LETTERS_THIS_RUN, dict(dead_letters.DEAD_LETTERS_THIS_RUN)
    total = time.monotonic() - started
    print(f"\nadversarial suite, {mode}: {total:.1f} s in all; " +
          "; ".join(f"{name} {seconds:.1f} s" for name, seconds in timings))


def _until_exact(pipeline: dlt.Pipeline, options: VerifyOptions, where: str, timeout: float = 90.0) -> None:
    """Follow mode applies a step on its own schedule: the replica must become exact, and stay so."""
    deadline = time.monotonic() + timeout
    while True:
        report = verify(pipeline, options=options)
        if report.outcome == "ok" or time.monotonic() > deadline:
            check(report, {}, where)
            return
        time.sleep(1.0)


def test_the_suite_into_snowflake(zoo_db: str, sf_env: dict[str, str], fake_sf: Any, bucket: Any,  # noqa: F811
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CDC drain into Snowflake (fakesnow on DuckDB, the S3 archive stage on moto), as production runs it."""
    from tests.snowflake.conftest import bootstrap

    assert bootstrap() == 0
    database = zoo_db.rsplit("/", 1)[1]
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["zoo"]')
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__IDLE_ACK_BYTES", "0")
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__SLOT_NAME", f"zoo_{database}")
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__PUBLICATION_NAME", f"zoo_{database}")
    dead_letters.DEAD_LETTERS_THIS_RUN.clear()
    pipeline = customers_orders.make_pipeline(str(tmp_path / "pipelines"))
    sync = Sync("cdc", zoo_db, pipeline)
    options = VerifyOptions(checksum=True)
    started = time.monotonic()
    sync.start()
    check(verify(pipeline, options=options), {}, "snowflake: initial copy")
    for step in zoo.STEPS:
        if step.during_sync is not None:
            late = step.during_sync(zoo_db)
            sync.sync()
            late.commit()
            late.close()
        execute(zoo_db, *step.sql) if step.sql else None
        sync.sync()
        check(verify(pipeline, options=options), {}, f"snowflake: {step.name}")
    assert not dead_letters.DEAD_LETTERS_THIS_RUN, dict(dead_letters.DEAD_LETTERS_THIS_RUN)
    print(f"\nadversarial suite, cdc into Snowflake (fakesnow): {time.monotonic() - started:.1f} s")
