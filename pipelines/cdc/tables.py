"""Which tables to copy (again) while streaming: new or set-aside tables, and schema changes no row event shows.

PostgreSQL writes no row events when `ADD COLUMN ... DEFAULT` fills existing rows, when a column is renamed, or when
a table is rewritten in place; the table's shape (columns by number, their types, `sources.postgres.shapes`) kept in
the CDC state tells. A change the destination cannot absorb by itself means a copy of the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.isolation import FAILED_TABLES_KEY
from pipelines.ops import Op
from sources.postgres.catalog import TableSpec
from sources.postgres.copy_loader import arrow_schema
from sources.postgres.shapes import SchemaChange, classify, read_shapes
from sources.replication import table_hints
from sources.replication.batch import system_columns
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN
from sources.replication.slot import publication_tables, table_refusals
from sources.replication.snapshot import table_columns
from sources.replication.stream import ChangeStream, DdlSeen, RelationEvent, TrackedTable
from sources.replication.walstream import WalStream

from . import copies
from .context import Cdc
from .summary import event


@dataclass
class TablePlan:
    copy: list[TableSpec]  # to copy (again) before streaming, under a temporary slot's snapshot or in chunks
    reload: frozenset[str]  # destination tables dropped first: a column changed type


def plan_tables(cdc: Cdc, specs: list[TableSpec], state: dict[str, Any], forced: list[TableSpec]) -> TablePlan:
    """Which tables need a copy before the stream can go on, and which cannot be replicated at all."""
    summary, settings = cdc.summary, cdc.settings
    tracked = state.get("tables", {})
    refusals = table_refusals(cdc.meta, specs)
    failed_before = state.get(FAILED_TABLES_KEY, {})
    for spec in specs:
        reason = refusals.get(spec.qualified)
        if reason is None:
            continue
        previous = failed_before.get(spec.resource_name, {})
        if spec.qualified in tracked or previous.get("error") != reason:
            cdc.set_aside(spec, "setup", reason)
        else:  # already recorded: report it again without another state commit
            summary.failed_tables[spec.resource_name] = {"table": spec.resource_name, "step": "setup",
                                                         "error": reason}
    eligible = [s for s in specs if s.qualified not in refusals]
    present = publication_tables(cdc.meta, cdc.publication)
    copy = {s.qualified: s for s in eligible if s.qualified not in tracked}  # new, or set aside before
    copy.update({s.qualified: s for s in eligible if s.qualified in tracked and s.qualified not in present})
    copy.update({s.qualified: s for s in forced if s.qualified not in refusals})
    reload: set[str] = set()
    known = [s for s in eligible if s.qualified in tracked and s.qualified not in copy]
    for spec, change in shape_changes(cdc, known, tracked).items():
        event(f"{spec.qualified}: {change.reason}: copying it again", logging.WARNING, table=spec.resource_name)
        copy[spec.qualified] = spec
        if change.kind == "reload":
            reload.add(spec.resource_name)
    if copy:
        if not settings.auto_add_tables:
            for spec in [s for s in copy.values() if s.qualified not in present]:
                summary.pending_tables.append(spec.qualified)
                copy.pop(spec.qualified)
        else:
            for spec in copies.add_to_publication(cdc, list(copy.values())):
                summary.pending_tables.append(spec.qualified)
                copy.pop(spec.qualified)
    return TablePlan(list(copy.values()), frozenset(reload))


def shape_changes(cdc: Cdc, specs: list[TableSpec], tracked: dict[str, Any]) -> dict[TableSpec, SchemaChange]:
    """Schema changes the WAL does not carry (backfilled columns, renames, type changes), by comparing the catalog
    with the shape recorded when each table was copied; harmless changes just update that record."""
    if not specs:
        return {}
    current = read_shapes(cdc.meta, specs)
    changes: dict[TableSpec, SchemaChange] = {}
    for spec in specs:
        shape = current.get(spec.qualified, [])
        stored = tracked.get(spec.qualified, {}).get("shape")
        change = classify(stored, shape, compare_storage=not cdc.ddl_capture)
        if change.kind != "none":
            changes[spec] = change
        elif stored != shape:
            cdc.shapes[spec.qualified] = shape  # committed with the next state update
            added = {c[1] for c in shape} - {c[1] for c in stored or []}
            if stored and added:
                add_columns(cdc, spec)
    return changes


def add_columns(cdc: Cdc, spec: TableSpec) -> None:
    """A new column whose existing rows are NULL (no default) needs no copy, but the destination must have it
    before a change of the table carries it: a load with no rows and the table's current columns adds it."""
    columns = table_columns(cdc.meta, spec, cdc.resolver_cache)
    empty = arrow_schema([c.plan for c in columns], frozenset(spec.primary_key)).empty_table()
    for name, column in system_columns(cdc.settings.delete_mode, [], []).items():
        empty = empty.append_column(name, column)
    if not spec.has_key:  # no `_row_key` in landed changes: the merge gives the copies their keys
        if not cdc.lands:
            empty = empty.append_column(ROW_KEY_COLUMN, pa.array([], pa.string()))
        empty = empty.append_column(ROW_HASH_COLUMN, pa.array([], pa.string()))
    hints = table_hints(columns, cdc.settings.delete_mode, keyless=not spec.has_key)
    key = list(spec.primary_key) or [ROW_KEY_COLUMN]
    cdc.write([Op("columns", spec.resource_name, key, hints, [empty], delete_mode=cdc.settings.delete_mode)])
    event("columns added to the destination", table=spec.resource_name)


def note_recovered(cdc: Cdc, state: dict[str, Any], copied: list[TableSpec]) -> None:
    failed_before = state.get(FAILED_TABLES_KEY, {})
    for spec in copied:
        if spec.resource_name in failed_before:
            cdc.summary.recovered_tables.append(spec.resource_name)
            event(f"{spec.resource_name} copied again after it was set aside", table=spec.resource_name)


def relation_announced(cdc: Cdc, wal: WalStream, stream: ChangeStream, announced: RelationEvent,
                       running: copies.Copies) -> None:
    """A table's first change in this stream, or new columns: copy it again when the WAL cannot tell the
    destination what its existing rows now hold (every earlier change of it has been loaded already)."""
    tracked = stream.tracked.get(announced.table.qualified)
    if tracked is None:
        return
    spec = tracked.spec
    stored = cdc.state().get("tables", {}).get(spec.qualified, {})
    with wal.kept_alive():
        changes = shape_changes(cdc, [spec], {spec.qualified: stored})
    change = changes.get(spec)
    if change is None:
        return
    copy_again(cdc, wal, stream, running, spec, change)


def copy_again(cdc: Cdc, wal: WalStream, stream: ChangeStream, running: copies.Copies, spec: TableSpec,
               change: SchemaChange) -> None:
    """Copy one table again while streaming, because of `change`. Its rows keep serving meanwhile (each chunk
    overwrites its keys), unless a column's destination type changed: then the table is dropped and loaded anew."""
    event(f"{spec.qualified}: {change.reason}: copying it again", logging.WARNING, table=spec.resource_name)
    drop = change.kind == "reload"
    if running.begin(spec, drop=drop, keep_rows=not drop, wal=wal):
        return
    lsn, copied = copies.snapshot_alone(cdc, [spec], keep_alive=wal,
                                        reload=frozenset([spec.resource_name] if drop else []))
    if copied:
        stream.track(TrackedTable(spec, lsn))
    else:
        stream.untrack(spec.qualified)


def ddl_seen(cdc: Cdc, wal: WalStream, stream: ChangeStream, running: copies.Copies, seen: DdlSeen) -> None:
    """A DDL of a replicated table, at its place in the stream (`sources.replication.ddl`): every change before it is
    applied. A rewrite (`ALTER ... TYPE ... USING`, a volatile default filled in) or a change no row event shows
    (a column dropped and added again under its name, a default filled into existing rows, a rename) copies the
    table again; a new nullable column is only added; a dropped table stops."""
    tracked = stream.tracked.get(seen.ddl.replicated_as)
    if tracked is None or seen.ddl.kind == "drop":
        return
    spec = tracked.spec
    stored = cdc.state().get("tables", {}).get(spec.qualified, {})
    with wal.kept_alive():
        change = shape_changes(cdc, [spec], {spec.qualified: stored}).get(spec)
    if change is None and seen.ddl.kind == "rewrite":
        change = SchemaChange("reread", f"rewritten in place ({', '.join(seen.ddl.reasons) or seen.ddl.tag})")
    if change is not None:
        copy_again(cdc, wal, stream, running, spec, change)


def follow_new_tables(cdc: Cdc, wal: WalStream, stream: ChangeStream, running: copies.Copies) -> None:
    """Follow mode: copy tables created or configured since the stream started (or set aside and to be tried
    again), and tables whose columns changed without a change of theirs in the stream, without stopping it."""
    with wal.kept_alive():
        specs = cdc.discover()
        state = cdc.state()
        plan = plan_tables(cdc, [s for s in specs if s.qualified not in running.jobs], state, [])
    exported = [s for s in plan.copy if not running.begin(s, drop=s.resource_name in plan.reload, wal=wal)]
    if exported:
        lsn, copied = copies.snapshot_alone(cdc, exported, keep_alive=wal, reload=plan.reload)
        note_recovered(cdc, state, copied)
        for spec in copied:
            stream.track(TrackedTable(spec, lsn))
