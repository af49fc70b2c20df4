"""Apply changes to the warehouse exactly once in effect: the one apply that direct CDC and `merge` share.

Direct CDC (`pipelines.cdc.sinks.DirectSink`) applies each batch as it reads it; `merge` (`pipelines.merge`) applies
what landed in S3. Both hand this module the same thing: per table, an ordered list of changes in the change format
(`sources.replication.changes`), and both get the same semantics.

**The apply invariant.** Every row version carries its position in the stream (`_lsn`, `_lsn_ordinal`: the change's
commit LSN and place in its transaction; a chunk's or snapshot's watermark for copied rows). Applying a version that
the warehouse already holds at the same or a later position changes nothing. So a package applied in part before a
crash (its tables' merge jobs commit one by one, dlt's state only with the last), then replayed from an empty disk,
converges: versions already in are skipped, a key that moved is not filled from the row it left, and nothing is
deleted twice. dlt's delete-insert merge has no such guard, so it is applied here, before the load:

1. fold each table's changes into one version per key (`fold_keyed`), dropping replays among them;
2. for versions at or before the newest position the table holds (`newest_lsn`, read once per table, then advanced
   by what this process writes), read the warehouse's positions of those keys and drop what it already has;
   complete unchanged (TOASTed) values from the warehouse's row of the lookup key, unless that row is already past
   the version (a replay: dropped);
3. a version whose value is known nowhere is never written half: it becomes a tombstone, and its key is reported
   (`Applied.unresolved`) for a re-read from the source;
4. one dlt package loads every table's merge together with the caller's state update.

Keyless tables (multisets) cannot be guarded by position (a deleted copy leaves nothing behind), so their deletes are
decided once, against the warehouse before the package, recorded in the package's own state (`pending_deletes`) and
carried out by `_row_key` after it committed. Deleting by key twice is harmless; a crash before the state commits
applied none of them. A TRUNCATE deletes only rows older than itself, so it too can be applied again at any time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.compute as pc
from dlt.extract import DltResource, DltSource
from dlt.pipeline.exceptions import PipelineStepFailed

from pipelines import warehouse
from pipelines.fence import raise_if_fenced_off
from pipelines.isolation import TableLoadFailed, culprit, describe, is_about_no_table
from sources.replication import MERGE
from sources.replication.changes import (
    DELETED_AT_COLUMN,
    DELETED_COLUMN,
    LSN_COLUMN,
    ORDINAL_COLUMN,
    UNCHANGED_COLUMN,
    UNRESOLVED_COLUMN,
    Position,
    at_or_before,
    drop_working_columns,
    fold_keyed,
    fold_keyless,
    lookup_columns,
    newest_position,
    positions,
)
from sources.replication.multiset import ROW_KEY_COLUMN

log = logging.getLogger("aurora_sync.apply")

# the ordinal a table's newest `_lsn` read from the warehouse counts as: any, since only the LSN is read
ANY_ORDINAL = (1 << 63) - 1
PENDING_DELETES_KEY = "pending_deletes"  # state: table -> {"delete_mode", "deletes": [[row key, at, lsn, ordinal]]}
ACTIONS = ("merge", "replace", "truncate", "columns")
StateUpdate = Callable[[dict[str, Any]], None]
# (resources, state update) -> the dlt source of one package, under the caller's schema and state namespace
SourceFactory = Callable[[list[DltResource], StateUpdate], DltSource]


@dataclass
class Part:
    """What one package does to one table."""

    table: str  # resource name (`<schema>__<table>`)
    action: str  # merge | replace | truncate | columns
    rows: Iterable[pa.Table] | Callable[[], Iterator[pa.Table]] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)  # [`_row_key`] for a keyless table
    hints: dict[str, Any] = field(default_factory=dict)
    delete_mode: str = "hard"
    position: Position = (0, 0)  # truncate: the TRUNCATE's position; replace: the snapshot's
    commit_time: datetime | None = None
    reload: bool = False  # replace: drop the table first (a column changed type)

    def __post_init__(self) -> None:
        assert self.action in ACTIONS, self.action

    @property
    def keyless(self) -> bool:
        return self.primary_key == [ROW_KEY_COLUMN]


@dataclass
class Applied:
    """What one `apply` wrote."""

    rows: dict[str, int] = field(default_factory=dict)  # per table: versions written (after folding)
    changes: dict[str, int] = field(default_factory=dict)  # per table: change rows read
    replayed: dict[str, int] = field(default_factory=dict)  # per table: versions the warehouse already had
    unresolved: dict[str, pa.Table] = field(default_factory=dict)  # per table: keys written as tombstones instead
    unmatched_deletes: dict[str, int] = field(default_factory=dict)  # keyless: deletes of a copy already gone
    truncated: list[str] = field(default_factory=list)


class Applier:
    """Applies parts to one warehouse pipeline (`pipeline`) whose state namespace is `schema_name`.

    `pending` returns the state dict the keyless deletes are recorded in (the caller's own: CDC state or merge
    state), so they travel with the caller's positions."""

    def __init__(self, pipeline: dlt.Pipeline, schema_name: str, make_source: SourceFactory,
                 pending: Callable[[], dict[str, Any]], normalize: Callable[[str], str] = str) -> None:
        self.pipeline, self.schema_name, self.make_source, self.pending = pipeline, schema_name, make_source, pending
        # the name a marker's column has in the rows: the source's (direct), or dlt's normalized one (landed files)
        self.normalize = normalize
        # table -> newest position it holds (None: empty or missing). Read from the warehouse as an LSN (any ordinal at
        # it), then advanced to the exact positions this process writes: the later batches of a transaction cut into
        # several share its commit LSN, but their ordinals are past everything written before, so they need no read
        self._newest: dict[str, Position | None] = {}

    # -- before and after a package ------------------------------------------------------------------
    def finish_pending(self) -> int:
        """Carry out keyless deletes a package recorded but a crash kept from running (idempotent)."""
        recorded = dict(self.pending().get(PENDING_DELETES_KEY) or {})
        done = 0
        for table, entry in recorded.items():
            done += warehouse.delete_copies(self.pipeline, self.schema_name, table, entry["delete_mode"],
                                            entry["deletes"])
        if done:
            log.info("keyless deletes recorded before a restart applied", extra={"fields": {"rows": done}})
        return done

    def newest(self, table: str) -> Position | None:
        if table not in self._newest:
            lsn = warehouse.newest_lsn(self.pipeline, self.schema_name, table)
            self._newest[table] = None if lsn is None else (lsn, ANY_ORDINAL)
        return self._newest[table]

    def _advance(self, table: str, position: Position) -> None:
        current = self._newest.get(table)
        self._newest[table] = position if current is None else max(current, position)

    # -- one package ---------------------------------------------------------------------------------
    def apply(self, parts: list[Part], update: StateUpdate | None = None, *, refresh: str | None = None,
              on_unresolved: Callable[[str, pa.Table], None] | None = None) -> Applied:
        """Apply `parts` (at most one per table) and commit `update` with them, in one package.

        `on_unresolved(table, keys)` hears of versions written as tombstones (a value known nowhere) before the
        package is built, so the caller's `update` can record what it does about them in the same package. Raises
        `TableLoadFailed` (after dlt's abort dropped the package) when a table's part fails: the caller sets that
        table aside and applies the rest again; nothing of the package's state is committed then."""
        applied = Applied()
        for part in parts:
            # guarded by position: safe before or after anything else
            if part.action == "truncate" and warehouse.truncate(
                    self.pipeline, self.schema_name, part.table, part.delete_mode, part.position, part.commit_time):
                applied.truncated.append(part.table)
                if part.table in self._newest:  # soft deletes move the rows it marks to its position
                    self._advance(part.table, part.position)
        resources: list[DltResource] = []
        deletes: dict[str, dict[str, Any]] = {}
        written: dict[str, Position] = {}
        for part in parts:
            if part.action == "truncate":
                continue
            resource, newest = self._resource(part, applied, deletes)
            if on_unresolved is not None and part.table in applied.unresolved:
                on_unresolved(part.table, applied.unresolved[part.table])
            if resource is not None:
                resources.append(resource)
            if newest is not None:
                written[part.table] = newest
        if not resources and update is None and not deletes:
            return applied

        def commit(state: dict[str, Any]) -> None:
            if update is not None:
                update(state)
            if deletes:
                state[PENDING_DELETES_KEY] = deletes
            else:
                state.pop(PENDING_DELETES_KEY, None)

        source = self.make_source(resources, commit)
        try:
            info = self.pipeline.run(source, refresh=refresh)
        except PipelineStepFailed as exc:
            raise_if_fenced_off(exc)
            if is_about_no_table(exc):
                raise
            if self.pipeline.has_pending_data:
                self.pipeline.abort_packages()
            raise TableLoadFailed(self._resource_of(culprit(exc), parts), exc.step, describe(exc)) from exc
        info.raise_on_failed_jobs()
        if self.pipeline.has_pending_data:  # never report success for a package that did not load
            raise RuntimeError("dlt left a load package pending after a successful run.")
        for table, position in written.items():
            self._advance(table, position)
        for part in parts:
            if part.action == "replace":
                self._newest[part.table] = (part.position[0], ANY_ORDINAL) if part.position[0] else None
        for table, entry in deletes.items():
            warehouse.delete_copies(self.pipeline, self.schema_name, table, entry["delete_mode"], entry["deletes"])
        return applied

    def _resource_of(self, destination_table: str | None, parts: list[Part]) -> str | None:
        """The part's table (resource name) a failed job names by its normalized destination name."""
        if destination_table is None:
            return None
        for part in parts:
            if part.table == destination_table or warehouse.table_name(
                    self.pipeline, self.schema_name, part.table) == destination_table:
                return part.table
        return destination_table

    def _resource(self, part: Part, applied: Applied,
                  deletes: dict[str, dict[str, Any]]) -> tuple[DltResource | None, Position | None]:
        name = part.table
        if part.action == "replace":
            hints = {column: {k: v for k, v in hint.items() if k not in ("hard_delete", "dedup_sort")}
                     for column, hint in part.hints.items()}
            data = part.rows() if callable(part.rows) else part.rows
            return dlt.resource(data, name=name, table_name=name, write_disposition="replace",
                                primary_key=part.primary_key, columns=hints), None
        tables = list(part.rows() if callable(part.rows) else part.rows)
        if part.action == "columns":
            empty = [drop_working_columns(t) for t in tables]
            return dlt.resource(empty, name=name, table_name=name, write_disposition=MERGE,
                                primary_key=part.primary_key, columns=part.hints), None
        applied.changes[name] = sum(t.num_rows for t in tables)
        if part.keyless:
            folded = fold_keyless(tables, lambda hashes: warehouse.existing_copies(
                self.pipeline, self.schema_name, name, hashes, part.delete_mode))
            rows = folded.inserts
            if folded.deletes:
                deletes[name] = {"delete_mode": part.delete_mode, "deletes": [
                    [key, at.isoformat() if isinstance(at, datetime) else at, lsn, ordinal]
                    for key, at, lsn, ordinal in folded.deletes]}
            if folded.unmatched:
                applied.unmatched_deletes[name] = folded.unmatched
            applied.rows[name] = rows.num_rows + len(folded.deletes)
        else:
            folded_keyed = fold_keyed(tables, part.primary_key, self.normalize)
            rows, replayed, unresolved = self._resolve(part, folded_keyed.rows)
            replayed += folded_keyed.replayed
            if replayed:
                applied.replayed[name] = replayed
            if unresolved is not None:
                applied.unresolved[name] = unresolved
            applied.rows[name] = rows.num_rows
        del tables  # read for the fold only (a merge's lazily): gone before the package is extracted and loaded
        newest = newest_position(rows)
        if not rows.num_rows and not rows.num_columns:
            return None, None
        return dlt.resource(_handed_over(rows), name=name, table_name=name, write_disposition=MERGE,
                            primary_key=part.primary_key, columns=part.hints), newest

    def _resolve(self, part: Part, rows: pa.Table) -> tuple[pa.Table, int, pa.Table | None]:
        """Step 2 and 3 of the module docstring for one keyed table: (rows to write, replays dropped, keys written
        as tombstones because a value is known nowhere)."""
        n = rows.num_rows
        if n == 0:
            return drop_working_columns(rows), 0, None
        newest = self.newest(part.table)
        guarded = at_or_before(rows, newest) if newest is not None else []
        has_markers = UNCHANGED_COLUMN in rows.column_names and rows[UNCHANGED_COLUMN].null_count < n
        has_unresolved = UNRESOLVED_COLUMN in rows.column_names and pc.any(rows[UNRESOLVED_COLUMN]).as_py()
        if not guarded and not has_markers and not has_unresolved:
            return drop_working_columns(rows), 0, None  # all past the warehouse, nothing to complete: no reads
        key_names = list(part.primary_key)
        keys = list(zip(*(rows[k].to_pylist() for k in key_names), strict=True))
        pos = positions(rows)
        markers = rows[UNCHANGED_COLUMN].to_pylist() if UNCHANGED_COLUMN in rows.column_names else [None] * n
        unresolved = set(i for i, flag in enumerate(rows[UNRESOLVED_COLUMN].to_pylist()) if flag) \
            if UNRESOLVED_COLUMN in rows.column_names else set()
        lookups = (list(zip(*(rows[c].to_pylist() for c in lookup_columns(rows)), strict=True))
                   if any(markers) else [()] * n)
        wanted = sorted({name for m in markers if m for name in json.loads(m)})
        fetch = {keys[i] for i in guarded} | {lookups[i] for i in range(n) if markers[i]}
        found: dict[tuple[Any, ...], int] = {}
        current: pa.Table | None = None
        if fetch:
            key_table = pa.table({k: pa.array([f[j] for f in fetch], rows.schema.field(k).type)
                                  for j, k in enumerate(key_names)})
            current = warehouse.current_rows(self.pipeline, self.schema_name, part.table, key_table,
                                             [*wanted, LSN_COLUMN, ORDINAL_COLUMN])
            if current is not None:
                for index, key in enumerate(zip(*(current[k].to_pylist() for k in key_names), strict=True)):
                    found[key] = index
        held = positions(current) if current is not None and LSN_COLUMN in current.column_names else []
        drop: set[int] = set()
        for i in guarded:
            index = found.get(keys[i])
            if index is not None and held and held[index] >= pos[i]:
                drop.add(i)
        take: list[int | None] = [None] * n
        for i in range(n):
            if not markers[i] or i in drop or i in unresolved:
                continue
            index = found.get(lookups[i])
            if index is None:
                unresolved.add(i)
            elif held and held[index] >= pos[i]:
                drop.add(i)  # the row it takes values from is already past it: a version applied before
            else:
                take[i] = index
        if current is not None and any(t is not None for t in take):
            indices = pa.array(take, pa.int64())
            wanted_mask = {name: pa.array([bool(m) and name in json.loads(m) for m in markers], pa.bool_())
                           for name in wanted}
            for name in wanted:
                if name not in rows.column_names:
                    continue
                target = rows.schema.field(name).type
                if name in current.column_names:
                    filled = current[name].combine_chunks().take(indices).cast(target)
                else:
                    filled = pa.nulls(n, target)
                rows = rows.set_column(rows.column_names.index(name), rows.schema.field(name),
                                       pc.if_else(wanted_mask[name], filled, rows[name]))
        unresolved -= drop
        unresolved_keys = None
        if unresolved:
            rows = _tombstones(rows, sorted(unresolved), part.delete_mode)
            unresolved_keys = rows.select(key_names).take(pa.array(sorted(unresolved), pa.int64()))
            log.warning(f"{part.table}: {len(unresolved)} version(s) with a value known nowhere (an unchanged TOAST "
                        "value whose row is not in the warehouse yet) written as tombstones until they are read "
                        "again", extra={"fields": {"table": part.table, "rows": len(unresolved)}})
        if drop:
            rows = rows.filter(pa.array([i not in drop for i in range(n)], pa.bool_()))
        return drop_working_columns(rows), len(drop), unresolved_keys


def _handed_over(rows: pa.Table) -> Iterator[pa.Table]:
    """The folded rows, held only until dlt's extract has written them: a list would keep them through normalize
    and the load, beside the destination's own memory for the merge (~100 MB of Arrow per 1M-row merge)."""
    yield rows


def key_texts(keys: pa.Table) -> list[list[str | None]]:
    """Keys written as tombstones (`Applied.unresolved`), as PostgreSQL prints them: what a `keys` chunk binds to
    read them again, whether the direct follower schedules it or the merge asks the follower (`LandingArea`)."""
    return [[_key_text(v) for v in key] for key in zip(*(keys[c].to_pylist() for c in keys.column_names),
                                                        strict=True)]


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes | bytearray):
        return "\\x" + bytes(value).hex()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | int | float):
        return str(value)
    return str(value)


def _tombstones(rows: pa.Table, indices: list[int], delete_mode: str) -> pa.Table:
    """These rows delete their key instead of writing a half-known version (hard), or mark it deleted (soft)."""
    mask = pa.array([i in set(indices) for i in range(rows.num_rows)], pa.bool_())
    if delete_mode == "hard":
        column = rows[DELETED_COLUMN] if DELETED_COLUMN in rows.column_names else pa.nulls(rows.num_rows, pa.bool_())
        value = pc.if_else(mask, pa.scalar(True), column)
        if DELETED_COLUMN in rows.column_names:
            return rows.set_column(rows.column_names.index(DELETED_COLUMN), DELETED_COLUMN, value)
        return rows.append_column(DELETED_COLUMN, value)
    now = pa.scalar(datetime.now(UTC), pa.timestamp("us", tz="UTC"))
    column = rows[DELETED_AT_COLUMN] if DELETED_AT_COLUMN in rows.column_names else pa.nulls(
        rows.num_rows, pa.timestamp("us", tz="UTC"))
    value = pc.if_else(mask, now, column.cast(pa.timestamp("us", tz="UTC")))
    if DELETED_AT_COLUMN in rows.column_names:
        return rows.set_column(rows.column_names.index(DELETED_AT_COLUMN), DELETED_AT_COLUMN, value)
    return rows.append_column(DELETED_AT_COLUMN, value)


__all__ = ["PENDING_DELETES_KEY", "Applied", "Applier", "Part"]
