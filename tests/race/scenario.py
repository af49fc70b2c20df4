"""One seeded race-and-crash scenario of the CDC paths, end to end through the `aurora-sync` CLI as ECS runs it.

A seeded application workload (`tests.race.workload`) writes to PostgreSQL from threads while the sync runs as
real subprocesses configured only through environment variables. The harness kills the sync with kill -9 at
random moments and at the product's failpoints (`AURORA_SYNC_FAILPOINT`), restarts it on the same disk or on a
brand-new empty `DLT_DATA_DIR` (a replacement ECS task), and at the end quiesces the workload, brings the sync to
a final state, and checks that the destination equals the source with an independent comparator
(`tests.race.comparator`) and with the product's own `aurora-sync verify --checksum`.

Modes:
- `setup-chunked-1` / `setup-chunked-N`: `aurora-sync setup` copies ~22-36k rows (app.docs in 10-20 chunks, more
  as the workload adds keys; 1 or 3 reader workers) while the workload runs; it is killed and restarted 1-3 times;
  then drains (`run --mode cdc`) while the workload goes on, some killed; quiesce; a final drain.
- `follow`: setup, then `run --mode cdc --follow` under the workload, killed and restarted again and again; at the
  end SIGTERM (it must flush and exit 0) and one drain.
- `land-merge`: like `follow` with `merge_interval_seconds` > 0 and a bucket (`file://`, or by the seed S3 on moto
  behind a pausable proxy), plus `aurora-sync merge` started repeatedly (some killed mid-run, each on its own disk:
  it is another ECS task); at the end a drain and merges until one finds nothing left (again while a merge asked the
  follower to read keys again).
- `snapshot-helpers`: `run --mode snapshot` as the coordinator with `[sources.postgres.snapshot] helper_tasks` and
  1-3 `aurora-sync snapshot-helper` tasks beside it, loading fakesnow's HTTP server through the S3 stage on moto
  (the setup of tests/snowflake/test_snapshot_helpers.py: `tests.race.stand_ins`), while the workload writes;
  coordinators and helpers are killed (kill -9 at random, failpoints for the coordinator) and restarted on the
  same or an empty disk. A snapshot read while the source changes cannot equal it, but it must never hold a key
  twice: checked after every snapshot that finishes. After quiesce: a run finishes any snapshot begun before it,
  then one more snapshot, with helpers and again kills, must end exact. Every process must end with exit 0 (or
  by our kill); no CDC here, so no slot.

Outages (plan field `outage`, by the seed): `follow` and `land-merge` may get a warehouse outage (another process
holds the DuckDB replica's write lock for a few seconds), `land-merge` an S3 outage instead (its bucket is then
on moto, and the proxy in front of it is paused: moto keeps its data, a restarted moto would not). The sync must
fail cleanly (an error, a non-zero exit, or a retry: never a raw traceback) and catch up; the end must be exact.
Outages are in the timeline, in result.json (`outages`) and in the summary line.

Every decision (sizes, batch settings, failpoints, kill times, disks, outages) comes from `random.Random(seed)`,
so a seed replays the same plan; the interleavings differ from run to run, which is what the soak (`make soak`)
is for.

    python -m tests.race.scenario --mode follow --seed 7 [--ddl] [--no-truncate] [--no-kills] [--keep]
    python -m tests.race.scenario --mode snapshot-helpers --seed 13 [--keep]

starts its own PostgreSQL (local/postgres.py), runs the scenario, prints the result as JSON and exits 1 when the
destination is not exact. `--no-kills` replays the same plan without kill -9 and failpoints: a failure that goes
away is a crash-recovery bug. The work directory keeps every process's log (logs/NN-role.log), the workload's
journal of committed transactions (journal.txt), result.json and, on a difference, diff.json and the source
tables as CSV (source/).

The destination is DuckDB (dataset `race`, `DESTINATION__DUCKDB__CREDENTIALS=<workdir>/replica.duckdb`), and for
`snapshot-helpers` fakesnow (database AURORA_SYNC, schema RACE), read by the comparator through the Snowflake
connector; slot and publication are named after the database, so scenarios on one cluster do not share them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psycopg2

from runner.fork_server import ENV as FORK_SERVER_ENV
from tests.race import comparator
from tests.race.stand_ins import DuckDBLockHolder, FakeSnowflakeWarehouse, S3Landing
from tests.race.workload import Workload, create_schema, seed_rows

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT_HELPERS = "snapshot-helpers"
MODES = ("setup-chunked-1", "setup-chunked-N", "follow", "land-merge", SNAPSHOT_HELPERS)
DATASET = "race"
SNAPSHOT_RUN = ["run", "--mode", "snapshot"]
# outages each mode may get (by the seed): the warehouse is the DuckDB replica; S3 is land-merge's bucket
OUTAGES = {"follow": ("warehouse",), "land-merge": ("s3", "warehouse")}


@functools.cache
def product_failpoints() -> tuple[str, ...]:
    """The product's failpoints (pipelines/progress.py) a CDC process can pass: dlt's steps and the CDC points
    (`after_load_before_ack`, ...); `after_load` is the incremental runner's. Asked of the interpreter that runs
    `aurora-sync` (same environment), so the harness never picks a point that product does not know. A point a
    process never passes just does not fire: every life also has a kill timer."""
    fallback = ("extract_start", "extract_mid", "normalize_start", "normalize_mid", "load_start", "load_mid",
                "after_load_before_ack")
    python = Path(aurora_sync_binary()).parent / "python"
    asked = subprocess.run([str(python if python.exists() else sys.executable), "-c",
                            "from pipelines.progress import CDC_FAILPOINTS, FAILPOINTS; "
                            "print(' '.join((*FAILPOINTS, *CDC_FAILPOINTS)))"],
                           capture_output=True, text=True, timeout=120, check=False, cwd=tempfile.gettempdir())
    points = asked.stdout.split() if asked.returncode == 0 else []
    return tuple(p for p in points if p != "after_load") or fallback  # mid-change product: the documented points


@functools.cache
def snapshot_failpoints() -> tuple[str, ...]:
    """The failpoints a `run --mode snapshot` passes: dlt's steps (once per chunk package) and the runner's
    `after_load` (loaded, the run not finished yet). Helpers build their own dlt pipeline without the failpoint
    collector, so they are killed by timers only."""
    python = Path(aurora_sync_binary()).parent / "python"
    asked = subprocess.run([str(python if python.exists() else sys.executable), "-c",
                            "from pipelines.progress import FAILPOINTS; print(' '.join(FAILPOINTS))"],
                           capture_output=True, text=True, timeout=120, check=False, cwd=tempfile.gettempdir())
    points = asked.stdout.split() if asked.returncode == 0 else []
    return tuple(points) or ("extract_start", "extract_mid", "normalize_start", "normalize_mid", "load_start",
                             "load_mid", "after_load")


# exit codes (runner/exit_codes.py)
SUCCESS, FAILURE, CONFIG_ERROR, LOCK_HELD, DRIFT_FOUND = 0, 1, 2, 3, 4
STRIPPED_ENV = ("SOURCES__", "DESTINATION__", "CUSTOMERS_ORDERS__", "RUNNER__", "AURORA_SYNC_", "VAULT_", "NORMALIZE__",
                "LOAD__", "EXTRACT__", "DATA_WRITER__", "RUNTIME__", "DLT_")
# between a failed attempt and the next: 9 attempts span more than the longest transaction of the workload (8 s)
RETRY_PAUSE_S = 1.5

# what the harness itself puts in the work directory (anything else there was written by the product)
HARNESS_FILES = {"logs", "journal.txt", "result.json", "diff.json", "source", "replica.duckdb", "replica.duckdb.wal",
                 "bucket", "dead_letter", ".dlt"}
COMMAND_TIMEOUT = 240.0  # any single setup / drain / merge / verify
SCENARIO_BUDGET = 420.0  # the whole scenario, after which it gives up and reports


def aurora_sync_binary() -> str:
    for candidate in (PROJECT_ROOT / ".venv" / "bin" / "aurora-sync", Path(sys.executable).parent / "aurora-sync"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("aurora-sync")
    if not found:
        raise RuntimeError("aurora-sync is not installed (make venv)")
    return found


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value in (None, "") else value.lower() not in ("0", "false", "no", "off")


# --- the plan: everything the seed decides up front ------------------------------------------------------------


@dataclass
class Plan:
    mode: str
    seed: int
    ddl: bool
    truncate: bool
    threads: int
    think: float
    docs: int
    pairs: int
    bag: int
    key_space: int
    chunk_rows: int
    workers: int
    max_batch_rows: int
    max_batch_seconds: float
    delete_mode: str
    workload_seconds: float
    start_workload_before_setup: bool
    fresh_disk_probability: float
    failpoint_probability: float
    # fields added later come from random generators of their own, so the ones above stay what they were
    outage: str = "none"  # none | s3 | warehouse (OUTAGES says which a mode may get)
    outage_after_s: float = 0.0  # how long after the follower phase begins
    outage_seconds: float = 0.0
    bucket: str = "file"  # land-merge: a file:// bucket, or s3 (moto behind a proxy that can be paused)
    helpers: int = 0  # snapshot-helpers: snapshot-helper tasks running beside the coordinator
    helper_idle_seconds: float = 0.0  # their --idle-seconds
    helper_kill_probability: float = 0.0  # of each helper's life
    helpers_end: str = "idle"  # after the last snapshot: helpers end by themselves (idle), or get SIGTERM (ECS stop)
    max_rows_per_second: int = 0  # snapshot-helpers: a chunk takes about a second to read, so helpers get work
    final_kills: int = 0  # snapshot-helpers: coordinator kills during the snapshot after quiesce

    @classmethod
    def make(cls, mode: str, seed: int, ddl: bool, truncate: bool, workload_seconds: float | None) -> Plan:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if mode == SNAPSHOT_HELPERS:
            return cls.snapshot_helpers(seed, ddl, truncate, workload_seconds)
        plan = cls.cdc(mode, seed, ddl, truncate, workload_seconds)
        rng = random.Random(f"outage:{mode}:{seed}")
        kinds = OUTAGES.get(mode, ())
        if kinds and rng.random() < 0.5:  # half the seeds of a mode with outages get one
            plan.outage = rng.choice(kinds)
            plan.outage_after_s = round(rng.uniform(2, 6), 1)
            plan.outage_seconds = round(rng.uniform(3, 8), 1)
        if mode == "land-merge":
            plan.bucket = "s3" if plan.outage == "s3" or rng.random() < 0.25 else "file"
        return plan

    @classmethod
    def snapshot_helpers(cls, seed: int, ddl: bool, truncate: bool, workload_seconds: float | None) -> Plan:
        """Small tables (every package goes through fakesnow, ~1-3 s each): app.docs in 4-6 chunks (more as rows
        are added), pairs and bag in 1-4; each chunk throttled to about a second of reading.

        Every workload operation stays in: a snapshot re-reads and replaces every table (the keyless bag by ctid
        ranges, TRUNCATE and DDL included) and needs no cursor, so the one taken after quiesce is exact whatever
        the operations did before it; the ones taken while they run are only checked for duplicate keys."""
        rng = random.Random(f"plan:{SNAPSHOT_HELPERS}:{seed}")
        docs = rng.randint(1_200, 2_000)
        chunk_rows = docs // rng.randint(4, 6)
        return cls(
            mode=SNAPSHOT_HELPERS, seed=seed, ddl=ddl, truncate=truncate,
            threads=rng.choice((2, 3)), think=rng.choice((0.05, 0.08)),
            docs=docs, pairs=rng.randint(200, 700), bag=rng.randint(200, 600),
            # dense, so key moves cross the chunks' key ranges, yet with room beside a TRUNCATE's refill (ids
            # 1..3000 at most): the workload must always find free ids
            key_space=int(max(docs, 3_000) * rng.uniform(1.5, 2.0)),
            chunk_rows=chunk_rows, workers=rng.choice((1, 1, 2)),
            max_batch_rows=2_000, max_batch_seconds=1.0, delete_mode="hard",  # CDC settings: unused here
            workload_seconds=workload_seconds or round(rng.uniform(10, 16), 1),
            start_workload_before_setup=True,
            fresh_disk_probability=rng.choice((0.25, 0.5)),
            failpoint_probability=rng.choice((0.4, 0.6)),
            helpers=rng.choice((1, 2, 2, 3)), helper_idle_seconds=rng.choice((6.0, 8.0, 10.0)),
            helper_kill_probability=rng.choice((0.3, 0.5)), helpers_end=rng.choice(("idle", "sigterm")),
            max_rows_per_second=chunk_rows * rng.choice((1, 2)),
            final_kills=rng.choice((0, 1, 1, 2)),
        )

    @classmethod
    def cdc(cls, mode: str, seed: int, ddl: bool, truncate: bool, workload_seconds: float | None) -> Plan:
        rng = random.Random(f"plan:{mode}:{seed}")
        setup_mode = mode.startswith("setup-chunked")
        docs = rng.randint(20_000, 30_000) if setup_mode else rng.randint(2_000, 5_000)
        # setup modes: 10-20 chunks (more with the keys the workload adds); follow modes: one go or a few chunks
        chunk_rows = docs // rng.randint(10, 20) if setup_mode else rng.choice((0, docs // rng.randint(3, 8)))
        return cls(
            mode=mode, seed=seed, ddl=ddl, truncate=truncate,
            # ~20-60 transactions/s: the sync (about a second of dlt overhead per batch) must be able to keep up
            threads=rng.choice((2, 3, 3, 4)), think=rng.choice((0.03, 0.05, 0.08)),
            docs=docs, pairs=rng.randint(1_500, 4_000) if setup_mode else rng.randint(600, 1_500),
            bag=rng.randint(800, 2_000) if setup_mode else rng.randint(300, 900),
            # setup modes keep keys dense (moves stay inside the chunked range); follow modes move them far
            key_space=int(docs * rng.uniform(1.3, 2.0)) if setup_mode else 1_000_000,
            chunk_rows=chunk_rows,
            workers=3 if mode == "setup-chunked-N" else 1,
            # tiny batches cut transactions in pieces (and are slow: follow modes only, rarely)
            max_batch_rows=rng.choice((300, 2_000, 100_000) if setup_mode else (50, 300, 300, 2_000, 100_000)),
            max_batch_seconds=rng.choice((0.5, 1.0, 2.0)),
            delete_mode="soft" if rng.random() < 0.2 else "hard",
            workload_seconds=workload_seconds or round(rng.uniform(14, 20), 1),
            start_workload_before_setup=setup_mode or rng.random() < 0.5,
            fresh_disk_probability=rng.choice((0.25, 0.5)),
            failpoint_probability=rng.choice((0.4, 0.6)),
        )


# --- processes -------------------------------------------------------------------------------------------------


class Proc:
    """One `aurora-sync` process in its own process group; stdout and stderr (JSON logs) go to files. `command` is
    what runs the CLI (default: the `aurora-sync` script; `python -m local.fakesnow_client` for fakesnow)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path, logdir: Path,
                 note: dict[str, Any], command: list[str] | None = None) -> None:
        self.name, self.args, self.note = name, args, note
        self.stdout_path, self.stderr_path = logdir / f"{name}.out", logdir / f"{name}.log"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.popen = subprocess.Popen([*(command or [aurora_sync_binary()]), "--json-logs", *args], env=env,
                                          cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.started = time.monotonic()
        self.ended: float | None = None  # when the harness saw it end
        self.killed_by_harness = False
        self.kill_after: float | None = None

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.killed_by_harness = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def terminate(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def reap(self) -> None:
        """Nothing of this process group survives (a leftover helper would hold the DuckDB file)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.wait(30)

    def text(self, which: str = "stderr") -> str:
        path = self.stderr_path if which == "stderr" else self.stdout_path
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, chars: int = 2000, which: str = "stderr") -> str:
        return self.text(which)[-chars:]

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def raw_traceback(self) -> str | None:
        """A Python traceback printed outside the JSON logs (a crash, not an error the product handled)."""
        text = self.text()
        for i, line in enumerate(lines := text.splitlines()):
            if line.startswith("Traceback (most recent call last)"):
                return "\n".join(lines[i:i + 30])[-1500:]
        return None


# --- the scenario ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    seed: int
    ok: bool = False
    failures: list[str] = field(default_factory=list)
    replay: str = ""
    duration_s: float = 0.0
    plan: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)  # processes started per role (restarts included)
    disks: dict[str, int] = field(default_factory=dict)  # DLT_DATA_DIRs used per task role (each new one empty)
    exit_codes: dict[str, dict[str, int]] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    product: dict[str, Any] = field(default_factory=dict)
    outages: list[dict[str, Any]] = field(default_factory=list)  # what was cut off, when, and who noticed
    snapshots: dict[str, Any] = field(default_factory=dict)  # snapshot-helpers: who read which chunks
    workdir: str = ""

    def headline(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        first = "; ".join(self.failures)[:600]
        outages = ", ".join(f"{o['kind']} {o.get('seconds', 0):.1f}s" + ("" if o.get("began", True) else
                                                                         " (could not begin)")
                            for o in self.outages)
        return (f"race {self.mode} seed {self.seed}: {verdict} in {self.duration_s:.0f}s, kills {self.kills}, "
                + (f"outage {outages}, " if outages else "")
                + f"workload {self.workload.get('committed_total', 0)} txns" + (f" -- {first}" if first else ""))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def replay_line(mode: str, seed: int, ddl: bool, truncate: bool, kills: bool = True) -> str:
    flags = (" --ddl" if ddl else "") + ("" if truncate else " --no-truncate") + ("" if kills else " --no-kills")
    env = f"RACE_MODES={mode} RACE_SEED_START={seed} RACE_SEEDS=1" + (" RACE_DDL=1" if ddl else "") + (
        "" if truncate else " RACE_TRUNCATE=0") + ("" if kills else " RACE_KILLS=0")
    return (f"RACE_REPLAY: .venv/bin/python -m tests.race.scenario --mode {mode} --seed {seed}{flags} --keep"
            f"   # or: {env} .venv/bin/pytest -m race tests/race/test_race.py")


class Scenario:
    def __init__(self, dsn: str, workdir: Path, mode: str, seed: int, *, ddl: bool = False, truncate: bool = True,
                 workload_seconds: float | None = None, kills: bool = True, log: TextIO | None = None) -> None:
        self.dsn, self.workdir = dsn, Path(workdir)
        self.with_kills = kills
        self.plan = Plan.make(mode, seed, ddl, truncate, workload_seconds)
        self.rng = random.Random(f"harness:{mode}:{seed}")
        self.merge_rng = random.Random(f"merge:{mode}:{seed}")
        self.database = dsn.rsplit("/", 1)[1].split("?", 1)[0]
        self.slot = re.sub(r"[^a-z0-9_]", "_", f"race_{self.database}".lower())[:63]
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        # the processes run in the work directory, with the project's dlt config (not its secrets): whatever the
        # product writes to a relative path stays here, and shows up in `stray_files`
        (self.workdir / ".dlt").mkdir(exist_ok=True)
        shutil.copy(PROJECT_ROOT / ".dlt" / "config.toml", self.workdir / ".dlt" / "config.toml")
        self.harness_files = {p.name for p in self.workdir.iterdir()}
        self.duck = str(self.workdir / "replica.duckdb")
        self.bucket = self.workdir / "bucket"
        self.log = log
        self.result = Result(mode=mode, seed=seed, plan={**asdict(self.plan), "kills": kills},
                             workdir=str(self.workdir), replay=replay_line(mode, seed, ddl, truncate, kills))
        self.procs: list[Proc] = []
        self.counter: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.exit_codes: dict[str, Counter[str]] = {}
        self.disks: dict[str, Path] = {}
        self.disk_counts: Counter[str] = Counter()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + SCENARIO_BUDGET
        self.workload: Workload | None = None
        self.lock = threading.Lock()
        self.config_error = False
        self.snapshot_mode = mode == SNAPSHOT_HELPERS
        self.failpoints = snapshot_failpoints() if self.snapshot_mode else product_failpoints()
        self.helper_rng = random.Random(f"helpers:{mode}:{seed}")
        self.s3: S3Landing | None = None  # land-merge's bucket on moto
        self.warehouse: FakeSnowflakeWarehouse | None = None  # snapshot-helpers' destination
        self.holder: DuckDBLockHolder | None = None  # a warehouse outage in progress
        self.sigterm_after_done = 0  # helpers that got SIGTERM while exiting after their work (exit 143)
        self.outages: list[dict[str, Any]] = []
        python = Path(aurora_sync_binary()).parent / "python"
        self.python = str(python if python.exists() else sys.executable)

    # --- bookkeeping --------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def note(self, event: str, **fields: Any) -> None:
        entry = {"t": self.elapsed(), "event": event, **fields}
        with self.lock:
            self.result.timeline.append(entry)
        if self.log is not None:
            print(f"[race {self.plan.mode} {self.plan.seed}] {json.dumps(entry, default=str)}", file=self.log,
                  flush=True)

    def fail(self, reason: str) -> None:
        with self.lock:
            if reason not in self.result.failures:
                self.result.failures.append(reason)
        self.note("failure", reason=reason)

    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    # --- environment ----------------------------------------------------------------------------------------------
    def disk(self, role: str, *, fresh: bool | None = None) -> tuple[Path, bool]:
        """The task's DLT_DATA_DIR: the same as last time, or (by the seed, or `fresh`) a brand-new empty one."""
        rng = self.merge_rng if role == "merge" else self.helper_rng if role.startswith("helper") else self.rng
        if role not in self.disks:
            fresh = True
        elif fresh is None:
            fresh = rng.random() < self.plan.fresh_disk_probability
        if fresh:
            self.disk_counts[role] += 1
            path = self.workdir / f"{role}-disk-{self.disk_counts[role]}"
            path.mkdir(parents=True, exist_ok=True)
            self.disks[role] = path
        return self.disks[role], fresh

    def env(self, disk: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_ENV) or k == FORK_SERVER_ENV}
        plan = self.plan
        env.update({
            "SOURCES__POSTGRES__CREDENTIALS": self.dsn,
            "SOURCES__POSTGRES__SCHEMAS": '["app"]',
            "CUSTOMERS_ORDERS__DATASET_NAME": DATASET,
            "DLT_DATA_DIR": str(disk),
            "RUNNER__DEAD_LETTER_URL": str(self.workdir / "dead_letter"),
            "SOURCES__POSTGRES__DEAD_LETTER_URL": str(self.workdir / "dead_letter"),
            "SOURCES__POSTGRES__REPLICATION__DEAD_LETTER_URL": str(self.workdir / "dead_letter"),
            "SOURCES__POSTGRES__REPLICATION__SLOT_NAME": self.slot,
            "SOURCES__POSTGRES__REPLICATION__PUBLICATION_NAME": self.slot,
            "SOURCES__POSTGRES__REPLICATION__MAX_BATCH_SECONDS": str(plan.max_batch_seconds),
            "SOURCES__POSTGRES__REPLICATION__MAX_BATCH_ROWS": str(plan.max_batch_rows),
            "SOURCES__POSTGRES__REPLICATION__DELETE_MODE": plan.delete_mode,
            "SOURCES__POSTGRES__REPLICATION__HEARTBEAT_SECONDS": "1",
            "SOURCES__POSTGRES__REPLICATION__NEW_TABLE_CHECK_SECONDS": "5",
            "SOURCES__POSTGRES__SNAPSHOT__WORKERS": str(plan.workers),
            "SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE": "0",
            "RUNNER__MAX_ATTEMPTS": "2",
            "RUNNER__BACKOFF_INITIAL_SECONDS": "0.5",
            "RUNNER__BACKOFF_MAX_SECONDS": "2",
            "RUNNER__LIVENESS_SECONDS": "5",
            "RUNTIME__LOG_LEVEL": "WARNING",
        })
        if plan.chunk_rows:
            env["SOURCES__POSTGRES__SNAPSHOT__CHUNK_ROWS"] = str(plan.chunk_rows)
        if plan.mode == "land-merge":
            env["SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS"] = "5"
            env["DESTINATION__FILESYSTEM__BUCKET_URL"] = self.bucket.as_uri()
            if self.s3 is not None:
                env.update(self.s3.env())
        if self.warehouse is not None:  # fakesnow through the S3 stage, as tests/snowflake/test_snapshot_helpers.py
            env.update(self.warehouse.env())
            env["SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS"] = str(plan.helpers)
            env["SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND"] = str(plan.max_rows_per_second)
        else:
            env["DESTINATION__DUCKDB__CREDENTIALS"] = self.duck
        env.update(extra or {})
        return env

    def failpoint(self, rng: random.Random) -> dict[str, str]:
        """A failpoint for the next process (by the seed), or none."""
        if rng.random() >= self.plan.failpoint_probability:
            return {}
        point = rng.choice(self.failpoints)
        env = {"AURORA_SYNC_FAILPOINT": point, "AURORA_SYNC_FAILPOINT_STEP_RUN": str(rng.randint(1, 6))}
        if point == "load_mid":
            env["AURORA_SYNC_FAILPOINT_JOBS"] = str(rng.randint(1, 3))
        return env

    # --- processes ------------------------------------------------------------------------------------------------
    def start(self, role: str, args: list[str], *, failpoint: dict[str, str] | None = None,
              fresh: bool | None = None, kill_after: float | None = None, task: str | None = None) -> Proc:
        if not self.with_kills:  # the same plan and draws, without the crashes (to tell crash bugs from others)
            failpoint, kill_after = {}, None
        # setup, follow, drain and the snapshot coordinator are one pipeline's task (one disk, or a new one: a
        # replacement task); the merge is another task with its own disk, so is each snapshot helper slot
        # (`task`); verify starts on an empty one
        task = task or (role if role in ("merge", "verify") else "sync")
        disk, was_fresh = self.disk(task, fresh=fresh)
        if role == "coordinator":
            self.analyze_source()
        self.counter[role] += 1
        name = f"{self.counter[role]:02d}-{role}"
        note: dict[str, Any] = {"proc": name, "args": " ".join(args),
                                "disk": disk.name + (" (new, empty)" if was_fresh else "")}
        if failpoint:
            point, run = failpoint["AURORA_SYNC_FAILPOINT"], failpoint["AURORA_SYNC_FAILPOINT_STEP_RUN"]
            jobs = failpoint.get("AURORA_SYNC_FAILPOINT_JOBS")
            note["failpoint"] = f"{point} run {run}" + (f" jobs {jobs}" if jobs else "")
        if kill_after is not None:
            note["kill_after_s"] = round(kill_after, 2)
        extra = dict(failpoint or {})
        if task.startswith("helper"):  # a helper's working folder (mkdtemp) stays on its disk when it is killed
            (disk / "tmp").mkdir(exist_ok=True)
            extra["TMPDIR"] = str(disk / "tmp")
        command = FakeSnowflakeWarehouse.command(self.python) if self.warehouse is not None else None
        proc = Proc(name, args, self.env(disk, extra), self.workdir, self.logdir, note, command)
        proc.kill_after = kill_after
        with self.lock:
            self.procs.append(proc)
        self.note("start", **note)
        return proc

    def finished(self, role: str, proc: Proc, code: int | None) -> int | None:
        """Record how a process ended (code None: it did not end in time and was killed)."""
        if code is None:
            proc.kill9()
            proc.wait(30)
            self.kills["timeout"] += 1
            self.fail(f"{proc.name} ({proc.note['args']}) did not finish within its timeout and was killed; "
                      f"log tail: {proc.tail(400)!r}")
            label = "timeout"
        elif code == -signal.SIGKILL and proc.killed_by_harness:
            self.kills["kill -9 by the harness"] += 1
            label = "killed"
        elif code == -signal.SIGKILL:
            self.kills[f"failpoint {proc.note.get('failpoint', '?').split(' ')[0]}"] += 1
            label = "failpoint"
        else:
            label = str(code)
        proc.ended = time.monotonic()
        with self.lock:
            self.exit_codes.setdefault(role, Counter())[label] += 1
        self.note("exit", proc=proc.name, code=code, how=label, after_s=round(time.monotonic() - proc.started, 2),
                  **({"error": self.error_of(proc)} if code not in (0, None, -signal.SIGKILL) else {}))
        if code == CONFIG_ERROR:
            self.config_error = True
            self.fail(f"{proc.name} ({proc.note['args']}) exited 2 (configuration error): {self.error_of(proc)}")
        return code

    @staticmethod
    def error_of(proc: Proc) -> str:
        errors = [e.get("message", "") for e in proc.events() if e.get("level") in ("ERROR", "CRITICAL")]
        if errors:
            return errors[-1][:600]
        return proc.tail(600)

    def run_once(self, role: str, args: list[str], *, failpoint: dict[str, str] | None = None,
                 kill_after: float | None = None, fresh: bool | None = None,
                 timeout: float = COMMAND_TIMEOUT) -> tuple[Proc, int | None]:
        """One command to its end: its own exit, a failpoint, kill -9 after `kill_after` s, or the timeout."""
        proc = self.start(role, args, failpoint=failpoint, kill_after=kill_after, fresh=fresh)
        limit = time.monotonic() + timeout
        kill_at = proc.started + proc.kill_after if proc.kill_after is not None else None
        while proc.alive() and time.monotonic() < limit:
            if kill_at is not None and time.monotonic() >= kill_at:
                proc.kill9()
                break
            time.sleep(0.05)
        code = proc.wait(30) if not proc.alive() or proc.killed_by_harness else None
        return proc, self.finished(role, proc, code)

    def until_success(self, role: str, args: list[str], attempts: int, what: str) -> Proc | None:
        """Retry a command (no kills) until it exits 0: the final state after quiesce."""
        for _ in range(attempts):
            if self.config_error or self.over_budget():
                break
            proc, code = self.run_once(role, args, fresh=False)
            if code == SUCCESS:
                return proc
            time.sleep(RETRY_PAUSE_S)
        self.fail(f"{what}: `aurora-sync {' '.join(args)}` did not exit 0 in {attempts} attempts "
                  f"(exit codes {dict(self.exit_codes.get(role, {}))})")
        return None

    # --- the phases -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        plan = self.plan
        create_schema(self.dsn)
        seed_rows(self.dsn, plan.seed, plan.docs, plan.pairs, plan.bag)
        self.workload = Workload(self.dsn, plan.seed, ddl=plan.ddl, truncate=plan.truncate, threads=plan.threads,
                                 think=plan.think, key_space=plan.key_space)
        if plan.bucket == "s3":
            self.s3 = S3Landing()
            self.note("s3 bucket on moto", bucket=self.s3.bucket_url, endpoint=self.s3.proxy.url,
                      moto=self.s3.s3.endpoint_url)
        if self.snapshot_mode:
            self.warehouse = FakeSnowflakeWarehouse()
            self.note("fakesnow server", endpoint=self.warehouse.endpoint, s3=self.warehouse.s3.endpoint_url)
            self.bootstrap()
        self.note("prepared", docs=plan.docs, pairs=plan.pairs, bag=plan.bag, chunk_rows=plan.chunk_rows,
                  workers=plan.workers, **({"helpers": plan.helpers} if self.snapshot_mode else {"slot": self.slot}))

    def bootstrap(self) -> None:
        """tests/snowflake/conftest.py's `bootstrap()` (database, schema, file format, stage), in a process of its
        own (`python -m tests.race.stand_ins bootstrap`): the objects `snowflake-bootstrap` creates in production."""
        disk, _ = self.disk("bootstrap", fresh=True)
        with (self.logdir / "00-bootstrap.log").open("w") as log:
            done = subprocess.run([self.python, "-m", "tests.race.stand_ins", "bootstrap"], env=self.env(disk),
                                  cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=COMMAND_TIMEOUT, check=False)
        self.note("bootstrap", code=done.returncode)
        if done.returncode != SUCCESS:
            raise RuntimeError(f"snowflake bootstrap exited {done.returncode}: "
                               f"{(self.logdir / '00-bootstrap.log').read_text()[-600:]}")

    def close_stand_ins(self) -> None:
        for stand_in in (self.s3, self.warehouse):
            if stand_in is not None:
                with contextlib.suppress(Exception):
                    stand_in.close()

    def start_workload(self) -> None:
        assert self.workload is not None
        if self.workload.started_at is None:
            self.workload.start()
            self.note("workload started", threads=self.plan.threads)

    def quiesce(self) -> None:
        assert self.workload is not None
        if self.workload.started_at is not None and self.workload.stopped_at is None:
            counters = self.workload.stop()
            self.note("workload quiesced", committed=counters["committed_total"], aborted=counters["aborted_total"])

    def setup_under_kills(self) -> bool:
        """`aurora-sync setup` until it exits 0, killed (by the seed) 1-3 times first."""
        kills = self.rng.randint(1, 3) if self.plan.mode.startswith("setup") else self.rng.choice((0, 0, 1))
        for attempt in range(1, 10):
            if self.config_error or self.over_budget():
                return False
            failpoint: dict[str, str] = {}
            kill_after = None
            if attempt <= kills:
                failpoint = self.failpoint(self.rng)
                # a failpoint may never be passed: a later kill timer backs it up
                kill_after = self.rng.uniform(4, 16) if failpoint else self.rng.uniform(1, 8)
            _, code = self.run_once("setup", ["setup"], failpoint=failpoint, kill_after=kill_after,
                                    fresh=None if attempt > 1 else True)
            if code == SUCCESS:
                return True
            if code is not None and code > 0:
                # a killed setup's slot stays active until its walsender ends, which waits for the transactions
                # open when the slot was created (the workload's long ones hold up to 8 s): retry as a scheduler
                # would, not at once (forked from the fork server, an attempt that fails takes 0.4 s)
                time.sleep(RETRY_PAUSE_S)
        self.fail("setup never succeeded in 9 attempts")
        return False

    def drains_under_kills(self, until: float) -> None:
        """`run --mode cdc` again and again while the workload runs, some killed."""
        while time.monotonic() < until and not self.config_error and not self.over_budget():
            failpoint: dict[str, str] = {}
            kill_after = None
            if self.rng.random() < 0.5:
                failpoint = self.failpoint(self.rng)
                kill_after = self.rng.uniform(3, 10) if failpoint else self.rng.uniform(1, 5)
            self.run_once("drain", ["run", "--mode", "cdc"], failpoint=failpoint, kill_after=kill_after)
            time.sleep(self.rng.uniform(0, 1))

    def follow_under_kills(self, until: float) -> Proc | None:
        """`run --mode cdc --follow` lives until `until`, killed with -9 (timer or failpoint) and restarted."""
        while not self.config_error and not self.over_budget():
            if time.monotonic() >= until:
                return None
            r = self.rng.random()
            failpoint = self.failpoint(self.rng) if r < 0.5 else {}
            kill_after = (self.rng.uniform(4, 14) if failpoint else self.rng.uniform(2, 9)) if r < 0.85 else None
            if kill_after is None and not self.counter["follow"]:  # the first life always dies: at least one kill
                kill_after = self.rng.uniform(2, 9)
            proc = self.start("follow", ["run", "--mode", "cdc", "--follow"], failpoint=failpoint,
                              kill_after=kill_after)
            kill_at = proc.started + proc.kill_after if proc.kill_after is not None else None
            while proc.alive() and time.monotonic() < until:
                if kill_at is not None and time.monotonic() >= kill_at:
                    proc.kill9()
                    break
                time.sleep(0.05)
            if proc.alive() and not proc.killed_by_harness:
                return proc  # still following at the end of the workload
            code = self.finished("follow", proc, proc.wait(30))
            if code == SUCCESS:
                self.fail(f"{proc.name}: the follower exited 0 without being asked to stop")
            time.sleep(self.rng.uniform(0, 1.5) if code != LOCK_HELD else 1.0)
        return None

    def stop_follower(self, proc: Proc | None) -> None:
        if proc is None:
            return
        # a process still importing has no SIGTERM handler yet: let it start streaming first (at most 30 s)
        ready_by = proc.started + 30
        while proc.alive() and time.monotonic() < ready_by and (
                time.monotonic() - proc.started < 4 or not proc.events()):
            time.sleep(0.1)
        if not proc.alive():  # it ended on its own meanwhile (a failpoint, a failure): the final drain takes over
            self.finished("follow", proc, proc.wait(30))
            return
        self.note("sigterm", proc=proc.name)
        proc.terminate()
        code = self.finished("follow", proc, proc.wait(COMMAND_TIMEOUT))
        if code == -signal.SIGKILL and "failpoint" in proc.note:
            self.note("failpoint fired during the SIGTERM flush", proc=proc.name)  # the kill is ours, not a bug
        elif code != SUCCESS:
            self.fail(f"{proc.name}: SIGTERM should flush and exit 0, got {code}: {self.error_of(proc)}")

    def merges_in_background(self, stop: threading.Event) -> None:
        """`aurora-sync merge` every 1-4 s on its own disk (another ECS task); about a third killed mid-run."""
        while not stop.is_set() and not self.config_error and not self.over_budget():
            rng = self.merge_rng
            r = rng.random()
            failpoint = self.failpoint(rng) if r < 0.15 else {}
            kill_after = (rng.uniform(2, 8) if failpoint else rng.uniform(0.3, 4)) if r < 0.45 else None
            self.run_once("merge", ["merge"], failpoint=failpoint, kill_after=kill_after, timeout=COMMAND_TIMEOUT)
            stop.wait(rng.uniform(1, 4))

    def merge_until_idle(self) -> bool:
        """Merges until one finds nothing landed that it has not applied (or budget); True when one of them asked
        the follower to read keys again (`pipelines.cdc.rereads`), so another drain and merge are due."""
        asked = False
        for _ in range(8):
            if self.config_error or self.over_budget():
                break
            proc, code = self.run_once("merge", ["merge"], fresh=False)
            asked = asked or any(str(e.get("message", "")).endswith("the follower reads their keys again")
                                 for e in proc.events())
            if code != SUCCESS:
                time.sleep(0.5)
                continue
            done = [e for e in proc.events() if e.get("message") == "merge succeeded"]
            if done and (done[-1].get("idle") or not done[-1].get("batches")):
                return asked
        self.fail("merge: no idle merge cycle after the final drain (landed batches left unmerged, or failures)")
        return asked

    # --- outages ------------------------------------------------------------------------------------------------------
    def outage_window(self, follow_start: float) -> float:
        """When the planned outage is over at the latest (the holder may wait a moment for the DuckDB lock)."""
        plan = self.plan
        return follow_start + plan.outage_after_s + plan.outage_seconds + (8 if plan.outage == "warehouse" else 0)

    def outage_in_background(self, follow_start: float) -> threading.Thread:
        thread = threading.Thread(target=self.outage, args=(follow_start,), name="race-outage", daemon=True)
        thread.start()
        return thread

    def outage(self, follow_start: float) -> None:
        """The planned outage: S3 (the proxy in front of moto paused: refused and cut connections) or the
        warehouse (another process holds DuckDB's write lock on the replica), for `outage_seconds`."""
        plan = self.plan
        time.sleep(max(0.0, follow_start + plan.outage_after_s - time.monotonic()))
        record: dict[str, Any] = {"kind": plan.outage, "planned_s": plan.outage_seconds}
        if plan.outage == "s3":
            assert self.s3 is not None
            self.s3.pause()
            began = time.monotonic()
            self.note("outage begins", kind="s3", seconds=plan.outage_seconds)
            time.sleep(plan.outage_seconds)
            self.s3.resume()
        else:
            self.holder = holder = DuckDBLockHolder(
                self.duck, self.logdir / f"{len(self.outages) + 1:02d}-warehouse-outage.log", acquire_timeout=8.0)
            record["lock_acquired_after_s"] = holder.acquired_after
            if not holder.acquired:
                holder.release()
                self.holder = None
                record.update(began=False, seconds=0.0, answer=holder.answer, at_s=self.elapsed())
                self.note("outage could not begin", kind="warehouse", answer=holder.answer)
                with self.lock:
                    self.outages.append(record)
                return
            began = time.monotonic()
            self.note("outage begins", kind="warehouse", seconds=plan.outage_seconds,
                      lock_acquired_after_s=holder.acquired_after)
            time.sleep(plan.outage_seconds)
            holder.release()
            self.holder = None
        ended = time.monotonic()
        record.update(began=True, at_s=round(began - self.t0, 2), seconds=round(ended - began, 2),
                      ended_at_s=round(ended - self.t0, 2), began_at=began, ended_at=ended,
                      wall=(time.time() - (time.monotonic() - began), time.time()))
        self.note("outage ends", kind=plan.outage, seconds=record["seconds"])
        with self.lock:
            self.outages.append(record)

    def outage_effects(self) -> None:
        """Who noticed each outage (a process that exited non-zero during it or within 15 s after), and whether
        each of them failed cleanly: an error in its JSON logs, no raw traceback."""
        for record in self.outages:
            began, ended = record.pop("began_at", None), record.pop("ended_at", None)
            wall = record.pop("wall", None)
            if began is None or ended is None:
                continue
            if wall:
                record["logged"] = self.logged_between(*wall)
                lag = self.landing_lag_between(*wall)
                if lag is not None:
                    record["worst_landing_lag_s"] = lag
            noticed = []
            for proc in list(self.procs):
                code = proc.poll()
                if proc.ended is None or code in (SUCCESS, None, -signal.SIGKILL):
                    continue
                if proc.started <= ended + 15 and began <= proc.ended:
                    noticed.append(f"{proc.name} exit {code}")
                    crash = proc.raw_traceback()
                    if crash:
                        self.fail(f"{proc.name} ({proc.note['args']}) did not fail cleanly in the {record['kind']} "
                                  f"outage: a raw traceback: {crash[-400:]!r}")
            record["noticed_by"] = noticed

    def logged_between(self, start: float, end: float, after: float = 15.0) -> dict[str, int]:
        """WARNING and ERROR messages (digits as N) the processes logged from `start` to `end` + `after` (wall
        clock): how the outage showed in the product's logs, retries included."""
        found: Counter[str] = Counter()
        for proc in list(self.procs):
            for e in proc.events():
                if e.get("level") not in ("WARNING", "ERROR", "CRITICAL"):
                    continue
                try:
                    at = dt.datetime.fromisoformat(str(e.get("ts")).replace("Z", "+00:00")).timestamp()
                except ValueError:
                    continue
                if start <= at <= end + after:
                    found[f"{proc.name.split('-', 1)[1]} {e['level']}: " +
                          re.sub(r"\d+", "N", str(e.get("message", "")))[:160]] += 1
        return dict(found.most_common(8))

    def landing_lag_between(self, start: float, end: float, after: float = 15.0) -> float | None:
        """The worst landing lag of the batches landed from `start` to `end` + `after`: an S3 outage shows as
        batches that wait (retries) and land late, even when no process fails."""
        lags = []
        for proc in list(self.procs):
            for e in proc.events():
                if e.get("message") != "cdc batch landed" or not isinstance(e.get("landing_lag_s"), int | float):
                    continue
                with contextlib.suppress(ValueError):
                    at = dt.datetime.fromisoformat(str(e.get("ts")).replace("Z", "+00:00")).timestamp()
                    if start <= at <= end + after:
                        lags.append(float(e["landing_lag_s"]))
        return round(max(lags), 2) if lags else None

    # --- snapshot-helpers -----------------------------------------------------------------------------------------
    def snapshot_phases(self) -> None:
        """Coordinators and helpers under kills while the workload writes, then after quiesce until exact
        (`snapshots_until_exact`); the helpers run beside every coordinator and must end by themselves."""
        plan = self.plan
        assert self.workload is not None and self.workload.started_at is not None
        until = self.workload.started_at + plan.workload_seconds
        stop = threading.Event()
        # helper tasks come and go through every phase (they help whichever coordinator is running)
        helpers = threading.Thread(target=self.helpers_in_background, args=(stop,), name="race-helpers",
                                   daemon=True)
        helpers.start()
        try:
            self.snapshots_until_exact(until)
        finally:
            self.quiesce()
            stop.set()
            helpers.join(COMMAND_TIMEOUT + 60)

    def snapshots_until_exact(self, until: float) -> None:
        """Coordinators under kills until `until`; quiesce; finish a snapshot left in progress (read in part while
        the workload wrote: not exact, but no key twice); then a snapshot of the quiet source, its coordinator
        killed `final_kills` times and resumed (same disk or a new one): that one must end exact."""
        plan = self.plan
        finished = self.coordinators_under_kills(until)
        self.quiesce()
        if self.config_error or self.over_budget():
            return
        if not finished:
            proc = self.coordinator_until_success("the run finishing the snapshot in progress")
            if proc is None:
                return
            self.check_duplicate_keys(proc.name)
        self.note("snapshot of the quiet source begins", helpers=plan.helpers, coordinator_kills=plan.final_kills)
        for _ in range(plan.final_kills):
            failpoint = self.failpoint(self.rng)
            kill_after = self.rng.uniform(3, 12) if failpoint else self.rng.uniform(2, 10)
            proc, code = self.run_once("coordinator", SNAPSHOT_RUN, failpoint=failpoint, kill_after=kill_after)
            self.coordinator_exit(proc, code)
            if code == SUCCESS:
                return  # it finished before its kill came
            time.sleep(self.rng.uniform(0, 1))
        self.coordinator_until_success("the final snapshot")

    def coordinators_under_kills(self, until: float) -> bool:
        """`run --mode snapshot` again and again until `until` (then the workload is quiesced and the one in
        flight goes on), killed by timers and failpoints; whether the last one finished its snapshot."""
        finished = False
        while not self.config_error and not self.over_budget() and time.monotonic() < until:
            r = self.rng.random()
            failpoint = self.failpoint(self.rng) if r < 0.4 else {}
            kill_after = (self.rng.uniform(4, 14) if failpoint else self.rng.uniform(2, 12)) if r < 0.75 else None
            if kill_after is None and not self.counter["coordinator"]:  # the first life always dies
                kill_after = self.rng.uniform(2, 12)
            proc = self.start("coordinator", SNAPSHOT_RUN, failpoint=failpoint, kill_after=kill_after)
            kill_at = proc.started + proc.kill_after if proc.kill_after is not None else None
            limit = proc.started + COMMAND_TIMEOUT
            while proc.alive() and time.monotonic() < limit:
                if kill_at is not None and time.monotonic() >= kill_at:
                    proc.kill9()
                    break
                if time.monotonic() >= until:
                    self.quiesce()  # the source goes quiet; the snapshot in flight goes on
                time.sleep(0.05)
            code = self.finished("coordinator", proc, proc.wait(30) if not proc.alive() or proc.killed_by_harness
                                 else None)
            self.coordinator_exit(proc, code)
            finished = code == SUCCESS
            if finished:
                self.check_duplicate_keys(proc.name)
            time.sleep(self.rng.uniform(0, 1) if code != LOCK_HELD else 1.0)
        return finished

    def analyze_source(self) -> None:
        """ANALYZE the source tables, as autovacuum would by then. The chunk plan sizes a table by its catalog
        estimate (`pg_class.reltuples`); right after the workload's TRUNCATE and refill that is 0, and with
        `chunk_rows` set the table would be read in one chunk (nothing to share with helpers) until autovacuum
        analyzes it, which a local cluster does only after a minute or so."""
        with contextlib.suppress(psycopg2.Error):
            conn = psycopg2.connect(self.dsn, connect_timeout=10)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SET lock_timeout = '2s'")
                    cur.execute("ANALYZE app.docs, app.pairs, app.bag")
            finally:
                conn.close()

    def coordinator_until_success(self, what: str, attempts: int = 4) -> Proc | None:
        """`run --mode snapshot` without kills until it exits 0; any other exit but 3 (lock held) is a failure."""
        for _ in range(attempts):
            if self.config_error or self.over_budget():
                break
            proc, code = self.run_once("coordinator", SNAPSHOT_RUN, fresh=False)
            self.coordinator_exit(proc, code)
            if code == SUCCESS:
                return proc
            time.sleep(1.0)
        self.fail(f"{what}: `aurora-sync run --mode snapshot` did not exit 0 in {attempts} attempts")
        return None

    def coordinator_exit(self, proc: Proc, code: int | None) -> None:
        if code not in (SUCCESS, LOCK_HELD, -signal.SIGKILL, None, CONFIG_ERROR):  # None, 2: reported already
            self.fail(f"{proc.name} (run --mode snapshot) exited {code}: {self.error_of(proc)}")

    def helpers_in_background(self, stop: threading.Event) -> None:
        """`plan.helpers` slots, each running `aurora-sync snapshot-helper` after another (each slot is an ECS task
        with its disk: the same or a new one); some killed at random. Once `stop` is set no helper starts, and
        those running must end with exit 0: by themselves (nothing left to help with, or idle), or, by the seed
        (`helpers_end`), on SIGTERM (ECS stopping the task: it finishes the package in flight)."""
        plan, rng = self.plan, self.helper_rng
        slots: dict[int, Proc | None] = dict.fromkeys(range(1, plan.helpers + 1))
        next_start = {i: time.monotonic() + rng.uniform(0, 2) for i in slots}
        stopped_at: float | None = None
        signalled: set[str] = set()
        next_look = 0.0
        args = ["snapshot-helper", "--idle-seconds", f"{plan.helper_idle_seconds:g}"]
        while True:
            now = time.monotonic()
            if stop.is_set() and stopped_at is None:
                stopped_at = now
            sigterm_now = stopped_at is not None and plan.helpers_end == "sigterm" and now >= next_look
            if sigterm_now:
                next_look = now + 0.5
            for i, proc in slots.items():
                if proc is not None and proc.alive():
                    if proc.kill_after is not None and now >= proc.started + proc.kill_after:
                        proc.kill9()
                    elif stopped_at is not None and now > stopped_at + plan.helper_idle_seconds + COMMAND_TIMEOUT / 2:
                        self.finished("helper", proc, None)  # kills it, and fails: a helper that never ends
                        slots[i] = None
                    elif sigterm_now and proc.name not in signalled and (
                            now - proc.started > 30 or any(e.get("message") == "snapshot helper started"
                                                           for e in proc.events())):
                        # only once its SIGTERM handler is in place (it logs "snapshot helper started" after)
                        signalled.add(proc.name)
                        self.note("sigterm", proc=proc.name)
                        proc.terminate()
                    continue
                if proc is not None:
                    code = self.finished("helper", proc, proc.wait(30))
                    if code == -signal.SIGTERM and proc.name in signalled and any(
                            e.get("message") == "snapshot helper done" for e in proc.events()):
                        # it had finished and was shutting down, its SIGTERM handler already gone: the exit code
                        # is 143, which the task-failed alarm ignores (docs/cli.md); no work was cut short
                        self.note("sigterm after the helper was done", proc=proc.name, code=code)
                        self.sigterm_after_done += 1
                    elif code not in (SUCCESS, -signal.SIGKILL, CONFIG_ERROR):
                        self.fail(f"{proc.name} (snapshot-helper" + (", after SIGTERM" if proc.name in signalled
                                                                      else "") + f") exited {code}: "
                                  f"{self.error_of(proc)}")
                    slots[i] = None
                    next_start[i] = now + rng.uniform(0.2, 3)
                if stopped_at is None and now >= next_start[i] and not self.config_error and not self.over_budget():
                    kill_after = rng.uniform(1, 12) if rng.random() < plan.helper_kill_probability else None
                    slots[i] = self.start("helper", args, kill_after=kill_after, task=f"helper{i}")
            if stopped_at is not None and all(p is None for p in slots.values()):
                return
            time.sleep(0.05)

    def destination(self) -> Any:
        """What the comparator reads: the DuckDB file, or fakesnow through the Snowflake connector."""
        return self.warehouse.reader() if self.warehouse is not None else self.duck

    def check_duplicate_keys(self, after: str) -> None:
        """A finished snapshot holds every key once, even one read while the workload wrote (each key range is
        read once; a chunk read twice, or the rows of a load that never completed, would show here)."""
        try:
            report = comparator.duplicate_keys(self.dsn, self.destination(), DATASET)
        except Exception as exc:
            self.fail(f"could not look for duplicate keys after {after}: {type(exc).__name__}: {exc}")
            return
        self.note("duplicate keys", after=after, ok=report["ok"],
                  tables={t: r["count"] for t, r in report["tables"].items()})
        if not report["ok"]:
            self.fail(f"duplicate keys after {after} finished its snapshot: {report['summary']}")

    def snapshot_reads(self) -> dict[str, Any]:
        """How the chunks were shared (from the JSON logs): chunks read by coordinators and by helpers, snapshots
        finished, rows of incomplete loads cleaned up. Recorded, not checked: timing decides the helpers' share."""
        by_role: dict[str, Counter[str]] = {}
        for proc in self.procs:
            role = proc.name.split("-", 1)[1]
            if role not in ("coordinator", "helper"):
                continue
            counts = by_role.setdefault(role, Counter())
            for e in proc.events():
                if e.get("message") == "chunk read":
                    counts["chunks read"] += 1
                elif e.get("message") == "helper chunks loaded":
                    counts["helper chunks loaded"] += len(e.get("chunks") or [])
                elif e.get("message") == "snapshot finished":
                    counts["snapshots finished"] += 1
                elif "of loads that never completed" in str(e.get("message", "")):
                    counts["incomplete loads cleaned up"] += 1
        found: dict[str, Any] = {role: dict(c) for role, c in by_role.items()}
        if self.sigterm_after_done:
            found["helpers SIGTERM-ed while exiting (143)"] = self.sigterm_after_done
        return found

    # --- final checks -----------------------------------------------------------------------------------------------
    def compare(self) -> None:
        try:
            report = comparator.compare(self.dsn, self.destination(), DATASET, examples=500)
        except Exception as exc:  # e.g. the DuckDB file was never created
            self.result.comparison = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.fail(f"comparator could not compare: {type(exc).__name__}: {exc}")
            return
        self.result.comparison = trimmed(report, 5)
        self.note("compared", ok=report["ok"], summary=report["summary"])
        if not report["ok"]:
            self.fail("comparator: " + report["summary"].replace("\n", " | "))
            # for the post-mortem: the long diff, and the source as it was (the database does not outlive the run)
            with contextlib.suppress(OSError):
                (self.workdir / "diff.json").write_text(json.dumps(report, indent=1, default=str))
            with contextlib.suppress(Exception):
                dump_source(self.dsn, self.workdir / "source")

    def verify(self) -> None:
        proc, code = self.run_once("verify", ["verify", "--checksum", "--json"], fresh=True)
        info: dict[str, Any] = {"exit_code": code, "tail": proc.tail(1500, "stdout") or proc.tail(1500)}
        try:
            report = json.loads(proc.text("stdout"))
            info["summary"] = report.get("summary")
            info["tables"] = {t.get("table"): {
                **{k: t.get(k) for k in ("status", "source_rows", "destination_rows", "checksum", "problems", "error")},
                "drift": [{k: (v[:3] if isinstance(v, list) else v) for k, v in r.items() if k != "range"}
                          for r in (t.get("drift_ranges") or [])[:3]]} for t in report.get("tables", [])}
            info["tail"] = json.dumps(info["tables"], default=str)[-1500:]
        except ValueError:
            pass
        self.result.verify = info
        if code != SUCCESS:
            self.fail(f"aurora-sync verify --checksum exited {code}"
                      + (f": {info.get('summary')}" if info.get("summary") else f": {self.error_of(proc)}"))

    def product_findings(self) -> dict[str, Any]:
        """What the product itself reported in its logs: errors, unresolved TOAST values, tables set aside."""
        errors: Counter[str] = Counter()
        warnings: Counter[str] = Counter()
        unresolved = 0
        failed_tables: Counter[str] = Counter()
        for proc in self.procs:
            for e in proc.events():
                message = str(e.get("message", ""))[:300]
                if e.get("level") in ("ERROR", "CRITICAL"):
                    errors[message] += 1
                elif e.get("level") == "WARNING":
                    warnings[re.sub(r"\d+", "N", message)[:200]] += 1
                if message in ("cdc run finished", "merge cycle finished") and isinstance(
                        e.get("unresolved_toast_rows"), int):
                    unresolved += e["unresolved_toast_rows"]
                for table in e.get("failed_tables") or {}:
                    failed_tables[table] += 1
        return {"errors": dict(errors.most_common(10)), "warnings": dict(warnings.most_common(10)),
                "unresolved_toast_rows": unresolved, "failed_tables": dict(failed_tables)}

    # --- the whole thing ---------------------------------------------------------------------------------------------
    def run(self) -> Result:
        plan = self.plan
        self.note("begin", plan=asdict(plan))
        background: threading.Thread | None = None
        stop_merges = threading.Event()
        try:
            self.prepare()
            if self.snapshot_mode:
                self.start_workload()
                self.snapshot_phases()
                self.quiesce()
                self.compare()
                self.verify()
                return self.result
            if plan.start_workload_before_setup:
                self.start_workload()
            setup_ok = self.setup_under_kills()
            self.start_workload()
            assert self.workload is not None and self.workload.started_at is not None
            until = max(self.workload.started_at + plan.workload_seconds, time.monotonic() + 6)
            if setup_ok and plan.mode.startswith("setup"):
                self.drains_under_kills(until)
            elif setup_ok:
                if plan.mode == "land-merge":
                    background = threading.Thread(target=self.merges_in_background, args=(stop_merges,),
                                                  name="race-merges", daemon=True)
                    background.start()
                outage: threading.Thread | None = None
                if plan.outage != "none":  # the follower phase lasts until a few seconds after the outage
                    follow_start = time.monotonic()
                    until = max(until, self.outage_window(follow_start) + 6)
                    outage = self.outage_in_background(follow_start)
                follower = self.follow_under_kills(until)
                while time.monotonic() < until and not self.over_budget():
                    time.sleep(0.1)
                if outage is not None:
                    outage.join(60)
                self.quiesce()
                self.stop_follower(follower)
            self.quiesce()
            if background is not None:
                stop_merges.set()
                background.join(COMMAND_TIMEOUT + 60)
            if setup_ok and not self.config_error:
                self.until_success("drain", ["run", "--mode", "cdc"], 5, "final drain")
                # land-merge: a drain reads the keys the merges before it asked for; the merge after it may ask again
                rounds = 0
                while plan.mode == "land-merge" and self.merge_until_idle() and rounds < 3:
                    rounds += 1
                    self.until_success("drain", ["run", "--mode", "cdc"], 5, "drain reading keys again")
            self.compare()
            self.verify()
        except Exception as exc:
            self.fail(f"harness error: {type(exc).__name__}: {exc}")
            raise
        finally:
            stop_merges.set()
            with contextlib.suppress(Exception):
                self.quiesce()
            for proc in self.procs:
                proc.reap()
            if self.holder is not None:
                self.holder.release()
            self.finish()
            self.close_stand_ins()
        return self.result

    def finish(self) -> None:
        result = self.result
        if self.workload is not None:
            result.workload = self.workload.counters()
            if result.workload["crashes"]:
                self.fail(f"workload thread crashed: {result.workload['crashes']}")
            with contextlib.suppress(OSError):
                (self.workdir / "journal.txt").write_text("\n".join(self.workload.journal_lines()) + "\n")
        self.outage_effects()
        result.outages = list(self.outages)
        if self.snapshot_mode:
            result.snapshots = self.snapshot_reads()
        result.kills = dict(self.kills)
        result.starts = dict(self.counter)
        result.disks = dict(self.disk_counts)
        result.exit_codes = {role: dict(codes) for role, codes in self.exit_codes.items()}
        result.product = self.product_findings()
        stray = sorted(p.name for p in self.workdir.iterdir() if p.name not in self.harness_files and not (
            p.name in HARNESS_FILES or p.name.endswith(("-disk", ".wal")) or re.search(r"-disk-\d+$", p.name)))
        if stray:  # e.g. a destination that ignored DESTINATION__DUCKDB__CREDENTIALS and wrote ./<pipeline>.duckdb
            result.product["stray_files"] = stray
        if self.over_budget():
            self.fail(f"the scenario ran over its {SCENARIO_BUDGET:.0f}s budget (the sync could not keep up, or hung)")
        result.duration_s = round(time.monotonic() - self.t0, 1)
        result.ok = not result.failures
        with contextlib.suppress(OSError):
            (self.workdir / "result.json").write_text(json.dumps(result.as_json(), indent=2, default=str))
        with contextlib.suppress(Exception):
            drop_slots(self.dsn)


def trimmed(report: dict[str, Any], examples: int) -> dict[str, Any]:
    """The comparator's report with at most `examples` examples per list (the long one goes to diff.json)."""
    def trim(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (v[:examples] if k == "examples" and isinstance(v, list) else trim(v)) for k, v in value.items()}
        return value
    return trim(report)  # type: ignore[no-any-return]


def dump_source(dsn: str, folder: Path) -> None:
    """Every source table of schema `app` as CSV (with ctid for the keyless ones), for a post-mortem."""
    folder.mkdir(parents=True, exist_ok=True)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'app'")
            for (table,) in cur.fetchall():
                with (folder / f"{table}.csv").open("w") as fh:
                    cur.copy_expert(f'COPY (SELECT ctid, * FROM app."{table}") TO STDOUT WITH CSV HEADER', fh)
    finally:
        conn.close()


def drop_slots(dsn: str) -> None:
    """Drop the database's replication slots (a slot keeps WAL, and blocks DROP DATABASE)."""
    database = dsn.rsplit("/", 1)[1].split("?", 1)[0]
    admin = psycopg2.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                        "WHERE database = %s AND active_pid IS NOT NULL", (database,))
            cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (database,))
            for (slot,) in cur.fetchall():
                for _ in range(100):
                    try:
                        cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                        break
                    except psycopg2.Error:  # still active for a moment after its client was killed
                        time.sleep(0.1)
    finally:
        admin.close()


def run_scenario(dsn: str, workdir: Path, mode: str, seed: int, *, ddl: bool = False, truncate: bool = True,
                 workload_seconds: float | None = None, kills: bool = True, log: TextIO | None = None) -> Result:
    """One scenario against a fresh, empty database `dsn` (its schema `app` is created here)."""
    scenario = Scenario(dsn, workdir, mode, seed, ddl=ddl, truncate=truncate, workload_seconds=workload_seconds,
                        kills=kills, log=log)
    result = scenario.run()
    if not result.ok:
        print(result.replay, file=log or sys.stderr, flush=True)
    return result


def report_text(result: Result) -> str:
    """A failing scenario, readable: the headline, the replay line, the diff, verify, what was killed."""
    lines = [result.headline(), result.replay]
    lines += [f"  failure: {f}" for f in result.failures]
    comparison = result.comparison
    for name, table in (comparison.get("tables") or {}).items():
        if table.get("ok"):
            continue
        lines.append(f"  {name}: " + json.dumps({k: table.get(k) for k in (
            "source_rows", "destination_rows", "missing", "extra", "different", "duplicate_keys", "missing_columns",
            "stored_tombstones", "error") if table.get(k)}, default=str, ensure_ascii=False)[:3000])
    lines.append(f"  verify: exit {result.verify.get('exit_code')} {json.dumps(result.verify.get('summary'))}")
    lines.append(f"  kills: {result.kills}; exit codes: {result.exit_codes}; processes: {result.starts}; "
                 f"disks: {result.disks}")
    if result.outages:
        lines.append(f"  outages: {json.dumps(result.outages, default=str, ensure_ascii=False)[:1500]}")
    if result.snapshots:
        lines.append(f"  snapshots: {json.dumps(result.snapshots, default=str)}")
    lines.append(f"  product: {json.dumps(result.product, default=str, ensure_ascii=False)[:1500]}")
    lines.append(f"  workload: {json.dumps({k: result.workload.get(k) for k in ('committed', 'errors')})[:1500]}")
    lines.append(f"  workdir: {result.workdir} (logs/, journal.txt, result.json)")
    return "\n".join(lines)


# --- outside pytest -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def own_database() -> Iterator[tuple[str, Any]]:
    """A throwaway PostgreSQL cluster (local/postgres.py, as the pytest fixture starts it) and a database on it."""
    from local.postgres import LocalPostgres

    server = LocalPostgres().start()
    try:
        name = f"race_{uuid.uuid4().hex[:10]}"
        admin = psycopg2.connect(server.url())
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        admin.close()
        yield server.url(database=name), server
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.race.scenario", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ddl", action="store_true", default=env_flag("RACE_DDL", False),
                        help="include DDL in the workload (RACE_DDL=1)")
    parser.add_argument("--no-truncate", dest="truncate", action="store_false",
                        default=env_flag("RACE_TRUNCATE", True), help="no TRUNCATE in the workload")
    parser.add_argument("--no-kills", dest="kills", action="store_false", default=env_flag("RACE_KILLS", True),
                        help="the same plan without kill -9 and failpoints (RACE_KILLS=0): crash bug or not?")
    parser.add_argument("--seconds", type=float, default=None, help="workload duration (default: from the seed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (kept anyway on failure)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true", help="no timeline on stderr")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"race-{args.mode}-{args.seed}-"))
    with own_database() as (dsn, _server):
        result = run_scenario(dsn, workdir, args.mode, args.seed, ddl=args.ddl, truncate=args.truncate,
                              workload_seconds=args.seconds, kills=args.kills,
                              log=None if args.quiet else sys.stderr)
    print(json.dumps(result.as_json(), indent=2, default=str))
    print(report_text(result) if not result.ok else result.headline(), file=sys.stderr)
    if result.ok and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
