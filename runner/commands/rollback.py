"""`aurora-sync rollback --table schema.table --at <timestamp>`: undo a bad load in Snowflake.

Prints (or with --execute runs) the Time Travel statements that clone the table as it was at
`--at` and swap it in, keeping the bad version as `<table>__bad_<stamp>` for inspection. Afterwards
run `aurora-sync resync --table ...` to bring the table forward from the source again.
"""

from __future__ import annotations

import argparse
import re
import time

from ..errors import RunnerError
from ..exit_codes import ExitCode
from .run import PIPELINES, load_pipeline_module


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--table", required=True, metavar="SCHEMA.TABLE")
    parser.add_argument("--at", required=True, help="timestamp to return to, e.g. 2026-11-27T09:00:00Z")
    parser.add_argument("--execute", action="store_true", help="run the statements (default: print them)")
    parser.set_defaults(func=main)


def rollback_sql(database_dataset: str, table: str, at: str, stamp: str) -> list[str]:
    if not re.fullmatch(r"[0-9T:\-\.Z+ ]+", at):
        raise RunnerError(f"--at {at!r} is not a timestamp like 2026-11-27T09:00:00Z", ExitCode.CONFIG_ERROR)
    target = f"{database_dataset}.{table}"
    restored = f"{database_dataset}.{table}__restored_{stamp}"
    return [
        f"CREATE TABLE {restored} CLONE {target} AT (TIMESTAMP => '{at}'::TIMESTAMP_TZ)",
        f"ALTER TABLE {target} SWAP WITH {restored}",
        f"ALTER TABLE {restored} RENAME TO {database_dataset}.{table}__bad_{stamp}",
    ]


def main(args: argparse.Namespace) -> ExitCode:
    pipeline = load_pipeline_module(args.pipeline).make_pipeline()
    table = args.table.replace(".", "__", 1).upper()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    if pipeline.destination is None or pipeline.destination.destination_name != "snowflake":
        raise RunnerError("rollback uses Snowflake Time Travel; this pipeline's destination is "
                          f"{pipeline.destination.destination_name if pipeline.destination else None}",
                          ExitCode.CONFIG_ERROR)
    with pipeline.sql_client() as client:
        dataset = client.fully_qualified_dataset_name()
        statements = rollback_sql(dataset, table, args.at, stamp)
        if args.execute:
            for statement in statements:
                client.execute_sql(statement)
    for statement in statements:
        print(statement + ";")
    print(f"-- then: aurora-sync resync --pipeline {args.pipeline} --table {args.table}")
    return ExitCode.SUCCESS
