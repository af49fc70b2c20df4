"""`aurora-sync resync --table schema.table`: re-snapshot one table, safely.

The snapshot replaces the destination table in one load (dlt `replace`), under the pipeline lock, so
it never interleaves with an incremental run of the same pipeline. The table's cursor is kept: rows
changed since then are merged again on the next run, which the primary-key merge makes harmless.
"""

from __future__ import annotations

import argparse

from .. import logs
from ..exit_codes import ExitCode
from ..lock import pipeline_lock
from ..retry import with_retries
from ..settings import load_settings
from .run import PIPELINES, load_pipeline_module, source_dsn


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--table", required=True, metavar="SCHEMA.TABLE")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline, mode="resync", table=args.table)
    settings = load_settings()
    module = load_pipeline_module(args.pipeline)

    def attempt() -> dict[str, int]:
        with pipeline_lock(source_dsn(), args.pipeline):
            result = module.run(mode="snapshot", tables=[args.table], dead_letter_url=settings.dead_letter_url)
            result.raise_on_failures()
            return dict(result.rows)

    rows = with_retries(settings, attempt)
    logs.event("resync done", phase="resync", rows=sum(rows.values()), outcome="succeeded")
    return ExitCode.SUCCESS
