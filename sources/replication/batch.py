"""Bounded batches of decoded changes: one row per primary key, converted to typed Arrow tables.

A batch never holds more than `max_batch_rows` changes or `max_batch_bytes` of values, whatever the
size of the transactions it came from. Within a batch the latest change of a key wins (its values
completed from the earlier ones when the server left a TOASTed value unchanged), so the destination
merges one row per key; `_lsn` is the commit LSN of that version. Tables without any key keep every
change, in order, and become inserts and deletes of row copies (`multiset`).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from sources.postgres.conversion import RejectedRow
from sources.postgres.copy_loader import csv_to_arrow
from sources.postgres.type_mapping import ColumnPlan

from . import multiset
from .changes import (
    CHANGE_COLUMN,
    CHANGE_KEY_COLUMN,
    COMMIT_TIME_COLUMN,
    DELETED_AT_COLUMN,
    DELETED_COLUMN,
    LOOKUP_PREFIX,
    LSN_COLUMN,
    ORDINAL_COLUMN,
    UNCHANGED_COLUMN,
)
from .columns import ColumnSpec
from .pgoutput import UNCHANGED, Relation, Value

DeleteMode = Literal["hard", "soft"]
_ROW = ColumnPlan("_aurora_sync_row", "", pa.int64())
ROW_OVERHEAD_BYTES = 96  # Python objects per change beyond the value bytes (measured order of magnitude)


def system_hints(delete_mode: DeleteMode) -> dict[str, dict[str, object]]:
    """dlt hints of the columns CDC adds: `_lsn` orders versions, `_deleted(_at)` marks deletes."""
    hints: dict[str, dict[str, object]] = {
        LSN_COLUMN: {"name": LSN_COLUMN, "data_type": "bigint", "nullable": True, "dedup_sort": "desc"},
        ORDINAL_COLUMN: {"name": ORDINAL_COLUMN, "data_type": "bigint", "nullable": True},
    }
    if delete_mode == "hard":
        hints[DELETED_COLUMN] = {"name": DELETED_COLUMN, "data_type": "bool", "nullable": True, "hard_delete": True}
    else:
        hints[DELETED_AT_COLUMN] = {"name": DELETED_AT_COLUMN, "data_type": "timestamp", "timezone": True,
                                    "nullable": True}
    return hints


def system_columns(delete_mode: DeleteMode, lsns: list[int], deleted: list[datetime | None],
                   ordinals: list[int] | None = None) -> dict[str, pa.Array]:
    columns = {LSN_COLUMN: pa.array(lsns, pa.int64()),
               ORDINAL_COLUMN: pa.array(ordinals if ordinals is not None else [0] * len(lsns), pa.int64())}
    if delete_mode == "hard":
        columns[DELETED_COLUMN] = pa.array([True if d is not None else None for d in deleted], pa.bool_())
    else:
        columns[DELETED_AT_COLUMN] = pa.array(deleted, pa.timestamp("us", tz="UTC"))
    return columns


@dataclass
class LiveTable:
    """A replicated table as the stream currently sees it (one version of its columns)."""

    qualified: str
    resource_name: str
    primary_key: tuple[str, ...]
    relation: Relation
    columns: list[ColumnSpec]  # the relation's columns, then the generated ones pgoutput leaves out
    key_positions: tuple[int, ...]
    generated: tuple[GeneratedColumn, ...] = ()

    def shape(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((c.name, c.type_oid, c.typmod) for c in self.columns)

    @property
    def keyless(self) -> bool:
        return not self.key_positions

    @property
    def merge_key(self) -> list[str]:
        return list(self.primary_key) if self.primary_key else [multiset.ROW_KEY_COLUMN]

    def __post_init__(self) -> None:
        if not self.key_positions:
            self._key: Callable[[list[Value]], tuple[Value, ...]] = lambda values: ()
            return
        getter = operator.itemgetter(*self.key_positions)
        self._key = getter if len(self.key_positions) > 1 else lambda values: (getter(values),)

    def key(self, values: list[Value]) -> tuple[Value, ...]:
        return self._key(values)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GeneratedColumn:
    """A `GENERATED ALWAYS AS (...) STORED` column: PostgreSQL before 18 does not send it, so it is computed."""

    name: str
    expression: str  # pg_get_expr() of its generation expression
    sql_type: str  # format_type() of the column


@dataclass(slots=True)
class RowChange:
    op: str  # I, U, D
    lsn: int  # commit LSN of the transaction
    commit_time: datetime
    values: list[Value]  # relation column order; UNCHANGED = take the destination's current value
    lookup_key: tuple[Value, ...]  # destination key holding those values (the old key if the key changed)
    ordinal: int = 0  # position of the change in its transaction (keyless tables: the copy's identity)


@dataclass
class TableChanges:
    table: LiveTable
    rows: dict[tuple[Value, ...], RowChange] = field(default_factory=dict)
    inserts: int = 0
    updates: int = 0
    deletes: int = 0


class ChangeBatch:
    """Changes of one or more (possibly partial) transactions, bounded by rows and bytes."""

    def __init__(self) -> None:
        self.tables: dict[str, TableChanges] = {}
        self.changes = 0
        self.bytes = 0
        self.started: float | None = None  # monotonic time of the first change
        self.safe_lsn: int | None = None  # end LSN of the last complete transaction in the batch
        self.newest_commit_time: datetime | None = None
        self.oldest_commit_time: datetime | None = None  # the change that waited longest: landing lag's worst case
        # (final LSN, changes of it in this and earlier batches) when the batch ends inside a transaction: a
        # restart resends that transaction whole, and skips that many of its changes
        self.partial: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return self.changes > 0

    def _table(self, table: LiveTable) -> TableChanges:
        changes = self.tables.get(table.qualified)
        if changes is None:
            changes = self.tables[table.qualified] = TableChanges(table)
        return changes

    def _put(self, changes: TableChanges, key: tuple[Value, ...], row: RowChange, now: float) -> None:
        rows = changes.rows
        rows.pop(key, None)  # re-inserted at the end: the dict keeps change order
        rows[key] = row
        if self.started is None:
            self.started = now
        at = row.commit_time  # one object per transaction: `is` settles most changes without comparing datetimes
        newest = self.newest_commit_time
        if newest is None or (at is not newest and at > newest):
            self.newest_commit_time = at
        oldest = self.oldest_commit_time
        if oldest is None or (at is not oldest and at < oldest):
            self.oldest_commit_time = at

    def _count(self, size: int) -> None:
        """Bytes are counted per change received (an upper bound of what the batch holds)."""
        self.changes += 1
        self.bytes += size + ROW_OVERHEAD_BYTES

    def insert(self, table: LiveTable, new: list[Value], lsn: int, at: datetime, now: float, size: int = 0,
               ordinal: int = 0) -> None:
        self.changes += 1  # `_count`, inlined: this runs once per change
        self.bytes += size + ROW_OVERHEAD_BYTES
        changes = self.tables.get(table.qualified) or self._table(table)
        changes.inserts += 1
        if not table.key_positions:
            self._put(changes, ("#", len(changes.rows)), RowChange("I", lsn, at, new, (), ordinal), now)
            return
        key = table.key(new)
        self._put(changes, key, RowChange("I", lsn, at, new, key, ordinal), now)

    def update(self, table: LiveTable, old: list[Value] | None, new: list[Value], lsn: int, at: datetime,
               now: float, size: int = 0, ordinal: int = 0) -> None:
        self._count(size)
        changes = self._table(table)
        changes.updates += 1
        if table.keyless:  # REPLICA IDENTITY FULL: the old row, then the new one (unchanged TOAST from the old)
            assert old is not None, f"{table.qualified}: an update without its old row (REPLICA IDENTITY FULL?)"
            new = [o if v is UNCHANGED else v for v, o in zip(new, old, strict=True)]
            self._put(changes, ("#", len(changes.rows)), RowChange("D", lsn, at, list(old), (), ordinal), now)
            self._put(changes, ("#", len(changes.rows)), RowChange("I", lsn, at, new, (), ordinal), now)
            return
        key = table.key(new)
        old_key = table.key(old) if old is not None else key
        previous = changes.rows.get(old_key)
        lookup_key = old_key
        if previous is not None and previous.op != "D":
            # complete unchanged TOAST values from the version earlier in this batch
            new = [p if v is UNCHANGED else v for v, p in zip(new, previous.values, strict=True)]
            lookup_key = previous.lookup_key
        if old_key != key:  # the primary key changed: the old row goes away
            tombstone = RowChange("D", lsn, at, self._tombstone(table, old, previous), lookup_key, ordinal)
            self._put(changes, old_key, tombstone, now)
        self._put(changes, key, RowChange("U", lsn, at, new, lookup_key, ordinal), now)

    def delete(self, table: LiveTable, old: list[Value], lsn: int, at: datetime, now: float, size: int = 0,
               ordinal: int = 0) -> None:
        self._count(size)
        changes = self._table(table)
        changes.deletes += 1
        if table.keyless:
            self._put(changes, ("#", len(changes.rows)), RowChange("D", lsn, at, list(old), (), ordinal), now)
            return
        key = table.key(old)
        previous = changes.rows.get(key)
        lookup_key = previous.lookup_key if previous is not None and previous.op != "D" else key
        self._put(changes, key, RowChange("D", lsn, at, self._tombstone(table, old, previous), lookup_key, ordinal),
                  now)

    @staticmethod
    def _tombstone(table: LiveTable, old: list[Value] | None, previous: RowChange | None) -> list[Value]:
        """The last known values of a deleted row (soft deletes keep them); unknown ones UNCHANGED."""
        if previous is not None and previous.op != "D":
            return list(previous.values)
        if old is not None and table.relation.replica_identity == "f":
            return list(old)  # REPLICA IDENTITY FULL sent the whole row
        values: list[Value] = [UNCHANGED] * len(table.relation.columns)  # generated ones are added later
        for i in table.key_positions:
            values[i] = old[i] if old is not None else None
        return values


@dataclass
class PreparedTable:
    """One table of a batch in the change format (`changes`): typed Arrow, markers where the WAL had no value."""

    table: LiveTable
    rows: pa.Table  # keyed: one row per key, positions, tombstones, markers; keyless: ordered I/D changes
    rejected: list[RejectedRow]
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    fill_rows: int = 0  # rows with a value to take from an earlier version (unchanged TOAST, soft-delete tombstones)


ArrayConverter = Callable[[ColumnSpec, list[bytes]], list[bytes | None]]


_TEXT = pa.large_binary()  # int64 offsets: a batch's text may pass 2 GiB when max_batch_bytes allows it
_QUOTE, _COMMA, _NEWLINE, _NOTHING = (pa.scalar(v, _TEXT) for v in (b'"', b",", b"\n", b""))
_NONE = type(None)


# one column of a batch: its values, and the set of their types (bytes, None, and UNCHANGED's, where it has them)
Column = tuple[list[Value], set[type]]


def _columns(rows: list[list[Value]]) -> list[Column] | None:
    """The rows' values a column at a time; None when rows differ in length."""
    width = len(rows[0]) if rows else 0
    if any(len(values) != width for values in rows):
        return None
    columns = []
    for j in range(width):
        values = list(map(operator.itemgetter(j), rows))
        columns.append((values, set(map(type, values))))
    return columns


def _csv(rows: list[list[Value]], columns: list[Column] | None = None) -> pa.Buffer:
    """PostgreSQL text values as CSV: NULL/UNCHANGED unquoted-empty, everything else quoted, then the row's index.

    Built a column at a time in Arrow (escape, quote, join): the same bytes as `_csv_rows`, which took a third of
    a batch's preparation quoting value by value. The lines, each ending in its newline, are one Arrow array whose
    data buffer is the text: no copy of it is made. `columns`: `_columns(rows)`, if the caller has them."""
    if columns is None:
        columns = _columns(rows)
    if not rows or columns is None:
        return pa.py_buffer(_csv_rows(rows))
    fields = []
    for column, types in columns:
        if not types <= {bytes, _NONE}:  # UNCHANGED (or any other marker) is written as NULL
            column = [v if isinstance(v, bytes) else None for v in column]
        escaped = pc.replace_substring(pa.array(column, _TEXT), b'"', b'""')
        fields.append(pc.fill_null(pc.binary_join_element_wise(_QUOTE, escaped, _QUOTE, _NOTHING), _NOTHING))
    index = pa.array(range(len(rows)), pa.int64()).cast(pa.large_string()).cast(_TEXT)
    fields.append(pc.binary_join_element_wise(index, _NEWLINE, _NOTHING))
    lines = pc.binary_join_element_wise(*fields, _COMMA)
    del fields
    offsets = pa.Array.from_buffers(pa.int64(), len(lines) + 1, [None, lines.buffers()[1]], offset=lines.offset)
    start, end = offsets[0].as_py(), offsets[len(lines)].as_py()
    return lines.buffers()[2].slice(start, end - start)


def _csv_rows(rows: list[list[Value]]) -> bytes:
    """`_csv` row by row: for rows of different lengths, which only the CSV parser may judge."""
    lines = []
    for index, values in enumerate(rows):
        fields = [b'"' + v.replace(b'"', b'""') + b'"' if isinstance(v, bytes) else b"" for v in values]
        fields.append(str(index).encode())
        lines.append(b",".join(fields))
    return b"\n".join(lines) + b"\n"


def _parse(plans: list[ColumnPlan], rows: list[list[Value]], not_null: frozenset[str] = frozenset(),
           columns: list[Column] | None = None) -> tuple[pa.Table, list[RejectedRow]]:
    data = _csv(rows, columns)
    tables, rejected = [], []
    block = max(1 << 20, min(data.size + 1, 1 << 30))
    for table, bad in csv_to_arrow(pa.BufferReader(data), [*plans, _ROW], block, not_null):  # type: ignore[arg-type]
        tables.append(table)
        rejected += bad
    return pa.concat_tables(tables), rejected


# (table, the batch's rows, their values in relation order) -> the generated columns' values of each row
GeneratedValues = Callable[["LiveTable", list[RowChange], list[list[Value]]], list[list[Value]]]


def prepare(changes: TableChanges, delete_mode: DeleteMode, convert_arrays: ArrayConverter,
            generated: GeneratedValues | None = None) -> PreparedTable:
    """A batch's changes of one table as typed Arrow in the change format (`changes`). Nothing here reads the
    destination: values the WAL left out stay markers, completed where the batch is applied (`pipelines.apply`)."""
    table = changes.table
    rows = list(changes.rows.values())
    keyset = set(table.key_positions)
    # the rows' own value lists where nothing below changes them in place (no generated, bytea or array column):
    # copying every row cost more than the rest of this loop
    copy = bool(table.generated) or any(c.is_bytea or c.is_array for c in table.columns)
    hard_keyed = delete_mode == "hard" and not table.keyless
    values_rows: list[list[Value]] = []
    for row in rows:
        if hard_keyed and row.op == "D":  # a new list: its non-key values become placeholders below
            values_rows.append([v if i in keyset else None for i, v in enumerate(row.values)])
        else:
            values_rows.append(list(row.values) if copy else row.values)
    if table.generated:
        assert generated is not None, "a table with generated columns needs their values"
        for values, extra in zip(values_rows, generated(table, rows, values_rows), strict=True):
            values.extend(extra)
    for j, column in enumerate(table.columns):
        if column.is_bytea:
            for values in values_rows:
                v = values[j]
                if isinstance(v, bytes) and v.startswith(b"\\x"):
                    values[j] = v[2:]
        elif column.is_array:
            positions = [i for i, values in enumerate(values_rows) if isinstance(values[j], bytes)]
            if positions:
                converted = convert_arrays(column, [values_rows[i][j] for i in positions])  # type: ignore[misc]
                for i, v in zip(positions, converted, strict=True):
                    values_rows[i][j] = v
    if delete_mode == "hard" and not table.keyless:  # the merge deletes by key; the rest only has to be valid
        placeholders = [c.placeholder for c in table.columns]
        for row, values in zip(rows, values_rows, strict=True):
            if row.op == "D":
                for i in range(len(values)):
                    if i not in keyset:
                        values[i] = placeholders[i]
    columns = _columns(values_rows)
    arrow, rejected = _parse([c.plan for c in table.columns], values_rows, frozenset(table.primary_key), columns)
    order = arrow[_ROW.name].to_pylist()
    arrow = arrow.drop_columns([_ROW.name])
    kept = [rows[i] for i in order]
    if table.keyless:
        return _multiset_changes(changes, arrow, kept, rejected)
    deleted = [r.commit_time if r.op == "D" else None for r in kept]
    for name, column in system_columns(delete_mode, [r.lsn for r in kept], deleted,
                                       [r.ordinal for r in kept]).items():
        arrow = arrow.append_column(name, column)
    with_markers = _unchanged_rows(values_rows, columns)
    needs_fill = [i in with_markers for i in order] if with_markers else []
    if not any(needs_fill):
        return PreparedTable(table, arrow, rejected, changes.inserts, changes.updates, changes.deletes)
    names = [c.name for c in table.columns]
    unchanged = [json.dumps([names[j] for j, v in enumerate(values_rows[i]) if v is UNCHANGED]) if need else None
                 for i, need in zip(order, needs_fill, strict=True)]
    arrow = arrow.append_column(UNCHANGED_COLUMN, pa.array(unchanged, pa.string()))
    key_plans = [table.columns[i].plan for i in table.key_positions]
    key_rows: list[list[Value]] = [list(kept[n].lookup_key) if needs_fill[n] else [None] * len(key_plans)
                                   for n in range(len(kept))]
    lookups, _ = _parse(key_plans, key_rows)
    for position, name in enumerate(lookups.column_names[:len(key_plans)]):
        arrow = arrow.append_column(f"{LOOKUP_PREFIX}{position}", lookups[name])
    return PreparedTable(table, arrow, rejected, changes.inserts, changes.updates, changes.deletes, sum(needs_fill))


def _unchanged_rows(values_rows: list[list[Value]], columns: list[Column] | None) -> set[int]:
    """The rows holding an UNCHANGED marker, looked for only in the columns that have one (`columns`:
    `_columns(values_rows)`)."""
    if columns is None:
        return {i for i, values in enumerate(values_rows) if any(v is UNCHANGED for v in values)}
    found: set[int] = set()
    for column, types in columns:
        if type(UNCHANGED) in types:
            found.update(i for i, v in enumerate(column) if v is UNCHANGED)
    return found


def _multiset_changes(changes: TableChanges, arrow: pa.Table, kept: list[RowChange],
                      rejected: list[RejectedRow]) -> PreparedTable:
    """A keyless table's changes as they happened: the apply plans them against the warehouse (`multiset`)."""
    table = changes.table
    out = arrow.append_column(multiset.ROW_HASH_COLUMN, pa.array(
        multiset.row_hashes(arrow, [c.name for c in table.columns]), pa.string()))
    out = out.append_column(CHANGE_COLUMN, pa.array([r.op for r in kept], pa.string()))
    out = out.append_column(CHANGE_KEY_COLUMN, pa.array([multiset.change_key(r.lsn, r.ordinal) for r in kept],
                                                        pa.string()))
    out = out.append_column(COMMIT_TIME_COLUMN, pa.array([r.commit_time for r in kept], pa.timestamp("us", tz="UTC")))
    out = out.append_column(LSN_COLUMN, pa.array([r.lsn for r in kept], pa.int64()))
    out = out.append_column(ORDINAL_COLUMN, pa.array([r.ordinal for r in kept], pa.int64()))
    return PreparedTable(table, out, rejected, changes.inserts, changes.updates, changes.deletes)
