"""The change-row format between the stream and the warehouse, and the fold that turns ordered changes into one write.

A batch of changes of one table (and a landed op, and a chunk of a copy) is one Arrow table:

- keyed tables: at most one row per key, the newest version, with its position in the stream (`_lsn`, the commit
  LSN, and `_lsn_ordinal`, the change's place in its transaction) and a tombstone flag (`_deleted`, hard deletes) or
  `_deleted_at` (soft deletes). Where the WAL carried no value (an unchanged TOASTed column) the cell is a marker:
  `_aurora_unchanged` names those columns and `_aurora_lookup_k<i>` holds the key of the version to take them from
  (the old key when the key changed);
- keyless tables: every change in order, as copies to insert (`I`, under their change key) and copies to delete
  (`D`, by the hash of their values); see `multiset`.

`fold_keyed` and `fold_keyless` turn an ordered list of such tables (one batch, or everything a merge cycle applies)
into what one merge writes. They are pure: markers the changes themselves cannot resolve are left for the warehouse
step (`pipelines.apply`). Both are replay-safe: a version at or before the position the fold already holds for its
key changes nothing, so a batch landed twice, or replayed after a crash, folds to the same rows.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import multiset

LSN_COLUMN = "_lsn"
# the change's place in its transaction: with `_lsn`, the version's exact position in the stream (0 for rows a
# snapshot or a chunk copied). A large transaction is cut into several batches, so two versions of one key can share
# a commit LSN; (`_lsn`, `_lsn_ordinal`) says which one is newer.
ORDINAL_COLUMN = "_lsn_ordinal"
DELETED_COLUMN = "_deleted"
DELETED_AT_COLUMN = "_deleted_at"
UNCHANGED_COLUMN = "_aurora_unchanged"  # JSON list of the columns whose value is an earlier version's
LOOKUP_PREFIX = "_aurora_lookup_k"  # + key position: the key of that earlier version (the old key if it changed)
UNRESOLVED_COLUMN = "_aurora_unresolved"  # fold output: a value is known nowhere (the row must not be written)
# a keyless table's changes: the change (I or D), the key an insert's copy gets, and the change's commit time
CHANGE_COLUMN = "_aurora_change"
CHANGE_KEY_COLUMN = "_aurora_change_key"
COMMIT_TIME_COLUMN = "_aurora_commit_time"
# columns of the change format that are never written to the warehouse
WORKING_COLUMNS = (UNCHANGED_COLUMN, UNRESOLVED_COLUMN, CHANGE_COLUMN, CHANGE_KEY_COLUMN, COMMIT_TIME_COLUMN)

Position = tuple[int, int]


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def drop_working_columns(table: pa.Table) -> pa.Table:
    """The rows as the warehouse stores them: without markers, lookups and keyless change bookkeeping."""
    return table.drop_columns([c for c in table.column_names if c in WORKING_COLUMNS or c.startswith(LOOKUP_PREFIX)])


def positions(table: pa.Table) -> list[Position]:
    """(`_lsn`, `_lsn_ordinal`) per row; rows landed before ordinals existed count as ordinal 0."""
    lsns = table[LSN_COLUMN].to_pylist() if LSN_COLUMN in table.column_names else [0] * table.num_rows
    ordinals = (table[ORDINAL_COLUMN].to_pylist() if ORDINAL_COLUMN in table.column_names
                else [0] * table.num_rows)
    return [(int(lsn or 0), int(ordinal or 0)) for lsn, ordinal in zip(lsns, ordinals, strict=True)]


def _position_columns(table: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
    """`_lsn` and `_lsn_ordinal` as int64 with NULL (and a missing column) as 0, like `positions`; None when a
    column is not an integer (a warehouse may return NUMBER as decimals): callers then take the per-row path."""
    columns = []
    for name in (LSN_COLUMN, ORDINAL_COLUMN):
        if name not in table.column_names:
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, pa.int64()).fill_null(0)]))
            continue
        column = table[name]
        if not pa.types.is_integer(column.type):
            return None
        columns.append(pc.fill_null(column.cast(pa.int64()), 0))
    return columns[0], columns[1]


def newest_position(table: pa.Table) -> Position | None:
    """The largest (`_lsn`, `_lsn_ordinal`) of the rows (None for no rows), computed in Arrow: a batch of 100k rows
    would otherwise build 100k Python tuples just to find one maximum."""
    if table.num_rows == 0:
        return None
    columns = _position_columns(table)
    if columns is None:
        return max(positions(table))
    lsns, ordinals = columns
    lsn = pc.max(lsns).as_py()
    ordinal = pc.max(pc.filter(ordinals, pc.equal(lsns, lsn))).as_py()
    return int(lsn), int(ordinal)


def at_or_before(table: pa.Table, position: Position) -> list[int]:
    """The rows whose (`_lsn`, `_lsn_ordinal`) is at or before `position`, in order (`positions` semantics)."""
    columns = _position_columns(table)
    if columns is None:
        return [i for i, p in enumerate(positions(table)) if p <= position]
    lsns, ordinals = columns
    lsn, ordinal = (pa.scalar(v, pa.int64()) for v in position)
    mask = pc.or_(pc.less(lsns, lsn), pc.and_(pc.equal(lsns, lsn), pc.less_equal(ordinals, ordinal)))
    return pc.indices_nonzero(mask).to_pylist()  # type: ignore[no-any-return]


def lookup_columns(table: pa.Table) -> list[str]:
    return sorted((c for c in table.column_names if c.startswith(LOOKUP_PREFIX)),
                  key=lambda c: int(c[len(LOOKUP_PREFIX):]))


@dataclass
class Folded:
    """One row per key: the newest version the ops hold, markers left only for what the warehouse must supply.

    `rows` keeps the change format: `_aurora_unchanged` lists, per row, the columns to take from the warehouse's row
    of the `_aurora_lookup_k*` key; `_aurora_unresolved` marks rows with a value known nowhere (a key moved from a
    row the ops only saw deleted): they must not be written as they are."""

    rows: pa.Table
    changes: int  # rows read (versions before folding)
    replayed: int = 0  # versions dropped because a version at or after their position was already folded


def fold_keyed(ops_rows: Sequence[pa.Table], primary_key: Sequence[str],
               normalize: Callable[[str], str] = str) -> Folded:
    """Ordered ops' rows (keys unique within an op) as one row per key, the newest by position.

    An unchanged value comes from the previous version of its lookup key among the earlier ops (following chains of
    unchanged values), else stays a marker for the warehouse. A version whose key already holds a version at or
    after its position, or whose lookup key does, is a replay and changes nothing."""
    sizes = [t.num_rows for t in ops_rows]
    combined = concat(ops_rows)
    n = combined.num_rows
    if n == 0:
        return Folded(combined, 0)
    has_markers = UNCHANGED_COLUMN in combined.column_names and combined[UNCHANGED_COLUMN].null_count < n
    if not has_markers and sum(1 for size in sizes if size) == 1 and _unique(combined, primary_key):
        # one op, keys unique, nothing to complete (a direct CDC batch): every version is kept, in order
        return Folded(drop_working_columns(combined), n)
    if not has_markers:
        folded = _fold_newest(combined, sizes, primary_key)
        if folded is not None:
            return folded
    return _fold_per_row(combined, sizes, primary_key, normalize, has_markers)


def _fold_newest(combined: pa.Table, sizes: Sequence[int], primary_key: Sequence[str]) -> Folded | None:
    """`fold_keyed` without markers, in Arrow: the same rows and replay count as the per-row fold.

    Why: the per-row fold holds a Python tuple per key and per position, ~300 bytes a row; a merge of one landed
    1M-row transaction peaked at 834 MB, most of it those objects. Without markers a key's versions are accepted
    exactly when their position beats every earlier version of the key (keys are unique within an op), so the
    accepted ones are the strict running maxima of the position per key, and the one kept is its first maximum.
    None when that cannot be told exactly in Arrow (a NULL or inexact key, non-integer positions, a key twice in
    one op): the caller then folds per row."""
    newest = _newest_rows(combined, sizes, primary_key)
    if newest is None:
        return None
    keep, accepted = newest  # the working arrays are gone by now: the take below can reuse their memory
    n = combined.num_rows
    return Folded(drop_working_columns(combined).take(keep), n, n - accepted)


def _newest_rows(combined: pa.Table, sizes: Sequence[int], primary_key: Sequence[str]) -> tuple[pa.Array, int] | None:
    """(the rows `_fold_newest` keeps, in stream order; how many versions were accepted), or None (see there)."""
    n = combined.num_rows
    if not primary_key or any(not _exact_key_type(combined.schema.field(k).type) or combined[k].null_count
                              for k in primary_key):
        return None
    columns = _position_columns(combined)
    if columns is None:
        return None
    ends = [end for end, size in zip(itertools.accumulate(sizes), sizes, strict=True) if size]
    op = pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(pa.array(ends, pa.int64()),
                                                            pa.array(range(len(ends)), pa.int64())))
    # the position as one integer that orders like (`_lsn`, `_lsn_ordinal`): its dense rank
    lsns, ordinals = columns
    position_rank = _dense_rank(pa.table({"lsn": lsns, "ordinal": ordinals}), ["lsn", "ordinal"])
    # each key's versions together, in stream order
    key_names = [f"k{i}" for i in range(len(primary_key))]
    keyed = pa.table({**{name: combined[k] for name, k in zip(key_names, primary_key, strict=True)},
                      "row": _row_numbers(n)})
    order = pc.sort_indices(keyed, sort_keys=[*((name, "ascending") for name in key_names), ("row", "ascending")])
    new_key = _starts(keyed.select(key_names).take(order), key_names)
    sorted_op = op.take(order)
    same_op = pc.equal(sorted_op.slice(1), sorted_op.slice(0, n - 1))
    if pc.any(pc.and_(pc.invert(new_key.slice(1)), same_op)).as_py():
        return None  # a key twice in one op: the per-row fold's visibility rules apply
    group = pc.subtract(pc.cumulative_sum(new_key.cast(pa.int64())), 1)
    # key group and position in one ascending integer: a running maximum that starts afresh with each key
    value = pc.add(pc.multiply(group, n + 1), position_rank.take(order))
    running = pc.cumulative_max(value)
    before = pa.concat_arrays([pa.array([-1], pa.int64()), running.slice(0, n - 1)])
    accepted = pc.greater(value, before)
    accepted_rows = pc.filter(order, accepted)
    accepted_group = pc.filter(group, accepted)
    count = len(accepted_rows)
    last_of_key = pa.concat_arrays([pc.not_equal(accepted_group.slice(1), accepted_group.slice(0, count - 1)),
                                    pa.array([True])])
    return pc.filter(accepted_rows, last_of_key).sort(), count  # stream order, as the per-row fold keeps them


def _row_numbers(n: int) -> pa.Array:
    """0 … n-1 as int64, built in Arrow (a Python range would make n int objects first)."""
    return pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), n)), 1)


def _starts(table: pa.Table, names: Sequence[str]) -> pa.Array:
    """Per row of a sorted table: True where `names` differ from the row before (the first row: True)."""
    n = table.num_rows
    differs = pa.repeat(pa.scalar(False), n - 1)
    for name in names:
        column = table[name].combine_chunks()
        differs = pc.or_(differs, pc.not_equal(column.slice(1), column.slice(0, n - 1)))
    return pa.concat_arrays([pa.array([True]), differs])


def _dense_rank(table: pa.Table, names: Sequence[str]) -> pa.Array:
    """Per row: the rank of its `names` values among the distinct ones, in ascending order (0 first)."""
    order = pc.sort_indices(table, sort_keys=[(name, "ascending") for name in names])
    ranks = pc.subtract(pc.cumulative_sum(_starts(table.take(order), names).cast(pa.int64())), 1)
    return ranks.take(pc.sort_indices(order))


def _fold_per_row(combined: pa.Table, sizes: Sequence[int], primary_key: Sequence[str],
                  normalize: Callable[[str], str], has_markers: bool) -> Folded:
    """`fold_keyed` one row at a time: any table, markers included."""
    n = combined.num_rows
    keys = list(zip(*(combined[k].to_pylist() for k in primary_key), strict=True))
    pos = positions(combined)
    deleted = (combined[DELETED_COLUMN].to_pylist() if DELETED_COLUMN in combined.column_names
               else [None] * n)
    unchanged = combined[UNCHANGED_COLUMN].to_pylist() if has_markers else [None] * n
    lookups = (list(zip(*(combined[c].to_pylist() for c in lookup_columns(combined)), strict=True))
               if has_markers else [()] * n)
    # column -> row -> where its value is: a row of `combined` (int), ("W", key) for the warehouse, None if unknown
    sources: dict[str, dict[int, Any]] = {}
    current: dict[tuple[Any, ...], int] = {}  # key -> row of its newest folded version
    dropped: set[int] = set()
    start = 0
    for size in sizes:
        accepted: list[int] = []
        for i in range(start, start + size):
            held = current.get(keys[i])
            if held is not None and pos[held] >= pos[i]:
                dropped.add(i)
                continue
            if unchanged[i]:
                previous = current.get(lookups[i])  # the state before this op: lookups point at earlier ops
                if previous is not None and pos[previous] >= pos[i]:
                    dropped.add(i)  # the lookup key moved on already: this version was folded before
                    continue
                for name in json.loads(unchanged[i]):
                    column = sources.setdefault(normalize(name), {})
                    if previous is None:
                        column[i] = ("W", lookups[i])
                    elif deleted[previous]:
                        column[i] = None
                    else:
                        column[i] = column.get(previous, previous)
            accepted.append(i)
        for i in accepted:  # visible to later ops only
            current[keys[i]] = i
        start += size
    keep = sorted(current.values())
    take = pa.array(keep, pa.int64())
    out = combined.take(take)
    warehouse: dict[int, list[str]] = {}  # output row -> columns still to come from the warehouse
    unresolved: set[int] = set()
    lookup_out: dict[int, tuple[Any, ...]] = {}
    for name, column in sources.items():
        if name not in out.column_names:
            continue
        target = combined.schema.field(name).type
        values = combined[name].combine_chunks()
        indices: list[int] = []
        changed = False
        for j, i in enumerate(keep):
            source = column.get(i, i)
            if isinstance(source, int):
                indices.append(source)
                changed = changed or source != i
            else:
                indices.append(i)
                if source is None:
                    unresolved.add(j)
                else:
                    warehouse.setdefault(j, []).append(name)
                    lookup_out[j] = source[1]
        if changed:
            out = out.set_column(out.column_names.index(name), combined.schema.field(name),
                                 values.take(pa.array(indices, pa.int64())).cast(target))
    marker_names = [f"{LOOKUP_PREFIX}{i}" for i in range(len(primary_key))]
    out = drop_working_columns(out)
    if warehouse:
        out = out.append_column(UNCHANGED_COLUMN, pa.array(
            [json.dumps(sorted(warehouse[j])) if j in warehouse else None for j in range(len(keep))], pa.string()))
        for position, name in enumerate(marker_names):
            key_type = combined.schema.field(primary_key[position]).type
            out = out.append_column(name, pa.array(
                [lookup_out[j][position] if j in lookup_out else None for j in range(len(keep))], key_type))
    if unresolved:
        out = out.append_column(UNRESOLVED_COLUMN, pa.array([j in unresolved for j in range(len(keep))],
                                                            pa.bool_()))
    return Folded(out, n, len(dropped))


def _exact_key_type(type_: pa.DataType) -> bool:
    """Key types whose Arrow equality is Python's (floats are not: 0.0 == -0.0, NaN != NaN)."""
    return (pa.types.is_integer(type_) or pa.types.is_string(type_) or pa.types.is_large_string(type_)
            or pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_temporal(type_)
            or pa.types.is_decimal(type_) or pa.types.is_boolean(type_))


def _unique(table: pa.Table, key: Sequence[str]) -> bool:
    """No key occurs twice, checked in Arrow; False whenever that cannot be told exactly."""
    if not key or not all(_exact_key_type(table.schema.field(k).type) for k in key):
        return False
    try:
        if len(key) == 1:
            distinct = pc.count_distinct(table[key[0]], mode="all").as_py()
        else:
            distinct = table.select(list(key)).group_by(list(key)).aggregate([]).num_rows
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return bool(distinct == table.num_rows)


@dataclass
class KeylessFold:
    """A keyless table's changes as copies to insert and copies to delete, planned against the warehouse."""

    inserts: pa.Table  # values, `_row_key`, `_row_hash`, positions
    deletes: list[tuple[str, Any, int, int]] = field(default_factory=list)  # (row key, commit time, lsn, ordinal)
    unmatched: int = 0  # deletes whose copy the warehouse did not hold any more
    changes: int = 0


def fold_keyless(ops_rows: Sequence[pa.Table],
                 existing: Callable[[set[str]], dict[str, list[multiset.Copy]]]) -> KeylessFold:
    """Ordered changes (each landed once or more: duplicates by change key are one change) as a multiset plan.

    A delete takes a copy inserted earlier in the same fold if there is one, else one of the warehouse's copies with
    those values older than itself (`existing(hashes)`, `multiset.plan`); which of those does not matter, as copies
    with one hash are equal."""
    combined = concat(ops_rows)
    if combined.num_rows == 0 or CHANGE_COLUMN not in combined.column_names:
        return KeylessFold(drop_working_columns(combined))
    change_keys = combined[CHANGE_KEY_COLUMN].to_pylist()
    kinds = combined[CHANGE_COLUMN].to_pylist()
    seen: set[tuple[str, str]] = set()
    order: list[int] = []
    for i, key in enumerate(zip(kinds, change_keys, strict=True)):  # an update is a D and an I at one position
        if key not in seen:
            seen.add(key)
            order.append(i)
    if len(order) < combined.num_rows:
        combined = combined.take(pa.array(order, pa.int64()))
        change_keys = [change_keys[i] for i in order]
    hashes = combined[multiset.ROW_HASH_COLUMN].to_pylist()
    kinds = combined[CHANGE_COLUMN].to_pylist()
    pos = positions(combined)
    planned = multiset.plan(list(zip(kinds, range(combined.num_rows), hashes, change_keys, strict=True)), existing,
                            pos)
    commit_times = combined[COMMIT_TIME_COLUMN].to_pylist()
    picks = [i for i, _ in planned.inserts]
    values = combined.drop_columns([c for c in (multiset.ROW_KEY_COLUMN, multiset.ROW_HASH_COLUMN, LSN_COLUMN,
                                                ORDINAL_COLUMN, DELETED_COLUMN, DELETED_AT_COLUMN)
                                    if c in combined.column_names])
    inserts = drop_working_columns(values.take(pa.array(picks, pa.int64())))
    inserts = inserts.append_column(multiset.ROW_KEY_COLUMN, pa.array([k for _, k in planned.inserts], pa.string()))
    inserts = inserts.append_column(multiset.ROW_HASH_COLUMN, pa.array([hashes[i] for i in picks], pa.string()))
    inserts = inserts.append_column(LSN_COLUMN, pa.array([pos[i][0] for i in picks], pa.int64()))
    inserts = inserts.append_column(ORDINAL_COLUMN, pa.array([pos[i][1] for i in picks], pa.int64()))
    deletes = [(key, commit_times[i], pos[i][0], pos[i][1]) for i, key in planned.deletes]
    return KeylessFold(inserts, deletes, planned.unmatched, combined.num_rows)
