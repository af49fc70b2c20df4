"""Follow-mode latency: from a source COMMIT to the row being visible in DuckDB.

    python -m bench.cdc_latency --seconds 60 --interval 0.2 --flush 5

Starts a throwaway PostgreSQL, runs `setup`, then `run_cdc(follow=True)` in a thread while a writer
commits one row every `--interval` seconds and a reader polls DuckDB (every 10 ms, in the same process,
so it sees each load as soon as it commits). Latency = first poll that sees the row - the writer's
COMMIT returning. Reports p50/p95/max; expected about flush interval + load time at worst.

    python -m bench.cdc_latency --land

With `--land` the batches land in a bucket folder (`merge_interval_seconds` > 0, `pipelines.landing`) and the
reader polls the landing area instead (every 50 ms): a row counts as landed once its load is complete there, which
is when the follower confirms it. The flush interval defaults to the landing default then (2 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dlt
import duckdb
import psycopg2

from local.postgres import LocalPostgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writer writes")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between commits")
    parser.add_argument("--flush", type=float, default=None,
                        help="max_batch_seconds (the flush interval); default: the product's (2 s landing, 5 s direct)")
    parser.add_argument("--land", action="store_true", help="land in a bucket folder and time commit -> landed")
    args = parser.parse_args()

    from pipelines.cdc import run_cdc, setup

    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="bench-cdc-latency-") as tmp:
        dsn = pg.url()
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        conn.cursor().execute("CREATE SCHEMA bench; CREATE TABLE bench.events "
                              "(id bigint PRIMARY KEY, payload text, created timestamptz DEFAULT now())")
        duck_path = f"{tmp}/latency.duckdb"
        os.environ.update({
            "SOURCES__POSTGRES__CREDENTIALS": dsn, "SOURCES__POSTGRES__SCHEMAS": '["bench"]',
            "DESTINATION__DUCKDB__CREDENTIALS": duck_path, "DLT_DATA_DIR": f"{tmp}/dlt",
            "RUNTIME__LOG_LEVEL": "ERROR",
        })
        if args.flush:
            os.environ["SOURCES__POSTGRES__REPLICATION__MAX_BATCH_SECONDS"] = str(args.flush)
        if args.land:
            os.environ["SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS"] = "300"
            os.environ["DESTINATION__FILESYSTEM__BUCKET_URL"] = Path(tmp, "bucket").as_uri()
        from sources.replication import replication_settings

        flush = replication_settings().max_batch_seconds
        pipeline = dlt.pipeline(pipeline_name="bench_latency", destination="duckdb", dataset_name="events_mirror",
                                pipelines_dir=f"{tmp}/pipelines", progress=None)
        setup(pipeline)

        stop = threading.Event()
        result: dict[str, object] = {}
        follower = threading.Thread(target=lambda: result.update(summary=run_cdc(pipeline, follow=True, stop=stop)))
        follower.start()
        time.sleep(1.0)

        committed: dict[int, float] = {}
        visible: dict[int, float] = {}
        writing = threading.Event()
        writing.set()

        def poll_landing() -> None:
            from pipelines.landing_area import LandingArea

            area, done = LandingArea(pipeline), set()
            while writing.is_set() or len(visible) < len(committed):
                for entry in area.index():
                    if entry.load_id in done:
                        continue
                    done.add(entry.load_id)
                    op = landed_tables(area, entry)
                    now = time.monotonic()
                    for table in (op or []):
                        for i in table.column("id").to_pylist():
                            visible.setdefault(int(i), now)
                time.sleep(0.05)

        def poll() -> None:
            reader = duckdb.connect(duck_path)
            seen = 0
            while writing.is_set() or seen < len(committed):
                try:
                    top = reader.execute("SELECT coalesce(max(id), 0) FROM events_mirror.bench__events").fetchone()[0]
                except duckdb.Error:
                    top = seen  # table not created yet
                now = time.monotonic()
                for i in range(seen + 1, top + 1):
                    visible[i] = now
                seen = max(seen, top)
                time.sleep(0.01)
            reader.close()

        poller = threading.Thread(target=poll_landing if args.land else poll)
        poller.start()
        deadline = time.monotonic() + args.seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            conn.cursor().execute("INSERT INTO bench.events (id, payload) VALUES (%s, 'x')", (i,))
            committed[i] = time.monotonic()
            time.sleep(args.interval)
        writing.clear()
        poller.join(flush * 4 + 30)
        stop.set()
        follower.join(60)
        conn.close()

        latencies = sorted(visible[k] - committed[k] for k in committed if k in visible)
        missing = len(committed) - len(latencies)
        summary = result.get("summary")
        q = statistics.quantiles(latencies, n=100)
        target = "landed in the bucket" if args.land else "visible in DuckDB"
        print(f"{len(latencies)} commits, commit -> {target}, flush interval {flush} s: latency p50 {q[49]:.2f} s, "
              f"p95 {q[94]:.2f} s, max {latencies[-1]:.2f} s; not seen: {missing}; "
              f"batches: {getattr(summary, 'batches', '?')}")


def landed_tables(area: Any, entry: Any) -> list[Any]:
    """The events rows of one landing load (a load without events has none)."""
    ops = [op for op in area.ops(entry) if op.table.endswith("events")]
    for op in ops:
        area.attach_files(op)
    return [t for op in ops for t in area.read(op)]


if __name__ == "__main__":
    main()
