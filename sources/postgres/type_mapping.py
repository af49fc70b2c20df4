"""How each PostgreSQL column travels: the SQL expression COPY emits, the Arrow type it parses into,
and the dlt type hint that decides the destination column. See docs/type-mapping.md.

Lossless by default. Every value PostgreSQL can store lands either exactly in a typed destination
column, or, when the destination type cannot hold it (`infinity` and BC dates, years past 9999,
`time '24:00:00'`, `NaN` in a `numeric(p,s)`), as NULL in the typed column plus PostgreSQL's own text
in a sibling column `<column>__pg_text` that exists only once such a value arrived. Types with no
exact destination form at all (unconstrained `numeric`, `interval`, `timetz`, ...) travel as text.

A column override in config (`[sources.postgres.tables."s.t".columns.c] data_type = "decimal(20,6)"`)
asks for a typed column instead: a value that does not fit it is then dead-lettered, never rounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.sql import sqltypes

from .errors import SourceConfigError

# Destinations (DuckDB, Snowflake) cap DECIMAL at 38 digits.
MAX_DECIMAL_PRECISION = 38
# The sibling column of a typed column that holds the values its type cannot (PostgreSQL's text).
TEXT_SUFFIX = "__pg_text"


@dataclass(frozen=True)
class ColumnPlan:
    """One column of the COPY query."""

    name: str
    select_sql: str  # expression inside COPY (SELECT ...)
    arrow_type: pa.DataType  # type the CSV parser produces
    decode_hex: bool = False  # bytea arrives hex encoded; decoded after parsing
    override: str | None = None  # a configured data_type: values that do not fit are dead-lettered

    @property
    def text_column(self) -> str:
        return self.name + TEXT_SUFFIX


def decimal_shape(precision: int | None, scale: int | None) -> tuple[int, int] | None:
    """`numeric(p,s)` as a destination DECIMAL(p', s') that holds every value of it, or None (text).

    Unconstrained `numeric` has no bound on scale or digits (`1e-20`, `2/7`, 1000 digits): only text keeps
    it exact. PostgreSQL 15 also allows a negative scale (rounds to tens) and a scale above the precision.
    """
    if precision is None:
        return None
    scale = scale or 0
    if scale < 0:
        precision, scale = precision - scale, 0
    elif scale > precision:
        precision = scale
    return (precision, scale) if precision <= MAX_DECIMAL_PRECISION else None


_OVERRIDES: dict[str, Any] = {
    "text": sa.Text, "bigint": sa.BigInteger, "double": sa.Float, "date": sa.Date, "timestamp": sa.DateTime,
    "timestamptz": lambda: sa.DateTime(timezone=True),
}
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def override_type(data_type: str, where: str) -> Any:
    """The SQLAlchemy type a configured `data_type` stands for."""
    text = str(data_type).strip().lower()
    if text in _OVERRIDES:
        return _OVERRIDES[text]()
    match = _DECIMAL.match(text)
    if match and 0 <= int(match[2]) <= int(match[1]) <= MAX_DECIMAL_PRECISION and int(match[1]) > 0:
        return sa.Numeric(int(match[1]), int(match[2]))
    raise SourceConfigError(
        f"{where}: data_type = {data_type!r} is not supported; use one of {', '.join(_OVERRIDES)} or "
        f"decimal(p,s) with 0 <= s <= p <= {MAX_DECIMAL_PRECISION}.")


# type families with a typed destination form; everything else travels as PostgreSQL's text output
_TYPED = (sqltypes.Boolean, sqltypes.Integer, sqltypes.Numeric, sqltypes.String, sqltypes.DateTime, sqltypes.Date,
          sqltypes.Time, sqltypes.JSON, sqltypes.ARRAY, sqltypes._Binary, sqltypes.Uuid)


def adapt_sqlalchemy_type(sql_type: Any) -> Any:
    """dlt `type_adapter_callback`: make dlt's hints match what the COPY path emits.

    dlt maps unknown PostgreSQL types (interval, inet, enum, money, ...) to nothing; we carry them
    as text so their values survive unchanged. Numerics no destination DECIMAL can hold go as text.
    A domain travels as its base type, as pgoutput describes it.
    """
    if isinstance(sql_type, pg.DOMAIN):
        return adapt_sqlalchemy_type(sql_type.data_type)
    if isinstance(sql_type, (pg.INTERVAL, pg.INET, pg.CIDR, pg.MACADDR, pg.MONEY, pg.TSVECTOR, pg.BIT)):
        return sa.Text()
    if isinstance(sql_type, sqltypes.Enum):
        return sa.Text()
    if isinstance(sql_type, sqltypes.Time) and sql_type.timezone:
        return sa.Text()  # `time with time zone` has no destination type: keep PostgreSQL's text
    if isinstance(sql_type, sqltypes.Numeric) and not isinstance(sql_type, sqltypes.Float) and (
            sql_type.asdecimal is not False):
        shape = decimal_shape(sql_type.precision, sql_type.scale)
        if shape is None:
            return sa.Text()
        if shape != (sql_type.precision, sql_type.scale or 0):
            return sa.Numeric(*shape)
    if not isinstance(sql_type, _TYPED):  # ranges, geometric, xml, oid, macaddr8, unknown: their text output
        return sa.Text()
    return sql_type


def plan_column(column: sa.Column[Any], override: str | None = None) -> ColumnPlan:
    """Choose the COPY expression and Arrow type for one reflected column (its type already overridden)."""
    quoted = '"' + column.name.replace('"', '""') + '"'
    t = adapt_sqlalchemy_type(column.type)

    def plan(arrow_type: pa.DataType, select_sql: str = quoted, decode_hex: bool = False) -> ColumnPlan:
        return ColumnPlan(column.name, select_sql, arrow_type, decode_hex, override)

    if isinstance(t, sqltypes.Boolean):
        return plan(pa.bool_())
    if isinstance(t, sqltypes.SmallInteger | sqltypes.Integer | sqltypes.BigInteger):
        return plan(pa.int64())
    if isinstance(t, sqltypes.Float) or (isinstance(t, sqltypes.Numeric) and t.asdecimal is False):
        return plan(pa.float64())
    if isinstance(t, sqltypes.Numeric):
        return plan(pa.decimal128(t.precision, t.scale or 0))
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
