"""A change from the WAL lands exactly like the same row copied by the snapshot: same values, same
destination column types, whatever text formats the server's sessions default to."""

from __future__ import annotations

import math
from typing import Any

import dlt
import duckdb

from sources.postgres import postgres_replica
from tests.test_type_fidelity import DDL

from .conftest import DATASET, Harness

# the server's defaults are hostile on purpose: the walsender and snapshot sessions must pin their own
HOSTILE = ["SET TimeZone = 'Asia/Kolkata'", "SET DateStyle = 'SQL, DMY'", "SET IntervalStyle = 'postgres_verbose'",
           "SET extra_float_digits = 0", "SET bytea_output = 'escape'"]


def rows_by_id(cdc: Harness) -> tuple[dict[int, dict[str, Any]], dict[str, str]]:
    con = duckdb.connect(cdc.duck, read_only=True)
    try:
        cursor = con.execute(f"SELECT * FROM {DATASET}.app__all_types ORDER BY id")
        names = [d[0] for d in cursor.description]
        rows = {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 f"WHERE table_schema = '{DATASET}' AND table_name = 'app__all_types'").fetchall())
    finally:
        con.close()
    return rows, types


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def test_wal_values_match_snapshot_values_and_types(cdc: Harness) -> None:
    cdc.sql(*(f"ALTER DATABASE \"{cdc.database}\" {s}" for s in HOSTILE))
    assert cdc.source("SHOW TimeZone") == [("Asia/Kolkata",)] and cdc.source("SHOW bytea_output") == [("escape",)]
    cdc.sql(DDL.replace("types.", "app.").replace("CREATE SCHEMA types;", ""))
    cdc.setup()
    snapshot_rows, snapshot_types = rows_by_id(cdc)
    assert sorted(snapshot_rows) == [1, 2, 3, 4]

    # the same values again, as inserts and as updates read from the WAL
    columns = [c for c in snapshot_rows[1] if c.startswith("c_") or c == "updated_at"]
    cdc.sql(f"INSERT INTO app.all_types (id, {', '.join(columns)}) "
            f"SELECT id + 100, {', '.join(columns)} FROM app.all_types",
            "UPDATE app.all_types SET id = id + 200 WHERE id <= 4")
    summary = cdc.drain()
    assert summary.changes["app__all_types"].inserts == 4
    rows, types = rows_by_id(cdc)
    assert sorted(rows) == [101, 102, 103, 104, 201, 202, 203, 204]
    assert types == snapshot_types  # no column changed type
    for i in (1, 2, 3, 4):
        for copy in (100 + i, 200 + i):
            differing = {c: (snapshot_rows[i][c], rows[copy][c]) for c in columns
                         if not same(snapshot_rows[i][c], rows[copy][c])}
            assert not differing, (i, copy, differing)
    assert rows[101]["c_timestamptz"].utcoffset() is not None
    assert rows[101]["c_interval"] == "P1Y2M3DT4H5M6.5S" and rows[101]["c_bytea"] == b"\x00\xff\x10"
    assert rows[101]["_lsn"] > snapshot_rows[1]["_lsn"]

    # hard-delete tombstones carry only the key; every other column gets a valid placeholder of its type
    cdc.sql("DELETE FROM app.all_types WHERE id > 100 AND id < 200")
    cdc.drain()
    assert sorted(rows_by_id(cdc)[0]) == [201, 202, 203, 204]


def test_destination_types_match_the_snapshot_source(cdc: Harness) -> None:
    """CDC writes the same tables as `sources.postgres`: its column types must agree with that source's."""
    cdc.sql(DDL.replace("types.", "app.").replace("CREATE SCHEMA types;", ""))
    cdc.setup()
    _, cdc_types = rows_by_id(cdc)
    other = dlt.pipeline(pipeline_name=f"{cdc.pipeline_name}_snap", destination="duckdb", dataset_name="via_source",
                         pipelines_dir=str(cdc.pipelines_dir), progress=None)
    other.run(postgres_replica(credentials=cdc.dsn, schemas=["app"], mode="snapshot")).raise_on_failed_jobs()
    con = duckdb.connect(cdc.duck, read_only=True)
    try:
        source_types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                        "WHERE table_schema = 'via_source' AND table_name = 'app__all_types'"
                                        ).fetchall())
    finally:
        con.close()
    common = {c for c in source_types if not c.startswith("_dlt")}
    assert {c: cdc_types[c] for c in common} == {c: source_types[c] for c in common}
