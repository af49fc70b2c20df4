"""Column types for replicated tables, from type OIDs, shared by the snapshot and the change stream.

Both paths describe a column by `(type oid, typmod)` (pg_attribute for the snapshot, the pgoutput
Relation message for changes) and turn it into the SQLAlchemy type PostgreSQL reflection would give,
so `sources.postgres.type_mapping` chooses the same COPY expression, Arrow type and dlt hint as the
snapshot/incremental source. Identical hints on both paths mean a change never alters a column's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from dlt.common.schema.typing import TColumnSchema
from dlt.sources.sql_database.schema_types import sqla_col_to_column_schema
from sqlalchemy.sql import sqltypes

from sources.postgres.pg_types import PgTypes
from sources.postgres.type_mapping import ColumnPlan, adapt_sqlalchemy_type, override_type, plan_column


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


GENERATED_SQL = """
SELECT a.attname::text, a.atttypid, a.atttypmod, pg_get_expr(d.adbin, d.adrelid), format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attgenerated = 's' AND NOT a.attisdropped
ORDER BY a.attnum
"""


class TypeResolver(PgTypes):
    """(oid, typmod) → the ColumnSpec a replicated column travels by."""

    def generated_columns(self, relid: int) -> list[tuple[str, int, int, str, str]]:
        """A table's stored generated columns: (name, type oid, typmod, expression, SQL type)."""
        if int(self.query("SHOW server_version_num", ())[0][0]) < 120000:
            return []
        return [(str(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in self.query(GENERATED_SQL, (relid,))]

    def column(self, name: str, oid: int, typmod: int, key: bool, override: str | None = None) -> ColumnSpec:
        sa_type = override_type(override, name) if override else self.sa_type(oid, typmod)
        column = sa.Column(name, sa_type, nullable=not key)
        plan = plan_column(column, override)
        hint = sqla_col_to_column_schema(column, "full", adapt_sqlalchemy_type) or {"name": name}
        # every non-key column nullable: delete tombstones carry only the key, and a column dropped at
        # the source keeps existing (NULL for new rows) in the destination
        hint["nullable"] = not key
        adapted = adapt_sqlalchemy_type(self.sa_type(oid, typmod))  # what pgoutput prints: the source type
        is_array = isinstance(adapted, sqltypes.ARRAY) and not override
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
