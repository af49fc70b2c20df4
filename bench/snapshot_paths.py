"""Where a snapshot's read time goes: the read paths side by side, in one process, on one table.

    python -m bench.snapshot_paths --rows 2000000

Starts a throwaway PostgreSQL, generates `bench.orders` (bench/snapshot_vs_copy.py), reads it once to warm the
cache, then times each path `--repeat` times (best of) with its wall and CPU seconds (this process; the server's
CPU is not in it):

  1. `COPY ... TO STDOUT (FORMAT binary)` drained by psycopg2 into a sink that keeps nothing: the server's rate;
  2. the sync's path (`sources.postgres.copy_loader.copy_to_arrow`): CSV COPY parsed into exact Arrow types;
  3. the same, each table then written to one parquet file in the same thread, as dlt's extract does;
  4. the parquet writing alone, with pyarrow's defaults (what dlt uses) and without dictionary encoding;
  5. ADBC (`adbc-driver-postgresql`: binary COPY decoded to Arrow in C++), read alone and with parquet, when it is
     installed (it is not a dependency: `pip install adbc-driver-postgresql` into the venv to include it).

Issue 17 asks the whole process for 0.5x one binary COPY stream; this shows what the reading alone can reach.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from bench.snapshot_vs_copy import DDL, FILL
from local.postgres import LocalPostgres, execute
from sources.postgres.copy_loader import copy_to_arrow
from sources.postgres.type_mapping import plan_column


class NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(repeat: int, work: Callable[[], Any]) -> tuple[float, float]:
    """Best wall seconds of `repeat` runs, and the CPU seconds of that run."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), cpu_seconds()
        work()
        best = min(best, (time.perf_counter() - wall, cpu_seconds() - cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    options = parser.parse_args()
    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="bench-snapshot-paths-") as work:
        dsn = pg.url()
        execute(dsn, DDL, FILL.format(rows=options.rows), "VACUUM FREEZE bench.orders")
        engine = sa.create_engine(dsn)
        table = sa.Table("orders", sa.MetaData(), schema="bench", autoload_with=engine)
        engine.dispose()
        plans = [plan_column(column, None) for column in table.columns]
        select = "SELECT " + ", ".join(p.select_sql for p in plans) + " FROM bench.orders"
        out = Path(work) / "out.parquet"

        def binary_copy() -> None:
            conn = psycopg2.connect(dsn)
            conn.cursor().copy_expert(f"COPY ({select}) TO STDOUT WITH (FORMAT binary)", NullSink(), 1 << 20)
            conn.close()

        def csv_to_arrow() -> list[pa.Table]:
            return [t for t, _ in copy_to_arrow(psycopg2.connect(dsn), select, plans, 4 << 20)]

        def write(batches: Any, **options: Any) -> None:
            writer: pq.ParquetWriter | None = None
            for batch in batches:
                batch = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                writer = writer or pq.ParquetWriter(out, batch.schema, **options)
                writer.write_table(batch)
            if writer is not None:
                writer.close()

        binary_copy()  # a warm cache for every path
        tables = csv_to_arrow()
        results: list[tuple[str, float, float]] = [
            ("binary COPY, psycopg2, nothing kept", *timed(options.repeat, binary_copy)),
            ("CSV COPY -> Arrow (the sync's read)", *timed(options.repeat, csv_to_arrow)),
            ("CSV COPY -> Arrow -> parquet", *timed(options.repeat, lambda: write(
                t for t, _ in copy_to_arrow(psycopg2.connect(dsn), select, plans, 4 << 20)))),
            ("parquet alone, pyarrow defaults", *timed(options.repeat, lambda: write(tables))),
            ("parquet alone, no dictionary", *timed(options.repeat, lambda: write(tables, use_dictionary=False))),
        ]
        try:
            import adbc_driver_postgresql.dbapi as adbc
        except ImportError:
            adbc = None
        if adbc is not None:
            def adbc_read(then: Callable[[Any], None]) -> None:
                with adbc.connect(dsn) as conn, conn.cursor() as cur:
                    cur.execute(select)
                    then(cur.fetch_record_batch())

            results += [("ADBC -> Arrow", *timed(options.repeat, lambda: adbc_read(lambda r: r.read_all()))),
                        ("ADBC -> Arrow -> parquet", *timed(options.repeat, lambda: adbc_read(write)))]
        base = results[0][1]
        print(f"{options.rows:,} rows of bench.orders; best of {options.repeat}; CPU = this process only; "
              f"{os.cpu_count()} cores; ADBC {'included' if adbc else 'not installed'}")
        print("| path | seconds | x binary COPY | rows/s | CPU s |\n|---|---|---|---|---|")
        for name, wall, cpu in results:
            print(f"| {name} | {wall:.2f} | {base / wall:.2f} | {options.rows / wall:,.0f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
