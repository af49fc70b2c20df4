"""The initial copy of a table for CDC in chunks, reconciled with the change stream by watermarks (DBLog).

Copying a table under the slot's exported snapshot keeps one transaction open for the whole copy: for a terabyte,
hours of a pinned xmin horizon on the production writer. Instead (Netflix DBLog, Flink CDC's incremental
snapshot, Debezium's incremental snapshots), the stream applies the table's changes from the moment its copy
starts, and each key-range chunk is read in its own short transaction between two markers written into the WAL
with `pg_logical_emit_message` (no table is written):

    low watermark (LW) → SELECT the chunk (READ ONLY, seconds) → high watermark (HW)

When the stream reaches the HW, every change committed before it has been applied. A row of the chunk is then
appended unless the stream already has a say about its key: it is in the destination (a change since the copy
began put it there; the chunk's copy could be older) or it was deleted between LW and HW (the chunk may have read
it before the delete). Everything else the chunk holds is current as of the HW, and later changes come after it.
The destination table is emptied when the copy begins, so the appended rows never meet a stale copy.

A reader thread per worker reads chunks ahead of the stream and spills each one to an Arrow IPC file, so memory
stays bounded by the Arrow block size whatever the chunk size. Chunks may be read from the reader endpoint: the
reader waits until its replay passed the chunk's LW, so it never hands back a row older than that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from sources.postgres.catalog import TableSpec
from sources.postgres.chunking import Chunk, ChunkRead, SnapshotSettings, Throttle, paced, wait_until_calm
from sources.postgres.copy_loader import copy_to_arrow

from .columns import ColumnSpec
from .lsn import parse_lsn
from .slot import MARKER_PREFIX, connect, emit_marker, qualified_identifier

log = logging.getLogger("aurora_sync.cdc")
LOW, HIGH = "copy-lw", "copy-hw"
XID_EPOCH = 1 << 32


@dataclass(frozen=True)
class TxSnapshot:
    """A transaction snapshot (`pg_current_snapshot()`): which transactions a read saw."""

    xmin: int  # 64-bit transaction ids, as PostgreSQL 13+ prints them
    xmax: int
    xip: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str) -> TxSnapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    @classmethod
    def read(cls, conn: Any) -> TxSnapshot:
        """The snapshot of `conn`'s transaction (REPEATABLE READ: the first statement fixes it for the rest)."""
        with conn.cursor() as cur:
            function = "pg_current_snapshot" if conn.server_version >= 130000 else "txid_current_snapshot"
            cur.execute(f"SELECT {function}()::text")
            return cls.parse(cur.fetchone()[0])

    def full(self, xid: int) -> int:
        """A 32-bit xid (pgoutput sends those) as the 64-bit id nearest to this snapshot's horizon."""
        candidate = (self.xmax & ~(XID_EPOCH - 1)) | (xid & (XID_EPOCH - 1))
        if candidate >= self.xmax + XID_EPOCH // 2:
            candidate -= XID_EPOCH
        elif candidate < self.xmax - XID_EPOCH // 2:
            candidate += XID_EPOCH
        return candidate

    def visible(self, xid: int) -> bool:
        """Whether a committed transaction's changes are in what this snapshot reads."""
        full = self.full(xid)
        return full < self.xmin or (full < self.xmax and full not in self.xip)

    def in_progress(self) -> list[int]:
        """The 32-bit ids of the transactions running when it was taken."""
        return [x & (XID_EPOCH - 1) for x in self.xip]


def key_list_predicate(spec: TableSpec, key_types: Sequence[str],
                       keys: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """`WHERE` for exactly these keys (text values as PostgreSQL prints them), usable by the key's index."""
    names = ['"' + k.replace('"', '""') + '"' for k in spec.primary_key]
    columns = [[None if key[i] is None else str(key[i]) for key in keys] for i in range(len(names))]
    if len(names) == 1:
        return f"{names[0]} = ANY(%s::{key_types[0]}[])", [columns[0]]
    unnest = ", ".join(f"%s::{t}[]" for t in key_types)
    return f"({', '.join(names)}) IN (SELECT * FROM unnest({unnest}))", columns


def chunk_key(generation: str, chunk: Chunk) -> str:
    """`schema.table#<generation>:<index>`: a copy begun again (a DDL mid-copy) never takes an older one's chunk."""
    return f"{chunk.table}#{generation}:{chunk.index}"


def parse_chunk_key(key: str) -> tuple[str, str, int]:
    """(schema.table, generation, index) of a chunk key."""
    table, _, rest = key.rpartition("#")
    generation, _, index = rest.rpartition(":")
    return table, generation, int(index)


def watermark(kind: str, key: str, nonce: str) -> str:
    return f"{kind}:{nonce}:{key}"


def parse_watermark(content: str) -> tuple[str, str, str] | None:
    """(kind, nonce, chunk id) of a watermark message's content, or None for other markers. The nonce is per
    run: a watermark an earlier (crashed) run wrote, streamed again after a restart, is not this run's."""
    kind, _, rest = content.partition(":")
    if kind not in (LOW, HIGH):
        return None
    nonce, _, chunk_id = rest.partition(":")
    return kind, nonce, chunk_id


@dataclass
class SpilledChunk:
    chunk: Chunk
    paths: list[str]  # Arrow IPC files, one per column set (a __pg_text sibling may appear midway)
    read: ChunkRead
    low_lsn: int
    high_lsn: int
    snapshot: TxSnapshot  # what the read saw: which transactions of the window its rows already hold

    def tables(self) -> Iterator[pa.Table]:
        for path in self.paths:
            with pa.memory_map(path) as source:
                reader = ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield pa.Table.from_batches([reader.get_batch(i)])

    def discard(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.unlink(path)


@dataclass
class CopyJob:
    """One table's chunked copy: its chunks in order and its destination column plan."""

    spec: TableSpec
    generation: str
    chunks: list[Chunk]
    columns: list[ColumnSpec]
    done: set[int] = field(default_factory=set)
    start_lsn: int = 0  # the stream applies the table's changes from here


SPILL_PREFIX = "aurora-sync-chunks-"  # then the pid of the process whose chunks these are


def remove_stale_spill_dirs(parent: str | None = None) -> list[str]:
    """Remove the spill directories of processes that are gone: `close` never ran for a process killed with
    `kill -9`, and a task restarted on the same disk would otherwise keep their chunks (megabytes each) for good.
    A live process's directory, or one whose owner cannot be told from its name, is left alone."""
    parent = parent or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            owner = entry.name[len(SPILL_PREFIX):].split("-", 1)[0]
            if not (entry.name.startswith(SPILL_PREFIX) and owner.isdigit() and entry.is_dir(follow_symlinks=False)):
                continue
            try:
                os.kill(int(owner), 0)
                continue  # alive (or a process of another user): not ours to judge
            except ProcessLookupError:
                pass
            except OSError:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


class ChunkReaders:
    """`workers` threads that read pending chunks between watermarks, ahead of the stream.

    Results are handed over by chunk id once the stream has seen the chunk's HW (`take`), which happens after the
    reader wrote it: the WAL orders the HW after the read. A failing read is reported with its table, so the
    driver can set that table aside while the others go on.
    """

    def __init__(self, writer_dsn: str, reader_dsn: str | None, settings: SnapshotSettings, block_size: int,
                 statement_timeout_ms: int) -> None:
        self.writer_dsn, self.reader_dsn, self.settings = writer_dsn, reader_dsn, settings
        self.block_size, self.statement_timeout_ms = block_size, statement_timeout_ms
        self.todo: queue.Queue[tuple[CopyJob, Chunk] | None] = queue.Queue()
        self.results: dict[str, SpilledChunk] = {}
        self.failures: dict[str, BaseException] = {}  # table → why its chunk could not be read
        self.cancelled: set[str] = set()  # generations of copies begun again since: their chunks are dropped
        self.lock = threading.Condition()
        self.stop = threading.Event()
        remove_stale_spill_dirs()
        self.spill_dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
        self.threads = [threading.Thread(target=self._work, name=f"chunk-reader-{i}", daemon=True)
                        for i in range(settings.workers)]
        self.in_flight = 0
        # chunks read but not yet landed, at most `workers`: after a crash no more than that are read again
        self.slots = threading.BoundedSemaphore(settings.workers)
        self.nonce = uuid.uuid4().hex[:12]
        for thread in self.threads:
            thread.start()

    def submit(self, job: CopyJob, chunks: list[Chunk] | None = None) -> None:
        """Read the job's chunks not done yet (or just `chunks`: one read again, keys to repair)."""
        for chunk in chunks if chunks is not None else job.chunks:
            if chunks is not None or chunk.index not in job.done:
                with self.lock:
                    self.in_flight += 1
                self.todo.put((job, chunk))

    def cancel(self, job: CopyJob) -> None:
        """Drop a copy's chunks not landed yet (the copy began again): queued ones are skipped, read ones freed."""
        with self.lock:
            self.cancelled.add(job.generation)
            for key in [k for k in self.results if parse_chunk_key(k)[1] == job.generation]:
                self.results.pop(key).discard()
                self.in_flight -= 1
                self.slots.release()

    def take(self, chunk_id: str, timeout: float = 300.0) -> SpilledChunk | None:
        """The spilled chunk whose HW the stream reached (None if its read failed)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while chunk_id not in self.results:
                table = chunk_id.rsplit("#", 1)[0]
                if table in self.failures or time.monotonic() > deadline:
                    return None
                self.lock.wait(0.5)
            self.in_flight -= 1
            spilled = self.results.pop(chunk_id)
        self.slots.release()
        return spilled

    def close(self) -> None:
        self.stop.set()
        for _ in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join(timeout=30)
        for spilled in self.results.values():
            spilled.discard()
        with contextlib.suppress(OSError):
            os.rmdir(self.spill_dir)

    def _work(self) -> None:
        meta = connect(self.writer_dsn, statement_timeout_ms=60_000)
        reader = connect(self.reader_dsn, statement_timeout_ms=60_000) if self.reader_dsn else None
        throttle = Throttle(self.settings.max_rows_per_second, self.settings.max_bytes_per_second)
        try:
            while not self.stop.is_set():
                item = self.todo.get()
                if item is None:
                    return
                job, chunk = item
                if job.spec.qualified in self.failures or job.generation in self.cancelled:
                    with self.lock:
                        self.in_flight -= 1
                    continue
                while not self.slots.acquire(timeout=0.5):
                    if self.stop.is_set():
                        return
                try:
                    spilled = self._read(meta, reader, job, chunk, throttle)
                except Exception as exc:  # reported to the driver, which sets the table aside
                    self.slots.release()
                    log.error(f"{job.spec.qualified}: chunk {chunk.index} could not be read: {exc}")
                    with self.lock:
                        self.failures[job.spec.qualified] = exc
                        self.lock.notify_all()
                    continue
                with self.lock:
                    if job.generation in self.cancelled:
                        spilled.discard()
                        self.in_flight -= 1
                        self.slots.release()
                        continue
                    self.results[chunk_key(job.generation, chunk)] = spilled
                    self.lock.notify_all()
        finally:
            meta.close()
            if reader is not None:
                reader.close()

    def _read(self, meta: Any, reader: Any, job: CopyJob, chunk: Chunk, throttle: Throttle) -> SpilledChunk:
        read = ChunkRead(chunk)
        # the guard asks the server the chunk is read from: with a reader endpoint, that is where the load goes
        read.paused_seconds = wait_until_calm(reader if reader is not None else meta, self.settings,
                                              job.spec.qualified, self.stop)
        low = emit_marker(meta, watermark(LOW, chunk_key(job.generation, chunk), self.nonce))
        source = reader if reader is not None else meta
        if reader is not None:
            _wait_for_replay(reader, low, self.stop)
        plans = [c.plan for c in job.columns]
        if chunk.kind == "keys":  # keys read again (`reconcile`): their values were known nowhere else
            by_name = {c.name: c for c in job.columns}
            with meta.cursor() as cur:
                types = []
                for key in job.spec.primary_key:
                    cur.execute("SELECT format_type(%s, %s)", (by_name[key].type_oid, by_name[key].typmod))
                    types.append(cur.fetchone()[0])
            predicate, params = key_list_predicate(job.spec, types, chunk.lo)
        else:
            predicate, params = chunk.predicate()
        select = "SELECT {} FROM {} WHERE {}".format(
            ", ".join(p.select_sql for p in plans), qualified_identifier(job.spec).as_string(source),
            source.cursor().mogrify(predicate, params).decode())
        raw = connect(self.reader_dsn or self.writer_dsn, statement_timeout_ms=self.statement_timeout_ms)
        paths: list[str] = []
        writer: ipc.RecordBatchFileWriter | None = None
        schema: pa.Schema | None = None
        try:
            raw.autocommit = False
            # one snapshot for the whole read, and the first statement tells which transactions it sees
            raw.set_session(isolation_level="REPEATABLE READ", readonly=True)
            snapshot = TxSnapshot.read(raw)
            batches = copy_to_arrow(raw, select, plans, self.block_size, frozenset(job.spec.primary_key),
                                    name=f"{job.spec.name}-{chunk.index}", close=False)

            def tables() -> Iterator[pa.Table]:
                for table, rejected in batches:
                    read.rejected += rejected
                    yield table

            for table in paced(tables(), throttle, read):
                if not table.num_rows:
                    continue
                if writer is None or table.schema != schema:
                    if writer is not None:
                        writer.close()
                    paths.append(os.path.join(self.spill_dir, f"{job.generation}-{chunk.index}-{len(paths)}.arrow"))
                    schema = table.schema
                    writer = ipc.new_file(paths[-1], schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
            with contextlib.suppress(Exception):
                raw.rollback()
                raw.close()
        high = emit_marker(meta, watermark(HIGH, chunk_key(job.generation, chunk), self.nonce))
        return SpilledChunk(chunk, paths, read, low, high, snapshot)


def _wait_for_replay(reader: Any, lsn: int, stop: threading.Event, timeout: float = 600.0) -> None:
    """A reader (Aurora reader endpoint, a standby) returns a chunk only once it replayed past its LW.

    A PostgreSQL standby reports its replay LSN. An Aurora reader shares the writer's storage and reports none;
    it reports its lag instead (`aurora_replica_status()`), which is then waited out."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        with reader.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
            recovering, replayed = cur.fetchone()
        if not recovering or (parse_lsn(replayed) or 0) >= lsn:
            return
        if replayed is None:
            _wait_aurora_lag(reader)
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the reader has not replayed past {lsn} after {timeout:.0f} s")
        time.sleep(0.2)


__all__ = ["HIGH", "LOW", "MARKER_PREFIX", "ChunkReaders", "CopyJob", "SpilledChunk", "chunk_key", "parse_chunk_key",
           "parse_watermark"]


def _wait_aurora_lag(reader: Any) -> None:
    with contextlib.suppress(Exception), reader.cursor() as cur:
        cur.execute("SELECT coalesce(max(replica_lag_in_msec), 0) FROM aurora_replica_status()")
        time.sleep(float(cur.fetchone()[0]) / 1000.0 + 0.1)
