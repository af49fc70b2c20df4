"""Issue 11's snapshot benchmark: speed against raw COPY, memory, load on the source, xmin, resume, 1 TB.

    python -m bench.snapshot_load                      # the full run: 5M orders rows, 1M wide rows (~15 min)
    python -m bench.snapshot_load --rows 300000 --wide-rows 50000 --pgbench-seconds 10   # a small run
    python -m bench.snapshot_load --report bench/results/<timestamp>/results.json         # rewrite docs/performance.md

Starts a throwaway PostgreSQL (`local.postgres.LocalPostgres`), generates an orders-like table (`--rows`) and a
wide table with jsonb (`--wide-rows`), then measures in one run, every sync being a real
`aurora-sync run --mode snapshot --tables bench.<table>` process:

1. rows/s of snapshots with `workers` = 1, 2, 4 next to as many parallel raw
   `COPY (SELECT * FROM t WHERE id % N = i) TO STDOUT (FORMAT binary)` streams, each drained by psycopg2 in its
   own process (threads would serialise on the GIL: psycopg2 calls the sink once per row);
2. peak RSS of each sync process (ru_maxrss from wait4) and of its process tree (sampled from /proc);
3. pgbench TPS and latency with no sync, during back-to-back unthrottled snapshots, during snapshots with the
   default throttle; PostgreSQL (postmaster and every backend) pinned to one core, sync and pgbench to the others;
4. the oldest transaction's age and `backend_xmin` age (in xids, and in seconds through a xid -> time map the
   sampler keeps) of the sync's sessions, sampled every `--sample-interval` seconds during every snapshot;
5. a kill -9 of the sync at `--kill-at` of the rows read, a rerun, and the rows read twice;
6. the 1 TB extrapolation (in `bench.snapshot_report`, from the measured bytes/s).

Progress comes from the sync's `"message": "chunk read"` log lines when it prints them (the chunked snapshot)
and from `pg_stat_progress_copy.tuples_processed` on the source otherwise; rows read per run from the table's
`seq_tup_read + idx_tup_fetch` counters. Results go to `bench/results/<timestamp>/results.json` with a chart
`throughput.png` beside it. Every process started here is killed, and the cluster removed, on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from bench.snapshot_vs_copy import DDL as ORDERS_DDL
from bench.snapshot_vs_copy import FILL as ORDERS_FILL
from local.postgres import LocalPostgres, execute, find_bindir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
# application_name of every sync session (sources/postgres/session.py), matched as a prefix should workers add one
SYNC_APP = "aurora-snowflake-sync"
COPY_APP = "bench-copy"
# "unthrottled" turns every throttle and guard of [sources.postgres.snapshot] off (0 = no limit); the
# default-throttle runs set none of them.
UNTHROTTLED = {"MAX_ROWS_PER_SECOND": "0", "MAX_BYTES_PER_SECOND": "0", "PAUSE_WHEN_ACTIVE_SESSIONS_ABOVE": "0",
               "PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE": "0"}
SNAPSHOT_ENV = "SOURCES__POSTGRES__SNAPSHOT__"

WIDE_DDL = """
CREATE TABLE bench.wide (
    id          bigint PRIMARY KEY,
    account_id  bigint NOT NULL,
    sku         text NOT NULL,
    title       text,
    description text,
    price       numeric(12, 2),
    quantity    integer,
    discount    real,
    weight      double precision,
    active      boolean,
    ref         uuid,
    ship_date   date,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    payload     jsonb NOT NULL,
    meta        jsonb
);
"""
# ~1 KB rows: a nested jsonb document of 1-6 order lines (stays in the heap, below the TOAST threshold)
WIDE_FILL = """
INSERT INTO bench.wide
SELECT g, g % 100000, 'SKU-' || (g % 5000), 'Product title number ' || g,
       CASE WHEN g % 4 = 0 THEN NULL ELSE repeat('A fairly ordinary product description. ', 1 + g % 4) END,
       (g % 100000) / 100.0, g % 50, (g % 30) / 100.0, g * 0.001, g % 5 <> 0, md5(g::text)::uuid,
       date '2024-01-01' + (g % 700), now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval,
       jsonb_build_object(
           'customer', jsonb_build_object('id', g % 100000, 'name', 'Customer ' || g,
                                          'email', 'c' || g || '@example.com',
                                          'segment', (ARRAY['smb', 'mid', 'enterprise'])[1 + g % 3]),
           'lines', (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || ((g + i) % 5000), 'qty', 1 + (g + i) % 5,
                                                         'price', ((g + i) % 10000) / 100.0))
                     FROM generate_series(1, 1 + g % 6) i),
           'address', jsonb_build_object('street', g || ' Main Street', 'city', 'City ' || (g % 500),
                                         'zip', lpad((g % 99999)::text, 5, '0'), 'country', 'DE'),
           'flags', jsonb_build_array(g % 2 = 0, g % 3 = 0)),
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('source', 'import', 'batch', g / 1000) END
FROM generate_series(1, {rows}) g;
"""


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL: the cluster, its processes and their CPU
# --------------------------------------------------------------------------------------------------------------

def postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) == parent:
                found.append(int(entry))
    return found


def descendants(root: int) -> list[int]:
    """`root` and every process below it (one scan of /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents[int(entry)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def pin(pids: list[int], cpus: set[int]) -> None:
    """`taskset -a -p` for each pid: every thread of it. Processes forked later inherit the mask."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def pin_postgres(pg: LocalPostgres, cpus: set[int]) -> None:
    """The postmaster and its existing children (checkpointer, walwriter, ...); new backends inherit."""
    root = postmaster_pid(pg)
    pin([root, *children_of(root)], cpus)


def observed_affinity(ctx: Context) -> dict[str, str]:
    """CPUs the postmaster and a backend forked now may run on, and this process's: proof of the pinning."""
    def allowed(pid: int) -> str:
        status = Path(f"/proc/{pid}/status").read_text()
        found = re.search(r"^Cpus_allowed_list:\s+(\S+)", status, re.M)
        return found.group(1) if found else "?"

    conn = psycopg2.connect(ctx.dsn)
    backend = conn.get_backend_pid()
    observed = {"postmaster": allowed(postmaster_pid(ctx.pg)), "new_backend": allowed(backend),
                "harness": allowed(os.getpid())}
    conn.close()
    return observed


TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pg: LocalPostgres) -> float:
    """CPU the cluster has used so far: live processes, plus the exited backends the postmaster reaped."""
    root = postmaster_pid(pg)
    total = 0
    fields = _stat(root)
    if fields:
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    for child in children_of(root):
        fields = _stat(child)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def table_counters(dsn: str, table: str) -> int:
    """Rows the server has read from `table` so far (sequential and index scans); backends flush on exit."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                    "WHERE relid = %s::regclass", (table,))
        value = int(cur.fetchone()[0])
    conn.close()
    return value


def wait_sessions_gone(dsn: str, app: str, timeout: float = 15.0) -> None:
    """After a kill, the backend notices its client is gone at its next write: wait for it to exit."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    deadline = time.monotonic() + timeout
    with conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, %s)", (app,))
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.1)
    conn.close()


# --------------------------------------------------------------------------------------------------------------
# The sampler: progress, transaction and xmin ages on the source; RSS of the sync's process tree
# --------------------------------------------------------------------------------------------------------------

# every poll: the sessions that are in a transaction or running a COPY, with the next xid for xmin arithmetic
POLL_SQL = """
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, extract(epoch FROM clock_timestamp()),
       a.pid, a.application_name, extract(epoch FROM a.query_start),
       extract(epoch FROM clock_timestamp() - a.xact_start), age(a.backend_xmin), p.tuples_processed
FROM pg_stat_activity a LEFT JOIN pg_stat_progress_copy p USING (pid)
WHERE a.pid <> pg_backend_pid() AND (a.xact_start IS NOT NULL OR p.pid IS NOT NULL)
"""
# every `interval`: one xid consumed, so the xid -> time map ticks even on an idle database
CLOCK_SQL = "SELECT txid_current(), extract(epoch FROM clock_timestamp())"


@dataclass
class Sampler:
    """Polls the source from a thread: COPY progress and session ages every `poll` s (a 1 M rows/s COPY of
    100k rows lasts 0.1 s), and every `interval` s one `txid_current()` (one xid) that maps xids to times, so
    a `backend_xmin` gets an age in seconds as well as in transactions, plus the RSS of the watched process
    tree. Every run, pgbench baselines included, is sampled alike, so its cost on the server is in all of them."""

    dsn: str
    interval: float
    poll: float = 0.05
    watch_pid: int | None = None  # the sync process whose tree's RSS is sampled
    samples: list[dict[str, Any]] = field(default_factory=list)
    xid_times: list[tuple[int, float]] = field(default_factory=list)
    _xids: list[int] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)
    tree: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._conn = psycopg2.connect(self.dsn, application_name="bench-sampler")
        self._conn.autocommit = True
        self._tick()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self._tick()
        self._conn.close()

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stop.is_set():
            started = time.monotonic()
            if started >= next_tick:
                self._tick()
                next_tick += self.interval
            self._poll()
            self._stop.wait(max(0.0, self.poll - (time.monotonic() - started)))

    def _tick(self) -> None:
        with self._conn.cursor() as cur:
            cur.execute(CLOCK_SQL)
            xid, at = cur.fetchone()
        self._clock(int(xid), float(at))
        if self.watch_pid:
            self.tree.append({"t": time.time(), **tree_memory(self.watch_pid)})

    def _poll(self) -> None:
        with self._conn.cursor() as cur:
            cur.execute(POLL_SQL)
            rows = cur.fetchall()
        self.polls.append(time.time())
        if rows:  # by then every xid below the snapshot's xmax had been assigned
            self._clock(int(rows[0][0]) - 1, float(rows[0][1]))
        for next_xid, at, pid, app, query_start, xact_age, xmin_age, tuples in rows:
            self.samples.append({
                "t": float(at), "pid": pid, "app": app,
                "query_start": float(query_start) if query_start is not None else None,
                "xact_age_s": float(xact_age) if xact_age is not None else None,
                "xmin_age_xids": int(xmin_age) if xmin_age is not None else None,
                "xmin_age_s": self.xid_age_seconds(int(next_xid) - int(xmin_age), float(at))
                if xmin_age is not None else None,
                "tuples": int(tuples) if tuples is not None else None,
            })

    def _clock(self, xid: int, at: float) -> None:
        """Record that `xid` had been assigned by `at` (xids and times both only grow)."""
        if not self._xids or (xid >= self._xids[-1] and at >= self.xid_times[-1][1]):
            self._xids.append(xid)
            self.xid_times.append((xid, at))

    def xid_age_seconds(self, xmin: int, at: float) -> float:
        """Seconds since `xmin` was assigned, at most one poll (or tick, on an idle database) above the truth:
        measured from the last point at which it was not assigned yet. When it is older than every point, the
        time since the first one (a lower bound)."""
        i = bisect.bisect_left(self._xids, xmin) - 1
        since = self.xid_times[max(i, 0)][1] if self.xid_times else at
        return round(max(0.0, at - since), 3)

    def progress(self, app: str) -> dict[tuple[int, float], list[tuple[float, int]]]:
        """COPY statements of sessions named `app`, keyed by (pid, query_start): their (time, tuples) points."""
        series: dict[tuple[int, float], list[tuple[float, int]]] = {}
        for s in list(self.samples):
            if (s["app"] or "").startswith(app) and s["tuples"] is not None and s["query_start"] is not None:
                series.setdefault((s["pid"], s["query_start"]), []).append((s["t"], s["tuples"]))
        return series

    def ages(self, app: str) -> dict[str, float | int | None]:
        """The maxima of the transaction and xmin ages of `app`'s sessions, and of every other session."""
        mine = [s for s in self.samples if (s["app"] or "").startswith(app)]
        others = [s for s in self.samples if not (s["app"] or "").startswith((app, "bench-sampler"))]

        def top(rows: list[dict[str, Any]], key: str) -> float | int | None:
            values = [r[key] for r in rows if r[key] is not None]
            return round(max(values), 3) if values else None

        return {"max_xact_age_s": top(mine, "xact_age_s"), "max_xmin_age_xids": top(mine, "xmin_age_xids"),
                "max_xmin_age_s": top(mine, "xmin_age_s"), "others_max_xact_age_s": top(others, "xact_age_s"),
                "others_max_xmin_age_xids": top(others, "xmin_age_xids"), "polls": len(self.polls)}


def max_ages(*ages: dict[str, Any]) -> dict[str, Any]:
    """Key by key, the largest of several `Sampler.ages` (None when no sampler saw a value)."""
    merged: dict[str, Any] = {}
    for key in ages[0]:
        values = [a[key] for a in ages if a.get(key) is not None]
        merged[key] = (sum(values) if key == "polls" else max(values)) if values else None
    return merged


def tree_memory(root: int) -> dict[str, Any]:
    """RSS (MB) and threads of `root` and its descendants right now."""
    processes = {}
    for pid in descendants(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
        processes[pid] = (int(rss.group(1)) / 1024 if rss else 0.0, int(threads.group(1)) if threads else 0)
    return {"rss_mb": round(sum(r for r, _ in processes.values()), 1), "processes": len(processes),
            "threads": sum(t for _, t in processes.values()),
            "per_process_mb": {str(pid): round(r, 1) for pid, (r, _) in processes.items()}}


def cumulative(series: dict[Any, list[tuple[float, int]]]) -> list[tuple[float, int]]:
    """Sum of monotone per-key (time, rows) series, each linear between its points and flat after its last."""
    times = sorted({t for points in series.values() for t, _ in points})

    def at(points: list[tuple[float, int]], t: float) -> float:
        if t < points[0][0]:
            return 0.0
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return float(points[-1][1])

    ordered = {k: sorted(v) for k, v in series.items() if v}
    return [(t, int(sum(at(points, t) for points in ordered.values()))) for t in times]


# --------------------------------------------------------------------------------------------------------------
# Raw COPY streams: the server's own rate, one process per stream
# --------------------------------------------------------------------------------------------------------------

class _Sink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def _copy_stream(dsn: str, sql: str, ready: Any, go: Any, out: Any) -> None:
    """One stream (a spawned process): connect, say so, wait for the common start, drain the COPY."""
    conn = psycopg2.connect(dsn, application_name=COPY_APP)
    conn.set_session(readonly=True, autocommit=True)
    sink = _Sink()
    ready.put(conn.get_backend_pid())
    go.wait()
    started = time.time()
    with conn.cursor() as cur:
        cur.copy_expert(sql, sink, 1 << 20)
        rows = cur.rowcount
    out.put({"pid": conn.get_backend_pid(), "start": started, "end": time.time(), "rows": rows, "bytes": sink.bytes})
    conn.close()


def copy_streams(dsn: str, table: str, n: int, sampler: Sampler) -> dict[str, Any]:
    """`n` parallel `COPY (... WHERE id % n = i) TO STDOUT (FORMAT binary)`, each drained in its own process:
    aggregate rows/s over the span from the first start to the last end."""
    context = mp.get_context("spawn")
    ready, go, out = context.Queue(), context.Event(), context.Queue()
    workers = [context.Process(target=_copy_stream, daemon=True, args=(
        dsn, f"COPY (SELECT * FROM {table} WHERE id % {n} = {i}) TO STDOUT (FORMAT binary)", ready, go, out))
        for i in range(n)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:  # every stream connected before any starts
            ready.get(timeout=120)
        with sampler:
            go.set()
            streams = [out.get(timeout=6 * 3600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    start, end = min(s["start"] for s in streams), max(s["end"] for s in streams)
    rows, nbytes = sum(s["rows"] for s in streams), sum(s["bytes"] for s in streams)
    progress = {pid: points for (pid, _), points in sampler.progress(COPY_APP).items()}
    # each stream's curve: 0 at its start, the sampled progress, its exact row count at its end
    series = {s["pid"]: [(s["start"], 0), *progress.get(s["pid"], []), (s["end"], s["rows"])] for s in streams}
    return {"kind": "copy", "table": table, "workers": n, "rows": rows, "bytes": nbytes,
            "seconds": round(end - start, 3), "rows_per_s": round(rows / (end - start)),
            "bytes_per_s": round(nbytes / (end - start)),
            "timeline": [(round(t - start, 3), v) for t, v in cumulative(series)]}


# --------------------------------------------------------------------------------------------------------------
# The sync under test: a real `aurora-sync run --mode snapshot` process
# --------------------------------------------------------------------------------------------------------------

LIVE: set[int] = set()  # process groups started here, killed on exit


@dataclass
class Sync:
    """One `aurora-sync` process in its own process group, its JSON log lines read as they come."""

    env: dict[str, str]
    table: str
    cpus: set[int] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "snapshot"  # incremental: the table's first incremental load (also read in chunks)

    def start(self) -> Sync:
        command = [str(Path(sys.executable).parent / "aurora-sync"), "--json-logs", "run", "--mode", self.mode,
                   "--tables", self.table]
        if self.cpus:
            # pinned beside pgbench's client: at the lowest priority, so the sync never starves that client and
            # the TPS drop measured is the load the snapshot puts on the source, not contention on this box
            command = ["taskset", "-c", ",".join(map(str, sorted(self.cpus))), "nice", "-n", "19", *command]
        self.started_wall, self.started = time.time(), time.monotonic()
        self.process = subprocess.Popen(command, env=self.env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        LIVE.add(self.process.pid)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"message": line.rstrip(), "raw": True}
            event["_t"] = time.time()
            self.events.append(event)

    def wait(self) -> dict[str, Any]:
        """Reap with wait4: ru_maxrss is the peak RSS of the process (and of its reaped children)."""
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.ended = time.monotonic()
        LIVE.discard(self.process.pid)
        self._reader.join(10)
        return {"exit_code": self.process.returncode, "seconds": round(self.ended - self.started, 3),
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "cpu_user_s": round(usage.ru_utime, 2),
                "cpu_sys_s": round(usage.ru_stime, 2)}

    def running(self) -> bool:
        """Whether the process has not exited, without reaping it (wait() must get its rusage)."""
        return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("message") == "chunk read"]

    def rows_loaded(self) -> int | None:
        loaded = [e for e in self.events if e.get("message") == "table loaded" and "rows" in e]
        return sum(int(e["rows"]) for e in loaded) if loaded else None

    def errors(self) -> str:
        return "\n".join(str(e.get("message")) for e in self.events if e.get("level") in ("ERROR", "CRITICAL")
                         or e.get("raw"))[-4000:]


def sync_env(base: dict[str, str], work: Path, name: str, workers: int, options: argparse.Namespace,
             throttle: str) -> dict[str, str]:
    """dlt's env-var configuration of one sync: its own state dir and destination, the snapshot settings."""
    env = {**base, "DLT_DATA_DIR": str(work / f"dlt-{name}"), SNAPSHOT_ENV + "WORKERS": str(workers)}
    if options.destination == "duckdb":
        env["DESTINATION__DUCKDB__CREDENTIALS"] = str(work / f"{name}.duckdb")
    else:
        env["CUSTOMERS_ORDERS__DESTINATION_TYPE"] = "filesystem"
        env["DESTINATION__FILESYSTEM__BUCKET_URL"] = f"file://{work}/bucket-{name}"
    if options.chunk_rows:
        env[SNAPSHOT_ENV + "CHUNK_ROWS"] = str(options.chunk_rows)
    if options.chunk_bytes:
        env[SNAPSHOT_ENV + "CHUNK_BYTES"] = str(options.chunk_bytes)
    if throttle == "unthrottled":
        env.update({SNAPSHOT_ENV + k: v for k, v in UNTHROTTLED.items()})
    return env


def snapshot_env_shown(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(SNAPSHOT_ENV)}


def sync_timeline(sync: Sync, sampler: Sampler, rows: int | None) -> tuple[list[tuple[float, int]], str]:
    """Cumulative rows over time since the process started: from chunk log lines when there are any,
    else from the COPY progress the sampler saw (closed at the first sample after each statement ended)."""
    start = sync.started_wall
    if sync.chunks:
        points, total = [(0.0, 0)], 0
        for chunk in sync.chunks:
            total += int(chunk.get("rows") or 0)
            points.append((round(chunk["_t"] - start, 3), total))
        return points, "chunk log lines"
    series = sampler.progress(SYNC_APP)
    for key, points in series.items():
        last = points[-1][0]
        after = next((t for t in sampler.polls if t > last), None)
        if rows is not None and len(series) == 1 and after is not None and sync.process.returncode == 0:
            points.append((after, rows))
        series[key] = [(key[1], 0), *points]
    timeline = [(round(t - start, 3), v) for t, v in cumulative(series)]
    return [(0.0, 0), *timeline], "pg_stat_progress_copy"


def copy_window(sync: Sync, sampler: Sampler) -> tuple[float | None, float | None]:
    """When the sync's first COPY started and its last was last seen, in seconds since the process started."""
    series = sampler.progress(SYNC_APP)
    if sync.chunks and not series:
        return None, round(sync.chunks[-1]["_t"] - sync.started_wall, 3)
    if not series:
        return None, None
    first = min(k[1] for k in series)
    last = max(points[-1][0] for points in series.values())
    return round(first - sync.started_wall, 3), round(last - sync.started_wall, 3)


def measure_sync(ctx: Context, table: str, workers: int, name: str, throttle: str = "unthrottled",
                 cpus: set[int] | None = None) -> dict[str, Any]:
    env = sync_env(ctx.base_env, ctx.work, name, workers, ctx.options, throttle)
    cpu_before = server_cpu_seconds(ctx.pg)
    with ctx.sampler() as sampler:
        sync = Sync(env, table, cpus, mode=ctx.options.sync_mode).start()
        sampler.watch_pid = sync.process.pid
        result = sync.wait()
    if result["exit_code"] != 0:
        raise SystemExit(f"{name}: aurora-sync exited {result['exit_code']}:\n{sync.errors()}")
    rows = sync.rows_loaded() or ctx.tables[table]["rows"]
    first_copy, last_copy = copy_window(sync, sampler)
    timeline, source = sync_timeline(sync, sampler, rows)
    wall = result["seconds"]
    startup = first_copy if first_copy is not None else None
    tree_peak = max((s["rss_mb"] for s in sampler.tree), default=None)
    result.update({
        "kind": "sync", "table": table, "workers": workers, "throttle": throttle, "rows": rows,
        "rows_per_s": round(rows / wall), "bytes_per_s": round(ctx.tables[table]["total_bytes"] / wall),
        "startup_s": startup, "copy_end_s": last_copy,
        "after_copy_s": round(wall - last_copy, 3) if last_copy is not None else None,
        "steady_bytes_per_s": round(ctx.tables[table]["total_bytes"] / (wall - startup)) if startup else None,
        "cpu_cores": round((result["cpu_user_s"] + result["cpu_sys_s"]) / wall, 2),
        "server_cpu_s": round(server_cpu_seconds(ctx.pg) - cpu_before, 2),
        "tree_peak_rss_mb": tree_peak,
        "processes": max((s["processes"] for s in sampler.tree), default=None),
        "threads": max((s["threads"] for s in sampler.tree), default=None),
        "chunks": len(sync.chunks), "paused_s": round(sum(float(c.get("paused_s") or 0) for c in sync.chunks), 1),
        "progress_from": source, "timeline": timeline,
        "snapshot_env": snapshot_env_shown(env), **sampler.ages(SYNC_APP),
    })
    if result["processes"] and result["processes"] > 1:  # workers as processes: each one's peak
        peaks: dict[str, float] = {}
        for sample in sampler.tree:
            for pid, rss in sample["per_process_mb"].items():
                peaks[pid] = max(peaks.get(pid, 0.0), rss)
        result["per_process_peak_rss_mb"] = sorted(peaks.values(), reverse=True)
    shutil.rmtree(ctx.work / f"dlt-{name}", ignore_errors=True)
    shutil.rmtree(ctx.work / f"bucket-{name}", ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Context:
    pg: LocalPostgres
    dsn: str
    work: Path
    options: argparse.Namespace
    base_env: dict[str, str]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def sampler(self) -> Sampler:
        return Sampler(self.dsn, self.options.sample_interval, self.options.poll_interval)


def generate(ctx: Context) -> None:
    """Both tables, frozen and analysed: the first measured scan must not be the one that sets hint bits."""
    started = time.monotonic()
    execute(ctx.dsn, ORDERS_DDL + ORDERS_FILL.format(rows=int(ctx.options.rows)))
    if ctx.options.wide_rows:
        execute(ctx.dsn, WIDE_DDL + WIDE_FILL.format(rows=int(ctx.options.wide_rows)))
    execute(ctx.dsn, "VACUUM (FREEZE, ANALYZE) bench.orders",
            *(["VACUUM (FREEZE, ANALYZE) bench.wide"] if ctx.options.wide_rows else []))
    conn = psycopg2.connect(ctx.dsn)
    with conn.cursor() as cur:
        for table, rows in (("bench.orders", ctx.options.rows), ("bench.wide", ctx.options.wide_rows)):
            if not rows:
                continue
            cur.execute("SELECT pg_total_relation_size(%s), pg_table_size(%s), pg_indexes_size(%s)",
                        (table, table, table))
            total, heap, indexes = cur.fetchone()
            ctx.tables[table] = {"rows": int(rows), "total_bytes": total, "table_bytes": heap,
                                 "index_bytes": indexes, "avg_row_bytes": round(heap / rows)}
    conn.close()
    sizes = ", ".join(f"{t}: {v['rows']:,} rows, {v['total_bytes'] / 1e6:,.0f} MB" for t, v in ctx.tables.items())
    log(f"generated {sizes} in {time.monotonic() - started:.0f} s")


def warm_up(ctx: Context) -> None:
    """One unmeasured scan of each table so every measurement reads from the same (warm) cache."""
    for table in ctx.tables:
        conn = psycopg2.connect(ctx.dsn)
        conn.cursor().copy_expert(f"COPY {table} TO STDOUT (FORMAT binary)", _Sink(), 1 << 20)
        conn.close()


def median_run(runs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["repeats"] = len(runs)
    chosen["peak_rss_mb_max"] = max((r.get("peak_rss_mb") or 0) for r in runs) or None
    return chosen


def throughput(ctx: Context) -> list[dict[str, Any]]:
    """For each table and worker count: N raw COPY streams, then a sync with workers = N (median of --repeat)."""
    results = []
    for table in ctx.tables:
        for n in ctx.options.workers:
            copies = [copy_streams(ctx.dsn, table, n, ctx.sampler()) for _ in range(ctx.options.repeat)]
            copy = median_run(copies)
            log(f"{table}: {n} COPY stream(s): {copy['rows_per_s']:,} rows/s, {copy['bytes_per_s'] / 1e6:,.0f} MB/s")
            syncs = [measure_sync(ctx, table, n, f"{table.split('.')[1]}-w{n}-{i}")
                     for i in range(ctx.options.repeat)]
            sync = median_run(syncs)
            log(f"{table}: sync workers={n}: {sync['rows_per_s']:,} rows/s = "
                f"{sync['rows_per_s'] / copy['rows_per_s']:.2f}x COPY, {sync['seconds']} s, peak RSS "
                f"{sync['peak_rss_mb']} MB, oldest xact {sync['max_xact_age_s']} s")
            results += [copy, sync]
    return results


def idle_default_pacing(ctx: Context) -> dict[str, Any]:
    """What the default pacing (the CPU-probe guard) costs a snapshot when the source is idle: one sync of
    bench.orders with the most workers measured and no throttle setting, next to the unthrottled runs above."""
    workers = max(ctx.options.workers)
    sync = measure_sync(ctx, "bench.orders", workers, f"orders-default-w{workers}", throttle="default")
    log(f"bench.orders: sync workers={workers} with the default pacing on an idle source: {sync['rows_per_s']:,} "
        f"rows/s, {sync['seconds']} s, {sync['paused_s']} s paused in all")
    return sync


def kill_and_resume(ctx: Context) -> dict[str, Any]:
    """kill -9 of the sync process group once `--kill-at` of the rows were read, then a rerun to the end.

    Rows read by each run come from the table's scan counters on the server (a killed backend flushes them
    when it exits); re-read = read by run 1 + read by run 2 - table rows. Chunk ids logged as loaded by both
    runs were loaded twice. Today's single COPY has no chunks: the rerun reads the whole table again.
    """
    table, workers = "bench.orders", ctx.options.kill_workers
    total = ctx.tables[table]["rows"]
    env = sync_env(ctx.base_env, ctx.work, "kill", workers, ctx.options, "unthrottled")
    counter_0 = table_counters(ctx.dsn, table)
    read_at_kill, killed_at = 0, None
    seen: dict[tuple[int, float], int] = {}
    watcher = psycopg2.connect(ctx.dsn, application_name="bench-sampler")  # polls faster than the sampler
    watcher.autocommit = True
    with ctx.sampler() as sampler, contextlib.closing(watcher), watcher.cursor() as cur:
        first = Sync(env, table).start()
        sampler.watch_pid = first.process.pid
        while first.running():
            cur.execute("SELECT p.pid, extract(epoch FROM a.query_start), p.tuples_processed FROM "
                        "pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid) "
                        "WHERE starts_with(a.application_name, %s)", (SYNC_APP,))
            for pid, query_start, tuples in cur.fetchall():
                key = (pid, float(query_start))
                seen[key] = max(seen.get(key, 0), int(tuples))
            loaded = sum(int(c.get("rows") or 0) for c in first.chunks)
            read_at_kill = max(sum(seen.values()), loaded)
            if read_at_kill >= ctx.options.kill_at * total:
                killed_at = time.time()
                first.kill()
                break
            time.sleep(0.002)
        run1 = first.wait()
    wait_sessions_gone(ctx.dsn, SYNC_APP)
    counter_1 = table_counters(ctx.dsn, table)
    if killed_at is None:
        log(f"kill test: the sync finished ({run1['exit_code']}) before {ctx.options.kill_at:.0%} was seen; "
            "use more rows")
    with ctx.sampler() as sampler2:
        second = Sync(env, table).start()
        sampler2.watch_pid = second.process.pid
        run2 = second.wait()
    if run2["exit_code"] != 0:
        raise SystemExit(f"resume run exited {run2['exit_code']}:\n{second.errors()}")
    wait_sessions_gone(ctx.dsn, SYNC_APP)
    counter_2 = table_counters(ctx.dsn, table)
    read_1, read_2 = counter_1 - counter_0, counter_2 - counter_1
    ids_1 = {str(c.get("chunk")): int(c.get("rows") or 0) for c in first.chunks}
    ids_2 = {str(c.get("chunk")) for c in second.chunks}
    twice = {k: v for k, v in ids_1.items() if k in ids_2}
    chunk_rows = max([int(c.get("rows") or 0) for c in first.chunks + second.chunks], default=0)
    destination_rows = count_destination_rows(ctx, "kill", table)
    timeline1, _ = sync_timeline(first, sampler, None)
    timeline2, _ = sync_timeline(second, sampler2, second.rows_loaded())
    offset = second.started_wall - first.started_wall
    shutil.rmtree(ctx.work / "dlt-kill", ignore_errors=True)
    shutil.rmtree(ctx.work / "bucket-kill", ignore_errors=True)
    result = {
        "table": table, "workers": workers, "rows": total, "kill_at_fraction": ctx.options.kill_at,
        "killed": killed_at is not None,
        "killed_after_s": round(killed_at - first.started_wall, 3) if killed_at else None,
        "progress_at_kill": read_at_kill, "rows_read_run1": read_1, "rows_read_resume": read_2,
        "rows_reread": max(0, read_1 + read_2 - total), "chunks_loaded_before_kill": len(first.chunks),
        "rows_loaded_before_kill": sum(ids_1.values()), "chunks_resume": len(second.chunks),
        "chunks_loaded_twice": len(twice), "rows_in_chunks_loaded_twice": sum(twice.values()),
        "max_chunk_rows": chunk_rows or None, "destination_rows_after_resume": destination_rows,
        "run1": run1, "resume": run2, "resume_rows_per_s": round(total / run2["seconds"]),
        "timeline_run1": timeline1, "timeline_resume": [(round(t + offset, 3), v) for t, v in timeline2],
        "snapshot_env": snapshot_env_shown(env), **max_ages(sampler.ages(SYNC_APP), sampler2.ages(SYNC_APP)),
    }
    log(f"kill -9 at {read_at_kill:,} rows read ({read_at_kill / total:.0%}): run 1 read {read_1:,}, the resume "
        f"read {read_2:,}: {result['rows_reread']:,} rows read twice; chunks loaded twice: {len(twice)}")
    return result


def count_destination_rows(ctx: Context, name: str, table: str) -> int | None:
    """Rows of `table` in the destination (parquet files, or the DuckDB table)."""
    dataset, flat = "customers_orders", table.replace(".", "__")
    if ctx.options.destination == "duckdb":
        import duckdb

        with contextlib.closing(duckdb.connect(str(ctx.work / f"{name}.duckdb"), read_only=True)) as con:
            return int(con.execute(f"SELECT count(*) FROM {dataset}.{flat}").fetchone()[0])
    import pyarrow.parquet as pq

    files = list((ctx.work / f"bucket-{name}" / dataset / flat).glob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None


PROGRESS_LINE = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms")


def pgbench_path() -> str:
    """/usr/bin/pgbench (postgresql-client), else the one beside the server binaries; never skipped silently."""
    for candidate in ("/usr/bin/pgbench", shutil.which("pgbench"), str(find_bindir() / "pgbench")):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("pgbench not found: `apt-get install postgresql-client` (or run with --no-pgbench, which "
                     "the results then say)")


def pgbench(ctx: Context, seconds: int, cpus: set[int] | None) -> dict[str, Any]:
    """One `pgbench -T` run (TPC-B-like, its own database): TPS, average latency and TPS each second, the CPU of
    the pgbench client (it shares its core with the sync) and of the server over the run."""
    o = ctx.options
    command = [pgbench_path(), "-h", "127.0.0.1", "-p", str(ctx.pg.port), "-U", ctx.pg.user,
               "-c", str(o.pgbench_clients), "-j", str(o.pgbench_threads), "-T", str(seconds), "-P", "1", "pgbench"]
    if cpus:
        command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
    server_before = server_cpu_seconds(ctx.pg)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.time()
        process = subprocess.Popen(command, env={**os.environ, "PGPASSWORD": ctx.pg.password}, stdout=out,
                                   stderr=err, text=True, start_new_session=True)
        LIVE.add(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        LIVE.discard(process.pid)
        elapsed = time.time() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise SystemExit(f"pgbench failed ({process.returncode}):\n{stderr[-3000:]}")
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", stdout, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", stdout, re.M)
    per_second = [(float(m.group(1)), float(m.group(2)), float(m.group(3))) for m in PROGRESS_LINE.finditer(stderr)]
    return {"started": started, "seconds": seconds, "tps": float(tps.group(1)) if tps else None,
            "latency_ms": float(latency.group(1)) if latency else None, "per_second": per_second,
            "client_cpu_cores": round((usage.ru_utime + usage.ru_stime) / elapsed, 2),
            "server_cpu_cores": round((server_cpu_seconds(ctx.pg) - server_before) / elapsed, 2)}


def pgbench_phase(ctx: Context) -> dict[str, Any]:
    """Baseline, unthrottled snapshots, default-throttle snapshots, baseline again; PostgreSQL on its own core.

    Every run is sampled alike (the sampler's polls cost the server the same in all four), and a short
    unreported pgbench run first warms the caches, so the baselines compare with the loaded runs."""
    o = ctx.options
    allowed = sorted(os.sched_getaffinity(0))
    pinned = len(allowed) >= 2
    pg_cpus, client_cpus = ({allowed[0]}, set(allowed[1:])) if pinned else (None, None)
    if not pinned:
        log("pgbench: fewer than 2 cores, PostgreSQL and the clients share them (the report says so)")
    if pinned:
        pin_postgres(ctx.pg, pg_cpus)
        os.sched_setaffinity(0, client_cpus)  # this thread; threads and processes it starts inherit it
    try:
        phase: dict[str, Any] = {"clients": o.pgbench_clients, "threads": o.pgbench_threads, "scale": o.pgbench_scale,
                                 "seconds": o.pgbench_seconds, "workers": o.pgbench_workers,
                                 "postgres_cpus": sorted(pg_cpus) if pg_cpus else None,
                                 "client_cpus": sorted(client_cpus) if client_cpus else None, "pinned": pinned,
                                 "affinity_observed": observed_affinity(ctx)}
        pgbench(ctx, min(5, o.pgbench_seconds), client_cpus)  # warm-up, not reported
        with ctx.sampler():
            phase["baseline_before"] = pgbench(ctx, o.pgbench_seconds, client_cpus)
        log(f"pgbench without a sync: {phase['baseline_before']['tps']:,.0f} TPS, "
            f"{phase['baseline_before']['latency_ms']} ms")
        for throttle in ("unthrottled", "default"):
            phase[throttle] = pgbench_during_snapshots(ctx, throttle, client_cpus)
            run = phase[throttle]
            log(f"pgbench during {throttle} snapshots: {run['tps']:,.0f} TPS, {run['latency_ms']} ms (a sync COPY "
                f"active {run['snapshot_coverage']:.0%} of the seconds, {run['snapshot_rows_per_s']:,} rows/s read)"
                + (f"; its next chunk read {run['first_chunk_after_load_s']} s after pgbench ended"
                   if run.get("first_chunk_after_load_s") is not None else ""))
        with ctx.sampler():
            phase["baseline_after"] = pgbench(ctx, o.pgbench_seconds, client_cpus)
        log(f"pgbench without a sync, again: {phase['baseline_after']['tps']:,.0f} TPS, "
            f"{phase['baseline_after']['latency_ms']} ms")
    finally:
        if pinned:
            everything = set(allowed)
            pin_postgres(ctx.pg, everything)
            os.sched_setaffinity(0, everything)
    return phase


SYNC_LEAD_S = 2.0  # pgbench runs alone this long before the first sync starts
RESUME_WAIT_S = 60.0  # how long a default-paced sync is watched after pgbench for its next chunk


def pgbench_during_snapshots(ctx: Context, throttle: str, cpus: set[int] | None) -> dict[str, Any]:
    """pgbench while snapshots of bench.orders run back to back, the first starting `SYNC_LEAD_S` after pgbench;
    with the default pacing, the sync is then watched until it reads its next chunk (the guard let go), and the
    one still running is killed. Coverage: the part of pgbench's seconds during which a sync COPY was seen; rows
    read: the table's scan counters over the window (all syncs, the last one's too)."""
    env = sync_env(ctx.base_env, ctx.work, f"pgbench-{throttle}", ctx.options.pgbench_workers, ctx.options, throttle)
    stop, runs, current, syncs = threading.Event(), [], {}, []

    def loop() -> None:
        while not stop.is_set():
            sync = Sync(env, "bench.orders", cpus).start()
            current["sync"] = sync
            syncs.append(sync)
            result = sync.wait()
            if not stop.is_set():
                runs.append({**result, "rows": sync.rows_loaded()})
                if result["exit_code"] != 0:
                    log(f"a sync during pgbench exited {result['exit_code']}: {sync.errors()}")
                    stop.set()

    def start_syncs_soon() -> None:
        if not stop.wait(SYNC_LEAD_S):
            loop()

    resumed_after_s = None
    with ctx.sampler() as sampler:
        # production is busy first and the snapshot starts into it: the question is whether it then hurts
        thread = threading.Thread(target=start_syncs_soon, name=f"syncs-{throttle}", daemon=True)
        counter_before = table_counters(ctx.dsn, "bench.orders")
        thread.start()
        try:
            bench = pgbench(ctx, ctx.options.pgbench_seconds, cpus)
            ended = time.time()
            sync = current.get("sync")
            if throttle == "default" and sync is not None:  # does the paced snapshot go on once the load is gone?
                deadline = time.monotonic() + RESUME_WAIT_S
                while time.monotonic() < deadline and sync.process.poll() is None:
                    after = [c["_t"] for c in list(sync.chunks) if c["_t"] > ended]
                    if after:
                        resumed_after_s = round(min(after) - ended, 1)
                        break
                    time.sleep(0.1)
        finally:
            stop.set()  # first, so the loop neither reports the kill nor starts another sync
            if current.get("sync"):
                current["sync"].kill()
            thread.join(60)
    wait_sessions_gone(ctx.dsn, SYNC_APP)
    rows_read = table_counters(ctx.dsn, "bench.orders") - counter_before
    shutil.rmtree(ctx.work / f"dlt-pgbench-{throttle}", ignore_errors=True)
    shutil.rmtree(ctx.work / f"bucket-pgbench-{throttle}", ignore_errors=True)
    start, end = bench["started"], bench["started"] + bench["seconds"]
    active = {math.floor(s["t"] - start) for s in sampler.samples
              if (s["app"] or "").startswith(SYNC_APP) and s["tuples"] is not None and start <= s["t"] <= end}
    active_tps = [tps for t, tps, _ in bench["per_second"] if math.floor(t - 1) in active]
    chunks = [{"t": round(c["_t"] - start, 2), "rows": c.get("rows"), "seconds": c.get("seconds"),
               "paused_s": c.get("paused_s")} for sync in syncs for c in sync.chunks]
    return {**bench, "throttle": throttle, "snapshot_env": snapshot_env_shown(env), "syncs_completed": len(runs),
            "chunks_read": chunks,
            "snapshot_coverage": round(len(active) / max(1, bench["seconds"]), 2),
            "tps_while_copy_active": round(statistics.mean(active_tps), 1) if active_tps else None,
            "snapshot_rows_per_s": round(rows_read / bench["seconds"]), "sync_lead_s": SYNC_LEAD_S,
            "first_chunk_after_load_s": resumed_after_s, **sampler.ages(SYNC_APP)}


def init_pgbench(ctx: Context) -> None:
    execute(ctx.dsn, "CREATE DATABASE pgbench")
    out = subprocess.run([pgbench_path(), "-i", "-q", "-s", str(ctx.options.pgbench_scale), "-h", "127.0.0.1",
                          "-p", str(ctx.pg.port), "-U", ctx.pg.user, "pgbench"],
                         env={**os.environ, "PGPASSWORD": ctx.pg.password}, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"pgbench -i failed:\n{out.stderr[-3000:]}")


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "sources", "pipelines", "runner"],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, check=False).stdout.strip()
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model, "memory_gb": round(
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "load_average_at_start":
        [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(), "commit": commit,
        "sync_code_modified": bool(dirty)}


def run(options: argparse.Namespace) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(options.out) if options.out else RESULTS_DIR / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {"benchmark": "bench.snapshot_load", "started_at": time.strftime(
        "%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "options": {k: v for k, v in vars(options).items()
                                                                      if k not in ("report", "section", "placeholder")}}
    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="bench-snapshot-load-") as tmp:
        dsn = pg.url()
        base_env = {**os.environ, "SOURCES__POSTGRES__CREDENTIALS": dsn, "SOURCES__POSTGRES__SCHEMAS": '["bench"]',
                    "RUNTIME__LOG_LEVEL": "WARNING"}
        ctx = Context(pg, dsn, Path(tmp), options, base_env)
        conn = psycopg2.connect(dsn)
        results["machine"]["postgres"] = conn.server_version
        conn.close()
        version = results["machine"]["postgres"]
        log(f"PostgreSQL {version // 10000}.{version % 10000} on port {pg.port}; {results['machine']['cores']} cores; "
            f"load average {results['machine']['load_average_at_start']}")
        generate(ctx)
        results["tables"] = ctx.tables
        if not options.no_pgbench:
            init_pgbench(ctx)
        warm_up(ctx)
        results["throughput"] = throughput(ctx) if "throughput" in options.phases else []
        results["idle_default"] = idle_default_pacing(ctx) if "throughput" in options.phases else None
        results["kill"] = kill_and_resume(ctx) if not options.no_kill and "kill" in options.phases else None
        results["pgbench"] = pgbench_phase(ctx) if not options.no_pgbench and "pgbench" in options.phases else None
    results["duration_s"] = round(time.monotonic() - started, 1)
    from bench import snapshot_report

    results["summary"] = snapshot_report.summarize(results)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    chart = snapshot_report.chart(results, out_dir / "throughput.png")
    log(f"results: {path}" + (f", chart: {chart}" if chart else " (no chart: install the bench extra)"))
    print(snapshot_report.console_summary(results))
    if options.write_docs:
        written = snapshot_report.write_docs(results, path, options.section)
        log(f"rewrote the {written} section of docs/performance.md")
    return path


def cleanup_processes() -> None:
    for pgid in list(LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, 0)
        LIVE.discard(pgid)
    for child in mp.active_children():
        child.kill()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the orders-like table")
    parser.add_argument("--wide-rows", type=int, default=1_000_000, help="rows of the wide jsonb table (0: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="snapshot workers to measure")
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput measurement (the median)")
    parser.add_argument("--destination", choices=["filesystem", "duckdb"], default="filesystem",
                        help="where the syncs load: parquet files (default) or a DuckDB file")
    parser.add_argument("--sync-mode", choices=["snapshot", "incremental"], default="snapshot",
                        help="throughput syncs as snapshots, or as each table's first incremental load")
    parser.add_argument("--chunk-rows", type=int, help="SOURCES__POSTGRES__SNAPSHOT__CHUNK_ROWS (default: the code's)")
    parser.add_argument("--chunk-bytes", type=int, help="SOURCES__POSTGRES__SNAPSHOT__CHUNK_BYTES")
    parser.add_argument("--sample-interval", type=float, default=1.0,
                        help="seconds between xid clock ticks (one xid each) and RSS samples of the sync")
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="seconds between polls of COPY progress and transaction/xmin ages on the source")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the rows read when the sync is killed")
    parser.add_argument("--kill-workers", type=int, default=4, help="workers of the killed sync")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 test")
    parser.add_argument("--pgbench-seconds", type=int, default=30, help="pgbench -T of each pgbench run")
    parser.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s")
    parser.add_argument("--pgbench-clients", type=int, default=4, help="pgbench -c")
    parser.add_argument("--pgbench-threads", type=int, default=1, help="pgbench -j")
    parser.add_argument("--pgbench-workers", type=int, default=4, help="snapshot workers during pgbench")
    parser.add_argument("--no-pgbench", action="store_true", help="skip the pgbench phase (the report says so)")
    parser.add_argument("--phases", nargs="+", choices=["throughput", "kill", "pgbench"],
                        default=["throughput", "kill", "pgbench"], help="which measurements to run (default: all)")
    parser.add_argument("--out", help="results directory (default bench/results/<timestamp>)")
    parser.add_argument("--write-docs", action="store_true", help="also rewrite docs/performance.md from the results")
    parser.add_argument("--report", metavar="RESULTS_JSON",
                        help="only rewrite docs/performance.md (and the chart beside it) from a results.json")
    parser.add_argument("--section", choices=["auto", "baseline", "chunked"], default="auto",
                        help="which docs section the results fill: auto = chunked when the sync logged chunks")
    parser.add_argument("--placeholder", choices=["baseline", "chunked"],
                        help="only reset that docs section to its `not measured yet` placeholder")
    options = parser.parse_args(argv)
    if not 0 < options.kill_at < 1:
        parser.error("--kill-at must be between 0 and 1")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    if options.placeholder:
        from bench import snapshot_report

        snapshot_report.write_docs(None, None, options.placeholder)
        log(f"reset the {options.placeholder} section of docs/performance.md to its placeholder")
        return
    if options.report:
        from bench import snapshot_report

        path = Path(options.report)
        results = json.loads(path.read_text())
        results["summary"] = snapshot_report.summarize(results)
        snapshot_report.chart(results, path.parent / "throughput.png")
        written = snapshot_report.write_docs(results, path, options.section)
        print(snapshot_report.console_summary(results))
        log(f"rewrote the {written} section of docs/performance.md from {path}")
        return

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        run(options)
    except KeyboardInterrupt:
        log("interrupted: every process started here was killed and the cluster removed")
        raise SystemExit(130) from None
    finally:
        cleanup_processes()


if __name__ == "__main__":
    main()
