"""Merge: apply the CDC batches that landed in S3 to the warehouse, in order, exactly once in effect.

`aurora-sync merge` runs this on its own cadence (`merge_interval_seconds`), independently of the follower that
lands the batches (`pipelines.landing`). One cycle:

1. dlt restores the merge pipeline's state from the warehouse (`<name>_merge`): the last landing `seq` merged
   for each table. A fresh ECS task therefore carries on where the last one stopped.
2. The completed landing loads (`_dlt_loads` of the landing area) after the oldest of those positions are listed,
   and their `_aurora_ops` rows read: per table, the ops not merged yet, in `seq` order.
3. Each table's ops are folded into one merge: later versions of a key replace earlier ones, an unchanged TOAST
   value is taken from the key's previous version (earlier in the cycle, else the warehouse's row), and a keyless
   table's deletes are matched against the warehouse's copies (`multiset`). However many batches are waiting,
   that is one merge per table per cycle; only a snapshot or TRUNCATE of the table, or more than
   `max_merge_bytes` of landed files, starts another (bounded memory).
4. One dlt package loads every table's merge together with the new positions (dlt state, in the warehouse), so
   a crash anywhere leaves either all of it or none. A table whose merge fails keeps its position and is retried
   next cycle; the other tables go on.

An idle cycle must not wake the warehouse (Snowflake bills a resumed warehouse for at least a minute). After a
cycle that merged everything it listed, a marker in the landing area (`_aurora_merged.json`) names the newest
landing load merged; the next cycle that finds no completed load newer than it ends before step 1, having only
listed the bucket. The marker is written after the warehouse commit and is only a hint: the positions in the
warehouse stay the truth whenever there is something to merge.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.configuration import resolve_configuration
from dlt.common.schema import Schema
from dlt.common.storages.configuration import FilesystemConfiguration
from dlt.common.storages.fsspec_filesystem import fsspec_from_config
from dlt.extract import DltResource
from dlt.pipeline.exceptions import PipelineStepFailed

from pipelines import warehouse
from pipelines.destinations import archive_table_path
from pipelines.isolation import TableLoadFailed, culprit, describe, is_about_no_table
from pipelines.landing import LOOKUP_PREFIX, OPS_TABLE, UNCHANGED_COLUMN, landing_dataset
from sources.replication import MERGE, SOURCE_NAME
from sources.replication.batch import (
    CHANGE_COLUMN,
    CHANGE_KEY_COLUMN,
    COMMIT_TIME_COLUMN,
    DELETED_AT_COLUMN,
    DELETED_COLUMN,
    LSN_COLUMN,
    multiset_rows,
)
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN
from sources.replication.multiset import plan as multiset_plan

log = logging.getLogger("aurora_sync.merge")

MERGE_SUFFIX = "_merge"
MERGE_SOURCE = "aurora_merge"  # the merge pipeline's own dlt schema (and state namespace)
POSITIONS_KEY = "merged"  # merge state: table -> {"seq": last merged landing seq, "load_id": its landing load}
FLOOR_KEY = "listed_from"  # merge state: the oldest landing load a cycle must still read
MARKER_FILE = "_aurora_merged.json"  # landing area: the newest load a complete cycle merged (idle cycles stop here)
MAX_MERGE_BYTES = 64 << 20  # landed parquet per table and merge: ~5x that in memory while folding
_LANDING_ONLY = (UNCHANGED_COLUMN, CHANGE_COLUMN, CHANGE_KEY_COLUMN, COMMIT_TIME_COLUMN)


def _event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={"fields": {"phase": "merge", **fields}})


# --- what landed ------------------------------------------------------------------------------------------
def _normalized(op: LandedOp, naming: Any) -> LandedOp:
    """Landed files hold dlt-normalized column names (`Every Type` -> `every_type`): so must the op."""
    norm = naming.normalize_identifier
    op.primary_key = [norm(k) for k in op.primary_key]
    op.hints = {norm(name): {**hint, "name": norm(name)} for name, hint in op.hints.items()}
    return op


@dataclass
class LandedOp:
    seq: int
    position: int
    load_id: str
    table: str
    kind: str
    reload: bool
    lsn: int
    commit_time: datetime | None
    landed_at: datetime
    primary_key: list[str]
    hints: dict[str, Any]
    delete_mode: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes) of this op's rows

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


class LandingArea:
    """The landing area of a pipeline in the archive bucket, read through fsspec with dlt's filesystem config."""

    def __init__(self, pipeline: dlt.Pipeline) -> None:
        config = resolve_configuration(FilesystemConfiguration(), sections=("destination", "filesystem"))
        self.fs, _ = fsspec_from_config(config)
        bucket = config.bucket_url.rstrip("/")
        self.base = (bucket.split("://", 1)[1] if "://" in bucket else bucket) + "/" + landing_dataset(pipeline)
        self.naming = Schema(SOURCE_NAME).naming

    def _ls(self, folder: str) -> list[dict[str, Any]]:
        try:
            return list(self.fs.ls(f"{self.base}/{folder}", detail=True, refresh=True))
        except FileNotFoundError:
            return []

    def completed_loads(self) -> list[str]:
        """Load ids of the landing loads that completed (dlt writes their `_dlt_loads` entry last)."""
        ids = []
        for entry in self._ls("_dlt_loads"):
            name = entry["name"].rsplit("/", 1)[-1]
            if name.endswith(".jsonl") and "__" in name:
                ids.append(name[:-len(".jsonl")].rsplit("__", 1)[1])
        return sorted(ids, key=float)

    def merged_marker(self) -> str | None:
        try:
            with self.fs.open(f"{self.base}/{MARKER_FILE}", "rb") as f:
                return str(json.load(f)["load_id"])
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def mark_merged(self, load_id: str) -> None:
        with self.fs.open(f"{self.base}/{MARKER_FILE}", "wb") as f:
            f.write(json.dumps({"load_id": load_id, "at": datetime.now(UTC).isoformat()}).encode())

    @staticmethod
    def _load_id(path: str) -> str:
        return path.rsplit("/", 1)[-1].rsplit(".", 2)[0]  # <load_id>.<file_id>.parquet; a load id has a dot

    def ops(self, load_ids: set[str]) -> list[LandedOp]:
        """The `_aurora_ops` rows of these loads, in landing order."""
        ops = []
        for entry in self._ls(OPS_TABLE):
            if entry["name"].endswith(".parquet") and self._load_id(entry["name"]) in load_ids:
                with self.fs.open(entry["name"], "rb") as f:
                    for row in pq.read_table(f).to_pylist():
                        ops.append(_normalized(LandedOp(
                            int(row["seq"]), int(row["position"]), str(row["load_id"]), row["table_name"], row["kind"],
                            bool(row["reload"]), int(row["lsn"] or 0), row["commit_time"], row["landed_at"],
                            json.loads(row["primary_key"]), json.loads(row["hints"]), row["delete_mode"]), self.naming))
        return sorted(ops, key=lambda o: (o.seq, o.position))

    def attach_files(self, table: str, ops: list[LandedOp]) -> None:
        """The data files of each op (one listing of the table's folder)."""
        by_load: dict[str, list[tuple[str, int]]] = {}
        folder = archive_table_path(None, str(self.naming.normalize_tables_path(table)), None, None, None)
        for entry in self._ls(folder):
            if entry["name"].endswith(".parquet"):
                by_load.setdefault(self._load_id(entry["name"]), []).append((entry["name"], int(entry["size"])))
        for op in ops:
            op.files = sorted(by_load.get(op.load_id, []))

    def read(self, op: LandedOp) -> Iterator[pa.Table]:
        for path, _ in op.files:
            with self.fs.open(path, "rb") as f:
                yield pq.read_table(f)


# --- folding ----------------------------------------------------------------------------------------------
def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def _drop_landing_columns(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in table.column_names if c in _LANDING_ONLY or c.startswith(LOOKUP_PREFIX)])


Fetch = Callable[[pa.Table, list[str]], pa.Table | None]  # (typed keys, columns) -> the warehouse's current rows


def fold_keyed(ops_rows: list[pa.Table], primary_key: list[str], delete_mode: str, fetch: Fetch | None,
               normalize: Callable[[str], str] = str) -> tuple[pa.Table, int]:
    """Ops' rows (in landing order; unique keys within an op) as one row per key, the latest, with unchanged TOAST
    values taken from the key's previous version. Returns the rows and how many values could not be completed."""
    sizes = [t.num_rows for t in ops_rows]
    combined = _concat(ops_rows)
    n = combined.num_rows
    if n == 0:
        return _drop_landing_columns(combined), 0
    keys = list(zip(*(combined[k].to_pylist() for k in primary_key), strict=True))
    unresolved_rows: set[int] = set()
    if UNCHANGED_COLUMN in combined.column_names and combined[UNCHANGED_COLUMN].null_count < n:
        combined, unresolved_rows = _fill(combined, keys, sizes, primary_key, delete_mode, fetch, normalize)
    latest: dict[tuple[Any, ...], int] = {}
    for i, key in enumerate(keys):
        latest[key] = i
    keep = sorted(latest.values())
    if delete_mode == "soft" and unresolved_rows and DELETED_AT_COLUMN in combined.column_names:
        # a soft-delete tombstone of a row the warehouse never had is dropped (as on the direct path)
        deleted = combined[DELETED_AT_COLUMN].is_valid().to_pylist()
        keep = [i for i in keep if not (i in unresolved_rows and deleted[i])]
    unresolved = sum(1 for i in keep if i in unresolved_rows)
    return _drop_landing_columns(combined.take(pa.array(keep, pa.int64()))), unresolved


def _fill(combined: pa.Table, keys: list[tuple[Any, ...]], sizes: list[int], primary_key: list[str],
          delete_mode: str, fetch: Fetch | None, normalize: Callable[[str], str]) -> tuple[pa.Table, set[int]]:
    """Unchanged TOAST values: each comes from the previous version of its lookup key in an earlier op of the
    cycle (following chains of unchanged values), else from the warehouse."""
    unchanged = combined[UNCHANGED_COLUMN].to_pylist()
    lookup_columns = sorted((c for c in combined.column_names if c.startswith(LOOKUP_PREFIX)),
                            key=lambda c: int(c[len(LOOKUP_PREFIX):]))
    lookups = list(zip(*(combined[c].to_pylist() for c in lookup_columns), strict=True))
    hard_deleted = (combined[DELETED_COLUMN].to_pylist() if delete_mode == "hard" and DELETED_COLUMN in
                    combined.column_names else [None] * combined.num_rows)
    source: dict[str, dict[int, Any]] = {}  # column -> row -> its value's row, ("W", key) or None (unknown)
    last: dict[tuple[Any, ...], int] = {}
    start = 0
    for size in sizes:
        for i in range(start, start + size):
            if not unchanged[i]:
                continue
            lookup = lookups[i]
            previous = last.get(lookup)
            for name in json.loads(unchanged[i]):
                column = source.setdefault(normalize(name), {})
                if previous is None:
                    column[i] = ("W", lookup)
                elif hard_deleted[previous]:
                    column[i] = None
                else:
                    column[i] = column.get(previous, previous)
        for i in range(start, start + size):  # visible to later ops only: an op's lookups are its predecessors'
            last[keys[i]] = i
        start += size
    wanted = sorted({s[1] for column in source.values() for s in column.values() if isinstance(s, tuple)}, key=repr)
    found: dict[tuple[Any, ...], int] = {}
    current = None
    if wanted and fetch is not None:
        key_table = pa.table({k: pa.array([w[j] for w in wanted], combined.schema.field(k).type)
                              for j, k in enumerate(primary_key)})
        current = fetch(key_table, sorted(source))
        if current is not None:
            for index, key in enumerate(zip(*(current[k].to_pylist() for k in primary_key), strict=True)):
                found[key] = index
    unresolved: set[int] = set()
    n = combined.num_rows
    for name, column in source.items():
        if name not in combined.column_names:
            continue
        target = combined.schema.field(name).type
        extra = (current[name].combine_chunks().cast(target) if current is not None and name in
                 current.column_names else pa.nulls(0, target))
        take: list[int | None] = list(range(n))
        for i, s in column.items():
            if isinstance(s, tuple):
                index = found.get(s[1])
                take[i] = None if index is None or len(extra) == 0 else n + index
            else:
                take[i] = s
            if take[i] is None:
                unresolved.add(i)
        values = pa.concat_arrays([combined[name].combine_chunks(), extra]).take(pa.array(take, pa.int64()))
        combined = combined.set_column(combined.column_names.index(name), combined.schema.field(name), values)
    return combined, unresolved


def fold_keyless(ops_rows: list[pa.Table], delete_mode: str,
                 existing: Callable[[set[str]], dict[str, list[str]]]) -> tuple[pa.Table, int]:
    """A keyless table's landed changes, in order, as copies to insert and warehouse copies to delete."""
    combined = _concat([t for t in ops_rows if t.num_rows])
    if combined.num_rows == 0 or CHANGE_COLUMN not in combined.column_names:
        return _drop_landing_columns(combined), 0
    hashes = combined[ROW_HASH_COLUMN].to_pylist()
    ops = list(zip(combined[CHANGE_COLUMN].to_pylist(), range(combined.num_rows), hashes,
                   combined[CHANGE_KEY_COLUMN].to_pylist(), strict=True))
    planned = multiset_plan(ops, existing)
    values = combined.drop_columns([c for c in (ROW_HASH_COLUMN, LSN_COLUMN, ROW_KEY_COLUMN, DELETED_COLUMN,
                                                DELETED_AT_COLUMN) if c in combined.column_names])
    out = multiset_rows(_drop_landing_columns(values), hashes, combined[LSN_COLUMN].to_pylist(),
                        combined[COMMIT_TIME_COLUMN].to_pylist(), planned, delete_mode)
    return out, planned.unmatched


# --- planning a cycle ---------------------------------------------------------------------------------------
@dataclass
class Part:
    """What one package does to one table: a merge of folded changes, a replace, or a truncate."""

    table: str
    action: str  # merge | replace | truncate
    ops: list[LandedOp]

    @property
    def last(self) -> LandedOp:
        return self.ops[-1]


def plan_parts(ops: list[LandedOp], max_bytes: int) -> list[Part]:
    """One table's pending ops as parts applied one after the other: a snapshot or TRUNCATE stands alone (what
    came before it in the cycle is superseded by it), the rest fold into as few merges as `max_bytes` allows."""
    last_reset = max((i for i, o in enumerate(ops) if o.kind == "snapshot" or (
        o.kind == "truncate" and o.delete_mode == "hard")), default=None)
    skipped = ops[:last_reset] if last_reset is not None else []
    parts: list[Part] = []
    if skipped and any(o.reload for o in skipped):
        ops[last_reset].reload = True  # an earlier op asked to drop the table: the reset must still do it
    current: list[LandedOp] = []
    size = 0
    for op in ops[last_reset or 0:]:
        if op.kind == "snapshot" or op.kind == "truncate":
            if current:
                parts.append(Part(op.table, "merge", current))
                current, size = [], 0
            parts.append(Part(op.table, "replace" if op.kind == "snapshot" else "truncate", [op]))
            continue
        if current and size + op.size > max_bytes:
            parts.append(Part(op.table, "merge", current))
            current, size = [], 0
        current.append(op)
        size += op.size
    if current:
        parts.append(Part(current[0].table, "merge", current))
    if parts and skipped:
        parts[0].ops = skipped + parts[0].ops  # merged through their seqs too (superseded)
    return parts


# --- the cycle ----------------------------------------------------------------------------------------------
@dataclass
class MergeSummary:
    """What one merge cycle did; `as_fields()` is ready for a log line or metrics."""

    batches: int = 0  # landing loads applied (distinct seqs)
    rows: dict[str, int] = field(default_factory=dict)  # per table: rows merged (after folding)
    changes: dict[str, int] = field(default_factory=dict)  # per table: landed rows applied (before folding)
    packages: int = 0
    failed_tables: dict[str, dict[str, str]] = field(default_factory=dict)
    unresolved_toast_rows: int = 0
    oldest_unmerged_age_s: float = 0.0  # MergeLagSeconds: age of the oldest landed op still not merged
    last_seq: int = 0
    duration: float = 0.0
    idle: bool = False  # nothing new since the last complete cycle: ended without contacting the warehouse

    def as_fields(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": sum(self.rows.values()), "changes": sum(self.changes.values()),
                "packages": self.packages, "failed_tables": self.failed_tables,
                "unresolved_toast_rows": self.unresolved_toast_rows,
                "merge_lag_s": self.oldest_unmerged_age_s, "last_seq": self.last_seq, "duration_s": self.duration,
                "idle": self.idle}


def merge_pipeline(pipeline: dlt.Pipeline) -> dlt.Pipeline:
    """`<name>_merge`: the same warehouse, staging and dataset as the pipeline, its own state."""
    return dlt.pipeline(pipeline_name=pipeline.pipeline_name + MERGE_SUFFIX, pipelines_dir=pipeline.pipelines_dir,
                        destination=pipeline.destination, staging=pipeline.staging,
                        dataset_name=pipeline.dataset_name)


def _positions(merger: dlt.Pipeline) -> dict[str, dict[str, Any]]:
    return dict(merger.state.get("sources", {}).get(MERGE_SOURCE, {}).get(POSITIONS_KEY, {}))


@dlt.source(name=MERGE_SOURCE, max_table_nesting=0, root_key=False)
def merged(resources: list[DltResource], positions: dict[str, dict[str, Any]],
           floor: str | None) -> Iterable[DltResource]:
    """One merge package: each table's part, and the positions they reach, committed together."""
    yield from resources

    def commit() -> Iterator[Any]:
        state = dlt.current.source_state()
        state.setdefault(POSITIONS_KEY, {}).update(positions)
        if floor is not None:
            state[FLOOR_KEY] = floor
        yield from ()

    yield dlt.resource(commit, name="_merge_state")


def merge_landed(pipeline: dlt.Pipeline, *, max_merge_bytes: int = MAX_MERGE_BYTES) -> MergeSummary:
    """One merge cycle (see the module docstring). `pipeline` is the CDC pipeline whose batches landed."""
    started = time.monotonic()
    summary = MergeSummary()
    merger = merge_pipeline(pipeline)
    area = LandingArea(pipeline)
    loads = area.completed_loads()
    marker = area.merged_marker()
    if marker is not None and not merger.has_pending_data and all(float(x) <= float(marker) for x in loads):
        summary.idle = True  # nothing landed since the last complete cycle: the warehouse is not touched
        summary.duration = round(time.monotonic() - started, 3)
        _event("merge cycle finished", **summary.as_fields())
        return summary
    merger.sync_destination()  # positions from the warehouse: a fresh task carries on
    if merger.has_pending_data:  # a cycle killed or cut off mid-run: finish it first (its positions are in it)
        merger.normalize()  # extracted but not normalized yet: else `run` would load it and skip this cycle
        merger.load().raise_on_failed_jobs()
    positions = _positions(merger)
    floor = merger.state.get("sources", {}).get(MERGE_SOURCE, {}).get(FLOOR_KEY)
    window = {load_id for load_id in loads if floor is None or float(load_id) >= float(floor)}
    ops = area.ops(window)
    pending: dict[str, list[LandedOp]] = {}
    for op in ops:
        if op.seq > int(positions.get(op.table, {}).get("seq", 0)):
            pending.setdefault(op.table, []).append(op)
    for table, table_ops in pending.items():
        area.attach_files(table, table_ops)
    plans = {table: plan_parts(table_ops, max_merge_bytes) for table, table_ops in pending.items()}
    newest = max(window, key=float, default=None)
    applied: set[int] = set()
    while any(plans.values()):
        parts = [plans[t].pop(0) for t in sorted(plans) if plans[t] and t not in summary.failed_tables]
        if not parts:
            break

        def floor_after(done: list[Part], parts: list[Part] = parts) -> str | None:
            """Where the next cycle starts listing: the oldest load still pending once `done` is applied."""
            ids = {p.table for p in done}
            left = [o.load_id for t, later in plans.items() for part in later for o in part.ops]
            left += [o.load_id for p in parts if p.table not in ids for o in p.ops]
            left += [o.load_id for t in summary.failed_tables for o in pending.get(t, [])]
            return min(left, key=float) if left else newest

        _apply(merger, area, parts, summary, floor_after)
        applied.update(o.seq for part in parts if part.table not in summary.failed_tables for o in part.ops)
    summary.batches = len(applied)
    summary.last_seq = max((o.seq for o in ops), default=0)
    positions = _positions(merger)
    waiting = [o.landed_at for o in ops if o.seq > int(positions.get(o.table, {}).get("seq", 0))]
    summary.oldest_unmerged_age_s = round(max(0.0, (datetime.now(UTC) - min(waiting)).total_seconds()), 3) \
        if waiting else 0.0
    if not waiting and not summary.failed_tables and newest is not None and newest != marker:
        area.mark_merged(newest)
    summary.duration = round(time.monotonic() - started, 3)
    _event("merge cycle finished", **summary.as_fields())
    return summary


def _apply(merger: dlt.Pipeline, area: LandingArea, parts: list[Part], summary: MergeSummary,
           floor_after: Callable[[list[Part]], str | None]) -> None:
    """One package for these parts (one per table); a table whose part fails is left for the next cycle."""
    truncates = [p for p in parts if p.action == "truncate"]
    for part in truncates:  # SQL on the warehouse, then the position: applying it twice is harmless
        op = part.last
        warehouse.truncate(merger, MERGE_SOURCE, part.table, op.delete_mode, op.lsn, op.commit_time)
        _event("truncate merged", table=part.table, seq=op.seq)
    reloads = [p for p in parts if p.action == "replace" and p.last.reload]
    others = [p for p in parts if p not in reloads]
    for group, refresh in ([reloads[i:i + 1] for i in range(len(reloads))], "drop_resources"), ([others], None):
        for batch in group:
            live = [p for p in batch if p.table not in summary.failed_tables]
            while live:
                try:
                    _run(merger, area, live, summary, refresh, floor_after)
                    break
                except TableLoadFailed as failure:
                    names = {p.table: p for p in live}
                    table = next((t for t in names if _same(merger, t, failure.table)), None)
                    if table is None:
                        raise
                    summary.failed_tables[table] = {"table": table, "step": failure.step, "error": failure.error}
                    _event(f"{table}: merge failed ({failure.error}); it keeps its position and is retried next "
                           "cycle, the other tables go on", logging.ERROR, table=table)
                    live = [p for p in live if p.table != table]


def _same(merger: dlt.Pipeline, resource: str, destination_table: str | None) -> bool:
    return destination_table is not None and warehouse.table_name(merger, MERGE_SOURCE, resource) == destination_table


def _run(merger: dlt.Pipeline, area: LandingArea, parts: list[Part], summary: MergeSummary,
         refresh: str | None, floor_after: Callable[[list[Part]], str | None]) -> None:
    resources = []
    rows: dict[str, int] = {}
    changes: dict[str, int] = {}
    unresolved_total = 0
    for part in parts:
        if part.action == "truncate":
            continue
        op = part.last
        hints = op.hints
        if part.action == "replace":  # merge-only hints would be ignored (and warned about) by a replace
            hints = {name: {k: v for k, v in hint.items() if k not in ("hard_delete", "dedup_sort")}
                     for name, hint in op.hints.items()}
            data: Any = area.read(op)
            rows[part.table] = -1
            disposition: Any = "replace"
        else:
            table_rows = [_concat(list(area.read(o))) for o in part.ops]
            if op.primary_key and op.primary_key != [ROW_KEY_COLUMN]:
                folded, unresolved = fold_keyed(table_rows, op.primary_key, op.delete_mode, _fetcher(merger, part),
                                                area.naming.normalize_identifier)
                unresolved_total += unresolved
            else:
                folded, unresolved = fold_keyless(table_rows, op.delete_mode, _existing(merger, part))
                unresolved = 0  # deletes that found no copy: the warehouse was already without it
            changes[part.table] = sum(t.num_rows for t in table_rows)
            rows[part.table] = folded.num_rows
            data = [folded]
            disposition = MERGE
            if unresolved:
                _event("unchanged TOAST values not found in the warehouse; left NULL", logging.WARNING,
                       table=part.table, rows=unresolved)
        resources.append(dlt.resource(data, name=part.table, table_name=part.table, write_disposition=disposition,
                                      primary_key=op.primary_key, columns=hints))
    positions = {p.table: {"seq": p.last.seq, "load_id": p.last.load_id} for p in parts}
    try:
        merger.run(merged(resources, positions, floor_after(parts)), refresh=refresh)  # type: ignore[arg-type]
    except PipelineStepFailed as exc:
        if is_about_no_table(exc):
            raise
        if merger.has_pending_data:
            merger.abort_packages()
        raise TableLoadFailed(culprit(exc), exc.step, describe(exc)) from exc
    summary.packages += 1
    summary.unresolved_toast_rows += unresolved_total
    for table, count in changes.items():
        summary.changes[table] = summary.changes.get(table, 0) + count
    for table, count in rows.items():
        if count >= 0:
            summary.rows[table] = summary.rows.get(table, 0) + count
    _event("merged", tables=sorted(p.table for p in parts), seqs=[p.last.seq for p in parts])


def _fetcher(merger: dlt.Pipeline, part: Part) -> Fetch:
    def fetch(keys: pa.Table, columns: list[str]) -> pa.Table | None:
        return warehouse.current_rows(merger, MERGE_SOURCE, part.table, keys, columns)

    return fetch


def _existing(merger: dlt.Pipeline, part: Part) -> Callable[[set[str]], dict[str, list[str]]]:
    def existing(hashes: set[str]) -> dict[str, list[str]]:
        return warehouse.existing_copies(merger, MERGE_SOURCE, part.table, hashes, part.last.delete_mode)

    return existing


def unmerged_age(pipeline: dlt.Pipeline) -> float:
    """Seconds since the oldest landed op not merged yet landed (0 when all are merged): `status`, alarms."""
    merger = merge_pipeline(pipeline)
    merger.sync_destination()
    positions = _positions(merger)
    area = LandingArea(pipeline)
    floor = merger.state.get("sources", {}).get(MERGE_SOURCE, {}).get(FLOOR_KEY)
    ops = area.ops({i for i in area.completed_loads() if floor is None or float(i) >= float(floor)})
    waiting = [o.landed_at for o in ops if o.seq > int(positions.get(o.table, {}).get("seq", 0))]
    return round((datetime.now(UTC) - min(waiting)).total_seconds(), 3) if waiting else 0.0


__all__ = ["MergeSummary", "fold_keyed", "fold_keyless", "merge_landed", "merge_pipeline", "unmerged_age"]
