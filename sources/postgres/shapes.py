"""A table's shape, remembered per table in dlt state, tells which schema changes a cursor or the WAL cannot see.

PostgreSQL writes no WAL and moves no `updated_at` when `ADD COLUMN ... DEFAULT <constant>` (or NOT NULL with a
default) fills the existing rows, or when a column is renamed; a volatile default or a generated column fills
them through a table rewrite that logical decoding does not show either. Comparing the catalog with the shape
recorded at the last sync finds those changes by column number (`attnum`, which survives a rename):

- `reread`: existing rows hold values the destination never received (a new column with a default, missing
  value or generation expression; a renamed column). The table is read again in full once.
- `reload`: a column's destination type changed (`int -> text`, `numeric(10,2) -> numeric(12,4)`): dlt cannot
  change a column's type in place, so the destination table is dropped and loaded again.
- nothing for the rest: a new nullable column without default (old rows are NULL, as the destination has them),
  a dropped column (the destination keeps it; new rows have NULL), `int -> bigint`, `varchar(n) -> text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from dlt.sources.sql_database.schema_types import sqla_col_to_column_schema

from .catalog import TableSpec, matches
from .pg_types import PgTypes
from .session import make_engine
from .settings import load_source_settings
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

ChangeKind = Literal["none", "reread", "reload"]
# [attnum, name, destination type, fills existing rows]: JSON-friendly, stored in dlt state as is
Shape = list[list[Any]]


@dataclass(frozen=True)
class SchemaChange:
    kind: ChangeKind
    reason: str = ""


def _signature(types: PgTypes, name: str, oid: int, typmod: int, override: str | None) -> str:
    """The destination column's type as dlt declares it: two source types with one signature land alike."""
    sa_type = override_type(override, name) if override else types.sa_type(oid, typmod)
    hint = sqla_col_to_column_schema(sa.Column(name, sa_type), "full", adapt_sqlalchemy_type) or {}
    return ":".join(str(hint.get(k, "")) for k in ("data_type", "precision", "scale", "timezone"))


def read_shapes(raw_connection: Any, specs: Sequence[TableSpec]) -> dict[str, Shape]:
    """The current shape of each table in `specs`, from one catalog query (`raw_connection`: DB-API)."""
    def query(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with raw_connection.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

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
    return shapes


def classify(previous: Shape | None, current: Shape) -> SchemaChange:
    """What the change from `previous` (recorded at the last sync) to `current` costs; see the module docstring."""
    if not previous:
        return SchemaChange("none")  # first sync of the table (or state from before shapes were recorded)
    before = {int(c[0]): c for c in previous}
    changed_type = [c[1] for c in current if c[0] in before and before[c[0]][2] != c[2]]
    if changed_type:
        return SchemaChange("reload", f"column type changed: {', '.join(changed_type)}")
    renamed = [f"{before[c[0]][1]} -> {c[1]}" for c in current if c[0] in before and before[c[0]][1] != c[1]]
    filled = [c[1] for c in current if c[0] not in before and c[3]]
    if renamed or filled:
        parts = ([f"renamed {', '.join(renamed)}"] if renamed else []) + (
            [f"new column(s) with values in existing rows: {', '.join(filled)}"] if filled else [])
        return SchemaChange("reread", "; ".join(parts))
    return SchemaChange("none")


def detect_schema_changes(pipeline_name: str, state: dict[str, Any], source_name: str,
                          only_tables: list[str] | None = None) -> dict[str, SchemaChange]:
    """Changes since the shapes the last sync recorded in `state` (dlt pipeline state), by destination table."""
    resources = state.get("sources", {}).get(source_name, {}).get("resources", {})
    settings = load_source_settings(pipeline_name)
    engine = make_engine(settings.credentials, 60_000)
    try:
        specs = [s for s in settings.discover(engine) if not only_tables or matches(s.qualified, only_tables)]
        raw = engine.raw_connection()
        try:
            current = read_shapes(raw, specs)
        finally:
            raw.close()
    finally:
        engine.dispose()
    changes = {}
    for spec in specs:
        change = classify(resources.get(spec.resource_name, {}).get("shape"), current.get(spec.qualified, []))
        if change.kind != "none":
            changes[spec.resource_name] = change
    return changes
