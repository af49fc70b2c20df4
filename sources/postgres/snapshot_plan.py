"""Which tables a run reads whole, and in how many chunks.

A table is read whole in snapshot mode, on its first load in incremental mode, when it has no cursor or no key,
and after a schema change its cursor cannot see (`shapes`). A table larger than one chunk (`chunking`) is then
loaded chunk by chunk in packages of its own (`pipelines.chunked`); a snapshot left unfinished by an earlier run
resumes with its recorded chunks. Smaller tables stay in the run's shared package.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from .catalog import TableSpec, matches
from .chunking import Chunk, SnapshotSettings, plan_chunks
from .late_commits import oldest_open_transaction
from .settings import Discovery, discovered

TIME_TYPES = ("timestamp without time zone", "timestamp with time zone", "date")


@dataclass
class PlannedSnapshot:
    spec: TableSpec
    chunks: list[Chunk]
    cursor: str | None  # the table continues incrementally from `cursor_floor` once complete
    cursor_floor: Any


def plan_snapshots(pipeline_name: str, mode: str, state: dict[str, Any], source_name: str,
                   in_progress: dict[str, dict[str, Any]], settings: SnapshotSettings,
                   only_tables: list[str] | None = None, reread: list[str] | None = None,
                   lookback_seconds: float = 60.0, cursor_timezone: str = "UTC",
                   found: Discovery | None = None) -> dict[str, PlannedSnapshot]:
    """Tables of this run to be read in more than one chunk, with their chunks (resumed or newly planned).
    `found`: the tables already discovered (`settings.discovered`), else they are discovered here."""
    resources = state.get("sources", {}).get(source_name, {}).get("resources", {})
    planned: dict[str, PlannedSnapshot] = {}
    with nullcontext(found) if found is not None else discovered(pipeline_name) as seen:
        engine = seen.engine
        specs = [s for s in seen.specs if not only_tables or matches(s.qualified, only_tables)]
        raw = engine.raw_connection()
        try:
            for spec in specs:
                progress = in_progress.get(spec.resource_name)
                if progress is not None:  # an earlier run began it: same chunks, same cursor floor
                    from_state = [Chunk.from_state(spec.qualified, c) for c in progress["chunks"]]
                    planned[spec.resource_name] = PlannedSnapshot(spec, from_state, progress.get("cursor"),
                                                                  progress.get("cursor_floor"))
                    continue
                incremental = resources.get(spec.resource_name, {}).get("incremental", {})
                whole = (mode == "snapshot" or not spec.has_key or not spec.cursor_column or not incremental
                         or spec.resource_name in (reread or []))
                if not whole:
                    continue
                chunks = plan_chunks(raw, spec, settings)
                if len(chunks) < 2:
                    continue
                continues = mode == "incremental" and spec.has_key and spec.cursor_column and not incremental
                floor = _cursor_floor(raw, engine, spec, lookback_seconds, cursor_timezone) if continues else None
                planned[spec.resource_name] = PlannedSnapshot(spec, chunks, spec.cursor_column if continues else None,
                                                              floor)
        finally:
            raw.close()
    return planned


def _cursor_floor(raw: Any, engine: sa.Engine, spec: TableSpec, lookback_seconds: float, timezone: str) -> Any:
    """Where the incremental cursor starts once the snapshot is complete: no later than the snapshot's start
    (nor the oldest transaction then open: a late commit), less the lookback, so the next incremental run reads
    again every row changed while the chunks were read. A cursor that is not a time is read as its maximum."""
    column = str(spec.cursor_column)
    relation = _quote(spec.schema) + "." + _quote(spec.name)
    with raw.cursor() as cur:
        cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attname = %s", (relation, column))
        row = cur.fetchone()
        kind = row[0] if row else ""
        if kind not in TIME_TYPES:
            cur.execute(f"SELECT max({_quote(column)}) FROM {relation}")
            return cur.fetchone()[0]
    start = oldest_open_transaction(engine) - timedelta(seconds=lookback_seconds)
    if kind == "timestamp with time zone":
        return start.isoformat()
    local = start.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)
    return local.date().isoformat() if kind == "date" else local.isoformat()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
