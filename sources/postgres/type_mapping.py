"""How each PostgreSQL column travels: the SQL expression COPY emits, the Arrow type it parses into,
and the dlt type hint that decides the destination column. See docs/type-mapping.md.

Every value is carried exactly or mapped to a documented lossless representation (text or JSON);
a value that cannot be represented (for example a numeric wider than DECIMAL(38, s)) fails the run
loudly in the Arrow conversion instead of being rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.sql import sqltypes

# Destinations (DuckDB, Snowflake) cap DECIMAL at 38 digits; dlt's default for an unconstrained
# numeric is DECIMAL(38, 9).
MAX_DECIMAL_PRECISION = 38
DEFAULT_DECIMAL = (38, 9)


@dataclass(frozen=True)
class ColumnPlan:
    """One column of the COPY query."""

    name: str
    select_sql: str  # expression inside COPY (SELECT ...)
    arrow_type: pa.DataType  # type the CSV parser produces
    decode_hex: bool = False  # bytea arrives hex encoded; decoded after parsing


def adapt_sqlalchemy_type(sql_type: Any) -> Any:
    """dlt `type_adapter_callback`: make dlt's hints match what the COPY path emits.

    dlt maps unknown PostgreSQL types (interval, inet, enum, money, ...) to nothing; we carry them
    as text so their values survive unchanged. Numerics wider than a destination DECIMAL go as text.
    """
    if isinstance(sql_type, (pg.INTERVAL, pg.INET, pg.CIDR, pg.MACADDR, pg.MONEY, pg.TSVECTOR, pg.BIT)):
        return sa.Text()
    if isinstance(sql_type, sqltypes.Enum):
        return sa.Text()
    if isinstance(sql_type, sqltypes.Time) and sql_type.timezone:
        return sa.Text()  # `time with time zone` has no destination type: keep PostgreSQL's text
    if (
        isinstance(sql_type, sqltypes.Numeric)
        and not isinstance(sql_type, sqltypes.Float)
        and sql_type.precision is not None
        and sql_type.precision > MAX_DECIMAL_PRECISION
    ):
        return sa.Text()
    if isinstance(sql_type, sqltypes.NullType):
        return sa.Text()
    return sql_type


def plan_column(column: sa.Column[Any]) -> ColumnPlan:
    """Choose the COPY expression and Arrow type for one reflected column."""
    quoted = '"' + column.name.replace('"', '""') + '"'
    t = adapt_sqlalchemy_type(column.type)

    def plan(arrow_type: pa.DataType, select_sql: str = quoted, decode_hex: bool = False) -> ColumnPlan:
        return ColumnPlan(column.name, select_sql, arrow_type, decode_hex)

    if isinstance(t, sqltypes.Boolean):
        return plan(pa.bool_())
    if isinstance(t, sqltypes.SmallInteger | sqltypes.Integer | sqltypes.BigInteger):
        return plan(pa.int64())
    if isinstance(t, sqltypes.Float) or (isinstance(t, sqltypes.Numeric) and t.asdecimal is False):
        return plan(pa.float64())
    if isinstance(t, sqltypes.Numeric):
        precision, scale = (t.precision, t.scale or 0) if t.precision is not None else DEFAULT_DECIMAL
        return plan(pa.decimal128(precision, scale))
    if isinstance(t, sqltypes.DateTime):
        return plan(pa.timestamp("us", tz="UTC" if t.timezone else None))
    if isinstance(t, sqltypes.Date):
        return plan(pa.date32())
    if isinstance(t, sqltypes.Time):
        if getattr(t, "timezone", False):  # timetz has no Arrow type: keep its text
            return plan(pa.string(), f"{quoted}::text")
        return plan(pa.time64("us"))
    if isinstance(t, sqltypes.ARRAY):
        # arrays travel as JSON arrays (exact for element types JSON can hold as text or number)
        return plan(pa.string(), f"to_json({quoted})::text")
    if isinstance(t, sqltypes.JSON):
        return plan(pa.string(), f"{quoted}::text")
    if isinstance(t, sqltypes._Binary):
        return plan(pa.string(), f"encode({quoted}, 'hex')", decode_hex=True)
    if isinstance(t, sqltypes.String) and not isinstance(column.type, sqltypes.Enum):
        return plan(pa.string())  # as COPY prints it: char(n) keeps its blank padding
    return plan(pa.string(), f"{quoted}::text")


def decode_hex_column(array: pa.ChunkedArray) -> pa.Array:
    """bytea → binary. Arrow has no hex-decode kernel; bytea columns are rare and small."""
    return pa.array(
        [None if v is None else bytes.fromhex(v) for v in array.to_pylist()], type=pa.binary()
    )
