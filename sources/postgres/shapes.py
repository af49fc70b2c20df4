"""A table's shape, remembered per table in dlt state, tells which schema changes a cursor or the WAL cannot see.

PostgreSQL writes no WAL and moves no `updated_at` when `ADD COLUMN ... DEFAULT <constant>` (or NOT NULL with a
default) fills the existing rows, or when a column is renamed; a volatile default or a generated column fills
them through a table rewrite that logical decoding does not show either. Comparing the catalog with the shape
recorded at the last sync finds those changes by column number (`attnum`, which survives a rename):

- `reread`: existing rows hold values the destination never received (a new column with a default, missing
  value or generation expression; a renamed column; a column dropped and added again under its name, which now
  has a new `attnum` and new values in every row; a table rewritten in place). The table is read again in full
  once.
- `reload`: a column's destination type changed (`int -> text`, `numeric(10,2) -> numeric(12,4)`): dlt cannot
  change a column's type in place, so the destination table is dropped and loaded again.
- nothing for the rest: a new nullable column without default (old rows are NULL, as the destination has them),
  a dropped column (the destination keeps it; new rows have NULL), `int -> bigint`, `varchar(n) -> text`.

A rewrite in place (`ALTER COLUMN v TYPE int USING v * 100`: same type, every value changed) leaves the columns as
they were; only the table's storage changes. So a shape also records the `relfilenode` of each relation holding
the table's rows (the table, or each leaf partition of a partitioned one) and a new one for the same relation
means `reread`. Without the event triggers of `sources.replication.ddl` (which announce exactly the rewrites that
change values) this cannot tell them from VACUUM FULL, CLUSTER, TRUNCATE, SET TABLESPACE or pg_repack, which
change none: each of those costs one read of the table. `classify(..., compare_storage=False)` skips it when the
triggers are active.

A shape row is `[attnum, name, destination type, fills existing rows]`; the first row (lowest attnum) may carry
a fifth element, the storage: `[[relid, relfilenode], ...]`. Shapes stored before it was recorded have no fifth
element and are compared as before, never reported as a change for lacking it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from dlt.sources.sql_database.schema_types import sqla_col_to_column_schema

from .catalog import TableSpec, matches
from .pg_types import PgTypes
from .settings import Discovery, discovered
from .type_mapping import adapt_sqlalchemy_type, override_type

SHAPES_SQL = """
SELECT n.nspname, c.relname, a.attnum, a.attname::text, a.atttypid, a.atttypmod,
       a.atthasdef OR {missing} OR {generated} AS fills_existing_rows
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, 2, 3
"""

# the relations holding each table's rows, with their storage file number: the table itself, or the leaf
# partitions of a partitioned table (pg_partition_tree, PostgreSQL 12+)
STORAGE_SQL = """
SELECT n.nspname, c.relname, c.oid, c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND c.relkind = 'r'
{partitions}
ORDER BY 1, 2, 3
"""
PARTITIONS_SQL = """
UNION ALL
SELECT n.nspname, c.relname, leaf.oid, leaf.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL pg_partition_tree(c.oid) t
JOIN pg_class leaf ON leaf.oid = t.relid AND leaf.relkind = 'r'
WHERE n.nspname = ANY(%s) AND c.relkind = 'p' AND t.isleaf
"""

ChangeKind = Literal["none", "reread", "reload"]
# [attnum, name, destination type, fills existing rows] per column, the first with an optional fifth element,
# the storage ([[relid, relfilenode], ...]): JSON-friendly, stored in dlt state as is
Shape = list[list[Any]]
Storage = list[list[int]]
REWRITTEN_REASON = ("table rewritten in place (ALTER TYPE ... USING, VACUUM FULL, CLUSTER, TRUNCATE): its rows are "
                    "read again")


@dataclass(frozen=True)
class SchemaChange:
    kind: ChangeKind
    reason: str = ""
    # the relfilenode changed (one of the reasons): a caller that learns of TRUNCATE, VACUUM FULL or CLUSTER
    # otherwise (the stream, DDL capture) can tell this reread apart
    rewritten: bool = False


def _signature(types: PgTypes, name: str, oid: int, typmod: int, override: str | None) -> str:
    """The destination column's type as dlt declares it: two source types with one signature land alike."""
    sa_type = override_type(override, name) if override else types.sa_type(oid, typmod)
    hint = sqla_col_to_column_schema(sa.Column(name, sa_type), "full", adapt_sqlalchemy_type) or {}
    return ":".join(str(hint.get(k, "")) for k in ("data_type", "precision", "scale", "timezone"))


def _query(raw_connection: Any, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with raw_connection.cursor() as cur:
        cur.execute(statement, params)
        return list(cur.fetchall())


def read_relfilenodes(raw_connection: Any, specs: Sequence[TableSpec]) -> dict[str, Storage]:
    """`[[relid, relfilenode], ...]` of the relations holding each table's rows, by qualified name: a new
    relfilenode for the same relid means the rows were written anew (see the module docstring)."""
    version = int(_query(raw_connection, "SHOW server_version_num", ())[0][0])
    schemas = sorted({s.schema for s in specs})
    partitioned = version >= 120000
    sql = STORAGE_SQL.format(partitions=PARTITIONS_SQL if partitioned else "")
    wanted = {s.qualified for s in specs}
    storage: dict[str, Storage] = {}
    for schema, table, relid, relfilenode in _query(raw_connection, sql, (schemas, schemas) if partitioned
                                                    else (schemas,)):
        if f"{schema}.{table}" in wanted:
            storage.setdefault(f"{schema}.{table}", []).append([int(relid), int(relfilenode)])
    return storage


def read_shapes(raw_connection: Any, specs: Sequence[TableSpec], storage: bool = True) -> dict[str, Shape]:
    """The current shape of each table in `specs`, from catalog queries (`raw_connection`: DB-API); with
    `storage`, the first row of each carries the table's relfilenodes (`read_relfilenodes`)."""
    def query(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return _query(raw_connection, statement, params)

    version = int(query("SHOW server_version_num", ())[0][0])
    sql = SHAPES_SQL.format(missing="a.atthasmissing" if version >= 110000 else "false",
                            generated="a.attgenerated <> ''" if version >= 120000 else "false")
    wanted = {s.qualified: s for s in specs}
    types = PgTypes(query)
    shapes: dict[str, Shape] = {}
    for schema, table, attnum, name, oid, typmod, fills in query(sql, (sorted({s.schema for s in specs}),)):
        spec = wanted.get(f"{schema}.{table}")
        if spec is not None:
            signature = _signature(types, name, int(oid), int(typmod), spec.overrides.get(name))
            shapes.setdefault(spec.qualified, []).append([int(attnum), name, signature, bool(fills)])
    if storage and shapes:
        for qualified, files in read_relfilenodes(raw_connection, specs).items():
            if qualified in shapes:
                shapes[qualified][0].append(files)
    return shapes


def shape_storage(shape: Shape | None) -> dict[int, int] | None:
    """relid -> relfilenode recorded in `shape`, or None when it has none (recorded before storage was)."""
    for row in shape or []:
        if len(row) > 4 and isinstance(row[4], list):
            return {int(relid): int(node) for relid, node in row[4]}
    return None


def classify(previous: Shape | None, current: Shape, compare_storage: bool = True) -> SchemaChange:
    """What the change from `previous` (recorded at the last sync) to `current` costs; see the module docstring.

    `compare_storage=False` ignores relfilenodes: for when DDL capture announces the rewrites that matter."""
    if not previous:
        return SchemaChange("none")  # first sync of the table (or state from before shapes were recorded)
    before = {int(c[0]): c for c in previous}
    now = {int(c[0]) for c in current}
    by_name = {c[1]: c for c in previous}
    # a name whose column is gone came back under a new attnum: dropped and added again, new values everywhere
    readded = [c for c in current if c[0] not in before and c[1] in by_name and int(by_name[c[1]][0]) not in now]
    readded_at = {c[0] for c in readded}
    changed_type = [c[1] for c in current if c[0] in before and before[c[0]][2] != c[2]] + [
        f"{c[1]} (dropped and added again)" for c in readded if by_name[c[1]][2] != c[2]]
    if changed_type:
        return SchemaChange("reload", f"column type changed: {', '.join(changed_type)}")
    renamed = [f"{before[c[0]][1]} -> {c[1]}" for c in current if c[0] in before and before[c[0]][1] != c[1]]
    filled = [c[1] for c in current if c[0] not in before and c[3] and c[0] not in readded_at]
    parts = ([f"renamed {', '.join(renamed)}"] if renamed else []) + (
        [f"new column(s) with values in existing rows: {', '.join(filled)}"] if filled else []) + (
        [f"column(s) dropped and added again, their values changed in every existing row: "
         f"{', '.join(c[1] for c in readded)}"] if readded else [])
    rewritten = False
    if compare_storage:
        old, new = shape_storage(previous), shape_storage(current)
        rewritten = old is not None and new is not None and any(
            new.get(relid, node) != node for relid, node in old.items())
        if rewritten:
            parts.append(REWRITTEN_REASON)
    if parts:
        return SchemaChange("reread", "; ".join(parts), rewritten)
    return SchemaChange("none")


def detect_schema_changes(pipeline_name: str, state: dict[str, Any], source_name: str,
                          only_tables: list[str] | None = None,
                          compare_storage: bool = True, found: Discovery | None = None) -> dict[str, SchemaChange]:
    """Changes since the shapes the last sync recorded in `state` (dlt pipeline state), by destination table.
    `found`: the tables already discovered (`settings.discovered`), else they are discovered here."""
    resources = state.get("sources", {}).get(source_name, {}).get("resources", {})
    with nullcontext(found) if found is not None else discovered(pipeline_name) as seen:
        specs = [s for s in seen.specs if not only_tables or matches(s.qualified, only_tables)]
        raw = seen.engine.raw_connection()
        try:
            current = read_shapes(raw, specs)
        finally:
            raw.close()
    changes = {}
    for spec in specs:
        change = classify(resources.get(spec.resource_name, {}).get("shape"), current.get(spec.qualified, []),
                          compare_storage)
        if change.kind != "none":
            changes[spec.resource_name] = change
    return changes
