"""Seeded race-and-crash scenarios of the CDC paths (see tests/race/scenario.py for what one does), and a check
that the independent comparator they rely on reports each kind of difference.

The default selection is small: 10 scenarios of ~30-130 s, 2 seeds per CDC mode (3 for land + merge, the mode with
both kinds of outage) and 1 for `snapshot-helpers` (fakesnow and moto: slower). Seeds decide the outages too
(follow 8: warehouse; land-merge 10 and 12: S3, 11: warehouse) and the DDL (every third seed: 3, 6, 9 and 12 are
in the selection). For a soak:

    RACE_SEEDS=200 .venv/bin/pytest -m race tests/race        # seeds 1..200 for every mode (make soak SEEDS=200)
    RACE_SEED_START=1000 RACE_SEEDS=50 RACE_MODES=follow,land-merge RACE_DDL=1 .venv/bin/pytest -m race tests/race

RACE_DDL=1 adds DDL to every workload (unset: every third seed), RACE_DDL=0 to none; RACE_TRUNCATE=0 removes
TRUNCATE; RACE_KILLS=0 runs the same plans without kill -9 or failpoints (is a failure about crashes or not?);
RACE_WORKLOAD_SECONDS overrides the workload duration; RACE_RESULTS=<file> appends every scenario's result as
one JSON line; RACE_KEEP_DIR=<dir> keeps a copy of every failing scenario's work directory there (pytest only keeps
its last three temporary trees). A failing scenario prints `RACE_REPLAY: ...`, the command that replays it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from local.moto_s3 import MotoNotAvailable, find_moto_server
from local.postgres import LocalPostgres
from tests.conftest import fresh_database
from tests.race.scenario import MODES, SNAPSHOT_HELPERS, Plan, env_flag, report_text, run_scenario

pytestmark = [pytest.mark.race, pytest.mark.timeout(900)]

# mode -> seeds of the default (make test) selection: each mode with and without DDL, every outage kind; seeds 1, 4
# and 7 (no DDL, no outage; what 2, 5 and the soak also cover) left make test for its 20-minute budget (issue 17)
DEFAULT_SEEDS = {
    "setup-chunked-1": (2, 3),
    "setup-chunked-N": (5, 6),
    "follow": (8, 9),
    "land-merge": (10, 11, 12),
    SNAPSHOT_HELPERS: (13,),
}


def selected() -> list[tuple[str, int]]:
    modes = [m.strip() for m in os.environ.get("RACE_MODES", "").split(",") if m.strip()] or list(MODES)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"RACE_MODES: unknown mode(s) {sorted(unknown)}; known: {', '.join(MODES)}")
    count = os.environ.get("RACE_SEEDS")
    if count or os.environ.get("RACE_SEED_START"):
        start = int(os.environ.get("RACE_SEED_START") or 1)
        seeds = range(start, start + int(count or 1))
        return [(mode, seed) for seed in seeds for mode in modes]
    return [(mode, seed) for mode in modes for seed in DEFAULT_SEEDS[mode]]


CASES = selected()


@pytest.mark.parametrize(("mode", "seed"), CASES, ids=[f"{m}-seed_{s}" for m, s in CASES])
def test_race(pg: LocalPostgres, tmp_path: Path, mode: str, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    # DDL in the workload: every third seed unless RACE_DDL says otherwise, so the default selection and every
    # soak cover it
    ddl, truncate = env_flag("RACE_DDL", seed % 3 == 0), env_flag("RACE_TRUNCATE", True)
    seconds = float(os.environ["RACE_WORKLOAD_SECONDS"]) if os.environ.get("RACE_WORKLOAD_SECONDS") else None
    plan = Plan.make(mode, seed, ddl, truncate, seconds)
    if mode == SNAPSHOT_HELPERS or plan.bucket == "s3":  # fakesnow's S3 stage, or the S3 bucket, are on moto
        try:
            find_moto_server()
        except MotoNotAvailable as exc:
            pytest.skip(str(exc))
    with fresh_database(pg, prefix="race") as dsn:
        result = run_scenario(dsn, tmp_path, mode, seed, ddl=ddl, truncate=truncate, workload_seconds=seconds,
                              kills=env_flag("RACE_KILLS", True))
    results = os.environ.get("RACE_RESULTS")
    if results:
        with open(results, "a") as fh:
            fh.write(json.dumps(result.as_json(), default=str) + "\n")
    keep = os.environ.get("RACE_KEEP_DIR")
    if keep and not result.ok:
        kept = Path(keep) / f"{mode}-seed_{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
        shutil.copytree(tmp_path, kept, symlinks=True)
        result.workdir = str(kept)
    with capsys.disabled():
        print(f"\n{result.headline()}")
        if not result.ok:
            print(result.replay)
    assert result.ok, report_text(result)


def test_comparator_finds_each_kind_of_difference(pg: LocalPostgres, tmp_path: Path) -> None:
    """The comparator must be able to fail: a DuckDB copy of the source (with destination-only columns) is equal,
    then each kind of damage is reported as what it is."""
    import duckdb

    from tests.conftest import execute
    from tests.race.comparator import compare
    from tests.race.workload import create_schema, seed_rows

    duck = str(tmp_path / "copy.duckdb")
    with fresh_database(pg, prefix="race") as dsn:
        create_schema(dsn)
        seed_rows(dsn, seed=3, docs=300, pairs=90, bag=200, big_percent=30)
        con = duckdb.connect(duck)
        con.execute("CREATE SCHEMA race")
        for table, columns in (("docs", "id, grp, n, small, big, updated_at"), ("pairs", "a, b, v, note"),
                               ("bag", "x, y")):
            rows = _source_rows(dsn, f"SELECT {columns} FROM app.{table}")
            types = {"docs": "BIGINT, BIGINT, BIGINT, VARCHAR, VARCHAR, TIMESTAMPTZ",
                     "pairs": "BIGINT, VARCHAR, DECIMAL(12,2), VARCHAR", "bag": "BIGINT, VARCHAR"}[table]
            defs = ", ".join(f"{c} {t}" for c, t in zip(columns.split(", "), types.split(", "), strict=True))
            con.execute(f"CREATE TABLE race.app__{table} ({defs}, _lsn BIGINT, _deleted BOOLEAN, _dlt_id VARCHAR)")
            marks = ", ".join("?" for _ in columns.split(", "))
            con.executemany(f"INSERT INTO race.app__{table} ({columns}) VALUES ({marks})", rows)
        con.close()
        assert compare(dsn, duck, "race")["ok"], "an exact copy must compare equal"

        con = duckdb.connect(duck)
        con.execute("DELETE FROM race.app__docs WHERE id = 1")                      # missing
        con.execute("UPDATE race.app__docs SET big = NULL WHERE big IS NOT NULL AND id IN "
                    "(SELECT id FROM race.app__docs WHERE big IS NOT NULL ORDER BY id LIMIT 2)")  # different
        con.execute("INSERT INTO race.app__pairs VALUES (999999, 'q', 1.50, NULL, 1, NULL, 'x')")  # extra
        con.execute("INSERT INTO race.app__bag SELECT * FROM race.app__bag LIMIT 1")  # one copy too many
        con.execute("INSERT INTO race.app__docs SELECT * FROM race.app__docs WHERE id = 2")  # duplicate key
        con.close()
        execute(dsn, "UPDATE app.pairs SET v = v + 1 WHERE a = 2")                  # source moved on
        report = compare(dsn, duck, "race")
    docs, pairs, bag = (report["tables"][f"app__{t}"] for t in ("docs", "pairs", "bag"))
    assert not report["ok"]
    assert docs["missing"]["count"] == 1 and docs["missing"]["examples"][0][0] == "1"
    assert docs["different"]["count"] == 2 and docs["different"]["by_column"] == {
        "big": {"count": 2, "destination_null": 2}}
    assert docs["duplicate_keys"]["count"] == 1
    assert pairs["extra"]["count"] == 1 and pairs["different"]["by_column"]["v"]["count"] == 3
    assert bag["extra"]["count"] == 1 and bag["missing"]["count"] == 0
    assert "app__docs: 1 missing row(s); 2 row(s) with different values (big: 2, 2 NULL in destination)" in \
        report["summary"]


def _source_rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()
