"""One sync of the `customers` and `orders` schemas: `python -m pipelines.customers_orders`.

The destination (duckdb, snowflake, filesystem), the dataset and the source settings all come from
dlt's configuration (`.dlt/config.toml`, `.dlt/secrets.toml`, env vars), so the same code loads a
local DuckDB file in development and Snowflake in production.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import dlt
from dlt.common.pipeline import LoadInfo

from pipelines.progress import collector_for
from sources.postgres import postgres_replica

PIPELINE_NAME = "customers_orders"
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
) -> LoadInfo:
    """Extract, normalize and load once. `full_refresh` drops the tables' data and cursors first.

    Load packages left by an interrupted run are finished first. dlt's `run` does that, but then
    returns without extracting: we call it again so one rerun both repairs and catches up.
    """
    pipeline = make_pipeline(pipelines_dir)
    if pipeline.has_pending_data:
        pipeline.run()
    source = postgres_replica(mode=mode, only_tables=tables, only_keys=only_keys, dead_letter_url=dead_letter_url)
    return pipeline.run(source, refresh="drop_data" if full_refresh else None)


if __name__ == "__main__":
    info = run()
    print(info)
    sys.exit(0)
