"""CDC throughput (changes/s from slot to DuckDB) and peak RSS of a 1M-row transaction.

    python -m bench.cdc_throughput --changes 300000 --big-transaction 1000000

Starts a throwaway PostgreSQL, creates an orders-like table, runs `setup` (slot + initial copy), then:
  1. many small transactions (inserts, then updates of the same rows) drained by one `run_cdc`;
  2. one transaction inserting `--big-transaction` rows, drained by one `run_cdc`.
Each drain runs in its own process so its peak RSS (ru_maxrss) is its own; a drain of a handful of
changes gives the baseline RSS of the process (Python, dlt, pyarrow, duckdb).
Target (issue 3): the 1M-row transaction syncs with bounded memory (batches of `max_batch_rows`).

    python -m bench.cdc_throughput --land

With `--land` the drains land their batches in a bucket folder (`merge_interval_seconds` > 0) and confirm them
there; after each drain a `merge` (own process) applies what landed to DuckDB, timed and measured the same way.
Target (issue 12): landing >= 50k changes/s; RSS bounded by the batch size.

Each line also gives the drain's CPU seconds (user + system of its process): on a shared machine wall time varies
with the load, CPU time much less. `BENCH_PROFILE=<prefix>` writes a cProfile of each measured child to
`<prefix>.<mode>.<pid>.prof`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from bench.snapshot_vs_copy import DDL as SNAPSHOT_DDL
from local.postgres import LocalPostgres, execute

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "bench_cdc"
DDL = SNAPSHOT_DDL + """
INSERT INTO bench.orders SELECT g, g % 5000, 'new', g / 100.0, 'seed', NULL, now(), now()
FROM generate_series(1, 10000) g;
"""
ROWS = """SELECT g, g % 50000, (ARRAY['new','paid','shipped','delivered'])[1 + g % 4], (g % 100000) / 100.0,
       CASE WHEN g % 3 = 0 THEN NULL ELSE 'note for order ' || g END,
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('channel', 'web', 'items', g % 7) END, now(), now()
FROM generate_series({start}, {end}) g"""


def child(mode: str) -> None:
    """Runs inside the measured process."""
    import dlt

    from pipelines.cdc import run_cdc, setup

    pipeline = dlt.pipeline(pipeline_name=PIPELINE, destination="duckdb", dataset_name="bench_mirror",
                            pipelines_dir=os.environ["BENCH_PIPELINES_DIR"], progress=None)
    profile = os.environ.get("BENCH_PROFILE")
    profiler = None
    if profile and mode != "setup":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.monotonic()
    if mode == "setup":
        report = setup(pipeline)
        result = {"rows": sum(report.snapshots.values())}
    elif mode == "merge":
        from pipelines.merge import merge_landed

        merged = merge_landed(pipeline)
        result = {"changes": sum(merged.changes.values()), "batches": merged.batches, "rows": sum(merged.rows.values())}
    else:
        summary = run_cdc(pipeline)
        result = {"changes": summary.total_changes, "batches": summary.batches}
    result["seconds"] = round(time.monotonic() - started, 2)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{profile}.{mode}.{os.getpid()}.prof")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def run_child(mode: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.cdc_throughput", "--child", mode], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=300_000, help="small-transaction changes to drain")
    parser.add_argument("--transaction-size", type=int, default=100, help="rows per small transaction")
    parser.add_argument("--big-transaction", type=int, default=1_000_000, help="rows in the one big transaction")
    parser.add_argument("--max-batch-rows", type=int, default=None)
    parser.add_argument("--land", action="store_true", help="land in a bucket folder, then time `merge` apart")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="bench-cdc-") as tmp:
        dsn = pg.url()
        execute(dsn, DDL)
        env = {**os.environ, "SOURCES__POSTGRES__CREDENTIALS": dsn, "SOURCES__POSTGRES__SCHEMAS": '["bench"]',
               "DESTINATION__DUCKDB__CREDENTIALS": f"{tmp}/bench.duckdb", "BENCH_PIPELINES_DIR": f"{tmp}/pipelines",
               "DLT_DATA_DIR": f"{tmp}/dlt", "RUNTIME__LOG_LEVEL": "ERROR"}
        if args.land:
            env["SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS"] = "300"
            env["DESTINATION__FILESYSTEM__BUCKET_URL"] = Path(tmp, "bucket").as_uri()
        if args.max_batch_rows:
            env["SOURCES__POSTGRES__REPLICATION__MAX_BATCH_ROWS"] = str(args.max_batch_rows)
        run_child("setup", env)
        if args.land:
            run_child("merge", env)
        execute(dsn, "INSERT INTO bench.orders SELECT g, 1, 'new', 1, 'x', NULL, now(), now() "
                     "FROM generate_series(20000001, 20000010) g")
        baseline = run_child("drain", env)
        print(f"baseline (10 changes): {baseline['seconds']} s, peak RSS {baseline['peak_rss_mb']} MB, "
              f"CPU {baseline['cpu_seconds']} s")

        inserts = args.changes // 2
        step = args.transaction_size
        conn = psycopg2.connect(dsn)
        with conn.cursor() as cur:
            for start in range(100_001, 100_001 + inserts, step):
                cur.execute(f"INSERT INTO bench.orders {ROWS.format(start=start, end=start + step - 1)}")
                conn.commit()
            for start in range(100_001, 100_001 + inserts, step):
                cur.execute("UPDATE bench.orders SET status = 'paid', updated_at = now() "
                            "WHERE id BETWEEN %s AND %s", (start, start + step - 1))
                conn.commit()
        conn.close()
        small = run_child("drain", env)
        verb = "landed" if args.land else "loaded"
        print(f"small transactions {verb}: {small['changes']} changes in {small['seconds']} s = "
              f"{small['changes'] / small['seconds']:,.0f} changes/s, {small['batches']} batches, "
              f"peak RSS {small['peak_rss_mb']} MB, {cpu(small)}")
        if args.land:
            report_merge(run_child("merge", env))

        start = 50_000_001
        execute(dsn, f"INSERT INTO bench.orders {ROWS.format(start=start, end=start + args.big_transaction - 1)}")
        big = run_child("drain", env)
        print(f"one {args.big_transaction:,}-row transaction {verb}: {big['seconds']} s = "
              f"{big['changes'] / big['seconds']:,.0f} changes/s, {big['batches']} batches, "
              f"peak RSS {big['peak_rss_mb']} MB, {cpu(big)}")
        if args.land:
            report_merge(run_child("merge", env))


def report_merge(merged: dict[str, float]) -> None:
    print(f"  merge of what landed: {merged['changes']} changes ({merged['batches']} batches) -> {merged['rows']} rows "
          f"in {merged['seconds']} s = {merged['changes'] / max(merged['seconds'], 0.001):,.0f} changes/s, "
          f"peak RSS {merged['peak_rss_mb']} MB, {cpu(merged)}")


def cpu(result: dict[str, float]) -> str:
    """CPU time of the whole child process (imports and setup included), steadier than wall time on a busy host."""
    return f"CPU {result['cpu_seconds']} s = {result['changes'] / max(result['cpu_seconds'], 0.001):,.0f} changes/CPU-s"


if __name__ == "__main__":
    main()
