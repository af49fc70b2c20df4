"""`aurora-sync verify`: is the replica complete and current? One table per line, exit 4 on drift.

The reconciliation itself is in `replica.verify`; this module parses options and prints the answer,
as a rich table for people or as JSON (`--json`) for alarms and scripts. Logs go to stderr, the answer
to stdout, so `--json` output can be piped as is.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.landing_area import rereads_area
from replica.repair import TableRepair, follows_the_wal, repair
from replica.verify import TableReport, VerifyOptions, VerifyReport, verify
from sources.postgres.chunking import snapshot_settings

from .. import history, logs, metrics
from ..exit_codes import ExitCode
from ..lock import pipeline_lock
from ..settings import load_settings
from .run import PIPELINES, load_pipeline_module, source_dsn

STATUS_STYLE = {"ok": "green", "drift": "bold red", "error": "bold yellow"}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    defaults = VerifyOptions()
    parser.description = (
        "Compare every replicated table in the source and the destination. Exit 0 when all match, "
        "4 when any drift is found, 1 when a table could not be verified."
    )
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--tables", nargs="+", metavar="SCHEMA.TABLE", help="only these tables (patterns allowed)")
    parser.add_argument("--checksum", action="store_true",
                        help="also compare a checksum of every row's key and values (reads every row on both sides)")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    parser.add_argument("--chunk-rows", type=positive_int, default=defaults.chunk_rows,
                        help=f"target rows per compared key range (default {defaults.chunk_rows})")
    parser.add_argument("--narrow-rows", type=positive_int, default=defaults.narrow_rows,
                        help=f"bisect drifting ranges down to this many rows, then list keys "
                             f"(default {defaults.narrow_rows})")
    parser.add_argument("--max-ranges", type=positive_int, default=defaults.max_ranges,
                        help=f"drifting ranges narrowed and reported per table (default {defaults.max_ranges})")
    parser.add_argument("--statement-timeout-ms", type=positive_int, default=defaults.statement_timeout_ms,
                        help=f"statement_timeout of each source query (default {defaults.statement_timeout_ms})")
    parser.add_argument("--repair", action="store_true",
                        help="re-read the drifting key ranges from the source and merge them (delete rows the source "
                             "no longer has), under the run lock; a table without one integer key is copied again "
                             "whole; CDC pipelines: the follower is asked to read the ranges' keys again; then "
                             "verify those tables again (the exit code is theirs)")
    parser.add_argument("--repair-wait-seconds", type=seconds, default=300.0, metavar="S",
                        help="with --repair on a CDC pipeline: wait up to S seconds for the follower to read the keys "
                             "again before verifying them (default 300; it looks every 30 s)")
    parser.add_argument("--rotation", type=positive_int, default=defaults.rotation, metavar="N",
                        help="with --checksum: compare the checksums of 1/N of each table's chunks (row counts: "
                             "all), a different slice each day, so N daily runs make a full pass (default 1: all)")
    parser.add_argument("--rotation-phase", type=int, default=None, metavar="K",
                        help="with --rotation: check slice K (0..N-1) instead of the day's")
    parser.add_argument("--settle-seconds", type=seconds, default=defaults.settle_seconds, metavar="S",
                        help="under live writes: wait S seconds, then check the drifting ranges again; those the sync "
                             "caught up on or is still writing are reported in flight, not as drift (set S above the "
                             "pipeline's lag: the merge interval plus a batch; default 0: no second look)")
    parser.set_defaults(func=main)


def render(report: VerifyReport, console: Console) -> None:
    table = Table(title=f"verify {report.pipeline} → {report.dataset}", title_justify="left")
    for name, justify in (("table", "left"), ("source rows", "right"), ("destination rows", "right"),
                          ("chunks", "right"), ("checksum", "center"), ("status", "left"), ("drift", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for t in report.tables:
        table.add_row(t.table, _n(t.source_rows), _n(t.destination_rows), str(t.chunks),
                      {"ok": "ok", "mismatch": "[red]mismatch[/]"}.get(t.checksum, "—"),
                      f"[{STATUS_STYLE[t.status]}]{t.status}[/]", _drift_text(t))
    console.print(table)
    summary = report.as_json()["summary"]
    console.print(f"{summary['in_sync']}/{summary['tables']} table(s) in sync, {summary['drift']} with drift, "
                  f"{summary['errors']} not verified" + ("" if report.checksum else " (counts only; add --checksum "
                                                         "to compare values)"))


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _drift_text(t: TableReport) -> str:
    lines = [t.error] if t.error else []
    lines += t.problems
    if t.missing_columns:
        lines.append(f"columns missing in destination: {', '.join(t.missing_columns)}")
    lines += [f"{t.key_column} {r.describe()}" for r in t.ranges]
    if t.in_flight:
        lines.append(f"{len(t.in_flight)} range(s) in flight: caught up or still being written when checked again")
    if t.drifting_chunks > len(t.ranges):
        lines.append(f"{t.drifting_chunks} drifting chunk(s) in total")
    return "\n".join(lines)


def emit_metrics(pipeline: str, report: VerifyReport, namespace: str) -> None:
    """The scheduled verify's only output CloudWatch sees (terraform/modules/monitoring): per table (the `Table`
    dimension is the destination table, as for the run metrics) `DriftRows` and `DriftRanges`; per pipeline their
    sums, which the drift alarm watches, and `VerifySucceeded`, 1 only when every table could be verified, whose
    absence the "verify did not run" alarm watches. A table that could not be verified reports no drift: it is
    not known."""
    verified = [t for t in report.tables if t.status != "error"]
    for t in verified:
        metrics.emit(pipeline, {"DriftRows": t.drift_rows, "DriftRanges": len(t.ranges)},
                     table=t.destination_table, namespace=namespace)
    metrics.emit(pipeline, {
        "DriftRows": sum(t.drift_rows for t in verified), "DriftRanges": sum(len(t.ranges) for t in verified),
        "VerifySucceeded": int(len(verified) == len(report.tables)),
    }, namespace=namespace)


def repaired(args: argparse.Namespace, module: Any, pipeline: Any, report: VerifyReport, options: VerifyOptions,
             logged: Any) -> tuple[VerifyReport, list[TableRepair]]:
    """`--repair`: repair the drifting tables, then verify them again; the report after. Under the run lock, except
    for a CDC pipeline, whose follower holds it and reads the keys itself: its requests are waited for instead."""
    cdc = follows_the_wal(pipeline)
    with contextlib.nullcontext() if cdc else pipeline_lock(source_dsn(), args.pipeline):
        repairs = repair(pipeline, module, report, max_ranges=args.max_ranges,
                         dead_letter_url=load_settings().dead_letter_url)
    requested = {r.request: r for r in repairs if r.action == "requested"}
    area = rereads_area(pipeline) if requested else None
    if area is not None:
        logs.event("waiting for the follower to read the keys again", phase="verify",
                   tables=[r.table for r in requested.values()], timeout_s=args.repair_wait_seconds)
        for name in area.wait_for_rereads(set(requested), args.repair_wait_seconds):
            r = requested[name]
            r.action = "skipped"
            r.reason += (f"; the follower has not read them within {args.repair_wait_seconds:g} s (is it running?): "
                         "the request stays, the follower reads it when it runs, and the next verify shows it")
    for r in repairs:
        logs.event("table repaired", phase="verify", **r.as_json())
    fixed = [r.table for r in repairs if r.action != "skipped"]
    if not fixed:
        return report, repairs
    # a CDC repair is in the warehouse once the follower loaded it (direct) or a merge applied it (landing):
    # --settle-seconds covers that merge
    again = verify(pipeline, fixed, dataclasses.replace(options, settle_seconds=options.settle_seconds if cdc else 0),
                   on_table=logged)
    after = {t.table: t for t in again.tables}
    return VerifyReport(report.pipeline, report.dataset, report.checksum,
                        [after.get(t.table, t) for t in report.tables]), repairs


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline)
    module = load_pipeline_module(args.pipeline)
    pipeline = module.make_pipeline()
    options = VerifyOptions(checksum=args.checksum, chunk_rows=args.chunk_rows, narrow_rows=args.narrow_rows,
                            max_ranges=args.max_ranges, statement_timeout_ms=args.statement_timeout_ms,
                            settle_seconds=args.settle_seconds, rotation=args.rotation, phase=args.rotation_phase,
                            pacing=snapshot_settings())  # type: ignore[call-arg]
    logs.event("verify started", phase="verify", checksum=args.checksum)

    def logged(t: TableReport) -> None:
        logs.event("table verified", phase="verify", table=t.table, status=t.status, source_rows=t.source_rows,
                   destination_rows=t.destination_rows, checksum=t.checksum, drift_ranges=len(t.ranges),
                   in_flight_ranges=len(t.in_flight), duration_s=t.duration_s)

    started, clock = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()

    def settling(seconds: float, ranges: int) -> None:
        logs.event("verify settling", phase="verify", seconds=seconds, drifting_ranges=ranges)

    report = verify(pipeline, args.tables, options, on_table=logged, on_settle=settling)
    emit_metrics(args.pipeline, report, load_settings().metrics_namespace)  # what was found, repaired or not
    repairs: list[TableRepair] = []
    if args.repair and report.outcome == "drift":
        report, repairs = repaired(args, module, pipeline, report, options, logged)
    if args.json:
        print(json.dumps({**report.as_json(), **({"repairs": [r.as_json() for r in repairs]} if args.repair else {})},
                         indent=2, ensure_ascii=False, default=str))
    else:
        console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
        render(report, console)
        for r in repairs:
            console.print(f"repaired {r.table}: {r.action}" + (f" ({r.reason})" if r.reason else "") +
                          f", {r.rows_read} row(s) read, {r.rows_deleted} deleted")
    code = {"ok": ExitCode.SUCCESS, "drift": ExitCode.DRIFT_FOUND, "error": ExitCode.FAILURE}[report.outcome]
    summary = report.as_json()["summary"]
    outcome = {0: "in_sync", 4: "drift"}.get(int(code), "failed")
    logs.event("verify finished", phase="verify", outcome=outcome, exit_code=int(code), **summary)
    history.record(pipeline, {"pipeline": args.pipeline, "mode": "verify", "outcome": outcome, "exit_code": int(code),
                              "started_at": started, "duration_s": round(time.monotonic() - clock, 3),
                              "checksum": args.checksum, "verified": verified_tables(report),
                              **({"repairs": [r.as_json() for r in repairs]} if repairs else {})})
    return code


def verified_tables(report: VerifyReport) -> dict[str, dict[str, Any]]:
    """What `status` shows of the last verify, per table: in the run history, since the task's disk is gone."""
    return {t.table: {"status": t.status, "drift_rows": t.drift_rows, "drift_ranges": len(t.ranges),
                      "in_flight_ranges": len(t.in_flight),
                      "source_rows": t.source_rows, "destination_rows": t.destination_rows, "checksum": t.checksum,
                      **({"error": t.error[:300]} if t.error else {})}
            for t in report.tables}
