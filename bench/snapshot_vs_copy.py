"""Snapshot speed against the raw COPY rate of the same table, with peak RSS.

    python -m bench.snapshot_vs_copy --rows 1000000

Starts a throwaway PostgreSQL, generates an orders-like table (bigint, text, numeric, timestamptz,
jsonb), then measures in one run:
  1. `COPY (SELECT ...) TO STDOUT (FORMAT binary)` drained by psycopg2: the server's own rate;
  2. `aurora-sync run --mode snapshot` into DuckDB;
  3. the same into parquet files (dlt's filesystem destination).
Each pipeline run is a separate process so its peak RSS is its own (ru_maxrss of the child), and its
time includes process start, table discovery, the run lock and the run-history record.
Target (issue 2): snapshot >= 0.5x the COPY rate and peak RSS < 512 MB for a 5M-row table.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from local.postgres import LocalPostgres

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DDL = """
CREATE SCHEMA bench;
CREATE TABLE bench.orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status      text NOT NULL,
    total       numeric(12, 2) NOT NULL,
    note        text,
    attributes  jsonb,
    placed_at   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
"""
FILL = """
INSERT INTO bench.orders
SELECT g, g % 50000, (ARRAY['new','paid','shipped','delivered'])[1 + g % 4], (g % 100000) / 100.0,
       CASE WHEN g % 3 = 0 THEN NULL ELSE 'note for order ' || g END,
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('channel', 'web', 'items', g % 7) END,
       now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval
FROM generate_series(1, {rows}) g;
ANALYZE bench.orders;
"""


class Sink:
    """Counts bytes COPY writes, keeping nothing."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def raw_copy_rate(dsn: str, rows: int, fmt: str = "binary") -> tuple[float, int]:
    conn = psycopg2.connect(dsn)
    sink = Sink()
    started = time.perf_counter()
    conn.cursor().copy_expert(f"COPY (SELECT * FROM bench.orders) TO STDOUT (FORMAT {fmt})", sink, 1 << 20)
    elapsed = time.perf_counter() - started
    conn.close()
    return rows / elapsed, sink.bytes


def pipeline_run(env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one `aurora-sync run --mode snapshot` process."""
    command = [str(Path(sys.executable).parent / "aurora-sync"), "--json-logs", "run", "--mode", "snapshot"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pipeline failed:\n{process.stderr.read() if process.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the median is reported")
    args = parser.parse_args()

    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="aurora-sync-bench-") as work:
        dsn = pg.url()
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        started = time.perf_counter()
        conn.cursor().execute(DDL + FILL.format(rows=int(args.rows)))
        conn.close()
        print(f"generated bench.orders: {args.rows:,} rows in {time.perf_counter() - started:.1f} s")

        copy_runs = sorted(raw_copy_rate(dsn, args.rows) for _ in range(args.repeat))
        copy_rate, copy_bytes = copy_runs[len(copy_runs) // 2]
        # our extraction reads CSV: the server's text output functions are the floor of our path
        csv_runs = sorted(raw_copy_rate(dsn, args.rows, "csv") for _ in range(args.repeat))
        csv_rate = csv_runs[len(csv_runs) // 2][0]
        base_env = {**os.environ, "SOURCES__POSTGRES__CREDENTIALS": dsn, "SOURCES__POSTGRES__SCHEMAS": '["bench"]',
                    "RUNTIME__LOG_LEVEL": "WARNING"}
        results = []
        for label, extra in (
            ("snapshot -> duckdb", {"DESTINATION__DUCKDB__CREDENTIALS": f"{work}/bench.duckdb"}),
            ("  duckdb, memory_limit 256MB", {"DESTINATION__DUCKDB__CREDENTIALS": f"{work}/bench2.duckdb",
                                              "DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG":
                                                  '{"memory_limit": "256MB", "preserve_insertion_order": false}'}),
            ("snapshot -> parquet files", {"CUSTOMERS_ORDERS__DESTINATION_TYPE": "filesystem",
                                          "DESTINATION__FILESYSTEM__BUCKET_URL": f"file://{work}/bucket"}),
        ):
            runs = []
            for attempt in range(args.repeat):
                env = {**base_env, **extra, "DLT_DATA_DIR": f"{work}/dlt-{len(results)}-{attempt}"}
                runs.append(pipeline_run(env))
            runs.sort()
            seconds, rss = runs[len(runs) // 2]
            results.append((label, args.rows / seconds, max(r[1] for r in runs), seconds))

    print(f"\n{'path':<28}{'rows/s':>12}{'vs COPY':>10}{'peak RSS MB':>14}{'seconds':>10}")
    print(f"{'COPY TO STDOUT (binary)':<28}{copy_rate:>12,.0f}{1.0:>10.2f}{'-':>14}{args.rows / copy_rate:>10.1f}")
    print(f"{'COPY TO STDOUT (csv)':<28}{csv_rate:>12,.0f}{csv_rate / copy_rate:>10.2f}{'-':>14}"
          f"{args.rows / csv_rate:>10.1f}")
    for label, rate, rss, seconds in results:
        print(f"{label:<28}{rate:>12,.0f}{rate / copy_rate:>10.2f}{rss:>14.0f}{seconds:>10.1f}")
    print(f"\n(COPY binary volume {copy_bytes / 1e6:.0f} MB; median of {args.repeat} runs; "
          f"peak RSS is the max over runs; the bench process itself: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
