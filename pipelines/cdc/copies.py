"""Copying tables into the destination while the stream runs: in one go, in chunks, and keys read again.

- **In one go** (`snapshot`, `bootstrap`, `snapshot_alone`): under the slot's exported snapshot (or a temporary slot's,
  for a table added later). The stream skips the table's transactions that committed before that snapshot.
- **In chunks** (`Copies`): DBLog. Key-range chunks are read between watermarks and reconciled with the changes the
  stream saw meanwhile (`sources.replication.reconcile`); each lands at its high watermark with the copy's progress.
- **Keys read again** (repairs): a version the destination cannot complete (an unchanged TOASTed value whose row is
  not there, e.g. a key moved from a range not copied yet) is written as a tombstone, and its key is read again from
  the source the same way, as a chunk of just those keys.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import psycopg2
import pyarrow as pa

from pipelines.isolation import FAILED_TABLES_KEY, TableLoadFailed, describe, is_about_no_table
from pipelines.ops import Op
from pipelines.progress import crash_at
from sources.postgres.catalog import TableSpec
from sources.postgres.chunking import Chunk, log_chunk, plan_chunks, snapshot_settings
from sources.postgres.copy_loader import arrow_schema
from sources.replication import table_hints
from sources.replication.batch import _parse as parse_values
from sources.replication.batch import system_columns
from sources.replication.chunked_copy import ChunkReaders, CopyJob, SpilledChunk, parse_chunk_key
from sources.replication.columns import arrays_to_json
from sources.replication.errors import PublicationError, ReplicationError
from sources.replication.lsn import format_lsn
from sources.replication.multiset import ROW_KEY_COLUMN
from sources.replication.reconcile import reconcile
from sources.replication.slot import connect, create_slot, current_wal_lsn, ensure_publication, publication_tables
from sources.replication.snapshot import TableSnapshot, table_columns
from sources.replication.stream import ChangeStream, ChunkWatermark, TrackedTable
from sources.replication.walstream import WalStream

from .context import Cdc
from .summary import event

REPAIRS_KEY = "repairs"  # CDC state, per table: [[chunk index, [key values as text, ...]], ...] not read yet
REPAIR_BASE = 1_000_000  # repair chunks' indices start here, apart from the copy's own chunks


# -- in one go ------------------------------------------------------------------------------------------
def snapshot(cdc: Cdc, specs: list[TableSpec], snapshot_name: str, lsn: int, *,
             reload: frozenset[str] = frozenset()) -> list[TableSpec]:
    """Copy `specs` under an exported snapshot, one load per table, recording each as it lands.

    A table whose copy fails is set aside and the others go on; returns the tables copied. `reload` names tables
    whose destination table is dropped first (a column changed type)."""
    settings = cdc.settings
    copied: list[TableSpec] = []
    for spec in specs:
        started = time.monotonic()
        snap = TableSnapshot(cdc.dsn, snapshot_name, spec, lsn, delete_mode=settings.delete_mode,
                             block_size=settings.block_size_bytes, statement_timeout_ms=settings.statement_timeout_ms)
        try:
            columns = snap.open()
            shape = snap.shape()

            def update(state: dict[str, Any], spec: TableSpec = spec, shape: Any = shape) -> None:
                state["slot"], state["publication"] = cdc.slot, cdc.publication
                state.setdefault("tables", {})[spec.qualified] = {
                    "snapshot_lsn": lsn, "resource": spec.resource_name, "primary_key": list(spec.primary_key),
                    "snapshot_at": datetime.now(UTC).isoformat(), "shape": shape,
                }
                state.get(FAILED_TABLES_KEY, {}).pop(spec.resource_name, None)

            key = list(spec.primary_key) or [ROW_KEY_COLUMN]
            hints = table_hints(columns, settings.delete_mode, keyless=not spec.has_key)
            reloaded = spec.resource_name in reload
            cdc.write([Op("snapshot", spec.resource_name, key, hints, snap.read, lsn=lsn, reload=reloaded,
                          delete_mode=settings.delete_mode)], update,
                      refresh="drop_resources" if reloaded else None)
        except TableLoadFailed as failure:
            cdc.set_aside(spec, failure.step, failure.error)
            continue
        except (psycopg2.Error, ReplicationError) as exc:
            if is_about_no_table(exc):
                raise
            cdc.set_aside(spec, "extract", describe(exc))
            continue
        finally:
            snap.close()
        cdc.dead_letter(spec.resource_name, list(spec.primary_key), snap.rejected)
        cdc.summary.snapshots[spec.resource_name] = snap.rows
        copied.append(spec)
        event("table snapshotted", table=spec.resource_name, rows=snap.rows, lsn=format_lsn(lsn),
              duration_s=round(time.monotonic() - started, 3))
    return copied


def bootstrap(cdc: Cdc, specs: list[TableSpec], created: Callable[[], None] = lambda: None) -> int:
    """Create the slot and copy every table under its exported snapshot; returns its start LSN. `created` is called
    as soon as the slot exists."""
    with create_slot(cdc.dsn, cdc.slot, timeout=cdc.settings.slot_create_timeout_seconds) as exported:
        created()
        event("replication slot created", slot=cdc.slot, lsn=format_lsn(exported.consistent_lsn))
        crash_at("slot_created")  # tests: a setup killed here leaves a slot no state knows (status and doctor say so)
        # a new slot starts a new history: committed first, so a table that fails to copy cannot undo it
        cdc.save_state(lambda s: s.update(slot=cdc.slot, publication=cdc.publication,
                                          confirmed_lsn=exported.consistent_lsn, tables={}))
        # large keyed tables are copied in chunks while streaming (no long transaction); the rest in one go,
        # under the slot's snapshot
        small = [spec for spec in specs if begin_copy(cdc, spec) is None]
        if small:
            snapshot(cdc, small, exported.snapshot_name, exported.consistent_lsn)
        return exported.consistent_lsn


def snapshot_alone(cdc: Cdc, specs: list[TableSpec], keep_alive: WalStream | None = None,
                   reload: frozenset[str] = frozenset()) -> tuple[int, list[TableSpec]]:
    """Snapshot tables added (or changed) later under a temporary slot's snapshot, while the main slot keeps its
    position: the stream skips their transactions that committed before the snapshot's LSN. Returns that LSN and the
    tables copied (a table whose copy failed is set aside)."""
    temporary = f"{cdc.slot[:44]}_tmp_{uuid.uuid4().hex[:8]}"
    context = keep_alive.kept_alive() if keep_alive is not None else nullcontext()
    with context, create_slot(cdc.dsn, temporary, temporary=True,
                              timeout=cdc.settings.slot_create_timeout_seconds) as exported:
        copied = snapshot(cdc, specs, exported.snapshot_name, exported.consistent_lsn, reload=reload)
        return exported.consistent_lsn, copied


def add_to_publication(cdc: Cdc, specs: list[TableSpec]) -> list[TableSpec]:
    """Add tables to the publication; returns those that could not be added (reported as pending)."""
    present = publication_tables(cdc.meta, cdc.publication)
    missing = [s for s in specs if s.qualified not in present]
    if not missing:
        return []
    admin = connect(cdc.dsn, read_only=False, statement_timeout_ms=60_000)
    try:
        ensure_publication(admin, cdc.publication, missing)
        event("tables added to the publication", tables=[s.qualified for s in missing])
        return []
    except PublicationError as exc:
        cdc.summary.warnings.append(str(exc))
        event(str(exc), logging.ERROR, tables=[s.qualified for s in missing])
        return missing
    finally:
        admin.close()


# -- in chunks --------------------------------------------------------------------------------------------
def _empty(cdc: Cdc, spec: TableSpec, columns: list[Any]) -> pa.Table:
    empty = arrow_schema([c.plan for c in columns], frozenset(spec.primary_key)).empty_table()
    for name, column in system_columns(cdc.settings.delete_mode, [], []).items():
        empty = empty.append_column(name, column)
    return empty


def begin_copy(cdc: Cdc, spec: TableSpec, *, drop: bool = False, keep_rows: bool = False) -> CopyJob | None:
    """Begin copying a table in chunks reconciled with the stream, or None when one transaction is the better
    choice: a table of one chunk (small), or without a key to reconcile on.

    The destination table is emptied first (its rows are the copy's from then on), unless `keep_rows`: a table whose
    rows all exist already and must only be rewritten (a column rewritten in place) keeps serving them meanwhile;
    each chunk overwrites its keys."""
    if not spec.has_key:
        return None
    chunks = plan_chunks(cdc.meta, spec, snapshot_settings())  # type: ignore[call-arg]
    if len(chunks) < 2 or chunks[0].kind != "key":
        return None
    columns = table_columns(cdc.meta, spec, cdc.resolver_cache)
    shape = cdc.shape(spec)
    start = current_wal_lsn(cdc.meta)  # the stream applies the table's changes from here; the chunks are read after
    if keep_rows:
        # The rows kept are only right if the stream goes on applying every change to them: a delete skipped here
        # (its key absent from the chunk read later) would leave its row behind, also after a restart that replays
        # the stream from before this point. So the table's changes keep being applied from where they were.
        start = int(cdc.state().get("tables", {}).get(spec.qualified, {}).get("snapshot_lsn", 0))
    generation = uuid.uuid4().hex[:12]

    def update(state: dict[str, Any]) -> None:
        state["slot"], state["publication"] = cdc.slot, cdc.publication
        previous = state.get("tables", {}).get(spec.qualified, {})
        state.setdefault("tables", {})[spec.qualified] = {
            "snapshot_lsn": start, "resource": spec.resource_name, "primary_key": list(spec.primary_key),
            "snapshot_at": datetime.now(UTC).isoformat(), "shape": shape,
            "copy": {"generation": generation, "chunks": [c.as_state() for c in chunks], "done": []},
            **({REPAIRS_KEY: previous[REPAIRS_KEY]} if keep_rows and previous.get(REPAIRS_KEY) else {}),
        }
        state.get(FAILED_TABLES_KEY, {}).pop(spec.resource_name, None)

    hints = table_hints(columns, cdc.settings.delete_mode)
    if keep_rows:
        cdc.write([Op("columns", spec.resource_name, list(spec.primary_key), hints, [_empty(cdc, spec, columns)],
                      delete_mode=cdc.settings.delete_mode)], update)
    else:
        cdc.write([Op("snapshot", spec.resource_name, list(spec.primary_key), hints, [_empty(cdc, spec, columns)],
                      lsn=start, reload=drop, delete_mode=cdc.settings.delete_mode)], update,
                  refresh="drop_resources" if drop else None)
    event("chunked copy begun", table=spec.resource_name, chunks=len(chunks), lsn=format_lsn(start),
          keeps_rows=keep_rows)
    return CopyJob(spec, generation, chunks, columns, set(), start)


class Copies:
    """The chunked copies and repairs of this stream: readers ahead of the stream, and each chunk landed when the
    stream reaches its high watermark."""

    def __init__(self, cdc: Cdc, stream: ChangeStream, jobs: dict[str, CopyJob]) -> None:
        self.cdc, self.stream, self.jobs = cdc, stream, jobs
        self.repairs: dict[str, CopyJob] = {}  # per table: the job repair chunks are read under
        self.readers: ChunkReaders | None = None
        self.rows: dict[str, int] = {}
        stream.keep_going = lambda: bool(self.jobs) or bool(self.pending_repairs())
        for job in list(jobs.values()):
            self._submit(job)

    def active(self, qualified: str) -> bool:
        """A copy of the table is in progress: some of its rows are not in the destination yet."""
        return qualified in self.jobs

    def pending_repairs(self) -> list[str]:
        return [q for q, job in self.repairs.items() if job.chunks and len(job.done) < len(job.chunks)]

    def _start_readers(self) -> ChunkReaders:
        if self.readers is None:
            settings = self.cdc.settings
            self.readers = ChunkReaders(self.cdc.dsn, self.cdc.settings.reader_dsn,
                                        snapshot_settings(),  # type: ignore[call-arg]
                                        settings.block_size_bytes, settings.statement_timeout_ms)
            self.stream.copy_nonce = self.readers.nonce
        return self.readers

    def _submit(self, job: CopyJob) -> None:
        self.jobs[job.spec.qualified] = job
        self._start_readers().submit(job)

    def begin(self, spec: TableSpec, *, drop: bool, keep_rows: bool = False, wal: WalStream | None = None) -> bool:
        """Start copying a table in chunks while streaming; False when it is better copied in one go."""
        if wal is not None and not keep_rows:
            self.stream.forget(spec.qualified)  # its unloaded changes are older than the copy: the chunks have them
        previous = self.jobs.pop(spec.qualified, None)
        if previous is not None and self.readers is not None:
            self.readers.cancel(previous)  # a copy under way starts over: its chunks in flight are dropped
        job = begin_copy(self.cdc, spec, drop=drop, keep_rows=keep_rows)
        if job is None:
            return False
        self.stream.track(TrackedTable(spec, job.start_lsn))
        self._submit(job)
        return True

    # -- keys read again -------------------------------------------------------------------------------------
    def repair(self, spec: TableSpec, keys: list[list[Any]]) -> tuple[int, list[Any]] | None:
        """Schedule these keys (values as PostgreSQL prints them) to be read again; returns the chunk's state entry,
        which the caller commits with the write that made it necessary (so a crash cannot lose it)."""
        if not keys:
            return None
        job = self.repairs.get(spec.qualified)
        if job is None:
            columns = table_columns(self.cdc.meta, spec, self.cdc.resolver_cache)
            job = self.repairs[spec.qualified] = CopyJob(spec, "repair", [], columns, set(), 0)
        index = max((c.index for c in job.chunks), default=REPAIR_BASE - 1) + 1
        unique = [list(k) for k in dict.fromkeys(tuple(k) for k in keys)]
        chunk = Chunk(spec.qualified, index, "keys", None, unique, None)
        job.chunks.append(chunk)
        self._start_readers().submit(job, [chunk])
        self.cdc.summary.repaired_rows += len(unique)
        event("keys to read again", table=spec.resource_name, keys=len(unique))
        return index, chunk.as_state()

    def resume_repairs(self, spec: TableSpec, entries: list[list[Any]]) -> None:
        """Repairs an earlier run recorded but did not land: read them again."""
        for item in entries:
            chunk = Chunk.from_state(spec.qualified, item[1])
            job = self.repairs.get(spec.qualified)
            if job is None:
                columns = table_columns(self.cdc.meta, spec, self.cdc.resolver_cache)
                job = self.repairs[spec.qualified] = CopyJob(spec, "repair", [], columns, set(), 0)
            job.chunks.append(chunk)
            self._start_readers().submit(job, [chunk])

    # -- at a high watermark ---------------------------------------------------------------------------------
    def reached(self, event_: ChunkWatermark) -> None:
        qualified, generation, index = parse_chunk_key(event_.chunk_id)
        repair = index >= REPAIR_BASE
        job = (self.repairs if repair else self.jobs).get(qualified)
        if self.readers is None:
            return
        if job is None or job.generation != generation:  # a copy begun again since: its chunks were dropped
            return
        spilled = self.readers.take(event_.chunk_id)
        if spilled is None:
            reason = self.readers.failures.get(qualified)
            self._fail(job, "extract", describe(reason) if reason else "the chunk was not read in time")
            return
        try:
            rows = self._reconciled(job, spilled, event_)
            if rows is None:  # read again: it gets a new window
                self.readers.submit(job, [spilled.chunk])
                return
            self._land(job, spilled, rows, event_.lsn)
        except TableLoadFailed as failure:
            self._fail(job, failure.step, failure.error)
            return
        finally:
            spilled.discard()
        job.done.add(index)
        if repair:
            return
        self.rows[job.spec.resource_name] = self.rows.get(job.spec.resource_name, 0) + spilled.read.rows
        log_chunk(spilled.read, job.spec.resource_name)
        if len(job.done) == len(job.chunks):
            self.jobs.pop(qualified, None)
            self.cdc.summary.snapshots[job.spec.resource_name] = self.rows.pop(job.spec.resource_name, 0)
            event("table copied in chunks", table=job.spec.resource_name, chunks=len(job.chunks))

    def _reconciled(self, job: CopyJob, spilled: SpilledChunk, event_: ChunkWatermark) -> pa.Table | None:
        cdc = self.cdc
        requested = None
        if spilled.chunk.kind == "keys":
            by_name = {c.name: c for c in job.columns}
            plans = [by_name[k].plan for k in job.spec.primary_key]
            parsed, _ = parse_values(plans, [[None if v is None else str(v).encode() for v in key]
                                             for key in spilled.chunk.lo])
            requested = parsed.select(list(range(len(plans))))
        result = reconcile(list(spilled.tables()), event_.window, spilled.snapshot, event_.lsn, job.columns,
                           job.spec, cdc.settings.delete_mode,
                           lambda column, values: arrays_to_json(cdc.query, column, values),
                           cdc.generated_values if event_.table is not None and event_.table.generated else None,
                           event_.committed_at, requested)
        if result.read_again:
            event(f"{job.spec.resource_name}: chunk {spilled.chunk.index} is read again: {result.reason}",
                  table=job.spec.resource_name)
            return None
        return result.rows

    def _land(self, job: CopyJob, spilled: SpilledChunk, rows: pa.Table, lsn: int) -> None:
        index = spilled.chunk.index
        qualified = job.spec.qualified

        def update(state: dict[str, Any]) -> None:
            entry = state.get("tables", {}).get(qualified, {})
            if index >= REPAIR_BASE:
                entry[REPAIRS_KEY] = [r for r in entry.get(REPAIRS_KEY, []) if int(r[0]) != index]
                if not entry[REPAIRS_KEY]:
                    entry.pop(REPAIRS_KEY)
                return
            copy = entry.get("copy")
            if copy is not None:
                done = sorted({*copy.get("done", []), index})
                if len(done) == len(copy["chunks"]):
                    entry.pop("copy", None)
                else:
                    copy["done"] = done

        hints = table_hints(job.columns, self.cdc.settings.delete_mode)
        self.cdc.write([Op("chunk", job.spec.resource_name, list(job.spec.primary_key), hints,
                           [rows] if rows.num_columns else [], lsn=lsn, delete_mode=self.cdc.settings.delete_mode)],
                       update)

    def poll(self) -> None:
        """A chunk that could not be read has no high watermark to wait for: set its table aside now."""
        if self.readers is None or not self.readers.failures:
            return
        for qualified, reason in list(self.readers.failures.items()):
            job = self.jobs.get(qualified) or self.repairs.get(qualified)
            if job is not None:
                self._fail(job, "extract", describe(reason))

    def _fail(self, job: CopyJob, step: str, error: str) -> None:
        self.jobs.pop(job.spec.qualified, None)
        self.repairs.pop(job.spec.qualified, None)
        self.stream.untrack(job.spec.qualified)
        self.cdc.set_aside(job.spec, step, error)

    def close(self) -> None:
        if self.readers is not None:
            self.readers.close()


def pending_copies(cdc: Cdc, specs: list[TableSpec], state: dict[str, Any]) -> dict[str, CopyJob]:
    """Chunked copies an earlier run began: the chunks not done are read again, the others are kept."""
    jobs: dict[str, CopyJob] = {}
    for spec in specs:
        entry = state.get("tables", {}).get(spec.qualified, {})
        copy = entry.get("copy")
        if copy:
            chunks = [Chunk.from_state(spec.qualified, c) for c in copy["chunks"]]
            columns = table_columns(cdc.meta, spec, cdc.resolver_cache)
            jobs[spec.qualified] = CopyJob(spec, str(copy["generation"]), chunks, columns,
                                           {int(i) for i in copy.get("done", [])}, int(entry["snapshot_lsn"]))
            event("resuming a chunked copy", table=spec.resource_name, done=len(copy.get("done", [])),
                  chunks=len(chunks))
    return jobs
