"""The streaming loop: read bounded batches from the slot, write each through the sink, then confirm it.

Order of operations for every batch (docs/cdc.md):
1. read changes from the slot until `max_batch_rows`/`max_batch_bytes`/`max_batch_seconds`;
2. convert them to the change format, values the WAL left out (unchanged TOAST) as markers;
3. the sink commits the batch and the new confirmed LSN in one package (the direct sink applies it to the warehouse
   under the apply invariant, `pipelines.apply`; the landing sink lands it in S3);
4. only then tell the server that LSN is flushed.
A crash between 3 and 4 replays the batch, which changes nothing it already did; the slot is never ahead of the state
we committed, so a slot that is ahead proves that changes were consumed elsewhere (lost to us).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import dlt
import psycopg2
import pyarrow as pa

from pipelines.apply import key_texts
from pipelines.isolation import TableLoadFailed, describe, is_about_no_table
from pipelines.ops import Op
from pipelines.progress import FAILPOINT_ENV, crash_at
from sources.postgres.catalog import matches
from sources.postgres.errors import SourceConfigError
from sources.replication import table_hints
from sources.replication.batch import ChangeBatch, TableChanges, prepare
from sources.replication.chunked_copy import CopyJob
from sources.replication.columns import arrays_to_json
from sources.replication.errors import ReplicationError
from sources.replication.lsn import format_lsn
from sources.replication.pgoutput import UNCHANGED
from sources.replication.slot import (
    current_wal_lsn,
    drop_slot,
    emit_marker,
    server_version,
    slot_health,
    wal_sender_timeout_seconds,
)
from sources.replication.stream import (
    BatchReady,
    ChangeStream,
    ChunkWatermark,
    DdlSeen,
    IdleEvent,
    Limits,
    RelationEvent,
    TrackedTable,
    TruncateEvent,
)
from sources.replication.walstream import WalStream

from . import copies, health, tables
from .context import Cdc
from .rereads import Rereads
from .summary import LANDING_LAGS_KEPT, CdcSummary, event

# fault-test hook (the project's failpoint convention): AURORA_SYNC_FAILPOINT=after_load_before_ack kills the process
# once a batch is in the destination but before the server heard about it
CRASH_ENV = FAILPOINT_ENV
AFTER_LOAD_BEFORE_ACK = "after_load_before_ack"
# CDC state key: (final LSN, changes) of a transaction whose first changes are loaded but that is not complete
PARTIAL_TXN_KEY = "partial_txn"
# Collector thresholds while CDC runs. A batch is 100k changes, each a few new container objects (its values, its
# RowChange) that live until the batch is loaded: with the default (700, 10, 10) the collector ran every ~200 changes
# and walked the whole batch again and again, a third of the time spent building batches. Every 20k allocations
# keeps cyclic garbage (dlt's) as bounded as before.
GC_THRESHOLDS = (20_000, 10, 10)
_gc_lock = threading.Lock()
_gc_users: list[tuple[int, int, int]] = []  # the thresholds before the first concurrent run, once per running run


@contextmanager
def _relaxed_gc() -> Iterator[None]:
    """`GC_THRESHOLDS` while at least one CDC run is in this process; the previous thresholds after the last."""
    with _gc_lock:
        _gc_users.append(gc.get_threshold())
        if len(_gc_users) == 1:
            gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        with _gc_lock:
            previous = _gc_users.pop()
            if not _gc_users:
                gc.set_threshold(*previous)


def run_cdc(
    pipeline: dlt.Pipeline,
    *,
    follow: bool = False,
    tables: list[str] | None = None,
    stop: threading.Event | None = None,
    settings: Any = None,
    dead_letter_url: str | None = None,
    on_progress: Callable[[CdcSummary], None] | None = None,
) -> CdcSummary:
    """Stream changes from the slot into the pipeline's destination.

    follow=False drains: it stops once everything committed before the run started is loaded and confirmed.
    follow=True streams until `stop` is set (the runner sets it on SIGTERM), then loads the current batch, confirms
    it and returns. `tables` (patterns) are re-copied alone before streaming; CDC always streams every published
    table, since the slot's position is shared by all of them. `settings` default to dlt config
    (`replication_settings()`); `dead_letter_url` overrides theirs. `on_progress` is called after every loaded batch
    and whenever the stream is idle and caught up, so a long follow run can report liveness without waiting for its
    end.
    """
    started = time.monotonic()
    cdc = Cdc(pipeline, settings, dead_letter_url)
    cdc.on_progress = on_progress or (lambda summary: None)
    try:
        with _relaxed_gc():
            return run(cdc, follow=follow, resnapshot_patterns=tables, stop=stop, started=started)
    finally:
        cdc.close()


def run(cdc: Cdc, *, follow: bool, resnapshot_patterns: list[str] | None, stop: threading.Event | None,
        started: float) -> CdcSummary:
    settings, summary = cdc.settings, cdc.summary
    cdc.sink.finish_pending()
    state = cdc.state()
    specs = cdc.discover()
    slot = slot_health(cdc.meta, cdc.slot)
    if health.check_health(cdc, slot, state) is not None:
        if slot is not None:
            drop_slot(cdc.meta, cdc.slot)
        copies.add_to_publication(cdc, specs)
        copies.bootstrap(cdc, specs)
        state = cdc.state()
        slot = slot_health(cdc.meta, cdc.slot)
    assert slot is not None
    summary.start_lsn = format_lsn(slot.confirmed_flush_lsn)
    health.retained_wal(cdc, slot, final=False)
    confirmed = int(state.get("confirmed_lsn") or slot.confirmed_flush_lsn or 0)

    # tables configured (or created in a replicated schema) since the last run, set aside before, changed in ways
    # the WAL does not show, and forced resnapshots
    forced = [s for s in specs if resnapshot_patterns and matches(s.qualified, resnapshot_patterns)]
    if resnapshot_patterns and not forced:
        raise SourceConfigError(f"--tables {' '.join(resnapshot_patterns)} matched no replicated table.")
    plan = tables.plan_tables(cdc, specs, state, forced)
    jobs = copies.pending_copies(cdc, specs, state)  # chunked copies an earlier run left unfinished
    exported = []
    for spec in plan.copy:
        job = copies.begin_copy(cdc, spec, drop=spec.resource_name in plan.reload)
        if job is None:
            exported.append(spec)
        else:
            jobs[spec.qualified] = job
    if exported:
        _, copied = copies.snapshot_alone(cdc, exported, reload=plan.reload)
        tables.note_recovered(cdc, state, copied)
    state = cdc.state()

    # tables no longer configured (excluded or dropped) stop being applied
    snapshotted = state.get("tables", {})
    tracked = {s.qualified: TrackedTable(s, int(snapshotted[s.qualified]["snapshot_lsn"]))
               for s in specs if s.qualified in snapshotted}
    version = server_version(cdc.meta)
    status_interval = max(1.0, min(settings.status_interval_seconds, wal_sender_timeout_seconds(cdc.meta) / 4 or 10))
    wal = WalStream(cdc.dsn, cdc.slot, cdc.publication, messages=version >= 140000, status_interval=status_interval)
    # what our committed state says is loaded; after a crash between load and confirmation it is ahead of the slot,
    # and starting there skips the transactions that are already in the destination
    wal.flush_lsn = confirmed
    wal.start(confirmed)
    try:
        _stream(cdc, wal, tracked, follow=follow, stop=stop, confirmed=confirmed, messages=version >= 140000,
                jobs=jobs, specs={s.qualified: s for s in specs})
    finally:
        wal.close()
    summary.end_lsn = format_lsn(wal.flush_lsn)
    summary.stopped_by = "stop" if stop is not None and stop.is_set() else "drained"
    final = health.wait_for_slot(cdc, wal.flush_lsn)
    summary.duration = round(time.monotonic() - started, 3)
    health.retained_wal(cdc, final, final=True)
    event("cdc run finished", **{k: v for k, v in summary.as_fields().items() if k != "changes"})
    return summary


def _stream(cdc: Cdc, wal: WalStream, tracked: dict[str, TrackedTable], *, follow: bool,
            stop: threading.Event | None, confirmed: int, messages: bool, jobs: dict[str, CopyJob],
            specs: dict[str, Any]) -> None:
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
                event(f"pg_logical_emit_message is not allowed ({str(exc).strip()}): drains end on keepalives "
                      "and follow mode writes no heartbeats", logging.WARNING)
        return 0

    state = cdc.state()
    partial = state.get(PARTIAL_TXN_KEY)
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

    running = copies.Copies(cdc, stream, jobs)
    for qualified, entry in state.get("tables", {}).items():
        if entry.get(copies.REPAIRS_KEY) and qualified in specs:
            running.resume_repairs(specs[qualified], entry[copies.REPAIRS_KEY])
    rereads = Rereads(cdc, stream, running)
    rereads.take()
    try:
        _events(cdc, wal, stream, running, rereads, follow=follow, stop=stop, target=target, token=token,
                record=record, position=position)
        rereads.finish()
    finally:
        running.close()


def _events(cdc: Cdc, wal: WalStream, stream: ChangeStream, running: copies.Copies, rereads: Rereads, *,
            follow: bool, stop: threading.Event | None, target: int, token: str | None, record: Any,
            position: dict[str, int]) -> None:
    settings = cdc.settings
    last_table_check = last_reread_check = time.monotonic()
    for item in stream.events(follow=follow, stop=stop, target_lsn=target, marker=token):
        running.poll()
        if isinstance(item, BatchReady):
            _load_batch(cdc, wal, stream, running, item.batch, item.reason, position, record)
        elif isinstance(item, ChunkWatermark):
            with wal.kept_alive():
                running.reached(item)
            rereads.finish()
        elif isinstance(item, RelationEvent):
            tables.relation_announced(cdc, wal, stream, item, running)
        elif isinstance(item, DdlSeen):
            tables.ddl_seen(cdc, wal, stream, running, item)
        elif isinstance(item, TruncateEvent):
            with wal.kept_alive():
                _truncate(cdc, item)
        elif isinstance(item, IdleEvent) and item.lsn - position["confirmed"] >= max(1, settings.idle_ack_bytes):
            # caught up with nothing pending: record, then confirm, the position so an idle slot advances
            with wal.kept_alive():
                cdc.save_state(record(item.lsn))
            crash_at(AFTER_LOAD_BEFORE_ACK)
            wal.confirm(item.lsn)
            position["confirmed"] = item.lsn
            event("idle position confirmed", lsn=format_lsn(item.lsn))
        if isinstance(item, IdleEvent):
            cdc.on_progress(cdc.summary)
        if follow and time.monotonic() - last_table_check >= settings.new_table_check_seconds:
            last_table_check = time.monotonic()
            tables.follow_new_tables(cdc, wal, stream, running)
        if follow and time.monotonic() - last_reread_check >= settings.reread_check_seconds:
            last_reread_check = time.monotonic()
            with wal.kept_alive():
                rereads.take()


def _truncate(cdc: Cdc, truncate: TruncateEvent) -> None:
    """TRUNCATE at the source: every row of the table older than it goes (hard) or is marked deleted (soft)."""
    cdc.write([Op("truncate", t.resource_name, t.merge_key, {}, lsn=truncate.lsn, ordinal=truncate.ordinal,
                  commit_time=truncate.commit_time, delete_mode=cdc.settings.delete_mode) for t in truncate.tables])
    for table in truncate.tables:
        cdc.summary.table(table.resource_name).truncates += 1
        event("truncate " + ("landed" if cdc.lands else "applied"), table=table.resource_name,
              lsn=format_lsn(truncate.lsn), mode=cdc.settings.delete_mode)


def _moves_to_repair(changes: TableChanges) -> list[list[Any]]:
    """Keys a key update moved onto with a value the WAL did not carry (unchanged TOAST), while the table is being
    copied: the version they take it from may not be in the destination yet, so they are read again."""
    table = changes.table
    keys = []
    for key, row in changes.rows.items():
        if row.op == "U" and row.lookup_key != key and any(v is UNCHANGED for v in row.values):
            keys.append([None if v is None else bytes(v).decode() for v in key])  # type: ignore[arg-type]
    return keys if table.key_positions else []


def _load_batch(cdc: Cdc, wal: WalStream, stream: ChangeStream, running: copies.Copies, batch: ChangeBatch,
                reason: str, position: dict[str, int], record: Any) -> None:
    settings, summary = cdc.settings, cdc.summary
    started = time.monotonic()
    ops: dict[str, Op] = {}
    repairs: dict[str, list[Any]] = {}  # table -> repair entries scheduled by this batch (committed with it)
    with wal.kept_alive():
        for changes in batch.tables.values():
            table = changes.table
            try:
                rows = _prepare_table(cdc, changes)
            except (psycopg2.Error, ReplicationError) as exc:
                if is_about_no_table(exc):
                    raise
                _set_aside(cdc, stream, table.qualified, "extract", describe(exc))
                continue
            counts = summary.table(table.resource_name)
            counts.inserts += changes.inserts
            counts.updates += changes.updates
            counts.deletes += changes.deletes
            if running.active(table.qualified):
                scheduled = running.repair(stream.tracked[table.qualified].spec, _moves_to_repair(changes))
                if scheduled is not None:
                    repairs.setdefault(table.qualified, []).append(list(scheduled))
            ops[table.qualified] = Op("changes", table.resource_name, table.merge_key,
                                      table_hints(table.columns, settings.delete_mode, keyless=table.keyless),
                                      [rows], lsn=batch.safe_lsn or 0, commit_time=batch.newest_commit_time,
                                      delete_mode=settings.delete_mode)
        ack = batch.safe_lsn if batch.safe_lsn is not None and batch.safe_lsn > position["confirmed"] else None

        def unresolved(table: str, keys: pa.Table) -> None:
            """Direct sink: versions it had to write as tombstones. Where no copy of the table is under way to bring
            them (or a repair already scheduled above), their keys are read again."""
            qualified = next((q for q, op in ops.items() if op.table == table), None)
            if qualified is None or running.active(qualified) or qualified not in stream.tracked:
                return
            scheduled = running.repair(stream.tracked[qualified].spec, key_texts(keys))
            if scheduled is not None:
                repairs.setdefault(qualified, []).append(list(scheduled))

        while True:
            try:
                progress = record(ack if ack is not None else position["confirmed"], batch.partial)

                def update(state: dict[str, Any], progress: Any = progress) -> None:
                    progress(state)
                    for qualified, entries in repairs.items():
                        entry = state.get("tables", {}).get(qualified)
                        if entry is not None:
                            entry.setdefault(copies.REPAIRS_KEY, []).extend(entries)

                cdc.write(list(ops.values()), update, on_unresolved=unresolved)
                break
            except TableLoadFailed as failure:
                # the package was aborted: find the table(s) at fault, set them aside, write the rest with the LSN
                by_resource = {op.table: q for q, op in ops.items()}
                culprits = [by_resource[failure.table]] if failure.table in by_resource else [
                    q for q, op in ops.items() if _fails_alone(cdc, op)]
                if not culprits or (failure.table not in by_resource and len(culprits) == len(ops)):
                    raise  # no table, or every table alone: the cause is not a table's; nothing is set aside
                for qualified in culprits:
                    _set_aside(cdc, stream, qualified, failure.step, failure.error)
                    ops.pop(qualified)
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
    event("cdc batch " + ("landed" if cdc.lands else "loaded"), reason=reason, changes=batch.changes,
          rows=sum(len(t.rows) for t in batch.tables.values()), tables=sorted(batch.tables),
          confirmed_lsn=format_lsn(position["confirmed"]), lag_s=summary.lag_seconds,
          **({"landing_lag_s": summary.landing_lags[-1]} if cdc.lands and summary.landing_lags else {}),
          duration_s=round(time.monotonic() - started, 3))
    cdc.on_progress(summary)


def _prepare_table(cdc: Cdc, changes: TableChanges) -> pa.Table:
    """One table of a batch in the change format: converted, markers where the WAL left values out, dead letters
    written."""
    prepared = prepare(changes, cdc.settings.delete_mode,
                       lambda column, values: arrays_to_json(cdc.query, column, values),
                       generated=cdc.generated_values)
    cdc.dead_letter(changes.table.resource_name, list(changes.table.primary_key), prepared.rejected)
    cdc.summary.filled_rows += prepared.fill_rows
    return prepared.rows


def _fails_alone(cdc: Cdc, op: Op) -> bool:
    """Write one table's part of a batch on its own, without moving the position: a failure that named no table is
    narrowed down this way (the apply is idempotent, so writing a part twice is harmless)."""
    try:
        cdc.write([op])
        return False
    except TableLoadFailed:
        return True


def _set_aside(cdc: Cdc, stream: ChangeStream, qualified: str, step: str, error: str) -> None:
    tracked = stream.tracked.get(qualified)
    if tracked is not None:
        stream.untrack(qualified)
        cdc.set_aside(tracked.spec, step, error)
