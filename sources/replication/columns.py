"""Column types for replicated tables, from type OIDs, shared by the snapshot and the change stream.

Both paths describe a column by `(type oid, typmod)` (pg_attribute for the snapshot, the pgoutput
Relation message for changes) and turn it into the SQLAlchemy type PostgreSQL reflection would give,
so `sources.postgres.type_mapping` chooses the same COPY expression, Arrow type and dlt hint as the
snapshot/incremental source. Identical hints on both paths mean a change never alters a column's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from dlt.common.schema.typing import TColumnSchema
from dlt.sources.sql_database.schema_types import sqla_col_to_column_schema
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.sql import sqltypes

from sources.postgres.type_mapping import ColumnPlan, adapt_sqlalchemy_type, plan_column

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
    1700: lambda m: pg.NUMERIC(((m - 4) >> 16) & 0xFFFF, (m - 4) & 0xFFFF) if m >= 4 else pg.NUMERIC(),
    2950: lambda m: pg.UUID(as_uuid=False),
    3614: lambda m: pg.TSVECTOR(),
}

TYPE_SQL = """
SELECT t.oid, t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typtypmod
FROM pg_type t WHERE t.oid = ANY(%s)
"""


@dataclass(frozen=True)
class ColumnSpec:
    """How one column travels: the Arrow/CSV plan, the dlt hint, and the CDC-only value fix-ups."""

    name: str
    type_oid: int
    typmod: int
    plan: ColumnPlan
    hint: TColumnSchema
    is_array: bool  # pgoutput prints `{...}`; the snapshot selects to_json(): converted server-side
    is_bytea: bool  # pgoutput prints `\x..`; the snapshot selects encode(.., 'hex')
    sql_type: str = ""  # format_type(), for the server-side array conversion

    @property
    def placeholder(self) -> bytes:
        """A valid value of this column for hard-delete tombstones: the WAL only carries their key, the merge
        never inserts them, but a staging table created NOT NULL (by an earlier snapshot-source run) must
        still accept them."""
        arrow_type = self.plan.arrow_type
        if pa.types.is_boolean(arrow_type):
            return b"f"
        if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
            return b"0"
        if pa.types.is_timestamp(arrow_type):
            return b"1970-01-01 00:00:00+00" if arrow_type.tz else b"1970-01-01 00:00:00"
        if pa.types.is_date(arrow_type):
            return b"1970-01-01"
        if pa.types.is_time(arrow_type):
            return b"00:00:00"
        return b"null" if self.hint.get("data_type") == "json" else b""


@dataclass
class TypeResolver:
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

    def column(self, name: str, oid: int, typmod: int, key: bool) -> ColumnSpec:
        sa_type = self.sa_type(oid, typmod)
        column = sa.Column(name, sa_type, nullable=not key)
        plan = plan_column(column)
        hint = sqla_col_to_column_schema(column, "full", adapt_sqlalchemy_type) or {"name": name}
        # every non-key column nullable: delete tombstones carry only the key, and a column dropped at
        # the source keeps existing (NULL for new rows) in the destination
        hint["nullable"] = not key
        adapted = adapt_sqlalchemy_type(sa_type)
        is_array = isinstance(adapted, sqltypes.ARRAY)
        return ColumnSpec(
            name=name,
            type_oid=oid,
            typmod=typmod,
            plan=plan,
            hint=hint,
            is_array=is_array,
            is_bytea=plan.decode_hex,
            sql_type=self.format_type(oid, typmod) if is_array else "",
        )


def arrays_to_json(
    query: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]], column: ColumnSpec, values: list[bytes]
) -> list[bytes | None]:
    """PostgreSQL array literals (as pgoutput prints them) → the JSON text the snapshot selects with
    `to_json(col)`, converted by the server itself so every element type matches exactly."""
    rows = query(
        f"SELECT to_json(v::{column.sql_type})::text FROM unnest(%s::text[]) WITH ORDINALITY u(v, i) ORDER BY i",
        ([v.decode() for v in values],))
    return [None if r[0] is None else r[0].encode() for r in rows]
