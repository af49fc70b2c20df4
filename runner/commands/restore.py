"""`aurora-sync restore`: rebuild one table as of a point in time from the S3 archive (see replica.restore)."""

from __future__ import annotations

import argparse
from typing import Any

import dlt

from replica.restore import RestoreError, parse_as_of, restore

from .. import logs
from ..errors import RunnerError
from ..exit_codes import ExitCode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "restore", help="rebuild a table as of a point in time from the archived files in S3",
        description="Rebuild <schema.table> from the pipeline's archive (the staged parquet files) as it was at "
                    "--as-of, into PostgreSQL or DuckDB. Reads only the bucket.",
    )
    parser.add_argument("--table", required=True, metavar="SCHEMA.TABLE", help="source table, e.g. orders.orders")
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
    dataset = dlt.config.get(f"{args.pipeline}.dataset_name") or args.pipeline
    logs.bind(pipeline=args.pipeline, table=args.table)
    logs.event("restore started", phase="restore", as_of=args.as_of or "latest")
    try:
        result = restore(
            args.table, args.to, str(bucket_url), str(dataset), as_of=parse_as_of(args.as_of),
            as_table=args.as_table, if_exists=args.if_exists, primary_key=args.primary_key,
        )
    except RestoreError as exc:
        raise RunnerError(str(exc), ExitCode.CONFIG_ERROR) from exc
    logs.event("restore succeeded", phase="restore", rows=result.rows, target=result.target,
               base_load_id=result.base_load_id, loads=len(result.load_ids), outcome="succeeded")
    return ExitCode.SUCCESS
