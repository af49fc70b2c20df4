"""One sync of the `customers` and `orders` schemas: `python -m pipelines.customers_orders`.

The destination (duckdb, snowflake, filesystem), the dataset and the source settings all come from
dlt's configuration (`.dlt/config.toml`, `.dlt/secrets.toml`, env vars), so the same code loads a
local DuckDB file in development and Snowflake in production.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import dlt
from dlt.extract import DltSource

from pipelines.isolation import IsolatedRun, run_isolated
from pipelines.progress import collector_for
from sources.postgres import SOURCE_NAME, postgres_replica
from sources.postgres.shapes import detect_schema_changes

PIPELINE_NAME = "customers_orders"
log = logging.getLogger("aurora_sync.run")
Mode = Literal["incremental", "snapshot"]


def make_pipeline(pipelines_dir: str | None = None) -> dlt.Pipeline:
    return dlt.pipeline(pipeline_name=PIPELINE_NAME, pipelines_dir=pipelines_dir,
                        progress=collector_for(interactive=sys.stderr.isatty()))


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

    def reload_tables() -> list[str]:
        """Schema changes a cursor cannot see, found against the shapes the last sync recorded."""
        if only_keys is not None:
            return []
        changes = detect_schema_changes(pipeline.pipeline_name, pipeline.state, SOURCE_NAME, tables)
        for table, change in sorted(changes.items()):
            log.warning(f"{table}: {change.reason}: " + ("the table is loaded anew" if change.kind == "reload" else
                        "its rows are read again in full"), extra={"fields": {"table": table, "phase": "extract"}})
        reread.extend(t for t, c in changes.items() if c.kind == "reread")
        return [t for t, c in changes.items() if c.kind == "reload"]

    def make_source(names: list[str] | None) -> DltSource:
        source = postgres_replica(mode=mode, only_tables=tables, only_keys=only_keys, dead_letter_url=dead_letter_url,
                                  reread_tables=reread)
        return source if names is None else source.with_resources(*names)

    return run_isolated(pipeline, make_source, refresh="drop_data" if full_refresh else None,
                        reload_tables=reload_tables)


if __name__ == "__main__":
    result = run()
    for load in result.infos:
        print(load)
    for failure in result.failures.values():
        print(f"set aside: {failure.table} ({failure.step}: {failure.error})")
    sys.exit(1 if result.failures else 0)
