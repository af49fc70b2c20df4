"""CDC fixtures: a fresh database per test with its own slot, publication and DuckDB destination."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import psycopg2
import pytest

from pipelines import cdc as cdc_pipeline
from sources.replication.slot import object_name
from tests.conftest import execute
from tests.helpers import duck_rows, pg_rows

DATASET = "mirror"


class Harness:
    """One test's source database, pipeline and destination, with helpers to compare them."""

    def __init__(self, dsn: str, duck: str, pipelines_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dsn, self.duck, self.pipelines_dir, self.monkeypatch = dsn, duck, pipelines_dir, monkeypatch
        self.database = dsn.rsplit("/", 1)[1]
        self.pipeline_name = f"cdc_{self.database}"
        self.slot = object_name(self.pipeline_name)

    def configure(self, **settings: Any) -> None:
        for key, value in settings.items():
            self.monkeypatch.setenv(f"SOURCES__POSTGRES__REPLICATION__{key.upper()}", str(value))

    def pipeline(self) -> dlt.Pipeline:
        return dlt.pipeline(pipeline_name=self.pipeline_name, destination="duckdb", dataset_name=DATASET,
                            pipelines_dir=str(self.pipelines_dir), progress=None)

    def sql(self, *statements: str) -> None:
        execute(self.dsn, *statements)

    def setup(self, **kwargs: Any) -> cdc_pipeline.SetupReport:
        return cdc_pipeline.setup(self.pipeline(), **kwargs)

    def drain(self, **kwargs: Any) -> cdc_pipeline.CdcSummary:
        return cdc_pipeline.run_cdc(self.pipeline(), **kwargs)

    def source(self, statement: str) -> list[tuple[Any, ...]]:
        return pg_rows(self.dsn, statement)

    def dest(self, statement: str) -> list[tuple[Any, ...]]:
        return duck_rows(self.duck, statement.replace("{ds}", DATASET))

    def dest_table(self, table: str, columns: str, order: str = "1", where: str = "true") -> list[tuple[Any, ...]]:
        return self.dest(f"SELECT {columns} FROM {DATASET}.{table} WHERE {where} ORDER BY {order}")

    def slot_position(self) -> tuple[int | None, bool] | None:
        rows = self.source(f"SELECT confirmed_flush_lsn - '0/0', active FROM pg_replication_slots "
                           f"WHERE slot_name = '{self.slot}'")
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def drop_slots(self) -> None:
        admin = psycopg2.connect(self.dsn.rsplit("/", 1)[0] + "/postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                        "WHERE database = %s AND active_pid IS NOT NULL", (self.database,))
            cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (self.database,))
            for (slot,) in cur.fetchall():
                for _ in range(50):
                    try:
                        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                        break
                    except psycopg2.Error:  # still active for a moment after its client was killed
                        time.sleep(0.1)
        admin.close()


@pytest.fixture()
def cdc(database: str, dlt_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["app"]')
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__IDLE_ACK_BYTES", "0")
    # the source guard waits while the machine is busy, which a loaded CI box always is; it has tests of its own
    monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE", "0")
    monkeypatch.setenv("SOURCES__POSTGRES__REPLICATION__DEAD_LETTER_URL", str(tmp_path / "dead_letter"))
    harness = Harness(database, dlt_env["DESTINATION__DUCKDB__CREDENTIALS"], tmp_path / "pipelines", monkeypatch)
    execute(database, "CREATE SCHEMA app")
    try:
        yield harness
    finally:
        harness.drop_slots()

