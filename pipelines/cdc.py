"""Change data capture into the destination: `run_cdc`, `setup` and `teardown`.

Order of operations for every batch (see docs/cdc.md):
1. read changes from the slot until `max_batch_rows`/`max_batch_bytes`/`max_batch_seconds`;
2. complete unchanged-TOAST values (and soft-delete tombstones) from the destination's current rows;
3. `pipeline.run()` merges the batch and commits the new confirmed LSN into dlt state, in one package;
4. only then tell the server that LSN is flushed.
A crash between 3 and 4 replays the batch, which the merge absorbs; the slot is never ahead of the
state we committed, so a slot that is ahead proves that changes were consumed elsewhere (lost to us).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
import psycopg2
import pyarrow as pa
from dlt.pipeline.exceptions import PipelineStepFailed
from psycopg2 import sql as pg_sql

from pipelines import landing, warehouse
from pipelines.isolation import FAILED_TABLES_KEY, TableLoadFailed, culprit, describe, is_about_no_table
from pipelines.progress import FAILPOINT_ENV, crash_at
from sources.postgres import dead_letters
from sources.postgres.catalog import TableSpec, discover_tables, matches
from sources.postgres.chunking import Chunk, log_chunk, plan_chunks, snapshot_settings
from sources.postgres.copy_loader import arrow_schema
from sources.postgres.errors import SourceConfigError
from sources.postgres.session import make_engine
from sources.postgres.shapes import SchemaChange, classify, read_shapes
from sources.replication import (
    SOURCE_NAME,
    STATE_KEY,
    ReplicationSettings,
    cdc_batch,
    cdc_chunk,
    cdc_snapshot,
    replication_settings,
    table_hints,
)
from sources.replication.batch import (
    ChangeBatch,
    LiveTable,
    PreparedTable,
    RowChange,
    apply_fill,
    prepare,
    system_columns,
)
from sources.replication.batch import _parse as _parse_keys
from sources.replication.chunked_copy import ChunkReaders, CopyJob, SpilledChunk
from sources.replication.columns import TypeResolver, arrays_to_json
from sources.replication.errors import (
    PrerequisiteMissing,
    PublicationError,
    ReplicationError,
    RetainedWalExceeded,
    SlotAheadOfState,
    SlotInUse,
    SlotInvalidated,
    SlotMissing,
)
from sources.replication.lsn import format_lsn
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN
from sources.replication.pgoutput import UNCHANGED, Value
from sources.replication.slot import (
    SlotHealth,
    check_prerequisites,
    connect,
    create_slot,
    current_wal_lsn,
    drop_publication,
    drop_slot,
    emit_marker,
    ensure_publication,
    object_name,
    publication_tables,
    query,
    server_version,
    slot_health,
    table_refusals,
    wal_sender_timeout_seconds,
)
from sources.replication.snapshot import TableSnapshot, table_columns
from sources.replication.stream import (
    BatchReady,
    ChangeStream,
    ChunkWatermark,
    IdleEvent,
    Limits,
    RelationEvent,
    TrackedTable,
    TruncateEvent,
)
from sources.replication.walstream import WalStream

log = logging.getLogger("aurora_sync.cdc")
# fault-test hook (the project's failpoint convention): AURORA_SYNC_FAILPOINT=after_load_before_ack kills
# the process once a batch is in the destination but before the server heard about it
CRASH_ENV = FAILPOINT_ENV
AFTER_LOAD_BEFORE_ACK = "after_load_before_ack"
# CDC state key: (final LSN, changes) of a transaction whose first changes are loaded but that is not complete
PARTIAL_TXN_KEY = "partial_txn"


def _event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={"fields": {"phase": "cdc", **fields}})


@dataclass
class TableChanges:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    truncates: int = 0


@dataclass
class CdcSummary:
    """What one `run_cdc` did; `as_fields()` is ready for a log line or metrics."""

    changes: dict[str, TableChanges] = field(default_factory=dict)  # per destination table
    batches: int = 0
    start_lsn: str | None = None  # slot's confirmed position when the run started
    end_lsn: str | None = None  # position confirmed to the server (and committed in dlt state)
    retained_wal_bytes: int = 0  # pg_current_wal_lsn() - confirmed_flush_lsn at the end
    pinned_wal_bytes: int = 0  # pg_current_wal_lsn() - restart_lsn at the end
    wal_status: str | None = None
    lag_seconds: float = 0.0  # last batch: load finished minus its newest commit time
    duration: float = 0.0
    snapshots: dict[str, int] = field(default_factory=dict)  # rows copied per table (initial/added tables)
    pending_tables: list[str] = field(default_factory=list)  # configured but not yet replicated
    dead_lettered: int = 0
    filled_rows: int = 0  # rows completed from the destination (unchanged TOAST values, soft-delete tombstones)
    unresolved_toast_rows: int = 0
    warnings: list[str] = field(default_factory=list)
    stopped_by: str = "drained"  # drained | stop
    failed_tables: dict[str, dict[str, str]] = field(default_factory=dict)  # set aside by this run (isolation)
    recovered_tables: list[str] = field(default_factory=list)  # set aside before, copied again by this run
    lands: bool = False  # batches landed in S3 for `merge` (`pipelines.landing`) instead of loading directly
    # per landed batch, seconds from the commit of its oldest change (the one that waited longest) to landed;
    # the latest LANDING_LAGS_KEPT of them, so a follower that runs for months keeps a bounded list
    landing_lags: list[float] = field(default_factory=list)
    landed_batches: int = 0

    def table(self, name: str) -> TableChanges:
        return self.changes.setdefault(name, TableChanges())

    @property
    def total_changes(self) -> int:
        return sum(c.inserts + c.updates + c.deletes + c.truncates for c in self.changes.values())

    @property
    def landing_lag_p95(self) -> float | None:
        """Commit to landed in S3, 95th percentile over this run's landed batches."""
        if not self.landing_lags:
            return None
        ordered = sorted(self.landing_lags)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def as_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["total_changes"] = self.total_changes
        fields.pop("landing_lags")
        fields["landing_lag_p95_s"] = self.landing_lag_p95
        return fields


LANDING_LAGS_KEPT = 10_000


def history_pipeline(pipeline: dlt.Pipeline) -> dlt.Pipeline:
    """Where a CDC run's record goes: the landing area when batches land, so the follower never waits on the
    warehouse (not even for its own history); the warehouse when every batch loads there anyway."""
    return landing.landing_pipeline(pipeline) if replication_settings().lands else pipeline  # type: ignore[call-arg]


def _state(pipeline: dlt.Pipeline) -> dict[str, Any]:
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(STATE_KEY, {}))


class _Cdc:
    """One pipeline's CDC context: settings, names, source sessions and destination helpers."""

    def __init__(self, pipeline: dlt.Pipeline, settings: ReplicationSettings | None = None,
                 dead_letter_url: str | None = None) -> None:
        self.settings = settings or replication_settings()
        if dead_letter_url:
            self.settings.dead_letter_url = dead_letter_url
        # landing (`pipelines.landing`): the CDC state and every write go to the landing area, not the warehouse
        self.lands = self.settings.lands
        self.direct = pipeline
        self.pipeline = landing.landing_pipeline(pipeline) if self.lands else pipeline
        self.slot = self.settings.slot_name or object_name(pipeline.pipeline_name)
        self.publication = self.settings.publication_name or object_name(pipeline.pipeline_name)
        self.dsn = self.settings.dsn
        self.meta = connect(self.dsn, statement_timeout_ms=60_000)
        self.summary = CdcSummary()
        self.shapes: dict[str, Any] = {}  # tables whose recorded shape changed harmlessly: saved with the next state
        self._resolver: TypeResolver | None = None
        self.on_progress: Callable[[CdcSummary], None] = lambda summary: None

    def close(self) -> None:
        self.meta.close()

    # -- source ------------------------------------------------------------------------------------
    def discover(self) -> list[TableSpec]:
        engine = make_engine(self.dsn, 60_000)
        try:
            return discover_tables(engine, self.settings.schemas, self.settings.include, self.settings.exclude,
                                   "updated_at", {str(k): dict(v) for k, v in self.settings.tables.items()})
        finally:
            engine.dispose()

    def query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return query(self.meta, statement, params)

    def resolver(self) -> TypeResolver:
        return TypeResolver(self.query)

    @property
    def resolver_cache(self) -> TypeResolver:
        if self._resolver is None:
            self._resolver = self.resolver()
        return self._resolver

    # -- destination -----------------------------------------------------------------------------------
    def run(self, source: Any, refresh: Any = None) -> None:
        """Load one package. A failure that names a table (or names none but is not an outage) is raised as
        `TableLoadFailed` after dlt's abort has dropped the package and rewound the local state."""
        try:
            info = self.pipeline.run(source, refresh=refresh)
        except PipelineStepFailed as exc:
            if is_about_no_table(exc):
                raise
            if self.pipeline.has_pending_data:
                self.pipeline.abort_packages()
            raise TableLoadFailed(culprit(exc), exc.step, describe(exc)) from exc
        info.raise_on_failed_jobs()
        if self.pipeline.has_pending_data:  # never confirm an LSN whose package did not load
            raise RuntimeError("dlt left a load package pending after a successful run; not confirming.")

    def finish_pending(self) -> None:
        """Load packages an interrupted run left; one that can no longer load is aborted (dlt rewinds the state
        to before it, so its changes are streamed again), never retried forever."""
        self.pipeline.sync_destination()
        if self.pipeline.has_pending_data:
            _event("loading packages left by an interrupted run")
            try:
                if self.pipeline.list_extracted_load_packages():
                    self.pipeline.normalize()
                self.pipeline.load().raise_on_failed_jobs()
            except PipelineStepFailed as exc:
                if is_about_no_table(exc):
                    raise
                if self.pipeline.has_pending_data:
                    self.pipeline.abort_packages()
                _event(f"a load package left by an earlier run could not be loaded ({describe(exc)}); it was "
                       "discarded and its changes are read again", logging.WARNING)

    def set_aside(self, spec: TableSpec, step: str, error: str) -> None:
        """Stop replicating one table whose load or copy fails, so that the others go on. Its changes are not
        applied any more; the next run (or follow mode's table check) copies it again from a fresh snapshot,
        which makes it exact again once the cause is fixed."""
        since = datetime.now(UTC).isoformat()

        def update(state: dict[str, Any]) -> None:
            state.get("tables", {}).pop(spec.qualified, None)
            failed = state.setdefault(FAILED_TABLES_KEY, {})
            failed[spec.resource_name] = {"table": spec.resource_name, "step": step, "error": error,
                                          "since": failed.get(spec.resource_name, {}).get("since", since)}

        self.save_state(update)
        self.summary.failed_tables[spec.resource_name] = {"table": spec.resource_name, "step": step, "error": error}
        _event(f"{spec.resource_name} set aside ({step} failed: {error}); the other tables go on", logging.ERROR,
               table=spec.resource_name)

    def save_state(self, update: Any) -> None:
        """A load with no rows, only dlt state: used to record a position before confirming it."""
        self.run(cdc_batch([], update))

    def write(self, direct: Callable[[], Any], ops: list[landing.Op], update: Any = None, *,
              refresh: Any = None) -> None:
        """One package of table writes: the direct dlt source into the warehouse, or the same as landing ops."""
        if self.lands:
            self.run(landing.land(ops, update))
        else:
            self.run(direct(), refresh=refresh)

    def carry_over_state(self) -> None:
        """The first landing of a pipeline that loaded directly starts from its CDC state (`landing`)."""
        if self.lands:
            carried = landing.carry_over_state(self.direct, self.pipeline)
            if carried:
                self.save_state(lambda state: state.update(carried))
                _event("CDC state carried over from direct loading to landing", lsn=format_lsn(
                    int(carried.get("confirmed_lsn") or 0)))

    def destination_table(self, resource_name: str) -> str:
        return warehouse.table_name(self.pipeline, SOURCE_NAME, resource_name)

    def current_rows(self, prepared: PreparedTable) -> pa.Table | None:
        """The destination's current values of the rows a batch must complete (unchanged TOAST, tombstones)."""
        assert prepared.fill_keys is not None
        return warehouse.current_rows(self.pipeline, SOURCE_NAME, prepared.table.resource_name, prepared.fill_keys,
                                      list(prepared.fill_masks))

    def existing_copies(self, table: LiveTable, hashes: set[str]) -> dict[str, list[str]]:
        """A keyless table's live copies in the destination (their `_row_key`s) for the given row hashes."""
        return warehouse.existing_copies(self.pipeline, SOURCE_NAME, table.resource_name, hashes,
                                         self.settings.delete_mode)

    def generated_values(self, table: LiveTable, rows: list[RowChange], values_rows: list[list[Value]]) -> list[
            list[Value]]:
        """Stored generated columns, which pgoutput before PostgreSQL 18 does not send: computed on the source
        from each row's own values, in one read-only query that touches no table. A row missing an input (an
        unchanged TOAST value, a delete that carries only its key) is read back by key instead, and if it is
        gone by then, keeps the destination's value until its later change or delete arrives."""
        width = len(table.relation.columns)
        relation = table.columns[:width]

        def quote_ident(name: str) -> str:
            return str(pg_sql.Identifier(name).as_string(self.meta))

        out: list[list[Value]] = [[UNCHANGED] * len(table.generated) for _ in rows]
        complete = [i for i, v in enumerate(values_rows) if all(x is not UNCHANGED for x in v[:width])
                    and not (rows[i].op == "D" and not table.keyless)]
        if complete:
            types = [self.resolver_cache.format_type(c.type_oid, c.typmod) for c in relation]
            columns = ", ".join(f"u.v{j}::{t} AS {quote_ident(c.name)}" for j, (c, t) in enumerate(zip(
                relation, types, strict=True)))
            inputs = ", ".join(f"v{j}" for j in range(width))
            exprs = ", ".join(f"(({g.expression})::{g.sql_type})::text" for g in table.generated)
            arrays = tuple([None if values_rows[i][j] is None else bytes(values_rows[i][j]).decode()  # type: ignore[arg-type]
                            for i in complete] for j in range(width))
            computed = self.query(
                f"SELECT {exprs} FROM (SELECT u._aurora_sync_ord, {columns} FROM unnest("
                f"{', '.join(['%s::text[]'] * width)}) WITH ORDINALITY AS u({inputs}, _aurora_sync_ord)) AS t "
                "ORDER BY t._aurora_sync_ord", arrays)
            for i, row in zip(complete, computed, strict=True):
                out[i] = [None if v is None else v.encode() for v in row]
        missing = [i for i in range(len(rows)) if i not in set(complete) and rows[i].lookup_key]
        if missing and table.key_positions:
            keys = [c for i, c in enumerate(relation) if i in table.key_positions]
            key_types = [self.resolver_cache.format_type(c.type_oid, c.typmod) for c in keys]
            wanted = tuple([None if rows[i].lookup_key[n] is None else bytes(rows[i].lookup_key[n]).decode()  # type: ignore[arg-type]
                            for i in missing] for n in range(len(keys)))
            key_list = ", ".join(quote_ident(c.name) for c in keys)
            found = self.query(
                f"SELECT {', '.join(f'{quote_ident(c.name)}::text' for c in keys)}, "
                f"{', '.join(f'{quote_ident(g.name)}::text' for g in table.generated)} "
                f"FROM {quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)} WHERE ({key_list}) IN "
                f"(SELECT {', '.join(f'k{n}::{t}' for n, t in enumerate(key_types))} FROM unnest("
                f"{', '.join(['%s::text[]'] * len(keys))}) AS u({', '.join(f'k{n}' for n in range(len(keys)))}))",
                wanted)
            by_key = {tuple(r[:len(keys)]): r[len(keys):] for r in found}
            for i in missing:
                key = tuple(None if v is None else bytes(v).decode() for v in rows[i].lookup_key)  # type: ignore[arg-type]
                if key in by_key:
                    out[i] = [None if v is None else v.encode() for v in by_key[key]]
        return out

    def apply_truncate(self, event: TruncateEvent) -> None:
        """TRUNCATE at the source: delete the destination rows (hard) or mark them deleted (soft)."""
        if self.lands:  # the merge applies it in its place among the landed changes
            self.write(lambda: None, [landing.Op("truncate", t.resource_name, list(t.primary_key), {}, lsn=event.lsn,
                                                 commit_time=event.commit_time, delete_mode=self.settings.delete_mode)
                                      for t in event.tables])
            for table in event.tables:
                self.summary.table(table.resource_name).truncates += 1
                _event("truncate landed", table=table.resource_name, lsn=format_lsn(event.lsn))
            return
        for table in event.tables:
            if not warehouse.truncate(self.pipeline, SOURCE_NAME, table.resource_name, self.settings.delete_mode,
                                      event.lsn, event.commit_time):
                continue  # never loaded: nothing to empty
            self.summary.table(table.resource_name).truncates += 1
            _event("truncate applied", table=table.resource_name, lsn=format_lsn(event.lsn),
                   mode=self.settings.delete_mode)

    def dead_letter(self, resource: str, primary_key: list[str], rejected: list[Any]) -> None:
        if rejected:
            path = dead_letters.write(self.settings.dead_letter_url, self.pipeline.pipeline_name, resource,
                                      primary_key, rejected)
            self.summary.dead_lettered += len(rejected)
            _event("rows dead-lettered", logging.ERROR, table=resource, rows=len(rejected), path=path)

    # -- snapshots ---------------------------------------------------------------------------------------
    def snapshot(self, specs: list[TableSpec], snapshot_name: str, lsn: int, *,
                 reload: frozenset[str] = frozenset()) -> list[TableSpec]:
        """Copy `specs` under an exported snapshot, one load per table, recording each as it lands.

        A table whose copy fails is set aside and the others go on; returns the tables copied. `reload` names
        tables whose destination table is dropped first (a column changed type).
        """
        settings = self.settings
        copied: list[TableSpec] = []
        for spec in specs:
            started = time.monotonic()
            snap = TableSnapshot(self.dsn, snapshot_name, spec, lsn, delete_mode=settings.delete_mode,
                                 block_size=settings.block_size_bytes,
                                 statement_timeout_ms=settings.statement_timeout_ms)
            try:
                columns = snap.open()
                shape = self.shape(spec)

                def update(state: dict[str, Any], spec: TableSpec = spec, shape: Any = shape) -> None:
                    state["slot"], state["publication"] = self.slot, self.publication
                    state.setdefault("tables", {})[spec.qualified] = {
                        "snapshot_lsn": lsn, "resource": spec.resource_name,
                        "primary_key": list(spec.primary_key), "snapshot_at": datetime.now(UTC).isoformat(),
                        "shape": shape,
                    }
                    state.get(FAILED_TABLES_KEY, {}).pop(spec.resource_name, None)

                key = list(spec.primary_key) or [ROW_KEY_COLUMN]
                hints = table_hints(columns, settings.delete_mode, merge=False, keyless=not spec.has_key)
                self.write(lambda spec=spec, key=key, hints=hints, snap=snap, update=update: cdc_snapshot(
                    spec.resource_name, key, hints, snap.read, update),
                    [landing.Op("snapshot", spec.resource_name, key,
                                table_hints(columns, settings.delete_mode, keyless=not spec.has_key), snap.read,
                                lsn=lsn, reload=spec.resource_name in reload, delete_mode=settings.delete_mode)],
                    update, refresh="drop_resources" if spec.resource_name in reload else None)
            except TableLoadFailed as failure:
                self.set_aside(spec, failure.step, failure.error)
                continue
            except (psycopg2.Error, ReplicationError) as exc:
                if is_about_no_table(exc):
                    raise
                self.set_aside(spec, "extract", describe(exc))
                continue
            finally:
                snap.close()
            self.dead_letter(spec.resource_name, list(spec.primary_key), snap.rejected)
            self.summary.snapshots[spec.resource_name] = snap.rows
            copied.append(spec)
            _event("table snapshotted", table=spec.resource_name, rows=snap.rows, lsn=format_lsn(lsn),
                   duration_s=round(time.monotonic() - started, 3))
        return copied

    @property
    def reader_dsn(self) -> str | None:
        return self.settings.reader_dsn

    def begin_copy(self, spec: TableSpec, *, drop: bool = False) -> CopyJob | None:
        """Begin copying a table in chunks reconciled with the stream (`chunked_copy`), or None when one
        transaction is the better choice: a table of one chunk (small), or without a key to reconcile on."""
        if not spec.has_key:
            return None
        chunks = plan_chunks(self.meta, spec, snapshot_settings())  # type: ignore[call-arg]
        if len(chunks) < 2 or chunks[0].kind != "key":
            return None
        columns = table_columns(self.meta, spec, self.resolver_cache)
        shape = self.shape(spec)
        start = current_wal_lsn(self.meta)  # the stream applies its changes from here; the chunks are read after
        generation = uuid.uuid4().hex[:12]
        empty = arrow_schema([c.plan for c in columns], frozenset(spec.primary_key)).empty_table()
        for name, column in system_columns(self.settings.delete_mode, [], []).items():
            empty = empty.append_column(name, column)

        def update(state: dict[str, Any]) -> None:
            state["slot"], state["publication"] = self.slot, self.publication
            state.setdefault("tables", {})[spec.qualified] = {
                "snapshot_lsn": start, "resource": spec.resource_name, "primary_key": list(spec.primary_key),
                "snapshot_at": datetime.now(UTC).isoformat(), "shape": shape,
                "copy": {"generation": generation, "chunks": [c.as_state() for c in chunks], "done": []},
            }
            state.get(FAILED_TABLES_KEY, {}).pop(spec.resource_name, None)

        # the destination starts empty: a chunk appends only rows the stream has not put there since `start`
        self.write(lambda: cdc_snapshot(spec.resource_name, list(spec.primary_key),
                                        table_hints(columns, self.settings.delete_mode, merge=False),
                                        lambda: iter([empty]), update),
                   [landing.Op("snapshot", spec.resource_name, list(spec.primary_key),
                               table_hints(columns, self.settings.delete_mode), [empty], lsn=start, reload=drop,
                               delete_mode=self.settings.delete_mode)],
                   update, refresh="drop_resources" if drop else None)
        _event("chunked copy begun", table=spec.resource_name, chunks=len(chunks), lsn=format_lsn(start))
        return CopyJob(spec, generation, chunks, columns, set(), start)

    def land_chunk(self, job: CopyJob, spilled: SpilledChunk, event: Any) -> int:
        """Insert a chunk's rows whose key the stream has no say about (see `chunked_copy`); returns their count."""
        keys = list(job.spec.primary_key)
        by_name = {c.name: c for c in job.columns}
        deleted: set[tuple[Any, ...]] = set()
        if event.deleted:
            parsed, _ = _parse_keys([by_name[k].plan for k in keys], event.deleted)
            deleted = set(zip(*(parsed[k].to_pylist() for k in keys), strict=True))
        tables = []
        for table in spilled.tables():
            if deleted:
                mask = [k not in deleted for k in zip(*(table[k].to_pylist() for k in keys), strict=True)]
                table = table.filter(pa.array(mask, pa.bool_()))
            if table.num_rows:
                for name, column in system_columns(self.settings.delete_mode, [event.lsn] * table.num_rows,
                                                   [None] * table.num_rows).items():
                    table = table.append_column(name, column)
                tables.append(table)
        index = spilled.chunk.index

        def update(state: dict[str, Any]) -> None:
            entry = state.get("tables", {}).get(job.spec.qualified, {})
            copy = entry.get("copy")
            if copy is not None:
                done = sorted({*copy.get("done", []), index})
                if len(done) == len(copy["chunks"]):
                    entry.pop("copy", None)
                else:
                    copy["done"] = done

        hints = table_hints(job.columns, self.settings.delete_mode)
        self.write(lambda: cdc_chunk(job.spec.resource_name, keys, hints, tables, update),
                   [landing.Op("chunk", job.spec.resource_name, keys, hints, tables, lsn=event.lsn,
                               delete_mode=self.settings.delete_mode)], update)
        return sum(t.num_rows for t in tables)

    def add_columns(self, spec: TableSpec) -> None:
        """A new column whose existing rows are NULL (no default) needs no copy, but the destination must have it
        before a change of the table carries it: a load with no rows and the table's current columns adds it."""
        resolver = self.resolver_cache
        columns = table_columns(self.meta, spec, resolver)
        empty = arrow_schema([c.plan for c in columns], frozenset(spec.primary_key)).empty_table()
        for name, column in system_columns(self.settings.delete_mode, [], []).items():
            empty = empty.append_column(name, column)
        if not spec.has_key:
            empty = empty.append_column(ROW_KEY_COLUMN, pa.array([], pa.string()))
            empty = empty.append_column(ROW_HASH_COLUMN, pa.array([], pa.string()))
        hints = table_hints(columns, self.settings.delete_mode, keyless=not spec.has_key)
        key = list(spec.primary_key) or [ROW_KEY_COLUMN]
        if self.lands:  # no `_row_key` in landed changes: the merge gives the copies their keys
            empty = empty.drop_columns([c for c in (ROW_KEY_COLUMN,) if c in empty.column_names])
        self.write(lambda: cdc_batch([(spec.resource_name, key, hints, empty)], lambda state: None),
                   [landing.Op("columns", spec.resource_name, key, hints, [empty],
                               delete_mode=self.settings.delete_mode)])
        _event("columns added to the destination", table=spec.resource_name)

    def shape(self, spec: TableSpec) -> Any:
        return read_shapes(self.meta, [spec]).get(spec.qualified, [])

    def bootstrap(self, specs: list[TableSpec]) -> int:
        """Create the slot and copy every table under its exported snapshot; returns its start LSN."""
        with create_slot(self.dsn, self.slot) as exported:
            _event("replication slot created", slot=self.slot, lsn=format_lsn(exported.consistent_lsn))
            # a new slot starts a new history: committed first, so a table that fails to copy cannot undo it
            self.save_state(lambda s: s.update(slot=self.slot, publication=self.publication,
                                               confirmed_lsn=exported.consistent_lsn, tables={}))
            # large keyed tables are copied in chunks while streaming (no long transaction); the rest in one go,
            # under the slot's snapshot
            small = [spec for spec in specs if self.begin_copy(spec) is None]
            if small:
                self.snapshot(small, exported.snapshot_name, exported.consistent_lsn)
            return exported.consistent_lsn

    def snapshot_alone(self, specs: list[TableSpec], keep_alive: WalStream | None = None,
                       reload: frozenset[str] = frozenset()) -> tuple[int, list[TableSpec]]:
        """Snapshot tables added (or changed) later under a temporary slot's snapshot, while the main slot keeps
        its position: the stream skips their transactions that committed before the snapshot's LSN.
        Returns that LSN and the tables copied (a table whose copy failed is set aside)."""
        temporary = f"{self.slot[:44]}_tmp_{uuid.uuid4().hex[:8]}"
        context = keep_alive.kept_alive() if keep_alive is not None else nullcontext()
        with context, create_slot(self.dsn, temporary, temporary=True) as exported:
            copied = self.snapshot(specs, exported.snapshot_name, exported.consistent_lsn, reload=reload)
            return exported.consistent_lsn, copied

    def add_to_publication(self, specs: list[TableSpec]) -> list[TableSpec]:
        """Add tables to the publication; returns those that could not be added (reported as pending)."""
        present = publication_tables(self.meta, self.publication)
        missing = [s for s in specs if s.qualified not in present]
        if not missing:
            return []
        admin = connect(self.dsn, read_only=False, statement_timeout_ms=60_000)
        try:
            ensure_publication(admin, self.publication, missing)
            _event("tables added to the publication", tables=[s.qualified for s in missing])
            return []
        except PublicationError as exc:
            self.summary.warnings.append(str(exc))
            _event(str(exc), logging.ERROR, tables=[s.qualified for s in missing])
            return missing
        finally:
            admin.close()


@dataclass
class _TablePlan:
    copy: list[TableSpec]  # to copy (again) before streaming, under a temporary slot's snapshot or in chunks
    reload: frozenset[str]  # destination tables dropped first: a column changed type


def _plan_tables(cdc: _Cdc, specs: list[TableSpec], state: dict[str, Any], forced: list[TableSpec]) -> _TablePlan:
    """Which tables need a copy before the stream can go on, and which cannot be replicated at all."""
    summary, settings = cdc.summary, cdc.settings
    tracked = state.get("tables", {})
    refusals = table_refusals(cdc.meta, specs)
    failed_before = state.get(FAILED_TABLES_KEY, {})
    for spec in specs:
        reason = refusals.get(spec.qualified)
        if reason is None:
            continue
        previous = failed_before.get(spec.resource_name, {})
        if spec.qualified in tracked or previous.get("error") != reason:
            cdc.set_aside(spec, "setup", reason)
        else:  # already recorded: report it again without another state commit
            summary.failed_tables[spec.resource_name] = {"table": spec.resource_name, "step": "setup",
                                                         "error": reason}
    eligible = [s for s in specs if s.qualified not in refusals]
    present = publication_tables(cdc.meta, cdc.publication)
    copy = {s.qualified: s for s in eligible if s.qualified not in tracked}  # new, or set aside before
    copy.update({s.qualified: s for s in eligible if s.qualified in tracked and s.qualified not in present})
    copy.update({s.qualified: s for s in forced if s.qualified not in refusals})
    reload: set[str] = set()
    known = [s for s in eligible if s.qualified in tracked and s.qualified not in copy]
    for spec, change in _shape_changes(cdc, known, tracked).items():
        _event(f"{spec.qualified}: {change.reason}: copying it again", logging.WARNING, table=spec.resource_name)
        copy[spec.qualified] = spec
        if change.kind == "reload":
            reload.add(spec.resource_name)
    if copy:
        if not settings.auto_add_tables:
            for spec in [s for s in copy.values() if s.qualified not in present]:
                summary.pending_tables.append(spec.qualified)
                copy.pop(spec.qualified)
        else:
            for spec in cdc.add_to_publication(list(copy.values())):
                summary.pending_tables.append(spec.qualified)
                copy.pop(spec.qualified)
    return _TablePlan(list(copy.values()), frozenset(reload))


def _shape_changes(cdc: _Cdc, specs: list[TableSpec], tracked: dict[str, Any]) -> dict[TableSpec, SchemaChange]:
    """Schema changes the WAL does not carry (backfilled columns, renames, type changes), by comparing the
    catalog with the shape recorded when each table was copied; harmless changes just update that record."""
    if not specs:
        return {}
    current = read_shapes(cdc.meta, specs)
    changes: dict[TableSpec, SchemaChange] = {}
    for spec in specs:
        shape = current.get(spec.qualified, [])
        stored = tracked.get(spec.qualified, {}).get("shape")
        change = classify(stored, shape)
        if change.kind != "none":
            changes[spec] = change
        elif stored != shape:
            cdc.shapes[spec.qualified] = shape  # committed with the next state update
            added = {c[1] for c in shape} - {c[1] for c in stored or []}
            if stored and added:
                cdc.add_columns(spec)
    return changes


def _note_recovered(cdc: _Cdc, state: dict[str, Any], copied: list[TableSpec]) -> None:
    failed_before = state.get(FAILED_TABLES_KEY, {})
    for spec in copied:
        if spec.resource_name in failed_before:
            cdc.summary.recovered_tables.append(spec.resource_name)
            _event(f"{spec.resource_name} copied again after it was set aside", table=spec.resource_name)


class _Copies:
    """The chunked copies of this stream (`sources.replication.chunked_copy`): readers ahead of the stream, and
    each chunk landed when the stream reaches its high watermark."""

    def __init__(self, cdc: _Cdc, stream: ChangeStream, jobs: dict[str, CopyJob]) -> None:
        self.cdc, self.stream, self.jobs = cdc, stream, jobs
        self.readers: ChunkReaders | None = None
        self.rows: dict[str, int] = {}
        stream.keep_going = lambda: bool(self.jobs)
        for job in list(jobs.values()):
            self._submit(job)

    def _submit(self, job: CopyJob) -> None:
        if self.readers is None:
            settings = self.cdc.settings
            self.readers = ChunkReaders(self.cdc.dsn, self.cdc.reader_dsn, snapshot_settings(),  # type: ignore[call-arg]
                                        settings.block_size_bytes, settings.statement_timeout_ms)
            self.stream.copy_nonce = self.readers.nonce
        self.jobs[job.spec.qualified] = job
        self.readers.submit(job)

    def begin(self, spec: TableSpec, *, drop: bool, wal: WalStream | None = None) -> bool:
        """Start copying a table in chunks while streaming; False when it is better copied in one go."""
        if wal is not None:
            self.stream.forget(spec.qualified)  # its unloaded changes are older than the copy: the chunks have them
        job = self.cdc.begin_copy(spec, drop=drop)
        if job is None:
            return False
        self.stream.track(TrackedTable(spec, job.start_lsn))
        self._submit(job)
        return True

    def reached(self, event: ChunkWatermark) -> None:
        qualified = event.chunk_id.rsplit("#", 1)[0]
        job = self.jobs.get(qualified)
        if job is None or self.readers is None:
            return
        index = int(event.chunk_id.rsplit("#", 1)[1])
        spilled = self.readers.take(event.chunk_id)
        if spilled is None:
            reason = self.readers.failures.get(qualified)
            self._fail(job, "extract", describe(reason) if reason else "the chunk was not read in time")
            return
        try:
            rows = self.cdc.land_chunk(job, spilled, event)
        except TableLoadFailed as failure:
            self._fail(job, failure.step, failure.error)
            return
        finally:
            spilled.discard()
        job.done.add(index)
        self.rows[job.spec.resource_name] = self.rows.get(job.spec.resource_name, 0) + rows
        log_chunk(spilled.read, job.spec.resource_name)
        if len(job.done) == len(job.chunks):
            self.jobs.pop(qualified, None)
            self.cdc.summary.snapshots[job.spec.resource_name] = self.rows.pop(job.spec.resource_name, 0)
            _event("table copied in chunks", table=job.spec.resource_name, chunks=len(job.chunks))

    def poll(self) -> None:
        """A chunk that could not be read has no high watermark to wait for: set its table aside now."""
        if self.readers is None or not self.readers.failures:
            return
        for qualified, reason in list(self.readers.failures.items()):
            job = self.jobs.get(qualified)
            if job is not None:
                self._fail(job, "extract", describe(reason))

    def _fail(self, job: CopyJob, step: str, error: str) -> None:
        self.jobs.pop(job.spec.qualified, None)
        self.stream.untrack(job.spec.qualified)
        self.cdc.set_aside(job.spec, step, error)

    def close(self) -> None:
        if self.readers is not None:
            self.readers.close()


def _pending_copies(cdc: _Cdc, specs: list[TableSpec], state: dict[str, Any]) -> dict[str, CopyJob]:
    """Chunked copies an earlier run began: the chunks not done are read again, the others are kept."""
    jobs: dict[str, CopyJob] = {}
    for spec in specs:
        entry = state.get("tables", {}).get(spec.qualified, {})
        copy = entry.get("copy")
        if copy:
            chunks = [Chunk.from_state(spec.qualified, c) for c in copy["chunks"]]
            columns = table_columns(cdc.meta, spec, cdc.resolver_cache)
            jobs[spec.qualified] = CopyJob(spec, str(copy["generation"]), chunks, columns,
                                           {int(i) for i in copy.get("done", [])},
                                           int(entry["snapshot_lsn"]))
            _event("resuming a chunked copy", table=spec.resource_name, done=len(copy.get("done", [])),
                   chunks=len(chunks))
    return jobs


def _check_health(cdc: _Cdc, health: SlotHealth | None, state: dict[str, Any]) -> str | None:
    """None when the slot can be streamed, else why it must be recreated (raises unless allowed)."""
    settings = cdc.settings
    problem: Exception | None = None
    if health is None:
        if not state.get("tables"):
            raise SlotMissing(f"Replication slot {cdc.slot!r} does not exist and this pipeline was never set up "
                              "for CDC: run `aurora-sync setup` first.")
        problem = SlotMissing(
            f"Replication slot {cdc.slot!r} no longer exists (dropped, or lost in a failover to a new writer); "
            "changes since the last run cannot be read: resnapshot with `aurora-sync setup --resnapshot` or set "
            "`on_slot_lost = \"resnapshot\"`.")
    elif health.wal_status == "lost":
        problem = SlotInvalidated(
            f"Replication slot {cdc.slot!r} was invalidated by PostgreSQL (max_slot_wal_keep_size exceeded), so "
            "changes were lost: resnapshot with `aurora-sync setup --resnapshot` or `on_slot_lost = \"resnapshot\"`.")
    elif state.get("confirmed_lsn") is not None and (health.confirmed_flush_lsn or 0) > int(state["confirmed_lsn"]):
        problem = SlotAheadOfState(
            f"Replication slot {cdc.slot!r} confirmed up to {format_lsn(health.confirmed_flush_lsn)} but this "
            f"pipeline only loaded up to {format_lsn(int(state['confirmed_lsn']))}: another consumer advanced the "
            "slot (or the destination was restored from an older state), so changes were lost. Resnapshot with "
            "`aurora-sync setup --resnapshot` or set `on_slot_lost = \"resnapshot\"`.")
    elif health.active and _still_active(cdc):
        raise SlotInUse(f"Replication slot {cdc.slot!r} is in use by PID {health.active_pid}; retry when that "
                        "sync has stopped.")
    if problem is None:
        return None
    if settings.on_slot_lost != "resnapshot":
        raise problem
    _event(f"{problem} Resnapshotting (on_slot_lost = resnapshot).", logging.WARNING)
    return str(problem)


def _still_active(cdc: _Cdc, wait: float = 10.0) -> bool:
    """A walsender whose client just died (a killed task) stays active until the server notices."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        health = slot_health(cdc.meta, cdc.slot)
        if health is None or not health.active:
            return False
        time.sleep(0.2)
    return True


def _retained_wal(cdc: _Cdc, health: SlotHealth | None, *, final: bool) -> None:
    if health is None:
        return
    fields = health.as_fields()
    settings = cdc.settings
    retained = health.retained_wal_bytes
    if final:
        cdc.summary.retained_wal_bytes = retained
        cdc.summary.pinned_wal_bytes = health.pinned_wal_bytes
        cdc.summary.wal_status = health.wal_status
    _event("replication slot", **fields)
    if final and retained > settings.retained_wal_fail_bytes:
        raise RetainedWalExceeded(
            f"Replication slot {cdc.slot!r} still retains {retained / 2**30:.1f} GiB of WAL after this run (limit "
            f"retained_wal_fail_bytes = {settings.retained_wal_fail_bytes / 2**30:.1f} GiB): the sync cannot keep "
            "up or is not running often enough. Run in follow mode, raise batch sizes, or drop the slot "
            "(`aurora-sync teardown`) before storage fills.")
    if retained > settings.retained_wal_warn_bytes:
        message = (f"Replication slot {cdc.slot!r} retains {retained / 2**20:.0f} MiB of WAL (warning above "
                   f"{settings.retained_wal_warn_bytes / 2**20:.0f} MiB)")
        cdc.summary.warnings.append(message)
        _event(message, logging.WARNING, **fields)


def run_cdc(
    pipeline: dlt.Pipeline,
    *,
    follow: bool = False,
    tables: list[str] | None = None,
    stop: threading.Event | None = None,
    settings: ReplicationSettings | None = None,
    dead_letter_url: str | None = None,
    on_progress: Callable[[CdcSummary], None] | None = None,
) -> CdcSummary:
    """Stream changes from the slot into the pipeline's destination.

    follow=False drains: it stops once everything committed before the run started is loaded and
    confirmed. follow=True streams until `stop` is set (the runner sets it on SIGTERM), then loads the
    current batch, confirms it and returns. `tables` (patterns) are re-copied alone before streaming;
    CDC always streams every published table, since the slot's position is shared by all of them.
    `settings` default to dlt config (`replication_settings()`); `dead_letter_url` overrides theirs.
    `on_progress` is called after every loaded batch and whenever the stream is idle and caught up, so a
    long follow run can report liveness (the runner's metrics) without waiting for its end.
    """
    started = time.monotonic()
    cdc = _Cdc(pipeline, settings, dead_letter_url)
    cdc.on_progress = on_progress or (lambda summary: None)
    try:
        return _run(cdc, follow=follow, resnapshot_patterns=tables, stop=stop, started=started)
    finally:
        cdc.close()


def _run(cdc: _Cdc, *, follow: bool, resnapshot_patterns: list[str] | None, stop: threading.Event | None,
         started: float) -> CdcSummary:
    settings, summary = cdc.settings, cdc.summary
    summary.lands = cdc.lands
    cdc.finish_pending()
    cdc.carry_over_state()
    state = _state(cdc.pipeline)
    specs = cdc.discover()
    health = slot_health(cdc.meta, cdc.slot)
    if _check_health(cdc, health, state) is not None:
        if health is not None:
            drop_slot(cdc.meta, cdc.slot)
        cdc.add_to_publication(specs)
        cdc.bootstrap(specs)
        state = _state(cdc.pipeline)
        health = slot_health(cdc.meta, cdc.slot)
    assert health is not None
    summary.start_lsn = format_lsn(health.confirmed_flush_lsn)
    _retained_wal(cdc, health, final=False)
    confirmed = int(state.get("confirmed_lsn") or health.confirmed_flush_lsn or 0)

    # tables configured (or created in a replicated schema) since the last run, set aside before, changed in ways
    # the WAL does not show, and forced resnapshots
    forced = [s for s in specs if resnapshot_patterns and matches(s.qualified, resnapshot_patterns)]
    if resnapshot_patterns and not forced:
        raise SourceConfigError(f"--tables {' '.join(resnapshot_patterns)} matched no replicated table.")
    plan = _plan_tables(cdc, specs, state, forced)
    jobs = _pending_copies(cdc, specs, state)  # chunked copies an earlier run left unfinished
    exported = []
    for spec in plan.copy:
        job = cdc.begin_copy(spec, drop=spec.resource_name in plan.reload)
        if job is None:
            exported.append(spec)
        else:
            jobs[spec.qualified] = job
    if exported:
        _, copied = cdc.snapshot_alone(exported, reload=plan.reload)
        _note_recovered(cdc, state, copied)
    state = _state(cdc.pipeline)

    # tables no longer configured (excluded or dropped) stop being applied
    snapshotted = state.get("tables", {})
    tracked = {s.qualified: TrackedTable(s, int(snapshotted[s.qualified]["snapshot_lsn"]))
               for s in specs if s.qualified in snapshotted}
    version = server_version(cdc.meta)
    status_interval = max(1.0, min(settings.status_interval_seconds, wal_sender_timeout_seconds(cdc.meta) / 4 or 10))
    wal = WalStream(cdc.dsn, cdc.slot, cdc.publication, messages=version >= 140000, status_interval=status_interval)
    # what our committed state says is loaded; after a crash between load and confirmation it is ahead of
    # the slot, and starting there skips the transactions that are already in the destination
    wal.flush_lsn = confirmed
    wal.start(confirmed)
    try:
        _stream(cdc, wal, tracked, follow=follow, stop=stop, confirmed=confirmed, messages=version >= 140000,
                jobs=jobs)
    finally:
        wal.close()
    summary.end_lsn = format_lsn(wal.flush_lsn)
    summary.stopped_by = "stop" if stop is not None and stop.is_set() else "drained"
    health = _wait_for_slot(cdc, wal.flush_lsn)
    summary.duration = round(time.monotonic() - started, 3)
    _retained_wal(cdc, health, final=True)
    _event("cdc run finished", **{k: v for k, v in summary.as_fields().items() if k != "changes"})
    return summary


def _wait_for_slot(cdc: _Cdc, lsn: int, timeout: float = 5.0) -> SlotHealth | None:
    """The server applies feedback asynchronously; wait briefly so the reported health is current."""
    deadline = time.monotonic() + timeout
    while True:
        health = slot_health(cdc.meta, cdc.slot)
        if health is None or (health.confirmed_flush_lsn or 0) >= lsn or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def _stream(cdc: _Cdc, wal: WalStream, tracked: dict[str, TrackedTable], *, follow: bool,
            stop: threading.Event | None, confirmed: int, messages: bool, jobs: dict[str, CopyJob]) -> None:
    settings = cdc.settings
    limits = Limits(max_batch_rows=settings.max_batch_rows, max_batch_bytes=settings.max_batch_bytes,
                    max_batch_seconds=settings.max_batch_seconds, heartbeat_seconds=settings.heartbeat_seconds)

    markers = {"allowed": messages}

    def marker(content: str) -> int:
        """A logical message; if this role may not write one, fall back to keepalives (warned once)."""
        if markers["allowed"]:
            try:
                return emit_marker(cdc.meta, content)
            except psycopg2.Error as exc:
                markers["allowed"] = False
                _event(f"pg_logical_emit_message is not allowed ({str(exc).strip()}): drains end on keepalives "
                       "and follow mode writes no heartbeats", logging.WARNING)
        return 0

    partial = _state(cdc.pipeline).get(PARTIAL_TXN_KEY)
    stream = ChangeStream(wal, tracked, cdc.resolver(), marker if messages else None, limits,
                          settings.truncate_mode, confirmed,
                          skip=(int(partial[0]), int(partial[1])) if partial else None)
    token: str | None = None
    target = 0
    if not follow:
        target = current_wal_lsn(cdc.meta)
        if messages:
            token = f"drain:{cdc.pipeline.pipeline_name}:{uuid.uuid4().hex}"
            target = marker(token) or target
            if not markers["allowed"]:
                token = None
    position = {"confirmed": confirmed}

    def record(lsn: int, partial: tuple[int, int] | None = None) -> Any:
        def update(state: dict[str, Any]) -> None:
            state["slot"], state["publication"] = cdc.slot, cdc.publication
            state["confirmed_lsn"] = max(int(state.get("confirmed_lsn") or 0), lsn)
            state["confirmed_at"] = datetime.now(UTC).isoformat()
            state[PARTIAL_TXN_KEY] = list(partial) if partial else None
            for qualified, shape in cdc.shapes.items():
                if qualified in state.get("tables", {}):
                    state["tables"][qualified]["shape"] = shape
        return update

    copies = _Copies(cdc, stream, jobs)
    try:
        _events(cdc, wal, stream, copies, follow=follow, stop=stop, target=target, token=token, record=record,
                position=position)
    finally:
        copies.close()


def _events(cdc: _Cdc, wal: WalStream, stream: ChangeStream, copies: _Copies, *, follow: bool,
            stop: threading.Event | None, target: int, token: str | None, record: Any,
            position: dict[str, int]) -> None:
    settings = cdc.settings
    last_table_check = time.monotonic()
    for event in stream.events(follow=follow, stop=stop, target_lsn=target, marker=token):
        copies.poll()
        if isinstance(event, BatchReady):
            _load_batch(cdc, wal, stream, event.batch, event.reason, position, record)
        elif isinstance(event, ChunkWatermark):
            with wal.kept_alive():
                copies.reached(event)
        elif isinstance(event, RelationEvent):
            _relation_announced(cdc, wal, stream, event, copies)
        elif isinstance(event, TruncateEvent):
            with wal.kept_alive():
                cdc.apply_truncate(event)
        elif isinstance(event, IdleEvent) and event.lsn - position["confirmed"] >= max(1, settings.idle_ack_bytes):
            # caught up with nothing pending: record, then confirm, the position so an idle slot advances
            with wal.kept_alive():
                cdc.save_state(record(event.lsn))
            crash_at(AFTER_LOAD_BEFORE_ACK)
            wal.confirm(event.lsn)
            position["confirmed"] = event.lsn
            _event("idle position confirmed", lsn=format_lsn(event.lsn))
        if isinstance(event, IdleEvent):
            cdc.on_progress(cdc.summary)
        if follow and time.monotonic() - last_table_check >= settings.new_table_check_seconds:
            last_table_check = time.monotonic()
            _follow_new_tables(cdc, wal, stream, copies)


def _load_batch(cdc: _Cdc, wal: WalStream, stream: ChangeStream, batch: ChangeBatch, reason: str,
                position: dict[str, int], record: Any) -> None:
    settings, summary = cdc.settings, cdc.summary
    started = time.monotonic()
    loads: dict[str, tuple[str, list[str], dict[str, Any], pa.Table]] = {}
    with wal.kept_alive():
        for changes in batch.tables.values():
            table = changes.table
            try:
                arrow = _prepare_table(cdc, changes)
            except (psycopg2.Error, ReplicationError) as exc:
                if is_about_no_table(exc):
                    raise
                _set_aside(cdc, stream, table.qualified, "extract", describe(exc))
                continue
            counts = summary.table(table.resource_name)
            counts.inserts += changes.inserts
            counts.updates += changes.updates
            counts.deletes += changes.deletes
            loads[table.qualified] = (table.resource_name, table.merge_key,
                                      table_hints(table.columns, settings.delete_mode, keyless=table.keyless), arrow)
        ack = batch.safe_lsn if batch.safe_lsn is not None and batch.safe_lsn > position["confirmed"] else None
        while True:
            try:
                update = record(ack if ack is not None else position["confirmed"], batch.partial)
                cdc.write(lambda update=update: cdc_batch(list(loads.values()), update), [
                    landing.Op("changes", name, key, hints, [arrow], lsn=batch.safe_lsn or 0,
                               commit_time=batch.newest_commit_time, delete_mode=settings.delete_mode)
                    for name, key, hints, arrow in loads.values()], update)
                break
            except TableLoadFailed as failure:
                # the package was aborted: find the table(s) at fault, set them aside, load the rest with the LSN
                by_resource = {load[0]: q for q, load in loads.items()}
                culprits = [by_resource[failure.table]] if failure.table in by_resource else [
                    q for q, load in loads.items() if _fails_alone(cdc, load)]
                if not culprits or (failure.table not in by_resource and len(culprits) == len(loads)):
                    raise  # no table, or every table alone: the cause is not a table's; nothing is set aside
                for qualified in culprits:
                    _set_aside(cdc, stream, qualified, failure.step, failure.error)
                    loads.pop(qualified)
    crash_at(AFTER_LOAD_BEFORE_ACK)
    if ack is not None:
        wal.confirm(ack)
        position["confirmed"] = ack
    summary.batches += 1
    if batch.newest_commit_time is not None:
        now = datetime.now(UTC)
        summary.lag_seconds = round(max(0.0, (now - batch.newest_commit_time).total_seconds()), 3)
        if cdc.lands and batch.oldest_commit_time is not None:  # commit -> in S3 of the batch's oldest change
            summary.landing_lags.append(round(max(0.0, (now - batch.oldest_commit_time).total_seconds()), 3))
            summary.landed_batches += 1
            del summary.landing_lags[:-LANDING_LAGS_KEPT]
    _event("cdc batch " + ("landed" if cdc.lands else "loaded"), reason=reason, changes=batch.changes,
           rows=sum(len(t.rows) for t in batch.tables.values()), tables=sorted(batch.tables),
           confirmed_lsn=format_lsn(position["confirmed"]), lag_s=summary.lag_seconds,
           **({"landing_lag_s": summary.landing_lags[-1]} if cdc.lands and summary.landing_lags else {}),
           duration_s=round(time.monotonic() - started, 3))
    cdc.on_progress(summary)


def _prepare_table(cdc: _Cdc, changes: Any) -> pa.Table:
    """One table of a batch as the Arrow rows to merge: converted, TOAST-completed, dead letters written."""
    settings, summary = cdc.settings, cdc.summary
    table = changes.table
    prepared = prepare(changes, settings.delete_mode, lambda column, values: arrays_to_json(cdc.query, column, values),
                       generated=cdc.generated_values, existing=None if cdc.lands else cdc.existing_copies,
                       plan_multiset=not cdc.lands)
    cdc.dead_letter(table.resource_name, list(table.primary_key), prepared.rejected)
    if cdc.lands:  # completed from the warehouse by the merge, once it is current (`landing`)
        summary.filled_rows += prepared.fill_rows
        return landing.landed_rows(prepared)
    arrow = prepared.arrow
    if prepared.unmatched_deletes:
        summary.warnings.append(f"{table.resource_name}: {prepared.unmatched_deletes} delete(s) found no copy")
        _event("deletes of a keyless table found no matching copy in the destination", logging.WARNING,
               table=table.resource_name, rows=prepared.unmatched_deletes)
    if prepared.fill_masks:
        summary.filled_rows += prepared.fill_rows
        arrow, unresolved = apply_fill(prepared, cdc.current_rows(prepared), settings.delete_mode)
        if unresolved:
            summary.unresolved_toast_rows += unresolved
            _event("unchanged TOAST values not found in the destination; left NULL", logging.WARNING,
                   table=table.resource_name, rows=unresolved)
    return arrow


def _fails_alone(cdc: _Cdc, load: tuple[str, list[str], dict[str, Any], pa.Table]) -> bool:
    """Load one table's part of a batch on its own, without moving the position: a failure that named no table
    is narrowed down this way (the merge is idempotent, so loading a part twice is harmless)."""
    name, key, hints, arrow = load
    try:
        cdc.write(lambda: cdc_batch([load], lambda state: None), [landing.Op("changes", name, key, hints, [arrow])])
        return False
    except TableLoadFailed:
        return True


def _set_aside(cdc: _Cdc, stream: ChangeStream, qualified: str, step: str, error: str) -> None:
    tracked = stream.tracked.get(qualified)
    if tracked is not None:
        stream.untrack(qualified)
        cdc.set_aside(tracked.spec, step, error)


def _relation_announced(cdc: _Cdc, wal: WalStream, stream: ChangeStream, event: RelationEvent,
                        copies: _Copies) -> None:
    """A table's first change in this stream, or new columns: copy it again when the WAL cannot tell the
    destination what its existing rows now hold (every earlier change of it has been loaded already)."""
    tracked = stream.tracked.get(event.table.qualified)
    if tracked is None:
        return
    spec = tracked.spec
    stored = _state(cdc.pipeline).get("tables", {}).get(spec.qualified, {})
    with wal.kept_alive():
        changes = _shape_changes(cdc, [spec], {spec.qualified: stored})
    change = changes.get(spec)
    if change is None:
        return
    _event(f"{spec.qualified}: {change.reason}: copying it again", logging.WARNING, table=spec.resource_name)
    drop = change.kind == "reload"
    if copies.begin(spec, drop=drop, wal=wal):
        return
    lsn, copied = cdc.snapshot_alone([spec], keep_alive=wal, reload=frozenset([spec.resource_name] if drop else []))
    if copied:
        stream.track(TrackedTable(spec, lsn))
    else:
        stream.untrack(spec.qualified)


def _follow_new_tables(cdc: _Cdc, wal: WalStream, stream: ChangeStream, copies: _Copies) -> None:
    """Follow mode: copy tables created or configured since the stream started (or set aside and to be tried
    again), and tables whose columns changed without a change of theirs in the stream, without stopping it."""
    with wal.kept_alive():
        specs = cdc.discover()
        state = _state(cdc.pipeline)
        plan = _plan_tables(cdc, [s for s in specs if s.qualified not in copies.jobs], state, [])
    exported = [s for s in plan.copy if not copies.begin(s, drop=s.resource_name in plan.reload, wal=wal)]
    if exported:
        lsn, copied = cdc.snapshot_alone(exported, keep_alive=wal, reload=plan.reload)
        _note_recovered(cdc, state, copied)
        for spec in copied:
            stream.track(TrackedTable(spec, lsn))


# -- setup / teardown ------------------------------------------------------------------------------------
@dataclass
class SetupReport:
    slot: str
    publication: str
    problems: list[str] = field(default_factory=list)
    publication_added: list[str] = field(default_factory=list)
    publication_removed: list[str] = field(default_factory=list)
    slot_created: bool = False
    snapshots: dict[str, int] = field(default_factory=dict)
    start_lsn: str | None = None
    failed_tables: dict[str, dict[str, str]] = field(default_factory=dict)  # refused or failed to copy: set aside
    dead_lettered: int = 0


def setup(pipeline: dlt.Pipeline, *, check_only: bool = False, resnapshot: bool = False,
          settings: ReplicationSettings | None = None, dead_letter_url: str | None = None) -> SetupReport:
    """Make the source ready for CDC and copy the tables once.

    Checks prerequisites (naming every missing one), creates or syncs the publication `aurora_sync_<pipeline>`
    for the configured tables, creates the slot with an exported snapshot and copies every table under
    it. Idempotent: with the slot in place it only adds (and copies) tables not replicated yet.
    `resnapshot` drops and recreates the slot and copies everything again.
    """
    cdc = _Cdc(pipeline, settings, dead_letter_url)
    try:
        report = SetupReport(cdc.slot, cdc.publication)
        specs = cdc.discover()
        health = slot_health(cdc.meta, cdc.slot)
        report.problems = check_prerequisites(cdc.meta, specs, cdc.slot, slot_needed=health is None or resnapshot,
                                              with_tables=False)
        refusals = table_refusals(cdc.meta, specs)
        if check_only:
            report.problems += refusals.values()
            return report
        if report.problems:
            raise PrerequisiteMissing("Logical replication prerequisites are missing:\n- " +
                                      "\n- ".join(report.problems))
        if health is not None and health.active:
            raise SlotInUse(f"Replication slot {cdc.slot!r} is in use by PID {health.active_pid}: stop the running "
                            "sync before running setup.")
        cdc.finish_pending()
        cdc.carry_over_state()
        # a table CDC cannot replicate is refused alone (and never published: its updates would fail)
        refused = [s for s in specs if s.qualified in refusals]
        specs = [s for s in specs if s.qualified not in refusals]
        admin = connect(cdc.dsn, read_only=False, statement_timeout_ms=60_000)
        try:
            report.publication_added, report.publication_removed = ensure_publication(
                admin, cdc.publication, specs, drop_extra=True)
            if resnapshot and health is not None:
                drop_slot(admin, cdc.slot)
                health = None
        finally:
            admin.close()
        if health is None:
            report.start_lsn = format_lsn(cdc.bootstrap(specs))
            report.slot_created = True
        else:
            state = _state(cdc.pipeline)
            if state.get("confirmed_lsn") is None:  # the slot exists but this destination never used it
                cdc.save_state(lambda s: s.update(slot=cdc.slot, publication=cdc.publication,
                                                  confirmed_lsn=health.confirmed_flush_lsn, tables={}))
                state = _state(cdc.pipeline)
            todo = [s for s in specs if s.qualified not in state.get("tables", {})]
            if todo:
                _, copied = cdc.snapshot_alone(todo)
                _note_recovered(cdc, state, copied)
            report.start_lsn = format_lsn(health.confirmed_flush_lsn)
        for spec in refused:
            cdc.set_aside(spec, "setup", refusals[spec.qualified])
        if any(t.get("copy") for t in _state(cdc.pipeline).get("tables", {}).values()):
            # chunked copies land as the stream reaches their watermarks: stream until they are all in
            _run(cdc, follow=False, resnapshot_patterns=None, stop=None, started=time.monotonic())
        report.snapshots = dict(cdc.summary.snapshots)
        report.failed_tables = dict(cdc.summary.failed_tables)
        report.dead_lettered = cdc.summary.dead_lettered
        _event("cdc setup finished", slot=cdc.slot, publication=cdc.publication, slot_created=report.slot_created,
               snapshots=report.snapshots, publication_added=report.publication_added)
        return report
    finally:
        cdc.close()


@dataclass
class TeardownReport:
    slot: str
    publication: str
    slot_dropped: bool = False
    publication_dropped: bool = False


def teardown(pipeline: dlt.Pipeline, *, keep_publication: bool = False,
             settings: ReplicationSettings | None = None) -> TeardownReport:
    """Drop the slot (so the source stops retaining WAL) and the publication, and forget the CDC position.

    The destination tables stay. A later `setup` copies every table again.
    """
    cdc = _Cdc(pipeline, settings)
    try:
        report = TeardownReport(cdc.slot, cdc.publication)
        admin = connect(cdc.dsn, read_only=False, statement_timeout_ms=60_000)
        try:
            report.slot_dropped = drop_slot(admin, cdc.slot)
            if not keep_publication:
                report.publication_dropped = drop_publication(admin, cdc.publication)
        finally:
            admin.close()
        cdc.pipeline.sync_destination()
        if _state(cdc.pipeline):
            cdc.save_state(lambda s: s.clear())
        _event("cdc teardown finished", slot=cdc.slot, slot_dropped=report.slot_dropped,
               publication_dropped=report.publication_dropped)
        return report
    finally:
        cdc.close()


__all__ = ["AFTER_LOAD_BEFORE_ACK", "CRASH_ENV", "CdcSummary", "SetupReport", "TableChanges", "TeardownReport",
           "run_cdc", "setup", "teardown"]
