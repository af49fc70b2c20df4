"""Which tables to replicate, with their keys, cursor columns and column overrides, read from pg_catalog.

A table's key is, in this order: the configured `primary_key`, its primary key, or its smallest unique
index whose columns are all NOT NULL (no expression, no predicate). A table with none of these is still
replicated (`key_source = "none"`): snapshot and incremental re-copy it whole every run, and CDC keeps it
as an exact multiset when it has `REPLICA IDENTITY FULL` (see docs/incremental.md and docs/cdc.md).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from .errors import PrimaryKeyMissing, SchemaNotFound, SourceConfigError
from .type_mapping import override_type

TABLES_SQL = sa.text(
    """
    SELECT n.nspname AS schema_name, c.relname AS table_name, c.relreplident AS replica_identity,
           coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                     FROM pg_index i
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS primary_key,
           coalesce((SELECT cols FROM (
                       SELECT array_agg(a.attname::text ORDER BY k.ord) AS cols, bool_and(a.attnotnull) AS not_null,
                              count(*) AS width, min(ic.relname) AS index_name
                       FROM pg_index i
                       JOIN pg_class ic ON ic.oid = i.indexrelid
                       CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       WHERE i.indrelid = c.oid AND i.indisunique AND NOT i.indisprimary AND i.indisvalid
                         AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
                       GROUP BY i.indexrelid) u
                     WHERE u.not_null ORDER BY u.width, u.index_name LIMIT 1), '{}') AS unique_key,
           (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    ORDER BY 1, 2
    """
)

KeySource = Literal["configured", "primary_key", "unique_index", "none"]


@dataclass(frozen=True)
class TableSpec:
    schema: str
    name: str
    primary_key: tuple[str, ...]  # the key rows are merged on; empty when the table has none
    cursor_column: str | None  # None: no cursor, the table is re-read in full each run
    key_source: KeySource = "primary_key"
    replica_identity: str = "d"  # pg_class.relreplident: d(efault), n(othing), f(ull), i(ndex)
    column_types: tuple[tuple[str, str], ...] = field(default=())  # configured data_type overrides

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def resource_name(self) -> str:
        """Destination table name: schemas share one dataset, so the schema prefixes the table."""
        return f"{self.schema}__{self.name}"

    @property
    def has_key(self) -> bool:
        return bool(self.primary_key)

    @property
    def overrides(self) -> dict[str, str]:
        return dict(self.column_types)


def matches(qualified: str, patterns: list[str]) -> bool:
    """Patterns match `schema.table` or the bare table name (`orders.*`, `*_archive`, `order_items`)."""
    name = qualified.split(".", 1)[1]
    return any(fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _column_overrides(qualified: str, override: dict[str, Any], columns: list[str]) -> tuple[tuple[str, str], ...]:
    configured = override.get("columns") or {}
    if not isinstance(configured, dict):
        raise SourceConfigError(f'`sources.postgres.tables."{qualified}".columns` must be a table of columns.')
    out = []
    for column, settings in configured.items():
        where = f'`sources.postgres.tables."{qualified}".columns."{column}"`'
        if column not in columns:
            raise SourceConfigError(f"{where}: {qualified} has no column {column!r}; its columns are: "
                                    f"{', '.join(columns)}.")
        data_type = (settings or {}).get("data_type") if isinstance(settings, dict) else None
        if data_type:
            override_type(str(data_type), where)  # fail at discovery, not mid-run
            out.append((str(column), str(data_type)))
    return tuple(out)


def discover_tables(
    engine: sa.Engine,
    schemas: list[str],
    include: list[str],
    exclude: list[str],
    default_cursor: str,
    overrides: dict[str, dict[str, object]],
) -> list[TableSpec]:
    with engine.connect() as conn:
        present = {r[0] for r in conn.execute(sa.text(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(:s) AND has_schema_privilege(oid, 'USAGE')"
        ), {"s": schemas})}
        missing = [s for s in schemas if s not in present]
        if missing:
            raise SchemaNotFound(
                f"Schema(s) {', '.join(missing)} not found in the source database, or the user lacks USAGE "
                "on them: fix `sources.postgres.schemas` or grant USAGE."
            )
        rows = conn.execute(TABLES_SQL, {"schemas": schemas}).all()

    specs: list[TableSpec] = []
    for row in rows:
        qualified = f"{row.schema_name}.{row.table_name}"
        if not matches(qualified, include) or matches(qualified, exclude):
            continue
        override: dict[str, Any] = dict(overrides.get(qualified, {}))
        key: Any = override.get("primary_key")
        source: KeySource = "configured"
        if isinstance(key, str):
            key = [key]
        if not key:
            key, source = list(row.primary_key), "primary_key"
        if not key and row.unique_key:
            key, source = list(row.unique_key), "unique_index"
        if not key:
            source = "none"
        unknown = [c for c in key if c not in row.columns]
        if unknown:
            raise PrimaryKeyMissing(f"Configured primary key column(s) {unknown} do not exist in {qualified}.")
        cursor = str(override.get("cursor_column", default_cursor) or "") or None
        if cursor not in row.columns:
            if "cursor_column" in override:
                raise SourceConfigError(
                    f'`sources.postgres.tables."{qualified}".cursor_column = "{cursor}"` is not a column '
                    f"of {qualified}; its columns are: {', '.join(row.columns)}."
                )
            cursor = None
        specs.append(TableSpec(row.schema_name, row.table_name, tuple(key), cursor, source,
                               str(row.replica_identity), _column_overrides(qualified, override, list(row.columns))))
    return specs
