"""`aurora-sync setup`: prepare the source for CDC and copy the tables once.

Checks the logical-replication prerequisites (naming each missing one), creates or syncs the
publication, creates the slot with an exported snapshot and copies every table under it. Safe to rerun:
with the slot in place it only adds tables that are not replicated yet. Holds the pipeline lock so it
never races a running sync.
"""

from __future__ import annotations

import argparse
import logging
import time

from pipelines import cdc

from .. import logs
from ..exit_codes import ExitCode
from ..lock import pipeline_lock
from ..settings import load_settings
from .run import PIPELINES, load_pipeline_module, report_outcome, source_dsn


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--check", action="store_true", help="only check the prerequisites; change nothing")
    parser.add_argument("--resnapshot", action="store_true",
                        help="drop and recreate the slot, then copy every table again (after a lost slot)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline, mode="cdc")
    module = load_pipeline_module(args.pipeline)
    started = time.monotonic()
    if args.check:
        report = cdc.setup(module.make_pipeline(), check_only=True)
        for problem in report.problems:
            logs.event(problem, logging.ERROR, phase="setup", outcome="missing")
        if report.problems:
            return ExitCode.CONFIG_ERROR
        logs.event("logical replication prerequisites are met", phase="setup", slot=report.slot,
                   publication=report.publication, outcome="succeeded")
        return ExitCode.SUCCESS
    settings = load_settings()
    with pipeline_lock(source_dsn(), args.pipeline):
        report = cdc.setup(module.make_pipeline(), resnapshot=args.resnapshot,
                           dead_letter_url=settings.dead_letter_url)  # where `run` writes them
    for table, rows in sorted(report.snapshots.items()):
        logs.event("table copied", phase="setup", table=table, rows=rows)
    report_outcome(args.pipeline, settings, report.failed_tables, report.dead_lettered)
    logs.event("setup succeeded", phase="setup", slot=report.slot, publication=report.publication,
               slot_created=report.slot_created, start_lsn=report.start_lsn,
               publication_added=report.publication_added, publication_removed=report.publication_removed,
               duration_s=round(time.monotonic() - started, 3), outcome="succeeded")
    return ExitCode.SUCCESS
