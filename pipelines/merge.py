"""Merge: apply the CDC batches that landed in S3 to the warehouse, in order, exactly once in effect.

`aurora-sync merge` runs this on its own cadence (`merge_interval_seconds`), independently of the follower that
lands the batches (`pipelines.landing`). One cycle:

1. An idle check that never wakes the warehouse (Snowflake bills a resumed warehouse for at least a minute): the
   marker `_aurora_merged.json` names the last load a complete cycle merged, and one LIST of the landing index after
   it (`pipelines.landing_area`) shows whether anything landed since. Nothing did: the cycle ends.
2. The merge takes over the fencing token (`pipelines.fence`), and dlt restores its state from the warehouse
   (`<name>_merge`): per table the last landing `seq` merged, and the seq every table is merged through. A fresh ECS
   task carries on where the last one stopped.
3. The index is listed after that seq (a missing seq stops the cycle: `LandingGap`), and each load's ops are read:
   per table, the ops not merged yet, in landing order.
4. Each table's ops are applied as one merge through the shared apply (`pipelines.apply`: fold, position guard,
   unchanged TOAST values from the key's previous version, keyless deletes matched against the warehouse's copies).
   However many batches are waiting, that is one merge per table per cycle; only a snapshot or TRUNCATE of the
   table, or more than `max_merge_bytes` of landed files, starts another (bounded memory). One dlt package loads
   every table's merge with the new positions; a table whose merge fails keeps its position and is retried next
   cycle, the other tables go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
from dlt.common.configuration import resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration, configspec
from dlt.common.schema import Schema
from dlt.extract import DltResource

from pipelines import apply
from pipelines.fence import fenced_pipeline, take_over
from pipelines.isolation import TableLoadFailed
from pipelines.landing_area import LandedOp, LandingArea
from sources.replication import SOURCE_NAME
from sources.replication.changes import concat

log = logging.getLogger("aurora_sync.merge")

MERGE_SUFFIX = "_merge"
MERGE_SOURCE = "aurora_merge"  # the merge pipeline's own dlt schema (and state namespace)
POSITIONS_KEY = "merged"  # merge state: table -> {"seq": last merged landing seq, "load_id": its landing load}
THROUGH_KEY = "merged_through"  # merge state: every landing load up to this seq is merged for every table
# landed parquet per table and merge. The fold holds what it read and what it keeps as Arrow, ~9x the parquet at its
# peak (a landed 1M-row transaction: 26 MB of files, ~240 MB of Arrow), above a ~190 MB process: 32 MB keeps a merge
# within the 512 MB a task is sized for (docs/performance.md)
MAX_MERGE_BYTES = 32 << 20


@configspec
class MergeConfiguration(BaseConfiguration):
    """`[merge]`: how `aurora-sync merge` treats the landing area."""

    landing_retention_days: float = 7.0
    """Days a landed load stays in the landing area once every table merged it (it is then deleted by the merge,
    at most 500 loads a cycle); 0 keeps them. A load not merged yet is never deleted."""


def _event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={"fields": {"phase": "merge", **fields}})


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
    list_requests: int = 0  # LIST requests on the landing area: one for an idle cycle, however much it holds
    removed_loads: int = 0  # landed loads past `landing_retention_days` that every table had merged, deleted

    def as_fields(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": sum(self.rows.values()), "changes": sum(self.changes.values()),
                "packages": self.packages, "failed_tables": self.failed_tables,
                "unresolved_toast_rows": self.unresolved_toast_rows,
                "merge_lag_s": self.oldest_unmerged_age_s, "last_seq": self.last_seq, "duration_s": self.duration,
                "idle": self.idle, "list_requests": self.list_requests, "removed_loads": self.removed_loads}


def merge_pipeline(pipeline: dlt.Pipeline) -> dlt.Pipeline:
    """`<name>_merge`: the same warehouse, staging and dataset as the pipeline, its own state."""
    return dlt.pipeline(pipeline_name=pipeline.pipeline_name + MERGE_SUFFIX, pipelines_dir=pipeline.pipelines_dir,
                        destination=pipeline.destination, staging=pipeline.staging,
                        dataset_name=pipeline.dataset_name)


def _merge_state(merger: dlt.Pipeline) -> dict[str, Any]:
    return dict(merger.state.get("sources", {}).get(MERGE_SOURCE, {}))


def _positions(merger: dlt.Pipeline) -> dict[str, dict[str, Any]]:
    return dict(_merge_state(merger).get(POSITIONS_KEY, {}))


@dlt.source(name=MERGE_SOURCE, max_table_nesting=0, root_key=False)
def merged(resources: list[DltResource], update: Callable[[dict[str, Any]], None]) -> Iterable[DltResource]:
    """One merge package: each table's part, and the positions they reach (the merge's dlt state), together."""
    yield from resources

    def commit() -> Iterator[Any]:
        update(dlt.current.source_state())
        yield from ()

    yield dlt.resource(commit, name="_merge_state")


def applier(merger: dlt.Pipeline) -> apply.Applier:
    """The apply every merge package goes through (`pipelines.apply`); landed files hold dlt's column names."""
    naming = Schema(SOURCE_NAME).naming
    return apply.Applier(merger, MERGE_SOURCE, merged, lambda: _merge_state(merger),  # type: ignore[arg-type]
                         normalize=naming.normalize_identifier)


def merge_landed(pipeline: dlt.Pipeline, *, max_merge_bytes: int = MAX_MERGE_BYTES) -> MergeSummary:
    """One merge cycle (see the module docstring). `pipeline` is the CDC pipeline whose batches landed."""
    started = time.monotonic()
    summary = MergeSummary()
    area = LandingArea(pipeline)
    marker = area.merged_marker()
    if marker is not None and not area.index(after=marker):
        summary.idle = True  # nothing landed since the last complete cycle: the warehouse is not touched
        return _finished(summary, area, started)
    merger = fenced_pipeline(pipeline, "merge", pipeline_name=pipeline.pipeline_name + MERGE_SUFFIX)
    take_over(merger)  # from here on, a merge that lost the lock without knowing it cannot commit (`fence`)
    merger.sync_destination()  # positions from the warehouse: a fresh task carries on
    writer = applier(merger)
    writer.finish_pending()
    positions = _positions(merger)
    through = _merge_state(merger).get(THROUGH_KEY)
    entries = area.index(after=None if through is None else int(through))
    area.check_contiguous(entries, None if through is None else int(through))
    ops = [op for entry in entries for op in area.ops(entry)]
    pending: dict[str, list[LandedOp]] = {}
    for op in ops:
        if op.seq > int(positions.get(op.table, {}).get("seq", 0)):
            area.attach_files(op)
            pending.setdefault(op.table, []).append(op)
    plans = {table: plan_parts(table_ops, max_merge_bytes) for table, table_ops in pending.items()}
    newest = max((e.seq for e in entries), default=None)
    applied: set[int] = set()
    while any(plans.values()):
        parts = [plans[t].pop(0) for t in sorted(plans) if plans[t] and t not in summary.failed_tables]
        if not parts:
            break

        def through_after(done: list[Part], parts: list[Part] = parts) -> int | None:
            """Every load up to this seq is merged for every table once `done` is applied."""
            ids = {p.table for p in done}
            left = [o.seq for later in plans.values() for part in later for o in part.ops]
            left += [o.seq for p in parts if p.table not in ids for o in p.ops]
            left += [o.seq for t in summary.failed_tables for o in pending.get(t, [])]
            return min(left) - 1 if left else newest

        _apply(writer, area, parts, summary, through_after)
        applied.update(o.seq for part in parts if part.table not in summary.failed_tables for o in part.ops)
    summary.batches = len(applied)
    summary.last_seq = newest or 0
    positions = _positions(merger)
    waiting = [o.landed_at for o in ops if o.seq > int(positions.get(o.table, {}).get("seq", 0))]
    summary.oldest_unmerged_age_s = round(max(0.0, (datetime.now(UTC) - min(waiting)).total_seconds()), 3) \
        if waiting else 0.0
    if not waiting and not summary.failed_tables and newest is not None and newest != marker:
        area.mark_merged(newest)
    through = _merge_state(merger).get(THROUGH_KEY)
    if through is not None:
        retention = resolve_configuration(MergeConfiguration(), sections=("merge",)).landing_retention_days
        summary.removed_loads = area.remove_merged(int(through), retention)
    return _finished(summary, area, started)


def _finished(summary: MergeSummary, area: LandingArea, started: float) -> MergeSummary:
    summary.list_requests = area.list_requests
    summary.duration = round(time.monotonic() - started, 3)
    _event("merge cycle finished", **summary.as_fields())
    return summary


def _apply(writer: apply.Applier, area: LandingArea, parts: list[Part], summary: MergeSummary,
           through_after: Callable[[list[Part]], int | None]) -> None:
    """One package for these parts (one per table); a table whose part fails is left for the next cycle. A table
    dropped and loaded anew (a column changed type) goes in a package of its own: dlt's refresh drops every table
    of the package it is given."""
    reloads = [p for p in parts if p.action == "replace" and p.last.reload]
    others = [p for p in parts if p not in reloads]
    for group, refresh in ([reloads[i:i + 1] for i in range(len(reloads))], "drop_resources"), ([others], None):
        for batch in group:
            live = [p for p in batch if p.table not in summary.failed_tables]
            while live:
                try:
                    _run(writer, area, live, summary, refresh, through_after)
                    break
                except TableLoadFailed as failure:
                    table = failure.table if failure.table in {p.table for p in live} else None
                    if table is None:
                        raise
                    summary.failed_tables[table] = {"table": table, "step": failure.step, "error": failure.error}
                    _event(f"{table}: merge failed ({failure.error}); it keeps its position and is retried next "
                           "cycle, the other tables go on", logging.ERROR, table=table)
                    live = [p for p in live if p.table != table]


def _apply_part(area: LandingArea, part: Part) -> apply.Part:
    op = part.last
    if part.action == "truncate":
        return apply.Part(part.table, "truncate", primary_key=op.primary_key, hints=op.hints,
                          delete_mode=op.delete_mode, position=(op.lsn, op.ordinal), commit_time=op.commit_time)
    if part.action == "replace":
        return apply.Part(part.table, "replace", lambda: area.read(op), op.primary_key, op.hints, op.delete_mode,
                          position=(op.lsn, 0), reload=op.reload)
    # read when the apply folds them, and let go of once folded (a list here would live through the load)
    return apply.Part(part.table, "merge", lambda: [concat(list(area.read(o))) for o in part.ops], op.primary_key,
                      op.hints, op.delete_mode)


def _run(writer: apply.Applier, area: LandingArea, parts: list[Part], summary: MergeSummary,
         refresh: str | None, through_after: Callable[[list[Part]], int | None]) -> None:
    positions = {p.table: {"seq": p.last.seq, "load_id": p.last.load_id} for p in parts}
    through = through_after(parts)

    def update(state: dict[str, Any]) -> None:
        state.setdefault(POSITIONS_KEY, {}).update(positions)
        if through is not None:
            state[THROUGH_KEY] = max(int(state.get(THROUGH_KEY) or 0), through)

    def reread(table: str, keys: Any) -> None:
        """Tombstoned versions (a value known nowhere): the follower, which reaches the source, reads them again;
        asked before the tombstones commit, so no crash loses the request (`pipelines.cdc.rereads`)."""
        area.request_reread(table, apply.key_texts(keys))

    result = writer.apply([_apply_part(area, p) for p in parts], update, refresh=refresh, on_unresolved=reread)
    summary.packages += 1
    for table in result.truncated:
        _event("truncate merged", table=table)
    for table, count in result.changes.items():
        summary.changes[table] = summary.changes.get(table, 0) + count
    for table, count in result.rows.items():
        summary.rows[table] = summary.rows.get(table, 0) + count
    for table, keys in result.unresolved.items():
        summary.unresolved_toast_rows += keys.num_rows
        _event("versions with a value known nowhere were written as tombstones; the follower reads their keys again",
               logging.WARNING, table=table, rows=keys.num_rows, keys=[str(k) for k in keys.to_pylist()[:20]])
    _event("merged", tables=sorted(p.table for p in parts), seqs=[p.last.seq for p in parts])


def unmerged_age(pipeline: dlt.Pipeline) -> float:
    """Seconds since the oldest landed op not merged yet landed (0 when all are merged): `status`, alarms."""
    merger = merge_pipeline(pipeline)
    merger.sync_destination()
    positions = _positions(merger)
    area = LandingArea(pipeline)
    through = _merge_state(merger).get(THROUGH_KEY)
    ops = [op for entry in area.index(after=None if through is None else int(through)) for op in area.ops(entry)]
    waiting = [o.landed_at for o in ops if o.seq > int(positions.get(o.table, {}).get("seq", 0))]
    return round((datetime.now(UTC) - min(waiting)).total_seconds(), 3) if waiting else 0.0


__all__ = ["MergeSummary", "merge_landed", "merge_pipeline", "unmerged_age"]
