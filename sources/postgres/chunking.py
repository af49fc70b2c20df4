"""Snapshots in chunks: ranges of a table, each read by one COPY in its own short READ ONLY transaction.

One COPY of a terabyte table is one transaction of many hours: it holds the writer's xmin horizon (vacuum cannot
clean anything), a crash starts it over, and nothing limits how hard it reads. A chunk is a key range (the first
column of the table's key: equal-width ranges for an integer key, quantiles of a sample otherwise) or, for a table
without a key, a range of heap blocks (`ctid`, a TID range scan since PostgreSQL 14). Chunks are sized by bytes
(`chunk_bytes`, or a row count), so a chunk takes seconds and no transaction on the source lives longer than that.

Reading is throttled per worker (`max_rows_per_second`, `max_bytes_per_second`: the COPY waits on its pipe when we
wait, so the server slows down too) and a guard pauses between chunks while the source is busy, for at most
`max_pause_seconds` per chunk so a snapshot can never stall for good. Busy means: a fixed bit of CPU work run on the
source takes `pause_when_cpu_probe_slowdown_above` times longer than its fastest run (no idle core left: our
sessions would take CPU from production's), more active sessions than `pause_when_active_sessions_above`, or, on
AWS, the cluster's CloudWatch `CPUUtilization` above `cloudwatch_cpu_above`.

Why a CPU probe: a PostgreSQL session cannot lower its own CPU priority, so on a saturated source every chunk we
read takes CPU from production's sessions as an equal. Active sessions do not show that for OLTP: measured here,
pgbench saturating one core showed 0.3 active sessions on average (statements are short), while the probe ran
3.5x slower than on the idle core (docs/performance.md).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import sqlalchemy as sa
from dlt.common import logger
from dlt.common.configuration import with_config

from .catalog import TableSpec
from .conversion import RejectedRow
from .errors import SourceConfigError
from .session import APPLICATION_NAME

SECTIONS = ("sources", "postgres", "snapshot")
BLOCK_BYTES = 8192
MAX_CHUNKS = 100_000
QUANTILE_SAMPLE_ROWS = 200_000


@dataclass(frozen=True)
class SnapshotSettings:
    workers: int = 1
    chunk_bytes: int = 128 << 20
    chunk_rows: int = 0
    max_rows_per_second: int = 0
    max_bytes_per_second: int = 0
    pause_when_active_sessions_above: int = 0
    max_pause_seconds: float = 300.0
    max_chunk_seconds: float = 30.0
    cloudwatch_cpu_above: float = 0.0
    cloudwatch_cluster: str | None = None
    pause_when_cpu_probe_slowdown_above: float = 1.5
    helper_tasks: int = 0

    def effective_chunk_bytes(self) -> int:
        """A throttled chunk must still end within `max_chunk_seconds`: at 1 MB/s, 128 MiB would take 2 minutes."""
        if self.max_bytes_per_second:
            return max(1 << 20, min(self.chunk_bytes, int(self.max_bytes_per_second * self.max_chunk_seconds)))
        return self.chunk_bytes


@with_config(sections=SECTIONS)
def snapshot_settings(
    workers: int = 1,
    chunk_bytes: int = 128 << 20,
    chunk_rows: int = 0,
    max_rows_per_second: int = 0,
    max_bytes_per_second: int = 0,
    pause_when_active_sessions_above: int = 0,
    max_pause_seconds: float = 300.0,
    max_chunk_seconds: float = 30.0,
    cloudwatch_cpu_above: float = 0.0,
    cloudwatch_cluster: str | None = None,
    pause_when_cpu_probe_slowdown_above: float = 1.5,
    helper_tasks: int = 0,
) -> SnapshotSettings:
    """Resolve `[sources.postgres.snapshot]`.

    Args:
        workers: chunks read at the same time (threads of one process); also bounds every source connection pool.
        chunk_bytes: target size of a chunk on the source (heap bytes); a table smaller than that is one chunk.
        chunk_rows: target rows per chunk instead of bytes (0: from `chunk_bytes` and the table's average row size).
        max_rows_per_second: per worker; 0 = unlimited.
        max_bytes_per_second: per worker, of COPY output; 0 = unlimited.
        pause_when_active_sessions_above: before each chunk, wait while the source has more active sessions than
            this (ours not counted); 0 = never.
        max_pause_seconds: the longest one chunk waits for the source to calm down, so a snapshot never stalls.
        max_chunk_seconds: a throttled chunk is made small enough to be read within this long.
        cloudwatch_cpu_above: on AWS, also wait while the cluster's CloudWatch CPUUtilization (%) is above this;
            0 = off. Needs `cloudwatch_cluster` and cloudwatch:GetMetricStatistics.
        cloudwatch_cluster: the Aurora DBClusterIdentifier for that metric.
        pause_when_cpu_probe_slowdown_above: before each chunk, wait while a fixed bit of CPU work on the source
            (a few ms) runs more than this many times slower than its fastest run, i.e. while the source has no
            idle core; 0 = never. Must be 0 or above 1.
        helper_tasks: other tasks (`aurora-sync snapshot-helper`) that share this run's chunks; 0 = none. Above 0,
            each chunk is claimed with an advisory lock on the writer (one more session) and recorded in a ledger
            table in the destination, which must take loads from several processes at once (Snowflake).
    """
    values = {"workers": workers, "chunk_bytes": chunk_bytes, "chunk_rows": chunk_rows,
              "max_rows_per_second": max_rows_per_second, "max_bytes_per_second": max_bytes_per_second,
              "pause_when_active_sessions_above": pause_when_active_sessions_above, "helper_tasks": helper_tasks}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SourceConfigError(f"`sources.postgres.snapshot.{key}` must be an integer >= 0, got {value!r}.")
    if not 1 <= workers <= 64:
        raise SourceConfigError(f"`sources.postgres.snapshot.workers` must be from 1 to 64, got {workers!r}.")
    if chunk_bytes < 1 << 20:
        raise SourceConfigError(f"`sources.postgres.snapshot.chunk_bytes` must be at least 1 MiB, got {chunk_bytes}.")
    for key, number in (("max_pause_seconds", max_pause_seconds), ("max_chunk_seconds", max_chunk_seconds),
                        ("cloudwatch_cpu_above", cloudwatch_cpu_above),
                        ("pause_when_cpu_probe_slowdown_above", pause_when_cpu_probe_slowdown_above)):
        if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
            raise SourceConfigError(f"`sources.postgres.snapshot.{key}` must be a number >= 0, got {number!r}.")
    if 0 < pause_when_cpu_probe_slowdown_above <= 1:
        raise SourceConfigError("`sources.postgres.snapshot.pause_when_cpu_probe_slowdown_above` must be 0 (off) or "
                                f"above 1 (a slowdown factor), got {pause_when_cpu_probe_slowdown_above!r}.")
    if cloudwatch_cpu_above and not cloudwatch_cluster:
        raise SourceConfigError("`sources.postgres.snapshot.cloudwatch_cpu_above` needs `cloudwatch_cluster` (the "
                                "Aurora DBClusterIdentifier).")
    return SnapshotSettings(workers, chunk_bytes, chunk_rows, max_rows_per_second, max_bytes_per_second,
                            pause_when_active_sessions_above, float(max_pause_seconds), float(max_chunk_seconds),
                            float(cloudwatch_cpu_above), cloudwatch_cluster, float(pause_when_cpu_probe_slowdown_above),
                            helper_tasks)


# --- chunks ----------------------------------------------------------------------------------------------
# keys: exactly the keys listed in `lo` (text values, one list per key): CDC reads keys again whose values were
# known nowhere else (`sources.replication.reconcile`)
ChunkKind = Literal["all", "key", "ctid", "keys"]


@dataclass(frozen=True)
class Chunk:
    """`lo <= column < hi` (None: unbounded), or all of the table. Serialisable into dlt state as a list."""

    table: str  # schema.table
    index: int
    kind: ChunkKind
    column: str | None = None
    lo: Any = None
    hi: Any = None

    @property
    def id(self) -> str:
        return f"{self.table}#{self.index}"

    def predicate(self) -> tuple[str, list[Any]]:
        """The WHERE clause (psycopg2 `%s` parameters) that selects this chunk's rows."""
        if self.kind == "all":
            return "true", []
        if self.kind == "ctid":
            parts = []
            if self.lo is not None:
                parts.append(f"ctid >= '({int(self.lo)},0)'::tid")
            if self.hi is not None:
                parts.append(f"ctid < '({int(self.hi)},0)'::tid")
            return " AND ".join(parts) or "true", []
        quoted = '"' + str(self.column).replace('"', '""') + '"'
        parts, params = [], []
        if self.lo is not None:
            parts.append(f"{quoted} >= %s")
            params.append(self.lo)
        if self.hi is not None:
            parts.append(f"{quoted} < %s")
            params.append(self.hi)
        return " AND ".join(parts) or "true", params

    def clause(self) -> sa.TextClause:
        """The same predicate for SQLAlchemy (the snapshot source compiles it with literal values)."""
        sql, params = self.predicate()
        names = [f"chunk_{i}" for i in range(len(params))]
        for name in names:
            sql = sql.replace("%s", f":{name}", 1)
        return sa.text(sql).bindparams(**dict(zip(names, params, strict=True)))

    def as_state(self) -> list[Any]:
        if self.kind == "keys":
            return [self.index, self.kind, self.column, [[_jsonable(v) for v in key] for key in self.lo], None]
        return [self.index, self.kind, self.column, _jsonable(self.lo), _jsonable(self.hi)]

    @classmethod
    def from_state(cls, table: str, item: list[Any]) -> Chunk:
        return cls(table, int(item[0]), item[1], item[2], item[3], item[4])


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else str(value)


def _query(conn: Any, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, tuple(params))
        return list(cur.fetchall())


def _relation(spec: TableSpec) -> str:
    return '"' + spec.schema.replace('"', '""') + '"."' + spec.name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableSize:
    bytes: int  # heap + TOAST, what a full read touches
    rows: int  # planner estimate (reltuples), or 0 when never analysed
    blocks: int  # heap blocks (relpages is stale; this is the current size)
    partitioned: bool


def table_size(conn: Any, spec: TableSpec) -> TableSize:
    """Size from the catalog only: no scan. A partitioned table sums its partitions."""
    rows = _query(conn, """
        WITH parts AS (
            SELECT c.oid, c.reltuples, c.relkind FROM pg_class c WHERE c.oid = %s::regclass
            UNION ALL
            SELECT i.inhrelid, p.reltuples, p.relkind FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
            WHERE i.inhparent = %s::regclass)
        SELECT coalesce(sum(pg_table_size(oid)), 0), coalesce(sum(greatest(reltuples, 0)), 0),
               coalesce(sum(pg_relation_size(oid)), 0) / %s, bool_or(relkind = 'p')
        FROM parts""", (_relation(spec), _relation(spec), BLOCK_BYTES))
    size, tuples, blocks, partitioned = rows[0]
    return TableSize(int(size), int(tuples), int(blocks), bool(partitioned))


def plan_chunks(conn: Any, spec: TableSpec, settings: SnapshotSettings) -> list[Chunk]:
    """Cut a table into chunks of about `chunk_bytes` (or `chunk_rows`); one chunk when it is smaller."""
    size = table_size(conn, spec)
    target = settings.effective_chunk_bytes()
    if settings.chunk_rows and size.rows:
        count = math.ceil(size.rows / settings.chunk_rows)
    else:
        count = math.ceil(size.bytes / target) if size.bytes else 1
    count = max(1, min(count, MAX_CHUNKS))
    if count == 1:
        return [Chunk(spec.qualified, 0, "all")]
    if spec.has_key:
        bounds = _key_bounds(conn, spec, count, size.rows)
        if bounds is not None:
            edges = [None, *bounds, None]
            return [Chunk(spec.qualified, i, "key", spec.primary_key[0], lo, hi)
                    for i, (lo, hi) in enumerate(itertools.pairwise(edges))]
    if size.partitioned:  # a partitioned parent has no ctid of its own: one chunk (its partitions are not split)
        return [Chunk(spec.qualified, 0, "all")]
    step = max(1, math.ceil(size.blocks / count))
    cuts = list(range(step, size.blocks, step))
    edges = [None, *cuts, None]  # the last chunk is open-ended: blocks added while we read are read too
    return [Chunk(spec.qualified, i, "ctid", None, lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


def _key_bounds(conn: Any, spec: TableSpec, count: int, rows: int) -> list[Any] | None:
    """`count - 1` boundaries on the first key column: equal width for integers (two index probes), quantiles of
    a block sample otherwise (one sampled scan, not the table). None when the column cannot be ranged."""
    column = '"' + spec.primary_key[0].replace('"', '""') + '"'
    relation = _relation(spec)
    kind = _query(conn, """SELECT t.typcategory, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                           WHERE a.attrelid = %s::regclass AND a.attname = %s""", (relation, spec.primary_key[0]))
    if not kind:
        return None
    category, typname = kind[0]
    if typname in ("int2", "int4", "int8"):
        low, high = _query(conn, f"SELECT (SELECT {column} FROM {relation} ORDER BY 1 LIMIT 1), "
                                 f"(SELECT {column} FROM {relation} ORDER BY 1 DESC LIMIT 1)")[0]
        if low is None:
            return None
        width = max(1, math.ceil((int(high) - int(low) + 1) / count))
        return [int(low) + i * width for i in range(1, count) if int(low) + i * width <= int(high)]
    if category not in ("S", "N", "D", "U"):  # strings, numerics, dates/times, uuid: ordered and rangeable
        return None
    percent = min(100.0, 100.0 * QUANTILE_SAMPLE_ROWS / rows) if rows else 100.0
    fractions = [i / count for i in range(1, count)]
    found = _query(conn, f"""
        SELECT b FROM unnest((SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {column})
                              FROM {relation} TABLESAMPLE SYSTEM ({percent:.6f}))) WITH ORDINALITY AS u(b, i)
        ORDER BY i""", (fractions,))
    bounds: list[Any] = []
    for (value,) in found:
        value = str(value) if category == "U" else value
        if value is not None and (not bounds or value != bounds[-1]):
            bounds.append(value)
    return bounds or None


# --- pacing: throttle and source guard -------------------------------------------------------------------------
@dataclass
class Throttle:
    """Per worker: sleep as needed so rows and bytes per second stay under their limits (0 = unlimited)."""

    max_rows_per_second: int
    max_bytes_per_second: int
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    bytes: int = 0

    def account(self, rows: int, size: int) -> float:
        self.rows += rows
        self.bytes += size
        wait = 0.0
        elapsed = time.monotonic() - self.started
        if self.max_rows_per_second:
            wait = max(wait, self.rows / self.max_rows_per_second - elapsed)
        if self.max_bytes_per_second:
            wait = max(wait, self.bytes / self.max_bytes_per_second - elapsed)
        if wait > 0:
            time.sleep(wait)
        return wait


ACTIVE_SESSIONS_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND application_name <> %s AND datname = current_database()
"""


# CPU work on the source: md5 of a string of N bytes (~6 ns a byte on one core); no table, no lock, no write.
# Timed by the server (statement start to the end of the work: the subquery is a fence and its result is
# filtered on before the clock is read), so neither the network nor our own threads' scheduling counts.
CPU_PROBE_SQL = """SELECT extract(epoch FROM clock_timestamp() - statement_timestamp())::float8
FROM (SELECT length(md5(repeat('x', %s))) AS n OFFSET 0) AS work WHERE n > 0"""
SHORT_PROBE_BYTES = 125_000  # ~1 ms: shorter than a scheduler slice, it runs at full speed even on a busy core
LONG_PROBE_BYTES = 2_000_000  # ~12 ms: long enough to get only its fair share of a busy core
PROBE_RUNS = 3
PROBE_MAX_AGE_S = 4.0  # a reading this fresh answers every worker of the process


class CpuProbe:
    """How much slower than on an idle core a fixed bit of CPU work runs on the source now.

    Self-calibrating, so it works on any hardware and also when the source is already busy when we start: a
    backend that wakes up gets the CPU at once for its first millisecond or so (the scheduler credits sleepers),
    so the short probe shows the core's idle speed even on a saturated server, while the long one outlives that
    credit and waits behind the runnable sessions. The slowdown is the long probe's time (median of three) over
    its idle time: the short one's scaled up, or the fastest long run seen on that server if lower. Measured on
    one core here (docs/performance.md): ~1.0 idle, 1.4 at half load, 2 saturated, 3.5 with four busy sessions.
    On a source with an idle core the long probe takes that core and runs at full speed: no pause.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fastest_long: dict[str, float] = {}
        self.latest: dict[str, tuple[float, float]] = {}  # server -> (when, slowdown): workers share a reading

    def slowdown(self, conn: Any) -> float:
        params = conn.get_dsn_parameters()
        server = f"{params.get('host')}:{params.get('port')}/{params.get('dbname')}"
        with self.lock:  # one worker measures, the others wait for its reading: the probe's cost does not scale
            when, slowdown = self.latest.get(server, (-math.inf, 0.0))
            if time.monotonic() - when < PROBE_MAX_AGE_S:
                return slowdown
            slowdown = self._measure(conn, server)
            self.latest[server] = (time.monotonic(), slowdown)
            return slowdown

    def _measure(self, conn: Any, server: str) -> float:
        short, long = [], []
        with conn.cursor() as cur:
            for _ in range(PROBE_RUNS):
                for size, runs in ((SHORT_PROBE_BYTES, short), (LONG_PROBE_BYTES, long)):
                    cur.execute(CPU_PROBE_SQL, (size,))
                    runs.append(max(float(cur.fetchone()[0]), 1e-6))
        conn.rollback()
        fastest = self.fastest_long[server] = min(self.fastest_long.get(server, math.inf), *long)
        idle = min(fastest, min(short) * LONG_PROBE_BYTES / SHORT_PROBE_BYTES)
        return sorted(long)[len(long) // 2] / idle


CPU_PROBE = CpuProbe()


def busy_reason(conn: Any, settings: SnapshotSettings) -> str | None:
    """Why the source is too busy for the next chunk right now, or None."""
    if settings.pause_when_cpu_probe_slowdown_above:
        slowdown = CPU_PROBE.slowdown(conn)
        if slowdown > settings.pause_when_cpu_probe_slowdown_above:
            return (f"CPU probe {slowdown:.1f}x slower than its fastest run (above "
                    f"{settings.pause_when_cpu_probe_slowdown_above:g}x: no idle core)")
    if settings.pause_when_active_sessions_above:
        active = int(_query(conn, ACTIVE_SESSIONS_SQL, (APPLICATION_NAME,))[0][0])
        if active > settings.pause_when_active_sessions_above:
            return f"{active} active sessions (more than {settings.pause_when_active_sessions_above})"
    if settings.cloudwatch_cpu_above and settings.cloudwatch_cluster:
        cpu = cluster_cpu(settings.cloudwatch_cluster)
        if cpu is not None and cpu > settings.cloudwatch_cpu_above:
            return f"cluster CPUUtilization {cpu:.0f} % (above {settings.cloudwatch_cpu_above:.0f} %)"
    return None


def cluster_cpu(cluster: str) -> float | None:
    """The cluster's latest one-minute CPUUtilization average from CloudWatch (None when unknown)."""
    import datetime as dt

    import boto3

    now = dt.datetime.now(dt.UTC)
    try:
        points = boto3.client("cloudwatch").get_metric_statistics(
            Namespace="AWS/RDS", MetricName="CPUUtilization", StartTime=now - dt.timedelta(minutes=5), EndTime=now,
            Period=60, Statistics=["Average"], Dimensions=[{"Name": "DBClusterIdentifier", "Value": cluster}],
        ).get("Datapoints", [])
    except Exception as exc:  # a guard that cannot see must not stop the snapshot
        logger.warning(f"CloudWatch CPUUtilization of {cluster} unavailable ({type(exc).__name__}); not pausing")
        return None
    return float(max(points, key=lambda p: p["Timestamp"])["Average"]) if points else None


def wait_until_calm(conn: Any, settings: SnapshotSettings, table: str, stop: threading.Event | None = None) -> float:
    """Pause between chunks while the source is busy, at most `max_pause_seconds`; returns the seconds waited."""
    started = time.monotonic()
    reason = busy_reason(conn, settings)
    while reason is not None:
        waited = time.monotonic() - started
        if waited >= settings.max_pause_seconds or (stop is not None and stop.is_set()):
            logger.warning(f"{table}: source still busy ({reason}) after {waited:.0f} s: reading the next chunk anyway")
            break
        # a reading costs the source ~40 ms of CPU: every 5 s, under 1 % of a core while paused
        time.sleep(min(5.0, max(0.1, settings.max_pause_seconds - waited)))
        reason = busy_reason(conn, settings)
    return time.monotonic() - started


# --- reading a chunk -------------------------------------------------------------------------------------------
@dataclass
class ChunkRead:
    """What reading one chunk produced (filled while its rows stream)."""

    chunk: Chunk
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    paused_seconds: float = 0.0
    throttled_seconds: float = 0.0
    rejected: list[RejectedRow] = field(default_factory=list)


def log_chunk(read: ChunkRead, resource: str) -> None:
    """One JSON log line per chunk read (the benchmark and operators follow a long snapshot with it)."""
    import logging

    logging.getLogger("aurora_sync.snapshot").info("chunk read", extra={"fields": {
        "phase": "snapshot", "table": resource, "chunk": read.chunk.index, "rows": read.rows, "bytes": read.bytes,
        "seconds": round(read.seconds, 3), "paused_s": round(read.paused_seconds, 3),
        "throttled_s": round(read.throttled_seconds, 3)}})


def paced(tables: Iterator[pa.Table], throttle: Throttle, read: ChunkRead) -> Iterator[pa.Table]:
    """Count and throttle a chunk's Arrow tables as they stream."""
    started = time.monotonic()
    for table in tables:
        read.rows += table.num_rows
        read.bytes += table.nbytes
        read.throttled_seconds += throttle.account(table.num_rows, table.nbytes)
        yield table
    read.seconds = time.monotonic() - started

