"""`aurora-sync run`: one sync of a pipeline."""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

from dlt.common.pipeline import LoadInfo

from .. import logs
from ..errors import RunnerError
from ..exit_codes import ExitCode

PIPELINES = {"customers_orders": "pipelines.customers_orders"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run one sync of a pipeline")
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--mode", default="incremental", choices=["incremental", "snapshot"],
                        help="incremental: merge rows changed since the cursor; snapshot: re-read and replace")
    parser.add_argument("--tables", nargs="+", metavar="SCHEMA.TABLE", help="only these tables (patterns allowed)")
    parser.add_argument("--full-refresh", action="store_true",
                        help="drop the tables' data and cursors in the destination, then reload them")
    parser.set_defaults(func=main)


def load_pipeline_module(name: str) -> Any:
    try:
        return importlib.import_module(PIPELINES[name])
    except KeyError:
        raise RunnerError(f"Unknown pipeline {name!r}; known: {', '.join(PIPELINES)}", ExitCode.CONFIG_ERROR) from None


def summarize(info: LoadInfo) -> dict[str, Any]:
    """Rows per table from dlt's own trace metrics."""
    rows: dict[str, int] = {}
    trace = info.pipeline.last_trace
    if trace and trace.last_normalize_info:
        rows = dict(trace.last_normalize_info.row_counts)
    return {t: n for t, n in rows.items() if not t.startswith("_dlt")}


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline, mode=args.mode)
    module = load_pipeline_module(args.pipeline)
    started = time.monotonic()
    logs.event("run started", phase="run")
    info = module.run(mode=args.mode, tables=args.tables, full_refresh=args.full_refresh)
    info.raise_on_failed_jobs()
    duration = round(time.monotonic() - started, 3)
    rows = summarize(info)
    for table, count in sorted(rows.items()):
        logs.event("table loaded", table=table, phase="load", rows=count)
    logs.event("run succeeded", phase="run", rows=sum(rows.values()), duration_s=duration, outcome="succeeded")
    return ExitCode.SUCCESS
