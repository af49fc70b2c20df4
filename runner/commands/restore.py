"""`aurora-sync restore`: rebuild one table, or every table, as of a point in time from the S3 archive
(see replica.restore and replica.restore_all)."""

from __future__ import annotations

import argparse
import time

import dlt

from replica.restore import RestoreError, parse_as_of, restore
from replica.restore_all import TableOutcome, restore_all

from .. import logs
from ..errors import RunnerError
from ..exit_codes import ExitCode


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Rebuild <schema.table>, or with --all every archived table, from the pipeline's archive (the "
        "staged parquet files) as it was at --as-of, into PostgreSQL or DuckDB. Reads only the bucket: "
        "the disaster-recovery path when Aurora and Snowflake are gone (docs/operations.md)."
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", metavar="SCHEMA.TABLE", help="source table, e.g. orders.orders")
    which.add_argument("--all", action="store_true", help="every table of the archive (tables created after "
                                                          "--as-of are skipped and listed)")
    parser.add_argument("--as-of", metavar="TIME",
                        help="ISO-8601 time (naive = UTC) or unix seconds; default: the latest load")
    parser.add_argument("--to", required=True, metavar="URL",
                        help="postgresql://user@host:port/db or duckdb:///path/to/file.duckdb (password: PGPASSWORD)")
    parser.add_argument("--as-table", metavar="SCHEMA.TABLE", help="target table name (default: same as --table)")
    parser.add_argument("--if-exists", choices=["fail", "replace", "truncate"], default="fail",
                        help="when the target table exists: fail (default), drop and re-create, or empty and fill")
    parser.add_argument("--pipeline", default="customers_orders", help="pipeline whose archive to read")
    parser.add_argument("--bucket-url", help="default: [destination.filesystem] bucket_url from the dlt config")
    parser.add_argument("--primary-key", nargs="+", metavar="COLUMN",
                        help="only for archives without manifests: the table's primary key")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> ExitCode:
    bucket_url = args.bucket_url or dlt.config.get("destination.filesystem.bucket_url")
    if not bucket_url:
        raise RunnerError("No archive bucket: pass --bucket-url or set DESTINATION__FILESYSTEM__BUCKET_URL.",
                          ExitCode.CONFIG_ERROR)
    if args.all and (args.as_table or args.primary_key):
        raise RunnerError("--as-table and --primary-key name one table: they cannot be used with --all.",
                          ExitCode.CONFIG_ERROR)
    dataset = dlt.config.get(f"{args.pipeline}.dataset_name") or args.pipeline
    logs.bind(pipeline=args.pipeline, table=args.table)
    logs.event("restore started", phase="restore", as_of=args.as_of or "latest", all_tables=bool(args.all))
    started = time.monotonic()
    try:
        if args.all:
            return _restore_all(args, str(bucket_url), str(dataset), started)
        result = restore(
            args.table, args.to, str(bucket_url), str(dataset), as_of=parse_as_of(args.as_of),
            as_table=args.as_table, if_exists=args.if_exists, primary_key=args.primary_key,
        )
    except RestoreError as exc:
        raise RunnerError(str(exc), ExitCode.CONFIG_ERROR) from exc
    logs.event("restore succeeded", phase="restore", rows=result.rows, target=result.target,
               base_load_id=result.base_load_id, loads=len(result.load_ids), outcome="succeeded",
               duration_s=round(time.monotonic() - started, 3))
    return ExitCode.SUCCESS


def _restore_all(args: argparse.Namespace, bucket_url: str, dataset: str, started: float) -> ExitCode:
    def report(outcome: TableOutcome) -> None:
        logs.event("table restored" if outcome.rows is not None else "table skipped", phase="restore",
                   table=outcome.table, rows=outcome.rows, duration_s=round(outcome.seconds, 3), detail=outcome.note)

    outcomes = restore_all(args.to, bucket_url, dataset, as_of=parse_as_of(args.as_of), if_exists=args.if_exists,
                           on_table=report)
    restored = [o for o in outcomes if o.rows is not None]
    logs.event("restore succeeded", phase="restore", outcome="succeeded", tables=len(restored),
               skipped=[o.table for o in outcomes if o.rows is None], rows=sum(o.rows or 0 for o in restored),
               duration_s=round(time.monotonic() - started, 3))
    return ExitCode.SUCCESS
