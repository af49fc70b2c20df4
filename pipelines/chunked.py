"""Full reads of large tables in chunks, each group of chunks its own dlt load package: resumable and bounded.

A snapshot of a large table (snapshot mode, the first load of a table in incremental mode, a re-read after a
schema change) is cut into chunks (`sources.postgres.chunking`). Up to `workers` chunks go into one package, read
in parallel (dlt's parallelized resources), and that package also commits which chunks are done, in the
source state, with the rows. So a crash (even `kill -9`) loses at most the chunks in flight: the next run resumes
at the first chunk not done, with the same boundaries.

The first package replaces the destination table (its rows are gone from then on, which a snapshot means
anyway); the others append, so no package merges a whole table (the first incremental load of a 5M-row table
used to build one merge of everything). The last package also finishes the snapshot: an incremental table gets
its cursor (the newest cursor value seen when the snapshot began, lowered by the oldest transaction then open,
so every row changed during the snapshot is read again by the next incremental run and merged). Appends are not
idempotent, so a snapshot that an earlier run began (or that helpers shared) is finished in a package of its own,
after the rows of loads that never completed are deleted (a task killed mid-load on an ECS task's ephemeral
disk, whose successor read those chunks again): `chunk_ledger.delete_incomplete_loads`.

Several ECS tasks can share one table's chunks (`[sources.postgres.snapshot] helper_tasks`): this run stays the
coordinator (it alone plans, replaces and finishes), and helper tasks (`pipelines.snapshot_helper`) claim the
chunks it has not claimed (`chunk_claims`) and append them; the chunk ledger (`chunk_ledger`) tells everyone
which chunks are in.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import dlt
from dlt.extract import DltSource

from sources.postgres import SOURCE_NAME, source_state
from sources.postgres.chunking import Chunk

from .chunk_claims import ChunkClaims, ClaimTimeout, claim_some
from .chunk_ledger import delete_incomplete_loads, done_chunks, ledger_resource, ledger_rows
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
    resumed: bool = False  # begun by an earlier run (which may have left rows of a load that never completed)

    @property
    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks if c.index not in self.done]

    def as_state(self) -> dict[str, Any]:
        return {"generation": self.generation, "table": self.chunks[0].table if self.chunks else None,
                "chunks": [c.as_state() for c in self.chunks],
                "done": sorted(self.done), "cursor": self.cursor, "cursor_floor": self.cursor_floor}

    @classmethod
    def from_state(cls, resource: str, table: str, state: dict[str, Any]) -> ChunkedSnapshot:
        return cls(resource, str(state["generation"]), [Chunk.from_state(table, c) for c in state["chunks"]],
                   {int(i) for i in state.get("done", [])}, state.get("cursor"), state.get("cursor_floor"), True)


def in_progress(pipeline: dlt.Pipeline) -> dict[str, dict[str, Any]]:
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(PROGRESS_KEY, {}))


def new_snapshot(resource: str, chunks: list[Chunk], cursor: str | None, cursor_floor: Any) -> ChunkedSnapshot:
    return ChunkedSnapshot(resource, uuid.uuid4().hex[:12], chunks, set(), cursor, cursor_floor)


# make_source(chunks by resource, disposition, progress update) -> a source of just those chunks
ChunkSource = Callable[[dict[str, list[Chunk]], str, Callable[[dict[str, Any]], None] | None], DltSource]
HELPER_WAIT_S = 1800.0  # the longest the coordinator waits for chunks a helper holds before it fails the table


def load_in_chunks(pipeline: dlt.Pipeline, snapshot: ChunkedSnapshot, workers: int, make_source: ChunkSource,
                   result: IsolatedRun, drop_first: bool = False,
                   claims: ChunkClaims | None = None) -> TableFailure | None:
    """Load a table's pending chunks, `workers` per package, then finish the snapshot in a package of its own;
    stops at the first failure (the table is then set aside by the caller, and the next run resumes here).
    `drop_first` drops the destination table with the first package (a column changed type: a replace would keep
    the old type). With `claims` (helper tasks share the chunks, `pipelines.snapshot_helper`) each chunk is
    claimed before it is read and recorded in the chunk ledger, and the coordinator holds the snapshot's
    generation lock while it works on it."""
    if claims is not None:
        claims.hold_generation(snapshot.resource, snapshot.generation)
    try:
        failure = _load_pending(pipeline, snapshot, workers, make_source, result, drop_first, claims)
        if failure is not None or (not snapshot.pending and _finished(snapshot, claims)):
            return failure  # loaded and, in the last group's package, finished
        return _finish(pipeline, snapshot, result, claims)
    except ClaimTimeout as exc:
        return TableFailure(snapshot.resource, "extract", str(exc))
    finally:
        if claims is not None:
            claims.release_generation(snapshot.resource, snapshot.generation)


def _load_pending(pipeline: dlt.Pipeline, snapshot: ChunkedSnapshot, workers: int, make_source: ChunkSource,
                  result: IsolatedRun, drop_first: bool, claims: ChunkClaims | None) -> TableFailure | None:
    waiting_since: float | None = None
    while True:
        elsewhere = done_chunks(pipeline, snapshot.resource, snapshot.generation) if claims is not None else set()
        pending = [c for c in snapshot.pending if c.index not in elsewhere]
        if not pending:
            return None
        first = not snapshot.done and not elsewhere
        if claims is None:
            group = pending[:workers]
        else:
            picked = claim_some(claims, snapshot.generation, [c.index for c in pending], workers)
            loaded = done_chunks(pipeline, snapshot.resource, snapshot.generation) if picked else set()
            for index in picked & loaded:  # a helper finished it between our look and our claim
                claims.release(snapshot.generation, index)
            group = [c for c in pending if c.index in picked - loaded]
            if not group and loaded - elsewhere:
                continue
            if not group:  # helpers are loading every chunk left: wait for them (or for a dead one's claim)
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > HELPER_WAIT_S:
                    return TableFailure(snapshot.resource, "extract", f"other tasks held its last chunks for more "
                                        f"than {HELPER_WAIT_S:.0f} s; the next run goes on")
                time.sleep(1.0)
                continue
            waiting_since = None
        try:
            with claims.table(snapshot.resource, exclusive=True) if claims is not None and first else nullcontext():
                failure = _load_group(pipeline, snapshot, group, first, drop_first, make_source, result, claims)
        finally:
            if claims is not None:
                for chunk in group:
                    claims.release(snapshot.generation, chunk.index)
        if failure is not None:
            return failure
        log.info("chunks loaded", extra={"fields": {"phase": "snapshot", "table": snapshot.resource,
                                                    "chunks": sorted(c.index for c in group),
                                                    "done": len(snapshot.done | elsewhere),
                                                    "of": len(snapshot.chunks)}})
        if not snapshot.pending and _finished(snapshot, claims):
            _log_finished(snapshot)


def _load_group(pipeline: dlt.Pipeline, snapshot: ChunkedSnapshot, group: list[Chunk], first: bool,
                drop_first: bool, make_source: ChunkSource, result: IsolatedRun,
                claims: ChunkClaims | None) -> TableFailure | None:
    """One package: the group's chunks (the first package replaces the table, the others append) and, committed
    with them, the chunks done so far in the source state (and in the ledger when helpers share the chunks)."""
    indexes = {c.index for c in group}
    last = _finished(snapshot, claims) and {c.index for c in snapshot.pending} <= indexes

    def progress(state: dict[str, Any]) -> None:
        if last:  # this run read every chunk itself: nothing to clean up, so the last package also finishes
            _finish_state(state, snapshot)
            return
        entry = snapshot.as_state()
        entry["done"] = sorted(snapshot.done | indexes)
        state.setdefault(PROGRESS_KEY, {})[snapshot.resource] = entry

    def source(names: list[str]) -> DltSource:
        chunk_source = make_source({snapshot.resource: group}, "replace" if first else "append", progress)
        if claims is not None:
            chunk_source.resources.add(ledger_resource(ledger_rows(snapshot.resource, snapshot.generation,
                                                                   sorted(indexes))))
        return chunk_source

    failure = _attempt(pipeline, source, [snapshot.resource], "drop_resources" if first and drop_first else None,
                       result)
    if failure is not None:
        return TableFailure(snapshot.resource, failure.step, failure.error)
    snapshot.done |= indexes
    return None


def _finished(snapshot: ChunkedSnapshot, claims: ChunkClaims | None) -> bool:
    """Whether the last group's package finishes the snapshot: only when no other task (an earlier run, a helper)
    can have left rows of a load that never completed, which must be deleted before it finishes."""
    return claims is None and not snapshot.resumed


def _finish_state(state: dict[str, Any], snapshot: ChunkedSnapshot) -> None:
    """Drop the snapshot from the state and start the table's cursor."""
    state.setdefault(PROGRESS_KEY, {}).pop(snapshot.resource, None)
    if snapshot.cursor and snapshot.cursor_floor is not None:
        _start_cursor(state, snapshot)


def _log_finished(snapshot: ChunkedSnapshot) -> None:
    log.info("snapshot finished", extra={"fields": {"phase": "snapshot", "table": snapshot.resource,
                                                    "chunks": len(snapshot.chunks)}})


def _finish(pipeline: dlt.Pipeline, snapshot: ChunkedSnapshot, result: IsolatedRun,
            claims: ChunkClaims | None) -> TableFailure | None:
    """Every chunk is in, some of them loaded by another task: delete the rows of loads that never completed
    (under the exclusive table lock, so no load in flight is mistaken for one), then finish in a package of its
    own."""
    with claims.table(snapshot.resource, exclusive=True) if claims is not None else nullcontext():
        delete_incomplete_loads(pipeline, snapshot.resource)
        failure = _attempt(pipeline, lambda names: source_state(lambda state: _finish_state(state, snapshot)),
                           [snapshot.resource], None, result)
    if failure is not None:
        return TableFailure(snapshot.resource, failure.step, failure.error)
    _log_finished(snapshot)
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
