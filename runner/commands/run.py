"""`aurora-sync run`: one sync of a pipeline, under the pipeline lock, with retries and metrics."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from pipelines import registry
from pipelines.isolation import IsolatedRun, TableFailure, TablesFailed
from pipelines.progress import crash_at
from sources.postgres import dead_letters
from sources.postgres.errors import SourceConfigError
from sources.postgres.session import writer_dsn

from .. import history, logs, metrics, notify
from ..errors import RunnerError, classify
from ..exit_codes import ExitCode
from ..lock import pipeline_lock
from ..retry import with_retries
from ..settings import RunnerSettings, load_settings


class ConfiguredNames:
    """The `--pipeline` choices, read when used: every `[pipelines.<name>]` entry (`pipelines.registry`)."""

    def __contains__(self, name: object) -> bool:
        return name in registry.pipeline_names()

    def __iter__(self) -> Iterator[str]:
        return iter(registry.pipeline_names())


PIPELINES = ConfiguredNames()


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--mode", default=None, choices=list(registry.MODES),
                        help="incremental: merge rows changed since the cursor; snapshot: re-read and replace; "
                             "cdc: apply the WAL changes (inserts, updates, deletes) up to now (default: the "
                             "pipeline's `mode`, else incremental)")
    parser.add_argument("--follow", action="store_true",
                        help="with --mode cdc: keep streaming until SIGTERM, flushing every few seconds")
    parser.add_argument("--tables", nargs="+", metavar="SCHEMA.TABLE",
                        help="only these tables (patterns allowed); with --mode cdc: re-copy them first")
    parser.add_argument("--full-refresh", action="store_true",
                        help="drop the tables' data and cursors in the destination, then reload them")
    parser.set_defaults(func=main)


def load_pipeline_module(name: str) -> Any:
    """The pipeline's module (`make_pipeline`, `run`, `help_snapshots`): its own for `customers_orders`, the same code
    under another name for any other `[pipelines.<name>]` entry."""
    if name == registry.BUILT_IN:
        return importlib.import_module(f"pipelines.{registry.BUILT_IN}")
    if name in PIPELINES:
        return registry.ConfiguredPipeline(name)
    raise RunnerError(f"Unknown pipeline {name!r}; known: {', '.join(PIPELINES)} (add a [pipelines.{name}] section to "
                      ".dlt/config.toml)", ExitCode.CONFIG_ERROR)


def source_dsn() -> str:
    """The writer DSN (`sources.postgres.session.writer_dsn`); missing, it is a configuration error."""
    try:
        return writer_dsn()
    except SourceConfigError as exc:
        raise RunnerError(str(exc), ExitCode.CONFIG_ERROR) from None


def main(args: argparse.Namespace) -> ExitCode:
    if args.mode is None:
        try:
            args.mode = registry.default_mode(args.pipeline)
        except SourceConfigError as exc:
            raise RunnerError(str(exc), ExitCode.CONFIG_ERROR) from None
    logs.bind(pipeline=args.pipeline, mode=args.mode)
    settings = load_settings()
    module = load_pipeline_module(args.pipeline)
    started = time.monotonic()
    logs.event("run started", phase="run")
    if args.follow and args.mode != "cdc":
        raise RunnerError("--follow needs --mode cdc", ExitCode.CONFIG_ERROR)
    try:
        code = (_cdc_run if args.mode == "cdc" else _locked_run)(args, settings, module, started)
    except Exception as exc:
        code, message = classify(exc)
        if code != ExitCode.LOCK_HELD:
            metrics.emit(args.pipeline, {"RunFailures": 1}, namespace=settings.metrics_namespace)
            notify.failure(settings, args.pipeline, message, int(code))
        raise
    return code


def _liveness(pipeline: str, settings: RunnerSettings) -> Any:
    """Follow mode never ends a run, so it reports success (and lag) once a minute while it makes progress:
    the staleness alarm then means 'the follower is stuck or gone', as it does for scheduled runs."""
    last = {"at": 0.0, "rows": 0, "landed": 0}

    def report(summary: Any) -> None:
        if time.monotonic() - last["at"] < settings.liveness_seconds:
            return
        rows = summary.total_changes
        values = {"RunSucceeded": 1, "LagSeconds": summary.lag_seconds, "RowsLoaded": rows - last["rows"]}
        landed = summary.landed_batches - last["landed"]
        if summary.lands and landed > 0:  # the worst batch since the last report
            values["LandingLagSeconds"] = max(summary.landing_lags[-landed:])
        metrics.emit(pipeline, values, namespace=settings.metrics_namespace)
        last.update(at=time.monotonic(), rows=rows, landed=summary.landed_batches)

    return report


def _failed_message(failed: dict[str, dict[str, str]]) -> str:
    return str(TablesFailed({t: TableFailure(t, f.get("step", ""), f.get("error", "")) for t, f in failed.items()}))


def report_outcome(pipeline: str, settings: RunnerSettings, failed: dict[str, dict[str, str]], dead: int) -> None:
    """Per-table failure metrics, then the exit decision shared by every mode and by `setup`: set-aside tables
    fail the run (exit 1, after everything else was loaded), and dead letters do under `dead_letter_policy=fail`."""
    for table, failure in sorted(failed.items()):
        logs.event(f"table set aside: {failure.get('error')}", logging.ERROR, table=table, phase=failure.get("step"))
        metrics.emit(pipeline, {"TableFailures": 1}, table=table, namespace=settings.metrics_namespace)
    if failed:
        raise RunnerError(_failed_message(failed))
    if dead and settings.dead_letter_policy == "fail":
        raise RunnerError(f"{dead} row(s) could not be converted to their configured data_type and were "
                          f"dead-lettered to {settings.dead_letter_url}. The other rows were loaded. Inspect them with "
                          "`aurora-sync dlq list`, fix the cause, then `aurora-sync dlq replay`.")
    if dead:
        logs.event(f"{dead} row(s) dead-lettered (policy: continue)", logging.WARNING, dead_letters=dead)


def _changes(summary: Any) -> dict[str, int]:
    return {t: c.inserts + c.updates + c.deletes + c.truncates for t, c in summary.changes.items()}


def _cdc_run(args: argparse.Namespace, settings: RunnerSettings, module: Any, started: float) -> ExitCode:
    """Drain the slot up to now, or follow it until SIGTERM (ECS stop) and shut down after a clean flush."""
    from pipelines import cdc

    if args.follow:
        # dlt would defer SIGTERM to the middle of a load and then abort it; we want the batch in flight
        # to finish and be confirmed, so our handler only asks the stream to stop.
        os.environ["RUNTIME__INTERCEPT_SIGNALS"] = "false"
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if args.follow else None
    record = {"pipeline": args.pipeline, "mode": "cdc-follow" if args.follow else "cdc",
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        def attempt() -> Any:
            with pipeline_lock(source_dsn(), args.pipeline):
                pipeline = module.make_pipeline()
                try:
                    summary = cdc.run_cdc(pipeline, follow=args.follow, tables=args.tables, stop=stop,
                                          dead_letter_url=settings.dead_letter_url,
                                          on_progress=_liveness(args.pipeline, settings) if args.follow else None)
                    if args.follow:
                        # SIGTERM: also load what was committed before the signal but not streamed yet, so
                        # a stopped follower leaves the destination current (a drain ends at the WAL end)
                        final = cdc.run_cdc(pipeline, dead_letter_url=settings.dead_letter_url)
                        for table, counts in final.changes.items():
                            merged = summary.table(table)
                            for kind in ("inserts", "updates", "deletes", "truncates"):
                                setattr(merged, kind, getattr(merged, kind) + getattr(counts, kind))
                        summary.batches += final.batches
                        summary.end_lsn = final.end_lsn or summary.end_lsn
                        summary.retained_wal_bytes = final.retained_wal_bytes
                        summary.dead_lettered += final.dead_lettered
                        summary.failed_tables.update(final.failed_tables)
                    # recorded under the lock, like every other write to the pipeline's state
                    failed = dict(summary.failed_tables)
                    outcome = "tables_failed" if failed else "dead_letters" if summary.dead_lettered else "succeeded"
                    history.record(cdc.history_pipeline(pipeline), {
                                              **record, "outcome": outcome, "exit_code": 1 if failed else 0,
                                              "error": _failed_message(failed) if failed else None,
                                              "rows": _changes(summary), "failed_tables": failed,
                                              "duration_s": round(time.monotonic() - started, 3)})
                    return summary
                except Exception as exc:
                    code, message = classify(exc)
                    history.record(cdc.history_pipeline(pipeline), {
                                              **record, "outcome": "failed", "exit_code": int(code),
                                              "error": message, "rows": {},
                                              "duration_s": round(time.monotonic() - started, 3)})
                    raise

        summary = with_retries(settings, attempt)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    changes = _changes(summary)
    for table, count in sorted(changes.items()):
        metrics.emit(args.pipeline, {"RowsExtracted": count, "RowsLoaded": count}, table=table,
                     namespace=settings.metrics_namespace)

    metrics.emit(args.pipeline, {
        "RunDurationSeconds": round(time.monotonic() - started, 3), "LagSeconds": summary.lag_seconds,
        "SlotRetainedWalBytes": summary.retained_wal_bytes, "DeadLetters": summary.dead_lettered,
        "RowsLoaded": sum(changes.values()),
        **({"LandingLagSeconds": summary.landing_lag_p95} if summary.landing_lag_p95 is not None else {})},
        namespace=settings.metrics_namespace)
    report_outcome(args.pipeline, settings, summary.failed_tables, summary.dead_lettered)
    metrics.emit(args.pipeline, {"RunSucceeded": 1}, namespace=settings.metrics_namespace)
    logs.event("run succeeded", phase="run", rows=sum(changes.values()), outcome="succeeded",
               **{k: v for k, v in summary.as_fields().items() if k in (
                   "batches", "start_lsn", "end_lsn", "retained_wal_bytes", "lag_seconds", "stopped_by")})
    return ExitCode.SUCCESS


def _locked_run(args: argparse.Namespace, settings: RunnerSettings, module: Any, started: float) -> ExitCode:
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"pipeline": args.pipeline, "mode": args.mode, "started_at": started_at}

    def attempt() -> IsolatedRun:
        with pipeline_lock(source_dsn(), args.pipeline):
            dead_letters.DEAD_LETTERS_THIS_RUN.clear()
            try:
                result: IsolatedRun = module.run(mode=args.mode, tables=args.tables, full_refresh=args.full_refresh,
                                                 dead_letter_url=settings.dead_letter_url)
                crash_at("after_load")
            except Exception as exc:
                code, message = classify(exc)
                history.record(module.make_pipeline(), {**record, "outcome": "failed", "exit_code": int(code),
                                                        "error": message, "rows": {},
                                                        "duration_s": round(time.monotonic() - started, 3)})
                raise
            dead = sum(dead_letters.DEAD_LETTERS_THIS_RUN.values())
            failed = {t: f.as_dict() for t, f in result.failures.items()}
            outcome = "tables_failed" if failed else "dead_letters" if dead else "succeeded"
            history.record(result.pipeline, {
                **record, "outcome": outcome, "exit_code": int(ExitCode.FAILURE) if failed else 0,
                "error": str(TablesFailed(result.failures)) if failed else None, "rows": result.rows,
                "failed_tables": failed, "duration_s": round(time.monotonic() - started, 3)})
            return result

    result = with_retries(settings, attempt)
    rows = result.rows
    duration = round(time.monotonic() - started, 3)
    for table, count in sorted(rows.items()):
        logs.event("table loaded", table=table, phase="load", rows=count)
        metrics.emit(args.pipeline, {"RowsExtracted": count, "RowsLoaded": count}, table=table,
                     namespace=settings.metrics_namespace)
    for table in result.recovered:
        logs.event("table loaded again after failing before", table=table, phase="load")
    dead = sum(dead_letters.DEAD_LETTERS_THIS_RUN.values())
    metrics.emit(args.pipeline, {"RunDurationSeconds": duration, "LagSeconds": duration, "DeadLetters": dead,
                                 "RowsLoaded": sum(rows.values())}, namespace=settings.metrics_namespace)
    report_outcome(args.pipeline, settings, {t: f.as_dict() for t, f in result.failures.items()}, dead)
    metrics.emit(args.pipeline, {"RunSucceeded": 1}, namespace=settings.metrics_namespace)
    logs.event("run succeeded", phase="run", rows=sum(rows.values()), duration_s=duration, outcome="succeeded")
    return ExitCode.SUCCESS
