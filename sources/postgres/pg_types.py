"""PostgreSQL column types from (type oid, typmod) as SQLAlchemy types, the way reflection would give them.

pgoutput Relation messages and pg_attribute both describe a column by (oid, typmod); turning that into the
SQLAlchemy type lets `type_mapping` choose one COPY expression, Arrow type and dlt hint for every path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg


def _numeric_typmod(typmod: int) -> tuple[int, int]:
    """numeric's (precision, scale); the scale is 11 signed bits since PostgreSQL 15 allows it below 0."""
    packed = typmod - 4
    return (packed >> 16) & 0xFFFF, ((packed & 0x7FF) ^ 1024) - 1024


_SCALARS: dict[int, Callable[[int], Any]] = {
    16: lambda m: pg.BOOLEAN(),
    17: lambda m: pg.BYTEA(),
    20: lambda m: pg.BIGINT(),
    21: lambda m: pg.SMALLINT(),
    23: lambda m: pg.INTEGER(),
    25: lambda m: pg.TEXT(),
    114: lambda m: pg.JSON(),
    3802: lambda m: pg.JSONB(),
    700: lambda m: pg.REAL(),
    701: lambda m: pg.DOUBLE_PRECISION(),
    790: lambda m: pg.MONEY(),
    650: lambda m: pg.CIDR(),
    869: lambda m: pg.INET(),
    829: lambda m: pg.MACADDR(),
    1042: lambda m: pg.CHAR(m - 4 if m >= 4 else None),
    1043: lambda m: pg.VARCHAR(m - 4 if m >= 4 else None),
    1082: lambda m: pg.DATE(),
    1083: lambda m: pg.TIME(),
    1266: lambda m: pg.TIME(timezone=True),
    1114: lambda m: pg.TIMESTAMP(),
    1184: lambda m: pg.TIMESTAMP(timezone=True),
    1186: lambda m: pg.INTERVAL(),
    1560: lambda m: pg.BIT(),
    1562: lambda m: pg.BIT(varying=True),
    1700: lambda m: pg.NUMERIC(*_numeric_typmod(m)) if m >= 4 else pg.NUMERIC(),
    2950: lambda m: pg.UUID(as_uuid=False),
    3614: lambda m: pg.TSVECTOR(),
}

TYPE_SQL = """
SELECT t.oid, t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typtypmod
FROM pg_type t WHERE t.oid = ANY(%s)
"""


@dataclass
class PgTypes:
    """(oid, typmod) → SQLAlchemy type, looking up non-built-in types (enums, domains, arrays) once."""

    query: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
    _types: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    _formatted: dict[tuple[int, int], str] = field(default_factory=dict)

    def format_type(self, oid: int, typmod: int) -> str:
        if (oid, typmod) not in self._formatted:
            self._formatted[(oid, typmod)] = str(self.query("SELECT format_type(%s, %s)", (oid, typmod))[0][0])
        return self._formatted[(oid, typmod)]

    def _lookup(self, oids: list[int]) -> None:
        missing = [o for o in oids if o not in _SCALARS and o not in self._types]
        if missing:
            for row in self.query(TYPE_SQL, (missing,)):
                self._types[int(row[0])] = row

    def sa_type(self, oid: int, typmod: int, depth: int = 0) -> Any:
        if oid in _SCALARS:
            return _SCALARS[oid](typmod)
        self._lookup([oid])
        row = self._types.get(oid)
        if row is None or depth > 5:
            return sa.Text()
        _, typtype, category, elem, base, base_typmod = row
        if typtype == "d":  # domain: its base type, with the domain's own modifier
            return self.sa_type(int(base), int(base_typmod), depth + 1)
        if category == "A" and elem:
            return pg.ARRAY(self.sa_type(int(elem), typmod, depth + 1))
        return sa.Text()  # enums, ranges, composites, extension types: their text form


DOMAIN_COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname::text, a.atttypid, a.atttypmod
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND t.typtype = 'd'
"""


def domain_column_types(raw_connection: Any, schemas: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Columns whose type is a domain, as their base type with its modifier: SQLAlchemy reflects a domain over
    `numeric(10,2)` as plain NUMERIC, which would make it text on the snapshot path and a DECIMAL(10,2) in CDC."""
    def query(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with raw_connection.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    types = PgTypes(query)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for schema, table, column, oid, typmod in query(DOMAIN_COLUMNS_SQL, (list(schemas),)):
        out.setdefault((schema, table), {})[column] = types.sa_type(int(oid), int(typmod))
    return out
