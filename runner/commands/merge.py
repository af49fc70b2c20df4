"""`aurora-sync merge`: apply the CDC batches that landed in S3 to the warehouse (`pipelines.merge`).

It takes its own lock (`<pipeline>:merge`), not the follower's, so it runs beside `run --mode cdc --follow`;
ECS runs it on a schedule every `merge_interval_seconds` (terraform: `cdc_follow.merge_interval_minutes`).
`--follow` merges in a loop at that interval until SIGTERM, for a laptop or a single long-running task.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from pipelines.merge import MergeSummary, merge_landed
from sources.replication import replication_settings

from .. import history, logs, metrics, notify
from ..errors import RunnerError, classify
from ..exit_codes import ExitCode
from ..lock import pipeline_lock
from ..retry import with_retries
from ..settings import RunnerSettings, load_settings
from .run import PIPELINES, load_pipeline_module, report_outcome, source_dsn

LOCK_SUFFIX = ":merge"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--follow", action="store_true",
                        help="merge every merge_interval_seconds until SIGTERM instead of once")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline, mode="merge")
    settings = load_settings()
    interval = replication_settings().merge_interval_seconds  # type: ignore[call-arg]
    if interval <= 0:
        raise RunnerError("`sources.postgres.replication.merge_interval_seconds` is 0: CDC loads every batch "
                          "itself and nothing lands to merge. Set it above 0 (e.g. 300) to land and merge.",
                          ExitCode.CONFIG_ERROR)
    module = load_pipeline_module(args.pipeline)
    if args.follow:
        # dlt would take SIGTERM for itself during a cycle and swallow it for ours: the loop would never end.
        # Our handler lets the cycle in flight finish (it is one package) and then stops.
        os.environ["RUNTIME__INTERCEPT_SIGNALS"] = "false"
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if args.follow else None
    try:
        while True:
            code = _cycle(args, settings, module)
            if not args.follow or stop.wait(interval):
                return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _cycle(args: argparse.Namespace, settings: RunnerSettings, module: Any) -> ExitCode:
    def attempt() -> MergeSummary:
        with pipeline_lock(source_dsn(), args.pipeline + LOCK_SUFFIX):
            pipeline = module.make_pipeline()
            summary = merge_landed(pipeline)
            if summary.batches or summary.failed_tables:  # an idle cycle costs the warehouse nothing more
                history.record(pipeline, {"pipeline": args.pipeline, "mode": "merge", "outcome":
                                          "tables_failed" if summary.failed_tables else "succeeded",
                                          "exit_code": 1 if summary.failed_tables else 0, "rows": summary.rows,
                                          "failed_tables": summary.failed_tables, "duration_s": summary.duration})
            return summary

    try:
        summary = with_retries(settings, attempt)
    except Exception as exc:
        code, message = classify(exc)
        if code != ExitCode.LOCK_HELD:
            metrics.emit(args.pipeline, {"RunFailures": 1}, namespace=settings.metrics_namespace)
            notify.failure(settings, args.pipeline, message, int(code))
        if args.follow and code != ExitCode.LOCK_HELD:  # the next cycle retries: a warehouse outage passes
            logs.logger.error(message, extra={"fields": {"phase": "merge", "outcome": "failed"}})
            return code
        raise
    for table, count in sorted(summary.rows.items()):
        metrics.emit(args.pipeline, {"RowsLoaded": count}, table=table, namespace=settings.metrics_namespace)
    metrics.emit(args.pipeline, {"MergeLagSeconds": summary.oldest_unmerged_age_s,
                                 "BatchesMerged": summary.batches, "MergeDurationSeconds": summary.duration},
                 namespace=settings.metrics_namespace)
    if args.follow and summary.failed_tables:
        for table in sorted(summary.failed_tables):
            metrics.emit(args.pipeline, {"TableFailures": 1}, table=table, namespace=settings.metrics_namespace)
        return ExitCode.FAILURE
    report_outcome(args.pipeline, settings, summary.failed_tables, 0)
    logs.event("merge succeeded", phase="merge", outcome="succeeded", **summary.as_fields())
    return ExitCode.SUCCESS
