"""One sync of the `customers` and `orders` schemas: `python -m pipelines.customers_orders`.

`[pipelines.customers_orders]` in `.dlt/config.toml` is its entry; another entry runs this same code under its own
name (`pipelines.registry.ConfiguredPipeline`).

The destination (duckdb, snowflake, filesystem), the dataset and the source settings all come from
dlt's configuration (`.dlt/config.toml`, `.dlt/secrets.toml`, env vars), so the same code loads a
local DuckDB file in development and Snowflake in production.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from typing import Any, Literal

import dlt
from dlt.extract import DltSource

from pipelines import chunked, registry, snapshot_helper
from pipelines.chunk_claims import ChunkClaims
from pipelines.isolation import IsolatedRun, RunPlan, run_isolated
from pipelines.progress import collector_for
from pipelines.snapshot_helper import HelperResult
from pipelines.transactions import transactional
from sources.postgres import SOURCE_NAME, postgres_replica
from sources.postgres.chunking import Chunk, snapshot_settings
from sources.postgres.session import close_idle_sessions, writer_dsn
from sources.postgres.settings import discovered
from sources.postgres.shapes import detect_schema_changes
from sources.postgres.snapshot_plan import plan_snapshots

PIPELINE_NAME = "customers_orders"
log = logging.getLogger("aurora_sync.run")
Mode = Literal["incremental", "snapshot"]


def make_pipeline(pipelines_dir: str | None = None, name: str = PIPELINE_NAME) -> dlt.Pipeline:
    """`name`: another pipeline of `[pipelines.<name>]` (`pipelines.registry`), with its own settings and state."""
    registry.register()
    pipeline = dlt.pipeline(pipeline_name=name, pipelines_dir=pipelines_dir,
                            progress=collector_for(interactive=sys.stderr.isatty()))
    transactional(pipeline.destination)  # a merge's DELETE and INSERT commit together (pipelines.transactions)
    return pipeline


def run(
    mode: Mode = "incremental",
    tables: list[str] | None = None,
    full_refresh: bool = False,
    pipelines_dir: str | None = None,
    dead_letter_url: str | None = None,
    only_keys: dict[str, list[dict[str, Any]]] | None = None,
    pipeline: dlt.Pipeline | None = None,
) -> IsolatedRun:
    """Extract, normalize and load once. `full_refresh` drops the tables' data and cursors first.

    Load packages left by an interrupted run are finished first (or discarded when they cannot load), then
    every table is loaded, and a table that fails is set aside without stopping the others
    (`pipelines.isolation`). `result.raise_on_failures()` raises when any table was set aside. `pipeline`
    replaces this module's own (tests and tools that sync the same source into another destination).
    """
    pipeline = pipeline or make_pipeline(pipelines_dir)
    reread: list[str] = []
    claims: list[ChunkClaims] = []  # opened when helper tasks share this run's chunks

    def plan() -> RunPlan:
        """Schema changes a cursor cannot see (against the shapes the last sync recorded), and the large tables
        read whole this run, chunk by chunk (resuming a snapshot an earlier run left unfinished)."""
        if only_keys is not None:
            return RunPlan()
        with discovered(pipeline.pipeline_name) as found:  # one connection and discovery for both checks
            changes = detect_schema_changes(pipeline.pipeline_name, pipeline.state, SOURCE_NAME, tables, found=found)
            for table, change in sorted(changes.items()):
                log.warning(f"{table}: {change.reason}: " + ("the table is loaded anew" if change.kind == "reload" else
                            "its rows are read again in full"), extra={"fields": {"table": table, "phase": "extract"}})
            reread.extend(t for t, c in changes.items() if c.kind == "reread")
            pacing = snapshot_settings()  # type: ignore[call-arg]
            progress = chunked.in_progress(pipeline)
            if full_refresh:
                progress = {}
            planned = plan_snapshots(pipeline.pipeline_name, mode, pipeline.state, SOURCE_NAME, progress, pacing,
                                     tables, reread, found=found)
        separately = {}
        for resource, snapshot_plan in planned.items():
            current = progress.get(resource)
            snapshot = (chunked.ChunkedSnapshot.from_state(resource, snapshot_plan.spec.qualified, current)
                        if current else chunked.new_snapshot(resource, snapshot_plan.chunks, snapshot_plan.cursor,
                                                             snapshot_plan.cursor_floor))
            if pacing.helper_tasks and not claims:
                claims.append(ChunkClaims(writer_dsn(), pipeline.pipeline_name, "coordinator"))
            separately[resource] = _chunked_loader(pipeline, snapshot, pacing.workers, dead_letter_url,
                                                   claims[0] if claims else None)
        return RunPlan(reload={t for t, c in changes.items() if c.kind == "reload"}, separately=separately)

    # the source `run_isolated` lists the tables with, handed on to the first load when the plan re-reads nothing:
    # building it again would resolve its settings, discover and reflect every table a second time (about a
    # tenth of a second before the first COPY); `with_resources` copies it, and it is used once, never re-extracted
    listed: list[DltSource] = []

    def make_source(names: list[str] | None) -> DltSource:
        if listed and names is not None and not reread:
            source = listed.pop()
        else:
            source = postgres_replica(mode=mode, only_tables=tables, only_keys=only_keys,
                                      dead_letter_url=dead_letter_url, reread_tables=reread)
            listed[:] = [source] if names is None else []
        return source if names is None else source.with_resources(*names)

    try:
        return run_isolated(pipeline, make_source, refresh="drop_data" if full_refresh else None, plan=plan)
    finally:
        for held in claims:
            held.close()
        close_idle_sessions()


def chunk_source(dead_letter_url: str | None) -> chunked.ChunkSource:
    def make_chunk_source(chunks: dict[str, list[Chunk]], disposition: str, progress: Any) -> DltSource:
        return postgres_replica(only_tables=[c[0].table for c in chunks.values()], chunks=chunks,
                                chunk_disposition=disposition, progress=progress, dead_letter_url=dead_letter_url)

    return make_chunk_source


def _chunked_loader(pipeline: dlt.Pipeline, snapshot: chunked.ChunkedSnapshot, workers: int,
                    dead_letter_url: str | None, claims: ChunkClaims | None) -> Any:
    def load(result: IsolatedRun, drop_first: bool) -> Any:
        return chunked.load_in_chunks(pipeline, snapshot, workers, chunk_source(dead_letter_url), result,
                                      drop_first, claims)

    return load


def help_snapshots(idle_seconds: float = 300.0, dead_letter_url: str | None = None,
                   stop: threading.Event | None = None, name: str = PIPELINE_NAME) -> HelperResult:
    """A helper task (`aurora-sync snapshot-helper`): load chunks of this pipeline's snapshots in progress."""
    claims = ChunkClaims(writer_dsn(), name, "snapshot helper")
    try:
        return snapshot_helper.help_snapshots(functools.partial(make_pipeline, name=name),
                                              chunk_source(dead_letter_url), claims,
                                              snapshot_settings().workers,  # type: ignore[call-arg]
                                              idle_seconds, stop)
    finally:
        claims.close()
        close_idle_sessions()


if __name__ == "__main__":
    result = run()
    for load in result.infos:
        print(load)
    for failure in result.failures.values():
        print(f"set aside: {failure.table} ({failure.step}: {failure.error})")
    sys.exit(1 if result.failures else 0)
