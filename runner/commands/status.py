"""`aurora-sync status`: last runs, pending or failed load packages, cursor positions and lag."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import dlt
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.pipeline.state_sync import load_pipeline_state_from_destination
from rich.console import Console
from rich.table import Table

from pipelines.cdc.health import unfinished_setup
from pipelines.isolation import FAILED_TABLES_KEY
from pipelines.landing_area import rereads_area
from sources.replication.lsn import format_lsn
from sources.replication.slot import connect, object_name, slot_health

from .. import history
from ..exit_codes import ExitCode
from .run import PIPELINES, load_pipeline_module, source_dsn


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=main)


def pipeline_state(pipeline: dlt.Pipeline) -> dict[str, Any]:
    """Local state when this machine ran the pipeline, else the state committed in the destination."""
    if pipeline.first_run is False or pipeline.state.get("_state_version", 0) > 0:
        local = dict(pipeline.state)
        if local.get("sources"):
            return local
    try:
        with pipeline.destination_client() as client:
            remote = load_pipeline_state_from_destination(pipeline.pipeline_name, client)  # type: ignore[arg-type]
    except DestinationUndefinedEntity:  # no state stored yet (a setup killed before its first load)
        return {}
    return dict(remote or {})


def set_aside(state: dict[str, Any]) -> dict[str, Any]:
    """Tables the last runs could not sync (each retried on its own by the next run), from the source state."""
    out: dict[str, Any] = {}
    for source in state.get("sources", {}).values():
        out.update(source.get(FAILED_TABLES_KEY) or {})
        out.update((source.get("cdc") or {}).get(FAILED_TABLES_KEY) or {})
    return out


def cursors(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    positions: dict[str, dict[str, Any]] = {}
    for source in state.get("sources", {}).values():
        for resource, resource_state in source.get("resources", {}).items():
            for cursor, inc in resource_state.get("incremental", {}).items():
                positions[resource] = {"cursor": cursor, "last_value": inc.get("last_value"),
                                       "late_commit_guard": resource_state.get("late_commit_guard")}
            for key in ("confirmed_lsn", "lsn"):
                if key in resource_state:
                    positions.setdefault(resource, {})[key] = resource_state[key]
        cdc = source.get("cdc") or {}
        if cdc.get("confirmed_lsn"):
            positions["_cdc"] = {"cursor": f"slot {cdc.get('slot')}", "confirmed_at": cdc.get("confirmed_at"),
                                 "confirmed_lsn": format_lsn(int(cdc["confirmed_lsn"]))}
    return positions


def cdc_state(state: dict[str, Any]) -> dict[str, Any]:
    return next((s["cdc"] for s in state.get("sources", {}).values() if s.get("cdc")), {})


def slot(pipeline_name: str, state: dict[str, Any]) -> dict[str, Any] | None:
    """The replication slot's retained WAL, read-only from the source (None when CDC is not set up), and
    `attention`: why a slot no run consumes needs someone (a setup killed after creating it)."""
    try:
        conn = connect(source_dsn(), statement_timeout_ms=10_000)
    except Exception as exc:
        return {"error": str(exc)}
    try:
        health = slot_health(conn, object_name(pipeline_name))
    finally:
        conn.close()
    if health is None:
        return None
    return {**health.as_fields(), "attention": unfinished_setup(health, cdc_state(state))}


def packages(pipeline: dlt.Pipeline) -> dict[str, Any]:
    pending = [*pipeline.list_extracted_load_packages(), *pipeline.list_normalized_load_packages()]
    failed = {load_id: [j.job_file_info.file_name() for j in pipeline.list_failed_jobs_in_package(load_id)]
              for load_id in pipeline.list_completed_load_packages()}
    return {"pending": pending, "failed_jobs": {k: v for k, v in failed.items() if v}}


def collect(pipeline_name: str) -> dict[str, Any]:
    module = load_pipeline_module(pipeline_name)
    pipeline: dlt.Pipeline = module.make_pipeline()
    runs = history.recent(pipeline)
    for run in runs:
        if isinstance(run.get("rows"), str):
            run["rows"] = json.loads(run["rows"])
    last_success = next((r for r in runs if r["outcome"] == "succeeded"), None)
    lag = None
    if last_success and last_success.get("started_at"):
        started = last_success["started_at"]
        if not isinstance(started, datetime):
            started = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
        lag = round((datetime.now(UTC) - started).total_seconds(), 1)
    state = pipeline_state(pipeline)
    verifies = history.recent(pipeline, limit=1, mode="verify")
    return {
        "pipeline": pipeline_name,
        "destination": pipeline.destination.destination_name if pipeline.destination else None,
        "dataset": pipeline.dataset_name,
        "lag_seconds": lag,
        "last_runs": runs[:10],
        "failed_tables": set_aside(state),
        "packages": packages(pipeline),
        "positions": cursors(state),
        "replication_slot": slot(pipeline_name, state),
        "last_verify": last_verify(verifies[0]) if verifies else None,
        "rereads_waiting": rereads_waiting(pipeline),
    }


def rereads_waiting(pipeline: dlt.Pipeline) -> list[dict[str, Any]]:
    """Keys the merge or `verify --repair` asked the follower to read again, not read yet (`pipelines.cdc.rereads`):
    one that stays means no follower is running to read it."""
    area = rereads_area(pipeline)
    return [{"table": r.table, "keys": len(r.keys), "request": r.name} for r in area.rereads()] if area else []


def last_verify(run: dict[str, Any]) -> dict[str, Any]:
    """When `verify` last ran, its outcome, and each table's result (`runner.commands.verify.verified_tables`)."""
    tables = run.get("verified") or {}
    if isinstance(tables, str):
        tables = json.loads(tables)
    return {"at": run.get("started_at") or run.get("recorded_at"), "outcome": run.get("outcome"),
            "checksum": run.get("checksum"), "tables": tables}


def main(args: argparse.Namespace) -> ExitCode:
    status = collect(args.pipeline)
    if args.json:
        print(json.dumps(status, default=str, indent=2))
        return ExitCode.SUCCESS
    console = Console()
    console.print(f"[bold]{status['pipeline']}[/bold] → {status['destination']}:{status['dataset']}   "
                  f"lag: {status['lag_seconds']} s (since the start of the last successful run)")
    runs = Table(title="Last runs")
    for column in ("started", "mode", "outcome", "duration s", "rows per table", "error"):
        runs.add_column(column)
    for run in status["last_runs"]:
        rows = run.get("rows") or {}
        runs.add_row(str(run["started_at"]), str(run["mode"]), str(run["outcome"]), str(run["duration_s"]),
                     ", ".join(f"{t}={n}" for t, n in sorted(rows.items())), str(run["error"] or "")[:80])
    console.print(runs)
    positions = Table(title="Positions")
    for column in ("table", "cursor / lsn", "value", "late-commit guard"):
        positions.add_column(column)
    for table, pos in sorted(status["positions"].items()):
        positions.add_row(table, str(pos.get("cursor", "lsn")), str(pos.get("last_value", pos.get("confirmed_lsn"))),
                          str(pos.get("late_commit_guard") or ""))
    console.print(positions)
    if status["replication_slot"]:
        health = status["replication_slot"]
        console.print(f"Replication slot: {health.get('slot_name')} wal_status={health.get('wal_status')} "
                      f"retained WAL={health.get('retained_wal_bytes')} bytes, pinned={health.get('pinned_wal_bytes')} "
                      f"bytes {health.get('error', '')}")
        if health.get("attention"):
            console.print(f"[bold yellow]attention[/bold yellow] {health['attention']}")
    for table, failure in sorted(status["failed_tables"].items()):
        console.print(f"[bold red]set aside[/bold red] {table} since {failure.get('since')}: "
                      f"{failure.get('step')} failed: {failure.get('error')}")
    verified = status["last_verify"]
    if verified is None:
        console.print("Last verify: never (aurora-sync verify --checksum; Terraform schedules it daily)")
    else:
        checks = Table(title=f"Last verify: {verified['at']}, {verified['outcome']}"
                             f"{'' if verified['checksum'] else ' (counts only)'}")
        for column in ("table", "result", "drift rows", "drift ranges", "source rows", "destination rows"):
            checks.add_column(column)
        for table, result in sorted(verified["tables"].items()):
            checks.add_row(table, str(result.get("status")), str(result.get("drift_rows")),
                           str(result.get("drift_ranges")), str(result.get("source_rows")),
                           str(result.get("destination_rows")))
        console.print(checks)
    for waiting in status["rereads_waiting"]:
        console.print(f"[bold yellow]keys to read again[/bold yellow] {waiting['table']}: {waiting['keys']} key(s), "
                      "waiting for the follower (`run --mode cdc` reads them)")
    pkgs = status["packages"]
    console.print(f"Pending load packages: {len(pkgs['pending'])} {pkgs['pending'] or ''}")
    console.print(f"Packages with failed jobs: {len(pkgs['failed_jobs'])} {pkgs['failed_jobs'] or ''}")
    return ExitCode.SUCCESS
