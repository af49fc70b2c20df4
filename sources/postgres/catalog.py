"""Which tables to replicate, with their keys and cursor columns, read from pg_catalog."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import sqlalchemy as sa

from .errors import PrimaryKeyMissing, SchemaNotFound, SourceConfigError

TABLES_SQL = sa.text(
    """
    SELECT n.nspname AS schema_name, c.relname AS table_name,
           coalesce((SELECT array_agg(a.attname ORDER BY k.ord)
                     FROM pg_index i
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS primary_key,
           (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    ORDER BY 1, 2
    """
)


@dataclass(frozen=True)
class TableSpec:
    schema: str
    name: str
    primary_key: tuple[str, ...]
    cursor_column: str | None  # None: no cursor, the table is re-read in full each run

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def resource_name(self) -> str:
        """Destination table name: schemas share one dataset, so the schema prefixes the table."""
        return f"{self.schema}__{self.name}"


def matches(qualified: str, patterns: list[str]) -> bool:
    """Patterns match `schema.table` or the bare table name (`orders.*`, `*_archive`, `order_items`)."""
    name = qualified.split(".", 1)[1]
    return any(fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


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
        override = overrides.get(qualified, {})
        key = override.get("primary_key") or row.primary_key
        if isinstance(key, str):
            key = [key]
        if not key:
            raise PrimaryKeyMissing(
                f"Table {qualified} has no primary key: add one, or set "
                f'`sources.postgres.tables."{qualified}".primary_key = ["col", ...]`, '
                "or exclude the table with `sources.postgres.exclude`."
            )
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
        specs.append(TableSpec(row.schema_name, row.table_name, tuple(key), cursor))
    return specs
