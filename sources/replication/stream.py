"""The change stream: pgoutput messages from the slot, cut into bounded batches.

`ChangeStream.events()` yields, in WAL order:
- `BatchReady`: changes to load. Its `safe_lsn` is the end of the last *complete* transaction in it
  (None if it holds only part of one); the caller confirms that LSN after the destination committed.
  Batches are cut by rows, bytes and time, so a transaction of any size passes in bounded memory: a
  cut inside a transaction is safe because the server resends the whole transaction from its start
  after a restart and the merge is idempotent.
- `TruncateEvent`: after every change before it was yielded.
- `IdleEvent`: nothing pending and caught up to `lsn` (every transaction committed before it has been
  yielded); confirming it lets an idle slot advance.
The generator ends in drain mode once the stream reached the WAL position of the start of the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sources.postgres.catalog import TableSpec

from .batch import ChangeBatch, GeneratedColumn, LiveTable
from .chunked_copy import LOW, parse_watermark
from .columns import TypeResolver
from .ddl import DdlEvent, ddl_event
from .errors import ReplicationError, TruncateRefused
from .lsn import format_lsn
from .pgoutput import (
    ROW_KINDS,
    Begin,
    Commit,
    Message,
    Relation,
    Truncate,
    Value,
    decode,
    decode_row,
)
from .slot import MARKER_PREFIX
from .walstream import WalStream

log = logging.getLogger("aurora_sync.cdc")
RECENT_TRANSACTIONS = 100_000  # commit LSNs remembered by xid (halved when full): far more than a chunk's read spans


@dataclass
class TrackedTable:
    spec: TableSpec
    snapshot_lsn: int  # transactions that committed before it are already in the snapshot


@dataclass
class BatchReady:
    batch: ChangeBatch
    reason: str  # rows | bytes | time | schema | truncate | end


@dataclass
class TruncateEvent:
    tables: list[LiveTable]
    lsn: int
    commit_time: datetime
    ordinal: int = 0  # its place in the transaction: changes after it in the same transaction survive it


@dataclass
class IdleEvent:
    lsn: int


@dataclass(slots=True)
class WindowChange:
    """One change of a table with a chunk in flight, as decoded: replayed onto the chunk's rows if the chunk's read
    did not see it (`sources.replication.reconcile`)."""

    kind: str  # I, U, D, or T (TRUNCATE)
    table: LiveTable
    old: list[Value] | None
    new: list[Value] | None
    lsn: int  # commit LSN
    ordinal: int
    commit_time: datetime
    xid: int


@dataclass
class Window:
    """Everything the stream saw of one table between a chunk's low and high watermark."""

    table: str  # schema.table
    low_lsn: int
    changes: list[WindowChange] = field(default_factory=list)
    columns_changed: bool = False  # a new shape mid-window: the chunk is read again


@dataclass
class ChunkWatermark:
    """The stream reached a chunk's high watermark: every change before it has been yielded. `window` holds the
    table's changes since the chunk's low watermark; `committed_at(xid)` the commit LSN of a recent transaction."""

    chunk_id: str  # schema.table#index
    table: LiveTable | None
    window: Window
    lsn: int
    committed_at: Callable[[int], int | None] = lambda xid: None


@dataclass
class RelationEvent:
    """A tracked table was announced (first change of it in this stream) or its columns changed. Every change
    of it before this point has been yielded, so the caller may re-copy it and `track()` it anew."""

    table: LiveTable
    changed: bool  # its columns differ from the previous announcement in this stream


@dataclass
class DdlSeen:
    """A tracked table's DDL (captured by `ddl`'s event triggers) at its exact place in the stream: every change
    before it has been yielded; the rest of its transaction follows."""

    ddl: DdlEvent
    lsn: int  # commit LSN of the DDL's transaction


Event = BatchReady | TruncateEvent | IdleEvent | RelationEvent | ChunkWatermark | DdlSeen


@dataclass
class Limits:
    max_batch_rows: int = 100_000
    max_batch_bytes: int = 32 << 20
    max_batch_seconds: float = 5.0
    heartbeat_seconds: float = 60.0
    idle_event_seconds: float = 1.0


class ChangeStream:
    def __init__(
        self,
        wal: WalStream,
        tracked: dict[str, TrackedTable],
        resolver: TypeResolver,
        emit_marker: Callable[[str], int] | None,
        limits: Limits,
        truncate_mode: str,
        start_lsn: int,
        skip: tuple[int, int] | None = None,
    ) -> None:
        self.wal = wal
        self.tracked = tracked
        self.resolver = resolver
        self.emit_marker = emit_marker
        self.limits = limits
        self.truncate_mode = truncate_mode
        self.relations: dict[int, Relation] = {}
        self._live: dict[int, LiveTable | None] = {}
        self.safe_lsn = start_lsn  # every transaction committed before it has been yielded or skipped
        self.messages_seen = 0
        # (final LSN, changes) of a transaction whose first changes were loaded before a restart: the server
        # resends it whole, and those changes are skipped (a replayed delete of a keyless row is not harmless)
        self.skip = skip
        # chunked copies (`chunked_copy`): the watermarks of this run carry `copy_nonce`; an open window collects
        # the keys its table loses between a chunk's low and high watermark
        self.copy_nonce: str | None = None
        self.windows: dict[str, Window] = {}
        # xid -> commit LSN of the latest transactions: a chunk's read must have seen every transaction that committed
        # before its low watermark (`reconcile`), which these tell
        self.recent: dict[int, int] = {}
        self.keep_going: Callable[[], bool] = lambda: False  # a drain does not end while this is true
        self._forget: set[str] = set()

    # -- tables --------------------------------------------------------------------------------
    def track(self, table: TrackedTable) -> None:
        """Start applying changes of a (newly snapshotted) table."""
        self.tracked[table.spec.qualified] = table
        self._live.clear()

    def forget(self, qualified: str) -> None:
        """Drop a table's changes not yielded yet (a copy that begins now covers them)."""
        self._forget.add(qualified)

    def untrack(self, qualified: str) -> None:
        """Stop applying changes of a table (set aside until it is copied again)."""
        self.tracked.pop(qualified, None)
        self._live.clear()

    def _live_table(self, relid: int) -> LiveTable | None:
        if relid in self._live:
            return self._live[relid]
        relation = self.relations.get(relid)
        live: LiveTable | None = None
        if relation is not None and relation.qualified in self.tracked:
            spec = self.tracked[relation.qualified].spec
            columns = [self.resolver.column(c.name, c.type_oid, c.typmod, c.name in spec.primary_key,
                                            spec.overrides.get(c.name)) for c in relation.columns]
            names = [c.name for c in relation.columns]
            missing = [k for k in spec.primary_key if k not in names]
            if missing:
                raise ReplicationError(
                    f"Primary key column(s) {missing} of {spec.qualified} are no longer in the table.")
            generated = [g for g in self.resolver.generated_columns(relation.relid) if g[0] not in names]
            columns += [self.resolver.column(name, oid, typmod, False, spec.overrides.get(name))
                        for name, oid, typmod, _, _ in generated]
            live = LiveTable(spec.qualified, spec.resource_name, spec.primary_key, relation, columns,
                             tuple(names.index(k) for k in spec.primary_key),
                             tuple(GeneratedColumn(name, expr, sql_type) for name, _, _, expr, sql_type in generated))
        self._live[relid] = live
        return live

    # -- the loop ---------------------------------------------------------------------------------
    def _windowed(self, change: WindowChange) -> None:
        for window in self.windows.values():
            if window.table == change.table.qualified:
                window.changes.append(change)

    def _committed(self, xid: int, lsn: int) -> None:
        self.recent[xid] = lsn
        if len(self.recent) > RECENT_TRANSACTIONS:
            for old in list(self.recent)[:len(self.recent) // 2]:
                del self.recent[old]

    def events(self, *, follow: bool, stop: threading.Event | None = None, target_lsn: int = 0,
               marker: str | None = None) -> Iterator[Event]:
        limits = self.limits
        batch = ChangeBatch()
        txn: Begin | None = None
        txn_changes = skipping = 0
        last_heartbeat = time.monotonic()
        last_idle_event = 0.0
        reported_idle = 0
        while True:
            if self._forget:
                for qualified in self._forget:
                    batch.tables.pop(qualified, None)
                self._forget.clear()
            if stop is not None and stop.is_set():
                break
            now = time.monotonic()
            wait = 0.5
            if batch.started is not None:
                wait = max(0.0, min(wait, batch.started + limits.max_batch_seconds - now))
            item = self.wal.read(wait)
            now = time.monotonic()
            if item is None:
                if batch and batch.started is not None and now - batch.started >= limits.max_batch_seconds:
                    yield BatchReady(self._mark(batch, txn, txn_changes), "time")
                    batch = ChangeBatch()
                if txn is None and self.wal.server_wal_end > self.safe_lsn:
                    self.safe_lsn = self.wal.server_wal_end
                if not follow and txn is None and target_lsn and self.safe_lsn >= target_lsn and not self.keep_going():
                    break
                if follow and txn is None and not batch:
                    heartbeat_due = limits.heartbeat_seconds and now - last_heartbeat >= limits.heartbeat_seconds
                    if self.emit_marker and heartbeat_due:
                        self.emit_marker("heartbeat")
                        last_heartbeat = now
                    if self.safe_lsn > reported_idle and now - last_idle_event >= limits.idle_event_seconds:
                        reported_idle, last_idle_event = self.safe_lsn, now
                        yield IdleEvent(self.safe_lsn)
                continue

            self.messages_seen += 1
            data = item[1]
            if data[0] in ROW_KINDS:  # nearly every message: decoded to plain values, no message object
                kind, relid, old, new = decode_row(data)
                if txn is None:
                    continue
                txn_changes += 1
                if skipping:
                    skipping -= 1
                    continue
                live = self._live
                table = live[relid] if relid in live else self._live_table(relid)
                if table is None or txn.final_lsn < self.tracked[table.qualified].snapshot_lsn:
                    continue
                if kind == "I":
                    batch.insert(table, new, txn.final_lsn, txn.commit_time, now, len(data),  # type: ignore[arg-type]
                                 txn_changes)
                elif kind == "U":
                    batch.update(table, old, new, txn.final_lsn, txn.commit_time, now, len(data),  # type: ignore[arg-type]
                                 txn_changes)
                else:
                    batch.delete(table, old, txn.final_lsn, txn.commit_time, now, len(data),  # type: ignore[arg-type]
                                 txn_changes)
                if self.windows:
                    self._windowed(WindowChange(kind, table, old, new, txn.final_lsn, txn_changes, txn.commit_time,
                                                txn.xid))
                if batch.changes >= limits.max_batch_rows or batch.bytes >= limits.max_batch_bytes:
                    yield BatchReady(self._mark(batch, txn, txn_changes),
                                     "rows" if batch.changes >= limits.max_batch_rows else "bytes")
                    batch = ChangeBatch()
                continue
            message = decode(data)
            if isinstance(message, Begin):
                txn = message
                txn_changes = 0
                skipping = self.skip[1] if self.skip and self.skip[0] == message.final_lsn else 0
            elif isinstance(message, Commit):
                if txn is not None:
                    self._committed(txn.xid, txn.final_lsn)
                txn = None
                self.safe_lsn = max(self.safe_lsn, message.end_lsn)
                batch.safe_lsn = message.end_lsn
                if not follow and target_lsn and message.end_lsn >= target_lsn and not self.keep_going():
                    break
                if batch and batch.started is not None and now - batch.started >= limits.max_batch_seconds:
                    yield BatchReady(batch, "time")
                    batch = ChangeBatch()
            elif isinstance(message, Relation):
                previous = self._live_table(message.relid) if message.relid in self.relations else None
                self.relations[message.relid] = message
                self._live.pop(message.relid, None)
                current = self._live_table(message.relid)
                changed = previous is not None and current is not None and previous.shape() != current.shape()
                if changed and current is not None:
                    for window in self.windows.values():
                        if window.table == current.qualified:
                            window.columns_changed = True
                    log.info(f"{current.qualified}: columns changed at {format_lsn(txn.final_lsn if txn else 0)}",
                             extra={"fields": {"table": current.qualified, "phase": "cdc"}})
                    if current.qualified in batch.tables:  # one batch holds one shape per table
                        yield BatchReady(self._mark(batch, txn, txn_changes), "schema")
                        batch = ChangeBatch()
                if current is not None and (changed or previous is None):
                    yield RelationEvent(current, changed)
            elif isinstance(message, Truncate):
                assert txn is not None
                tables = []
                for relid in message.relids:
                    table = self._live_table(relid)
                    if table is not None and txn.final_lsn >= self.tracked[table.qualified].snapshot_lsn:
                        tables.append(table)
                if skipping:  # applied before a restart, like the changes before it (see `skip`)
                    skipping -= 1
                    txn_changes += 1
                    continue
                if tables:
                    names = ", ".join(t.qualified for t in tables)
                    if self.truncate_mode == "fail":
                        raise TruncateRefused(
                            f"TRUNCATE of {names} (transaction committed at {format_lsn(txn.final_lsn)}) and "
                            "`truncate_mode = \"fail\"`: nothing after it was confirmed. Resnapshot the table(s) "
                            "or set truncate_mode = \"apply\" and rerun.")
                    if batch:
                        yield BatchReady(self._mark(batch, txn, txn_changes), "truncate")
                        batch = ChangeBatch()
                txn_changes += 1  # a place in the transaction of its own: what follows it survives it
                if tables:
                    for table in tables:
                        if self.windows:
                            self._windowed(WindowChange("T", table, None, None, txn.final_lsn, txn_changes,
                                                        txn.commit_time, txn.xid))
                    yield TruncateEvent(tables, txn.final_lsn, txn.commit_time, txn_changes)
            elif isinstance(message, Message) and message.transactional:
                ddl = ddl_event(message)
                if ddl is None or txn is None or ddl.replicated_as not in self.tracked:
                    continue
                for window in self.windows.values():  # a chunk read across a DDL of its table is read again
                    if window.table == ddl.replicated_as:
                        window.columns_changed = True
                if batch:
                    yield BatchReady(self._mark(batch, txn, txn_changes), "ddl")
                    batch = ChangeBatch()
                yield DdlSeen(ddl, txn.final_lsn)
            elif isinstance(message, Message) and not message.transactional and message.prefix == MARKER_PREFIX:
                if txn is None:
                    self.safe_lsn = max(self.safe_lsn, message.lsn)
                watermark = parse_watermark(message.content.decode()) if self.copy_nonce else None
                if watermark is not None and watermark[1] == self.copy_nonce:
                    kind, _, chunk_id = watermark
                    if kind == LOW:
                        self.windows[chunk_id] = Window(chunk_id.rsplit("#", 1)[0], message.lsn)
                    elif chunk_id in self.windows:
                        if batch:  # the chunk lands after every change before its high watermark
                            yield BatchReady(self._mark(batch, txn, txn_changes), "chunk")
                            batch = ChangeBatch()
                        qualified = chunk_id.rsplit("#", 1)[0]
                        live = next((t for t in self._live.values() if t is not None and t.qualified == qualified),
                                    None)
                        yield ChunkWatermark(chunk_id, live, self.windows.pop(chunk_id), message.lsn,
                                             self.recent.get)
                if not follow and marker is not None and message.content == marker.encode() and not self.keep_going():
                    break
            # TypeInfo and Origin need no action: types are looked up by OID
        if batch:
            yield BatchReady(self._mark(batch, txn, txn_changes), "end")
        yield IdleEvent(self.safe_lsn)

    @staticmethod
    def _mark(batch: ChangeBatch, txn: Begin | None, txn_changes: int) -> ChangeBatch:
        """A batch cut inside a transaction records how far into it it goes (see `skip`)."""
        batch.partial = (txn.final_lsn, txn_changes) if txn is not None else None
        return batch
