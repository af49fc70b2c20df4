"""kill -9 of a CDC sync at every step (extract, normalize, load, after load before the LSN ack); the
next run must leave the replica exact: deletes applied, nothing lost, no duplicate keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.progress import FAILPOINTS
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET, duck_rows, pg_rows

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def aurora_sync(env: dict[str, str], *args: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = {"AURORA_SYNC_FAILPOINT": failpoint} if failpoint else {}
    return subprocess.run([AURORA_SYNC, "--json-logs", *args], env=subprocess_env({**env, **extra}),
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180, check=False)


def changes(dsn: str, round_no: int) -> None:
    base = 10_000 * round_no
    execute(dsn, f"INSERT INTO shop.orders (id, status) SELECT {base} + g, 'new' FROM generate_series(1, 300) g",
            f"UPDATE shop.orders SET status = 'paid-{round_no}' WHERE id % 7 = {round_no}",
            f"DELETE FROM shop.orders WHERE id % 11 = {round_no}")


@pytest.mark.slow
# "after_load" is the incremental runner's point; CDC's equivalent is "after_load_before_ack"
@pytest.mark.parametrize("failpoint", [*(p for p in FAILPOINTS if p != "after_load"), "after_load_before_ack"])
def test_cdc_kill_9_at_each_step_then_rerun_is_exact(tmp_path: Path, database: str, failpoint: str) -> None:
    execute(database, "CREATE SCHEMA shop",
            "CREATE TABLE shop.orders (id int PRIMARY KEY, status text, updated_at timestamptz DEFAULT now())",
            "INSERT INTO shop.orders (id, status) SELECT g, 'new' FROM generate_series(1, 2000) g")
    env = {"SOURCES__POSTGRES__CREDENTIALS": database, "SOURCES__POSTGRES__SCHEMAS": '["shop"]',
           "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
           "DLT_DATA_DIR": str(tmp_path / "dlt"), "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
           "SOURCES__POSTGRES__REPLICATION__MAX_BATCH_ROWS": "200"}
    assert aurora_sync(env, "setup").returncode == ExitCode.SUCCESS
    changes(database, 1)
    killed = aurora_sync(env, "run", "--mode", "cdc", failpoint=failpoint)
    assert killed.returncode == -9, killed.stderr[-2000:]
    changes(database, 2)
    rerun = aurora_sync(env, "run", "--mode", "cdc")
    assert rerun.returncode == ExitCode.SUCCESS, rerun.stderr[-2000:]
    source = pg_rows(database, "SELECT id, status FROM shop.orders ORDER BY id")
    dest = duck_rows(str(tmp_path / "replica.duckdb"), f"SELECT id, status FROM {DATASET}.shop__orders ORDER BY id")
    assert dest == source
    assert duck_rows(str(tmp_path / "replica.duckdb"),
                     f"SELECT count(*) - count(DISTINCT id) FROM {DATASET}.shop__orders") == [(0,)]
