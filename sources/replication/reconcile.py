"""DBLog done right: a chunk's rows reconciled with what the stream saw while the chunk was read.

A chunk is read in one short REPEATABLE READ transaction between a low and a high watermark (`chunked_copy`). The
stream keeps every change of the chunk's table between the two (`stream.Window`), each with its transaction id.
At the high watermark, every change committed before it has been applied already, and:

- the read's snapshot says exactly which of those transactions its rows already hold (`TxSnapshot.visible`);
- the chunk's row of a key is its *base*, and every change of that key the read did not see is applied on top of it,
  in stream order, an unchanged TOASTed value coming from the chunk's row (or the version before it in the window),
  never from a destination table that was emptied when the copy began;
- a key moved out of the chunk takes its values along: its new key gets them too;
- deletes win over the chunk (the key ends deleted), and a TRUNCATE the read did not see, a transaction that
  committed before the low watermark but was still invisible to the read (its commit record was written, its
  visibility not yet: a race PostgreSQL allows), or a change of the table's columns mid-window all make the chunk
  read again: cheaper than reasoning about them, and rare.

The result is one version per key, positioned at the high watermark, which the apply writes over whatever the
stream left there (`pipelines.apply`): every change before the watermark is in it, every change after comes after.
Keys whose values the window cannot complete (a key moved in from a row outside the chunk) are left to the stream's
own version, which the apply completes from the warehouse or, failing that, reads again (`keys` chunks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from sources.postgres.catalog import TableSpec

from .batch import ArrayConverter, ChangeBatch, DeleteMode, GeneratedValues, prepare, system_columns
from .changes import (
    LSN_COLUMN,
    ORDINAL_COLUMN,
    UNCHANGED_COLUMN,
    UNRESOLVED_COLUMN,
    concat,
    drop_working_columns,
    fold_keyed,
    lookup_columns,
)
from .chunked_copy import TxSnapshot
from .columns import ColumnSpec
from .stream import Window, WindowChange


@dataclass
class Reconciled:
    rows: pa.Table  # the chunk's versions at its high watermark (change format; no columns: nothing to write)
    reason: str = ""  # set when the chunk must be read again instead
    applied_on_top: int = 0  # changes the read did not see, applied onto its rows

    @property
    def read_again(self) -> bool:
        return bool(self.reason)


def _base(chunk: pa.Table, low_lsn: int, delete_mode: DeleteMode) -> pa.Table:
    """The chunk's rows as versions at the low watermark: before every change the read did not see."""
    for name, column in system_columns(delete_mode, [low_lsn] * chunk.num_rows, [None] * chunk.num_rows).items():
        if name not in chunk.column_names:
            chunk = chunk.append_column(name, column)
    return chunk


def _replayed(changes: list[WindowChange]) -> ChangeBatch:
    batch = ChangeBatch()
    for change in changes:
        if change.kind == "I":
            batch.insert(change.table, change.new or [], change.lsn, change.commit_time, 0.0, 0, change.ordinal)
        elif change.kind == "U":
            batch.update(change.table, change.old, change.new or [], change.lsn, change.commit_time, 0.0, 0,
                         change.ordinal)
        elif change.kind == "D":
            batch.delete(change.table, change.old or [], change.lsn, change.commit_time, 0.0, 0, change.ordinal)
    return batch


def _keys(table: pa.Table, names: Sequence[str]) -> list[tuple[Any, ...]]:
    return list(zip(*(table[k].to_pylist() for k in names), strict=True)) if table.num_rows else []


def reconcile(chunk_tables: Sequence[pa.Table], window: Window, snapshot: TxSnapshot, high_lsn: int,
              columns: list[ColumnSpec], spec: TableSpec, delete_mode: DeleteMode,
              convert_arrays: ArrayConverter, generated: GeneratedValues | None,
              committed_at: Callable[[int], int | None], requested: pa.Table | None = None) -> Reconciled:
    """The chunk's versions at `high_lsn` (see the module docstring). `requested`: for a `keys` chunk, the keys it
    was asked for (typed), which end deleted when the read found none of them and no change brought them back."""
    if window.columns_changed:
        return Reconciled(pa.table({}), "the table's columns changed while the chunk was read")
    for xid in snapshot.in_progress():
        committed = committed_at(xid)
        if committed is not None and committed < window.low_lsn:
            return Reconciled(pa.table({}), "a transaction committed before the low watermark was not yet visible "
                                            "to the read")
    unseen = [c for c in window.changes if not snapshot.visible(c.xid)]
    if any(c.kind == "T" for c in unseen):
        return Reconciled(pa.table({}), "a TRUNCATE committed while the chunk was read")
    key_names = list(spec.primary_key)
    chunk = concat([t for t in chunk_tables if t.num_rows]) if any(t.num_rows for t in chunk_tables) else None
    base = _base(chunk, window.low_lsn, delete_mode) if chunk is not None else None
    members = set(_keys(base, key_names)) if base is not None else set()
    if requested is not None:
        members |= set(_keys(requested, key_names))
    ops: list[pa.Table] = [base] if base is not None else []
    if unseen:
        batch = _replayed(unseen)
        changes = next(iter(batch.tables.values()), None)
        if changes is not None:
            prepared = prepare(changes, delete_mode, convert_arrays, generated)
            rows = prepared.rows
            # a key moved out of the chunk takes the chunk's values along: its new key belongs to this chunk's result
            if UNCHANGED_COLUMN in rows.column_names:
                lookups = list(zip(*(rows[c].to_pylist() for c in lookup_columns(rows)), strict=True))
                for key, lookup, marker in zip(_keys(rows, key_names), lookups, rows[UNCHANGED_COLUMN].to_pylist(),
                                               strict=True):
                    if marker and lookup in members:
                        members.add(key)
            ops.append(rows)
    if not ops:
        ops.append(_tombstones_for(requested, columns, delete_mode) if requested is not None else pa.table({}))
    folded = fold_keyed(ops, key_names).rows if ops and ops[0].num_columns else pa.table({})
    if requested is not None:  # asked for, absent from the read and untouched since: deleted
        present = set(_keys(folded, key_names)) if folded.num_columns else set()
        missing = requested.filter(pa.array([k not in present for k in _keys(requested, key_names)], pa.bool_()))
        if missing.num_rows:
            folded = concat([folded, _tombstones_for(missing, columns, delete_mode)]) if folded.num_columns \
                else _tombstones_for(missing, columns, delete_mode)
    if not folded.num_columns or not folded.num_rows:
        return Reconciled(folded, applied_on_top=len(unseen))
    keep = [k in members and not _needs_warehouse(folded, i) for i, k in enumerate(_keys(folded, key_names))]
    folded = drop_working_columns(folded.filter(pa.array(keep, pa.bool_())))
    n = folded.num_rows
    folded = folded.set_column(folded.column_names.index(LSN_COLUMN), LSN_COLUMN, pa.array([high_lsn] * n, pa.int64()))
    folded = folded.set_column(folded.column_names.index(ORDINAL_COLUMN), ORDINAL_COLUMN, pa.array([0] * n, pa.int64()))
    return Reconciled(folded, applied_on_top=len(unseen))


def _needs_warehouse(folded: pa.Table, i: int) -> bool:
    """A version with a value the window cannot supply: the stream's own version of that key stands instead."""
    if UNRESOLVED_COLUMN in folded.column_names and folded[UNRESOLVED_COLUMN][i].as_py():
        return True
    return UNCHANGED_COLUMN in folded.column_names and folded[UNCHANGED_COLUMN][i].as_py() is not None


def _tombstones_for(keys: pa.Table, columns: list[ColumnSpec], delete_mode: DeleteMode) -> pa.Table:
    """Versions that delete these keys (typed key columns), shaped like the chunk's rows."""
    n = keys.num_rows
    data: dict[str, pa.Array] = {}
    for column in columns:
        data[column.name] = keys[column.name] if column.name in keys.column_names else pa.nulls(
            n, column.plan.arrow_type)
    table = pa.table(data)
    for name, array in system_columns(delete_mode, [0] * n, [datetime.now(UTC)] * n).items():
        table = table.append_column(name, array)  # `_deleted` true (hard), or `_deleted_at` now (soft)
    return table
