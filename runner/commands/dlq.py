"""`aurora-sync dlq list|replay`: inspect and re-load rows that were dead-lettered."""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table

from sources.postgres import dead_letters

from .. import logs
from ..exit_codes import ExitCode
from ..settings import load_settings
from .run import PIPELINES, load_pipeline_module


def register(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dlq_action", required=True)
    for action, help_text in (("list", "list dead-letter files and their rows"),
                              ("replay", "re-read the dead-lettered rows from the source and load them")):
        sub = actions.add_parser(action, help=help_text)
        sub.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
        sub.add_argument("--table", metavar="SCHEMA.TABLE", type=_table_argument,
                         help="only this source table, e.g. orders.orders (the destination name orders__orders "
                              "still works but is deprecated)")
        if action == "list":
            sub.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=main)


def _table_argument(value: str) -> str:
    if "." in value.strip(".") or "__" in value.strip("_"):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: name a table as schema.table, e.g. orders.orders")


def dead_letter_table(table: str | None) -> str | None:
    """`schema.table`, as every command takes it, to the name dead letters are filed under (`schema__table`, the
    destination table). The destination form itself is still accepted, with a deprecation warning."""
    if table is None or "." not in table:
        if table is not None:
            schema, _, name = table.partition("__")
            logs.event(f"dlq --table {table} is deprecated: use the source name, --table {schema}.{name}",
                       logging.WARNING, phase="dlq")
        return table
    schema, _, name = table.partition(".")
    return f"{schema}__{name}"


def main(args: argparse.Namespace) -> ExitCode:
    settings = load_settings()
    files = dead_letters.list_files(settings.dead_letter_url, args.pipeline, dead_letter_table(args.table))
    if args.dlq_action == "list":
        return _list(settings.dead_letter_url, files, args.json)
    return _replay(settings.dead_letter_url, args.pipeline, files)


def _list(url: str, files: list[dead_letters.DeadLetterFile], as_json: bool) -> ExitCode:
    if as_json:
        records = [{**r, "file": f.path} for f in files for r in dead_letters.read_records(url, f.path)]
        print(json.dumps({"files": len(files), "rows": len(records), "records": records}, default=str, indent=2))
        return ExitCode.SUCCESS
    table = Table(title=f"Dead letters in {url}")
    for column in ("table", "file", "rows", "first reason"):
        table.add_column(column)
    for f in files:
        first = next(dead_letters.read_records(url, f.path), {})
        table.add_row(f.table, f.path, str(f.rows), str(first.get("reason", ""))[:100])
    Console().print(table if files else "No dead letters.")
    return ExitCode.SUCCESS


def _replay(url: str, pipeline: str, files: list[dead_letters.DeadLetterFile]) -> ExitCode:
    """Re-read the dead-lettered keys from the source (their current values) and merge them."""
    if not files:
        logs.event("no dead letters to replay")
        return ExitCode.SUCCESS
    keys: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in files:
        for record in dead_letters.read_records(url, f.path):
            qualified = record["table"].replace("__", ".", 1)
            keys[qualified].append(record["source_key"])
    dead_letters.DEAD_LETTERS_THIS_RUN.clear()
    module = load_pipeline_module(pipeline)
    module.run(only_keys=dict(keys), dead_letter_url=url).raise_on_failures()
    still_failing = dead_letters.DEAD_LETTERS_THIS_RUN
    for f in files:
        if not still_failing.get(f.table):
            dead_letters.mark_replayed(url, pipeline, f.path)
    replayed = sum(len(v) for t, v in keys.items() if not still_failing.get(t.replace(".", "__", 1)))
    logs.event("dead letters replayed", rows=replayed, still_failing=sum(still_failing.values()))
    return ExitCode.FAILURE if still_failing else ExitCode.SUCCESS
