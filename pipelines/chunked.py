"""Full reads of large tables in chunks, each group of chunks its own dlt load package: resumable and bounded.

A snapshot of a large table (snapshot mode, the first load of a table in incremental mode, a re-read after a
schema change) is cut into chunks (`sources.postgres.chunking`). Up to `workers` chunks go into one package, read
in parallel (dlt's parallelized resources), and that package also commits which chunks are done, in the
source state, with the rows. So a crash (even `kill -9`) loses at most the chunks in flight: the next run resumes
at the first chunk not done, with the same boundaries.

The first package replaces the destination table (its rows are gone from then on, which a snapshot means
anyway); the others append, so no package merges a whole table (the first incremental load of a 5M-row table
used to build one merge of everything). When the last chunk is in, an incremental table gets its cursor: the
newest cursor value seen when the snapshot began, lowered by the oldest transaction then open, so every row
changed during the snapshot is read again by the next incremental run and merged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import dlt
from dlt.extract import DltSource

from sources.postgres import SOURCE_NAME
from sources.postgres.chunking import Chunk

from .isolation import IsolatedRun, TableFailure, _attempt

log = logging.getLogger("aurora_sync.snapshot")
PROGRESS_KEY = "snapshots"  # source state: resource name → the snapshot in progress


@dataclass
class ChunkedSnapshot:
    """One table's snapshot in progress, as kept in the source state."""

    resource: str
    generation: str
    chunks: list[Chunk]
    done: set[int] = field(default_factory=set)
    cursor: str | None = None  # the incremental cursor column, when the table continues incrementally
    cursor_floor: Any = None  # where that cursor starts once the snapshot is complete

    @property
    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks if c.index not in self.done]

    def as_state(self) -> dict[str, Any]:
        return {"generation": self.generation, "chunks": [c.as_state() for c in self.chunks],
                "done": sorted(self.done), "cursor": self.cursor, "cursor_floor": self.cursor_floor}

    @classmethod
    def from_state(cls, resource: str, table: str, state: dict[str, Any]) -> ChunkedSnapshot:
        return cls(resource, str(state["generation"]), [Chunk.from_state(table, c) for c in state["chunks"]],
                   {int(i) for i in state.get("done", [])}, state.get("cursor"), state.get("cursor_floor"))


def in_progress(pipeline: dlt.Pipeline) -> dict[str, dict[str, Any]]:
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(PROGRESS_KEY, {}))


def new_snapshot(resource: str, chunks: list[Chunk], cursor: str | None, cursor_floor: Any) -> ChunkedSnapshot:
    return ChunkedSnapshot(resource, uuid.uuid4().hex[:12], chunks, set(), cursor, cursor_floor)


# make_source(chunks by resource, disposition, progress update) -> a source of just those chunks
ChunkSource = Callable[[dict[str, list[Chunk]], str, Callable[[dict[str, Any]], None]], DltSource]


def load_in_chunks(pipeline: dlt.Pipeline, snapshot: ChunkedSnapshot, workers: int, make_source: ChunkSource,
                   result: IsolatedRun, drop_first: bool = False) -> TableFailure | None:
    """Load a table's pending chunks, `workers` per package; stops at the first failure (the table is then set
    aside by the caller, and the next run resumes here). `drop_first` drops the destination table with the first
    package (a column changed type: a replace would keep the old type)."""
    while snapshot.pending:
        group = snapshot.pending[:workers]
        first = not snapshot.done
        last = len(group) == len(snapshot.pending)
        done = {c.index for c in group}

        def progress(state: dict[str, Any], group_done: set[int] = done, last: bool = last) -> None:
            snapshots = state.setdefault(PROGRESS_KEY, {})
            if last:
                snapshots.pop(snapshot.resource, None)
                if snapshot.cursor and snapshot.cursor_floor is not None:
                    _start_cursor(state, snapshot)
                return
            entry = snapshot.as_state()
            entry["done"] = sorted(snapshot.done | group_done)
            snapshots[snapshot.resource] = entry

        disposition = "replace" if first else "append"

        def source(names: list[str], group: list[Chunk] = group, disposition: str = disposition) -> DltSource:
            return make_source({snapshot.resource: group}, disposition, progress)

        refresh = "drop_resources" if first and drop_first else None
        failure = _attempt(pipeline, source, [snapshot.resource], refresh, result)
        if failure is not None:
            return TableFailure(snapshot.resource, failure.step, failure.error)
        snapshot.done |= done
        log.info("chunks loaded", extra={"fields": {"phase": "snapshot", "table": snapshot.resource,
                                                    "chunks": sorted(done), "done": len(snapshot.done),
                                                    "of": len(snapshot.chunks)}})
    return None


def _start_cursor(state: dict[str, Any], snapshot: ChunkedSnapshot) -> None:
    """dlt's incremental state of a table whose first load was a chunked snapshot: it continues from the cursor
    value the snapshot began at (see the module docstring)."""
    floor = snapshot.cursor_floor
    if isinstance(floor, str):  # a time as ISO text (dlt state stores it typed from here on)
        floor = date.fromisoformat(floor) if len(floor) == 10 else datetime.fromisoformat(floor)
    resource = state.setdefault("resources", {}).setdefault(snapshot.resource, {})
    resource.setdefault("incremental", {})[str(snapshot.cursor)] = {
        "initial_value": None, "last_value": floor, "unique_hashes": [], "start_value": floor}
