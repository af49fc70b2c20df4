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
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from pipelines.progress import FAILPOINT_ENV, crash_at
from sources.postgres import dead_letters
from sources.postgres.catalog import TableSpec, discover_tables, matches
from sources.postgres.errors import SourceConfigError
from sources.postgres.session import make_engine
from sources.replication import (
    SOURCE_NAME,
    STATE_KEY,
    ReplicationSettings,
    cdc_batch,
    cdc_snapshot,
    replication_settings,
    table_hints,
)
from sources.replication.batch import DELETED_AT_COLUMN, LSN_COLUMN, ChangeBatch, PreparedTable, apply_fill, prepare
from sources.replication.columns import TypeResolver, arrays_to_json
from sources.replication.errors import (
    PrerequisiteMissing,
    PublicationError,
    RetainedWalExceeded,
    SlotAheadOfState,
    SlotInUse,
    SlotInvalidated,
    SlotMissing,
)
from sources.replication.lsn import format_lsn
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
    wal_sender_timeout_seconds,
)
from sources.replication.snapshot import TableSnapshot
from sources.replication.stream import BatchReady, ChangeStream, IdleEvent, Limits, TrackedTable, TruncateEvent
from sources.replication.walstream import WalStream

log = logging.getLogger("aurora_sync.cdc")
# fault-test hook (the project's failpoint convention): AURORA_SYNC_FAILPOINT=after_load_before_ack kills
# the process once a batch is in the destination but before the server heard about it
CRASH_ENV = FAILPOINT_ENV
AFTER_LOAD_BEFORE_ACK = "after_load_before_ack"


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

    def table(self, name: str) -> TableChanges:
        return self.changes.setdefault(name, TableChanges())

    @property
    def total_changes(self) -> int:
        return sum(c.inserts + c.updates + c.deletes + c.truncates for c in self.changes.values())

    def as_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["total_changes"] = self.total_changes
        return fields


def _state(pipeline: dlt.Pipeline) -> dict[str, Any]:
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(STATE_KEY, {}))


class _Cdc:
    """One pipeline's CDC context: settings, names, source sessions and destination helpers."""

    def __init__(self, pipeline: dlt.Pipeline, settings: ReplicationSettings | None = None,
                 dead_letter_url: str | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings or replication_settings()
        if dead_letter_url:
            self.settings.dead_letter_url = dead_letter_url
        self.slot = self.settings.slot_name or object_name(pipeline.pipeline_name)
        self.publication = self.settings.publication_name or object_name(pipeline.pipeline_name)
        self.dsn = self.settings.dsn
        self.meta = connect(self.dsn, statement_timeout_ms=60_000)
        self.summary = CdcSummary()
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

    # -- destination -----------------------------------------------------------------------------------
    def run(self, source: Any) -> None:
        info = self.pipeline.run(source)
        info.raise_on_failed_jobs()
        if self.pipeline.has_pending_data:  # never confirm an LSN whose package did not load
            raise RuntimeError("dlt left a load package pending after a successful run; not confirming.")

    def finish_pending(self) -> None:
        self.pipeline.sync_destination()
        if self.pipeline.has_pending_data:
            _event("loading packages left by an interrupted run")
            if self.pipeline.list_extracted_load_packages():
                self.pipeline.normalize()
            self.pipeline.load().raise_on_failed_jobs()

    def save_state(self, update: Any) -> None:
        """A load with no rows, only dlt state: used to record a position before confirming it."""
        self.run(cdc_batch([], update))

    def current_rows(self, prepared: PreparedTable) -> pa.Table | None:
        """The destination's current values of the rows a batch must complete (unchanged TOAST, tombstones)."""
        assert prepared.fill_keys is not None
        schema = self.pipeline.schemas.get(SOURCE_NAME)
        table_schema = schema.tables.get(prepared.table.resource_name) if schema else None
        if not table_schema:
            return None
        known = table_schema.get("columns", {})
        keys = list(prepared.fill_keys.column_names)
        wanted = [c for c in prepared.fill_masks if c in known]
        unique = sorted({k for k in zip(*(prepared.fill_keys[c].to_pylist() for c in keys), strict=True)
                         if k[0] is not None}, key=repr)
        if not unique:
            return None
        rows: list[tuple[Any, ...]] = []
        with self.pipeline.sql_client(SOURCE_NAME) as client:
            escape = client.escape_column_name
            selected = ", ".join(escape(c) for c in [*keys, *wanted])
            target = client.make_qualified_table_name(prepared.table.resource_name)
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                if len(keys) == 1:
                    where = f"{escape(keys[0])} IN ({', '.join(['%s'] * len(chunk))})"
                    params = [k[0] for k in chunk]
                else:
                    one = "(" + " AND ".join(f"{escape(k)} = %s" for k in keys) + ")"
                    where = " OR ".join([one] * len(chunk))
                    params = [v for k in chunk for v in k]
                try:
                    rows += client.execute_sql(f"SELECT {selected} FROM {target} WHERE {where}", *params) or []
                except DatabaseUndefinedRelation:
                    return None
        names = [*keys, *wanted]
        return pa.table({n: pa.array([r[i] for r in rows]) for i, n in enumerate(names)}) if rows else None

    def apply_truncate(self, event: TruncateEvent) -> None:
        """TRUNCATE at the source: delete the destination rows (hard) or mark them deleted (soft)."""
        with self.pipeline.sql_client(SOURCE_NAME) as client:
            for table in event.tables:
                target = client.make_qualified_table_name(table.resource_name)
                try:
                    if self.settings.delete_mode == "hard":
                        client.execute_sql(f"DELETE FROM {target}")
                    else:
                        client.execute_sql(
                            f"UPDATE {target} SET {client.escape_column_name(DELETED_AT_COLUMN)} = %s, "
                            f"{client.escape_column_name(LSN_COLUMN)} = %s "
                            f"WHERE {client.escape_column_name(DELETED_AT_COLUMN)} IS NULL",
                            event.commit_time, event.lsn)
                except DatabaseUndefinedRelation:
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
    def snapshot(self, specs: list[TableSpec], snapshot_name: str, lsn: int, *, new_slot: bool) -> None:
        """Copy `specs` under an exported snapshot, one load per table, recording each as it lands."""
        settings = self.settings
        for spec in specs:
            snap = TableSnapshot(self.dsn, snapshot_name, spec, lsn, delete_mode=settings.delete_mode,
                                 block_size=settings.block_size_bytes,
                                 statement_timeout_ms=settings.statement_timeout_ms)
            columns = snap.open()
            started = time.monotonic()

            def update(state: dict[str, Any], spec: TableSpec = spec) -> None:
                state["slot"], state["publication"] = self.slot, self.publication
                if new_slot:
                    state["confirmed_lsn"] = lsn  # a new slot starts a new history
                    if spec is specs[0]:
                        state["tables"] = {}
                state.setdefault("tables", {})[spec.qualified] = {
                    "snapshot_lsn": lsn, "resource": spec.resource_name, "primary_key": list(spec.primary_key),
                    "snapshot_at": datetime.now(UTC).isoformat(),
                }

            self.run(cdc_snapshot(spec.resource_name, list(spec.primary_key),
                                  table_hints(columns, settings.delete_mode, merge=False), snap.read, update))
            self.dead_letter(spec.resource_name, list(spec.primary_key), snap.rejected)
            self.summary.snapshots[spec.resource_name] = snap.rows
            _event("table snapshotted", table=spec.resource_name, rows=snap.rows, lsn=format_lsn(lsn),
                   duration_s=round(time.monotonic() - started, 3))

    def bootstrap(self, specs: list[TableSpec]) -> int:
        """Create the slot and copy every table under its exported snapshot; returns its start LSN."""
        with create_slot(self.dsn, self.slot) as exported:
            _event("replication slot created", slot=self.slot, lsn=format_lsn(exported.consistent_lsn))
            if specs:
                self.snapshot(specs, exported.snapshot_name, exported.consistent_lsn, new_slot=True)
            else:
                self.save_state(lambda s: s.update(slot=self.slot, publication=self.publication,
                                                   confirmed_lsn=exported.consistent_lsn, tables={}))
            return exported.consistent_lsn

    def snapshot_alone(self, specs: list[TableSpec], keep_alive: WalStream | None = None) -> int:
        """Snapshot tables added later under a temporary slot's snapshot, while the main slot keeps its
        position: the stream skips their transactions that committed before the snapshot's LSN."""
        temporary = f"{self.slot[:44]}_tmp_{uuid.uuid4().hex[:8]}"
        context = keep_alive.kept_alive() if keep_alive is not None else nullcontext()
        with context, create_slot(self.dsn, temporary, temporary=True) as exported:
            self.snapshot(specs, exported.snapshot_name, exported.consistent_lsn, new_slot=False)
            return exported.consistent_lsn

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
    cdc.finish_pending()
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

    # tables configured (or created in a replicated schema) since the last run, and forced resnapshots
    tracked_names = set(state.get("tables", {}))
    forced = [s for s in specs if resnapshot_patterns and matches(s.qualified, resnapshot_patterns)]
    if resnapshot_patterns and not forced:
        raise SourceConfigError(f"--tables {' '.join(resnapshot_patterns)} matched no replicated table.")
    present = publication_tables(cdc.meta, cdc.publication)
    dropped_out = [s for s in specs if s.qualified in tracked_names and s.qualified not in present]
    new = [s for s in specs if s.qualified not in tracked_names]
    to_snapshot = {s.qualified: s for s in [*new, *dropped_out, *forced]}
    if to_snapshot:
        if not settings.auto_add_tables:
            missing = [s for s in to_snapshot.values() if s.qualified not in present]
            summary.pending_tables = [s.qualified for s in missing]
            for spec in missing:
                to_snapshot.pop(spec.qualified)
        else:
            for spec in cdc.add_to_publication(list(to_snapshot.values())):
                summary.pending_tables.append(spec.qualified)
                to_snapshot.pop(spec.qualified)
        if to_snapshot:
            cdc.snapshot_alone(list(to_snapshot.values()))
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
        _stream(cdc, wal, tracked, follow=follow, stop=stop, confirmed=confirmed, messages=version >= 140000)
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
            stop: threading.Event | None, confirmed: int, messages: bool) -> None:
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

    stream = ChangeStream(wal, tracked, cdc.resolver(), marker if messages else None, limits,
                          settings.truncate_mode, confirmed)
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
    last_table_check = time.monotonic()

    def record(lsn: int) -> Any:
        def update(state: dict[str, Any]) -> None:
            state["slot"], state["publication"] = cdc.slot, cdc.publication
            state["confirmed_lsn"] = max(int(state.get("confirmed_lsn") or 0), lsn)
            state["confirmed_at"] = datetime.now(UTC).isoformat()
        return update

    for event in stream.events(follow=follow, stop=stop, target_lsn=target, marker=token):
        if isinstance(event, BatchReady):
            _load_batch(cdc, wal, event.batch, event.reason, position, record)
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
            _follow_new_tables(cdc, wal, stream)


def _load_batch(cdc: _Cdc, wal: WalStream, batch: ChangeBatch, reason: str, position: dict[str, int],
                record: Any) -> None:
    settings, summary = cdc.settings, cdc.summary
    started = time.monotonic()
    loads: list[tuple[str, list[str], dict[str, Any], pa.Table]] = []
    with wal.kept_alive():
        for changes in batch.tables.values():
            table = changes.table
            prepared = prepare(changes, settings.delete_mode,
                               lambda column, values: arrays_to_json(cdc.query, column, values))
            arrow = prepared.arrow
            if prepared.fill_masks:
                summary.filled_rows += prepared.fill_rows
                arrow, unresolved = apply_fill(prepared, cdc.current_rows(prepared), settings.delete_mode)
                if unresolved:
                    summary.unresolved_toast_rows += unresolved
                    _event("unchanged TOAST values not found in the destination; left NULL", logging.WARNING,
                           table=table.resource_name, rows=unresolved)
            cdc.dead_letter(table.resource_name, list(table.primary_key), prepared.rejected)
            counts = summary.table(table.resource_name)
            counts.inserts += changes.inserts
            counts.updates += changes.updates
            counts.deletes += changes.deletes
            loads.append((table.resource_name, list(table.primary_key),
                          table_hints(table.columns, settings.delete_mode), arrow))
        ack = batch.safe_lsn if batch.safe_lsn is not None and batch.safe_lsn > position["confirmed"] else None
        cdc.run(cdc_batch(loads, record(ack if ack is not None else position["confirmed"])))
    crash_at(AFTER_LOAD_BEFORE_ACK)
    if ack is not None:
        wal.confirm(ack)
        position["confirmed"] = ack
    summary.batches += 1
    if batch.newest_commit_time is not None:
        summary.lag_seconds = round(max(0.0, (datetime.now(UTC) - batch.newest_commit_time).total_seconds()), 3)
    _event("cdc batch loaded", reason=reason, changes=batch.changes, rows=sum(len(t.rows) for t in
           batch.tables.values()), tables=sorted(batch.tables), confirmed_lsn=format_lsn(position["confirmed"]),
           lag_s=summary.lag_seconds, duration_s=round(time.monotonic() - started, 3))
    cdc.on_progress(summary)


def _follow_new_tables(cdc: _Cdc, wal: WalStream, stream: ChangeStream) -> None:
    """Follow mode: snapshot tables created or configured since the stream started, without stopping it."""
    specs = cdc.discover()
    new = [s for s in specs if s.qualified not in stream.tracked]
    if not new or not cdc.settings.auto_add_tables:
        return
    pending = {s.qualified for s in cdc.add_to_publication(new)}
    ready = [s for s in new if s.qualified not in pending]
    cdc.summary.pending_tables = sorted(pending)
    if ready:
        lsn = cdc.snapshot_alone(ready, keep_alive=wal)
        for spec in ready:
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
        report.problems = check_prerequisites(cdc.meta, specs, cdc.slot, slot_needed=health is None or resnapshot)
        if check_only:
            return report
        if report.problems:
            raise PrerequisiteMissing("Logical replication prerequisites are missing:\n- " +
                                      "\n- ".join(report.problems))
        if health is not None and health.active:
            raise SlotInUse(f"Replication slot {cdc.slot!r} is in use by PID {health.active_pid}: stop the running "
                            "sync before running setup.")
        cdc.finish_pending()
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
            state = _state(pipeline)
            if state.get("confirmed_lsn") is None:  # the slot exists but this destination never used it
                cdc.save_state(lambda s: s.update(slot=cdc.slot, publication=cdc.publication,
                                                  confirmed_lsn=health.confirmed_flush_lsn, tables={}))
                state = _state(pipeline)
            todo = [s for s in specs if s.qualified not in state.get("tables", {})]
            if todo:
                cdc.snapshot_alone(todo)
            report.start_lsn = format_lsn(health.confirmed_flush_lsn)
        report.snapshots = dict(cdc.summary.snapshots)
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
        if _state(pipeline):
            cdc.save_state(lambda s: s.clear())
        _event("cdc teardown finished", slot=cdc.slot, slot_dropped=report.slot_dropped,
               publication_dropped=report.publication_dropped)
        return report
    finally:
        cdc.close()


__all__ = ["AFTER_LOAD_BEFORE_ACK", "CRASH_ENV", "CdcSummary", "SetupReport", "TableChanges", "TeardownReport",
           "run_cdc", "setup", "teardown"]
