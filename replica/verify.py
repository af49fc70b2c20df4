"""Reconcile the replica with its source, table by table: is it complete and current?

For each replicated table (same discovery and config as the source), source and destination are compared
by row counts and, with `checksum=True`, by an order-independent checksum over the primary key and every
replicated column. Mismatching key ranges are narrowed down by bisection and reported with their keys.

Chunks. A table is cut into half-open ranges `lo <= k < hi` of its first primary-key column `k`, so
every query is a bounded range read (PK index in PostgreSQL, zone-map pruning in DuckDB/Snowflake):

* integer `k`: equal-width value ranges between the smallest and largest key of both sides, about
  `chunk_rows` rows each (cheap: first/last key only); chunks that sparse or skewed keys made more than
  twice that size are split again by their own span;
* text, varchar, uuid, date, timestamp(tz), numeric `k`: boundaries are quantiles of `k` read from the
  source with `percentile_disc` (on a `TABLESAMPLE` above 1M rows); text is ordered `COLLATE "C"`,
  i.e. by code point, which is how DuckDB and Snowflake compare strings. PostgreSQL can use an index for
  those ranges only if one is declared `COLLATE "C"`; otherwise each chunk query scans the table, so large
  text-keyed tables want a larger `chunk_rows`;
* anything else (boolean, char(n) whose padding compares differently, enums ordered by declaration,
  bytea, float): one chunk.
The first and last ranges are open-ended, so keys outside the source's span (extra rows) are covered.

Counts run server side on both sides, many ranges per round trip (`UNION ALL` of range counts).

Checksums are computed in Python, not with SQL hash functions: PostgreSQL, DuckDB and Snowflake print
decimals, timestamps, floats and JSON differently, so server-side text hashes would never agree. Each
chunk's rows are streamed from both sides (server-side cursor / `fetchmany`, so memory stays flat), every
value is put in a canonical form (decimals without trailing zeros, datetimes as UTC ISO 8601, floats by
`repr` with NaN/±inf, JSON parsed and re-serialised with sorted keys, bytes as hex), each row is hashed
(BLAKE2b, 8 bytes) and the hashes are summed mod 2**64, which does not depend on row order.
The source values are read with the same SQL expressions the COPY extractor uses
(`sources.postgres.type_mapping.plan_column`), so what is compared is what was meant to be loaded.

Narrowing. A chunk whose counts (or checksums) differ is split in two (integer midpoint, or the source's
median key) and only the halves that still differ are followed, until a range holds at most
`narrow_rows` rows; then both sides' rows are diffed by primary key to list missing, extra and changed keys.
Counts of the halves are server side; checksums are streamed for the left half only (the right half's is the
range's minus the left's). A range that is empty on one side is not split further: its keys are sampled and
its first/last key reported. Touching drifting ranges are merged, so a lost block reads as one range.

The source is only ever read, through `sources.postgres.session.make_engine` (read-only sessions,
`statement_timeout`), from the reader DSN when `sources.postgres.reader_credentials` is set. The
destination is read through the pipeline's dlt SQL client, so DuckDB and Snowflake work alike. dlt's
columns (`_dlt_load_id`, `_dlt_id`) and CDC columns (`_lsn`, `_lsn_ordinal`, `_deleted`, `_deleted_at`) are not
compared; rows whose `_deleted_at` is set (soft deletes) are not counted in the destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any, Literal, Protocol

import dlt
import psycopg2
import pyarrow as pa
import sqlalchemy as sa
from dlt.common.normalizers.naming import NamingConvention
from dlt.common.schema import Schema
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.destinations.sql_client import SqlClientBase
from sqlalchemy.sql import sqltypes

from sources.postgres.catalog import TableSpec, matches
from sources.postgres.chunking import Throttle, wait_until_calm
from sources.postgres.errors import SourceConfigError
from sources.postgres.pg_types import domain_column_types
from sources.postgres.session import make_engine
from sources.postgres.settings import load_source_settings
from sources.postgres.type_mapping import adapt_sqlalchemy_type, override_type, plan_column

SOURCE_SCHEMA_NAME = "postgres_replica"
SOFT_DELETE_COLUMN = "_deleted_at"
COUNT_BATCH = 50  # range counts per round trip
FETCH_ROWS = 5_000
QUANTILE_SAMPLE_ROWS = 1_000_000  # above this many source rows, chunk boundaries come from a TABLESAMPLE
DIFF_ROWS_CAP = 50_000  # a range that cannot be split further is diffed key by key only up to this size
CHECKSUM_MOD = 1 << 64

Strategy = Literal["integer", "ordered", "single"]


@dataclass(frozen=True)
class VerifyOptions:
    checksum: bool = False
    chunk_rows: int = 100_000  # target rows per chunk
    narrow_rows: int = 100  # bisect a drifting range until it holds at most this many rows
    max_ranges: int = 10  # drifting ranges narrowed and reported per table
    max_keys: int = 20  # keys listed per kind (missing, extra, changed) and range
    statement_timeout_ms: int = 300_000
    settle_seconds: float = 0.0  # > 0: wait this long, then check drifting ranges again (rows in flight)
    pacing: Any = None  # `sources.postgres.chunking.SnapshotSettings`: the chunked snapshot's throttle and guard
    rotation: int = 1  # > 1: checksum only the chunks whose index is `phase` modulo this (counts: every chunk)
    phase: int | None = None  # which slice; None: the day number, so N daily runs make one full pass


# --- canonical values and row hashes -------------------------------------------------------------------


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        return str(value).lower()
    text = format(value, "f")  # exact; Decimal.normalize() would round to the context precision
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _float_text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(value)  # '-0.0' stays apart from '0.0': losing the sign is drift


def _json_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return _decimal_text(Decimal(value))
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_json_text(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _datetime_text(value: datetime) -> str:
    return (value.astimezone(UTC) if value.tzinfo is not None else value).isoformat()


def _slow_canonical(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, datetime):
        return _datetime_text(value)
    if isinstance(value, date | dt_time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict | list):
        return _json_text(value)
    return str(value)


# exact-type dispatch: one dict lookup per value instead of an isinstance chain (this is the hot loop)
_CANONICAL: dict[type, Callable[[Any], str]] = {
    str: str, int: str, bool: _slow_canonical, Decimal: _decimal_text, float: _float_text,
    datetime: _datetime_text, date: date.isoformat, dt_time: dt_time.isoformat,
    bytes: bytes.hex, bytearray: bytearray.hex, memoryview: _slow_canonical, uuid.UUID: str,
}


def canonical(value: Any) -> str | None:
    """One text per value, whichever database and driver produced it.

    "12.50" and "12.5" are one decimal; datetimes compare as UTC instants; -0.0 is 0.0; bytes are hex.
    """
    kind = type(value)
    if kind is str or value is None:
        return value
    return (_CANONICAL.get(kind) or _slow_canonical)(value)


_PG_TEXT_PARSERS: dict[str, Callable[[str], Any]] = {
    "decimal": Decimal, "date": date.fromisoformat, "time": dt_time.fromisoformat,
    "timestamp": datetime.fromisoformat, "timestamptz": datetime.fromisoformat,
}


def canonical_pg_text(kind: str, text: str | None) -> str | None:
    """A value of a decimal/date/time/timestamp column from PostgreSQL's text: its canonical form when Python can
    hold it (so it equals the typed destination value), else the text itself (`infinity`, `0044-03-15 BC`,
    `24:00:00`), which is what the destination keeps in the column's `__pg_text` sibling."""
    if text is None:
        return None
    try:
        return canonical(_PG_TEXT_PARSERS[kind](text))
    except (ValueError, ArithmeticError):
        return text


def canonical_json(value: Any) -> str | None:
    """JSON documents compare by meaning: key order, whitespace and number spelling do not matter."""
    if value is None:
        return None
    if isinstance(value, str | bytes | bytearray):
        try:
            value = json.loads(value, parse_float=Decimal, parse_int=Decimal)
        except ValueError:
            return canonical(value)
    return _json_text(value)


def row_hash(values: Sequence[str | None]) -> int:
    """repr() of a tuple of str/None is unambiguous (quotes escaped, None distinct from "None") and fast."""
    data = repr(tuple(values)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def display(value: Any) -> Any:
    """A key as JSON shows it: integers stay numbers, everything else is its canonical text."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)  # Snowflake returns NUMBER(19,0) keys as Decimal
    return canonical(value)


# --- ranges, columns and the SQL both sides run -------------------------------------------------------


@dataclass(frozen=True)
class KeyRange:
    """`lo <= k < hi` on the first primary-key column; None is unbounded."""

    lo: Any = None
    hi: Any = None

    def as_json(self) -> dict[str, Any]:
        return {"from": display(self.lo), "to": display(self.hi)}

    def __str__(self) -> str:
        lo = "-∞" if self.lo is None else display(self.lo)
        hi = "+∞" if self.hi is None else display(self.hi)
        return f"[{lo}, {hi})"


@dataclass(frozen=True)
class Column:
    source: str  # PostgreSQL column name
    destination: str  # dlt-normalized name
    source_sql: str  # expression in the source SELECT (as the COPY extractor reads it)
    is_json: bool
    pg_text: str | None = None  # decimal/date/time/timestamp(tz): compared through PostgreSQL's text (see below)
    text_destination: str | None = None  # the destination's `<column>__pg_text` sibling name


def _pg_text_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_decimal(arrow_type):
        return "decimal"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_time(arrow_type):
        return "time"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    return None


def _pg_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_columns(table: sa.Table, spec: TableSpec, naming: NamingConvention) -> list[Column]:
    """Primary-key columns first, then the others in table order."""
    ordered = [table.c[k] for k in spec.primary_key] + [c for c in table.columns if c.name not in spec.primary_key]
    columns = []
    overrides = spec.overrides
    for col in ordered:
        if col.name in overrides:
            col.type = override_type(overrides[col.name], f"{spec.qualified}.{col.name}")
        plan = plan_column(col, overrides.get(col.name))
        quoted = _pg_quote(col.name)
        expr = plan.select_sql
        kind = _pg_text_kind(plan.arrow_type)
        if kind is not None:
            # values outside the destination type's range (infinity, BC, 24:00:00, NaN) are only text on both
            # sides; reading every value of these columns as text keeps one code path for all of them
            columns.append(Column(col.name, naming.normalize_identifier(col.name), f"{quoted}::text", False, kind,
                                  naming.normalize_path(plan.text_column)))
            continue
        if expr == quoted and plan.arrow_type == pa.string() and not isinstance(col.type, sqltypes.String):
            # carried as the text COPY prints (interval, inet, numeric(p>38), ...): the type's output function,
            # which `::text` is not for every type (inet::text adds the netmask: '::1/128')
            # num_nulls, not IS NULL: a composite whose fields are all NULL is a value ('(,)'), not NULL
            expr = f"CASE WHEN num_nulls({quoted}) = 1 THEN NULL ELSE format('%s', {quoted}) END"
        adapted = adapt_sqlalchemy_type(col.type)
        columns.append(Column(col.name, naming.normalize_identifier(col.name), expr.replace("%", "%%"),
                              isinstance(adapted, sqltypes.JSON | sqltypes.ARRAY)))
    return columns


def key_strategy(key_type: Any) -> Strategy:
    if isinstance(key_type, sqltypes.Integer):
        return "integer"
    if isinstance(key_type, sqltypes.Enum | sqltypes.CHAR):
        return "single"
    if isinstance(key_type, sqltypes.String | sqltypes.Uuid | sqltypes.Date | sqltypes.DateTime):
        return "ordered"
    if isinstance(key_type, sqltypes.Numeric) and not isinstance(key_type, sqltypes.Float):
        return "ordered"
    return "single"


class Reader(Protocol):
    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]: ...


class PostgresReader:
    """psycopg2 on a read-only, `statement_timeout`-bounded session; named cursors stream rows in batches."""

    _names = itertools.count()

    def __init__(self, engine: sa.Engine, pacing: Any = None) -> None:
        self._conn = engine.raw_connection()
        self._pacing = pacing
        self._throttle = Throttle(pacing.max_rows_per_second, 0) if pacing is not None else None

    def pace(self, table: str, rows: int) -> None:
        """Before reading a chunk's rows: the chunked snapshot's pacing (`[sources.postgres.snapshot]`), so a
        verify loads the source no more than a snapshot would: rows per second, and a pause while the source is
        busy (CPU probe, active sessions, CloudWatch), at most `max_pause_seconds`."""
        if self._throttle is None:
            return
        self._throttle.account(rows, 0)
        try:
            wait_until_calm(self._conn.driver_connection, self._pacing, table)
        finally:
            self._end()

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, tuple(params))
                return list(cur.fetchall())
        finally:
            self._end()

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        cur = self._conn.cursor(name=f"aurora_sync_verify_{next(self._names)}")
        cur.itersize = FETCH_ROWS
        try:
            cur.execute(sql, tuple(params))
            while rows := cur.fetchmany(FETCH_ROWS):
                yield from rows
        finally:
            with contextlib.suppress(psycopg2.Error):
                cur.close()
            self._end()

    def _end(self) -> None:
        """Short transactions: never hold a snapshot (and vacuum) between queries. A broken connection must not
        hide the error that broke it."""
        with contextlib.suppress(psycopg2.Error):
            self._conn.rollback()

    def close(self) -> None:
        with contextlib.suppress(psycopg2.Error):
            self._conn.close()


class DestinationReader:
    """The pipeline's dlt SQL client (DuckDB, Snowflake, ...); `%s` placeholders work on all of them."""

    def __init__(self, client: SqlClientBase[Any]) -> None:
        self.client = client

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.client.execute_query(sql, *params) as cur:
            return list(cur.fetchall())

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self.client.execute_query(sql, *params) as cur:
            while rows := cur.fetchmany(FETCH_ROWS):
                yield from rows


@dataclass
class Side:
    """One table on one side: the same questions asked in each database's SQL."""

    reader: Reader
    table: str  # qualified, quoted
    key: str  # first primary-key column as compared in range predicates
    key_count: int  # number of primary-key columns (they lead `select`)
    select: list[str]
    json_columns: list[int]  # positions in `select` holding JSON documents
    where: str | None = None  # e.g. soft deletes excluded
    pg_text_columns: list[tuple[int, str]] = field(default_factory=list)  # (position, kind): PostgreSQL text
    text_siblings: list[tuple[int, int, str]] = field(default_factory=list)  # (typed, sibling position, kind)
    width: int | None = None  # values compared; the siblings selected after them are folded in

    def predicate(self, r: KeyRange) -> tuple[str, list[Any]]:
        parts, params = [], []
        if r.lo is not None:
            parts.append(f"{self.key} >= %s")
            params.append(r.lo)
        if r.hi is not None:
            parts.append(f"{self.key} < %s")
            params.append(r.hi)
        if self.where:
            parts.append(self.where)
        return " AND ".join(parts) or "1 = 1", params

    def count(self, r: KeyRange = KeyRange()) -> int:
        pred, params = self.predicate(r)
        return int(self.reader.fetch(f"SELECT count(*) FROM {self.table} WHERE {pred}", params)[0][0])

    def bounds(self, r: KeyRange = KeyRange()) -> tuple[Any, Any]:
        """Smallest and largest key in the range (ORDER BY ... LIMIT 1: PostgreSQL has no min(uuid))."""
        pred, params = self.predicate(r)
        first, last = (f"(SELECT {self.key} FROM {self.table} WHERE {pred} ORDER BY {self.key} {direction} LIMIT 1)"
                       for direction in ("ASC", "DESC"))
        return tuple(self.reader.fetch(f"SELECT {first}, {last}", params + params)[0])  # type: ignore[return-value]

    def counts(self, ranges: Sequence[KeyRange]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(ranges), COUNT_BATCH):
            batch = ranges[start:start + COUNT_BATCH]
            parts, params = [], []
            for i, r in enumerate(batch):
                pred, p = self.predicate(r)
                parts.append(f"SELECT {i} AS i, count(*) AS n FROM {self.table} WHERE {pred}")
                params += p
            found = {int(i): int(n) for i, n in self.reader.fetch(" UNION ALL ".join(parts), params)}
            out += [found.get(i, 0) for i in range(len(batch))]
        return out

    def rows(self, r: KeyRange) -> Iterator[tuple[tuple[str | None, ...], list[str | None], tuple[Any, ...]]]:
        """(canonical key, canonical row, raw key) for every row in the range, streamed."""
        pred, params = self.predicate(r)
        for raw in self.reader.stream(f"SELECT {', '.join(self.select)} FROM {self.table} WHERE {pred}", params):
            values = list(map(canonical, raw))
            for i in self.json_columns:
                values[i] = canonical_json(raw[i])
            for i, kind in self.pg_text_columns:
                values[i] = canonical_pg_text(kind, raw[i])
            for i, j, kind in self.text_siblings:
                if raw[j] is not None:
                    values[i] = canonical_pg_text(kind, raw[j])
            if self.width is not None:
                del values[self.width:]
            yield tuple(values[:self.key_count]), values, raw[:self.key_count]

    def checksum(self, r: KeyRange) -> tuple[int, int]:
        n = total = 0
        for _key, values, _raw in self.rows(r):
            n += 1
            total += row_hash(values)
        return n, total % CHECKSUM_MOD

    def sample_keys(self, r: KeyRange, limit: int) -> list[tuple[Any, ...]]:
        pred, params = self.predicate(r)
        keys = ", ".join(self.select[:self.key_count])
        return self.reader.fetch(f"SELECT {keys} FROM {self.table} WHERE {pred} ORDER BY {keys} LIMIT {int(limit)}",
                                 params)


# --- reports -------------------------------------------------------------------------------------------


def _key_json(raw: tuple[Any, ...]) -> Any:
    return display(raw[0]) if len(raw) == 1 else [display(v) for v in raw]


@dataclass
class RangeDrift:
    range: KeyRange
    source_rows: int
    destination_rows: int
    missing: list[Any] = field(default_factory=list)  # keys in the source, not in the destination
    extra: list[Any] = field(default_factory=list)  # keys in the destination, not in the source
    changed: list[Any] = field(default_factory=list)  # same key, different values
    missing_count: int | None = None  # None: not diffed key by key
    extra_count: int | None = None
    changed_count: int | None = None
    first_key: Any = None  # span of the differing first-key values, when known
    last_key: Any = None
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "range": self.range.as_json(), "source_rows": self.source_rows, "destination_rows": self.destination_rows,
            "first_key": display(self.first_key), "last_key": display(self.last_key),
            "missing_count": self.missing_count, "extra_count": self.extra_count, "changed_count": self.changed_count,
            "missing_keys": self.missing, "extra_keys": self.extra, "changed_keys": self.changed,
        }
        if self.note:
            out["note"] = self.note
        return out

    @property
    def differing_rows(self) -> int:
        """Rows of this range known to differ: the key-by-key diff when there was one, else the count gap (at
        least 1, since the range drifted)."""
        if self.missing_count is not None:
            return (self.missing_count or 0) + (self.extra_count or 0) + (self.changed_count or 0)
        return max(1, abs(self.source_rows - self.destination_rows))

    def describe(self) -> str:
        span = f"{self.range}: {self.source_rows} vs {self.destination_rows} rows"
        if self.first_key is not None:
            span = f"{display(self.first_key)}..{display(self.last_key)} (in {span})"
        parts = [span]
        kinds = (("missing", self.missing_count, self.missing), ("extra", self.extra_count, self.extra),
                 ("changed", self.changed_count, self.changed))
        for label, count, keys in kinds:
            if count:
                shown = ", ".join(json.dumps(k, ensure_ascii=False) for k in keys[:5])
                parts.append(f"{count} {label} [{shown}{', …' if count > len(keys[:5]) else ''}]")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


@dataclass
class TableReport:
    table: str
    destination_table: str
    key_column: str = ""
    strategy: Strategy = "single"
    source_rows: int | None = None
    destination_rows: int | None = None
    chunks: int = 0
    largest_chunk_rows: int = 0
    drifting_chunks: int = 0
    checksum: Literal["ok", "mismatch", "skipped"] = "skipped"
    source_checksum: str | None = None
    destination_checksum: str | None = None
    ranges: list[RangeDrift] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    checksummed_chunks: int | None = None  # chunks whose checksums were compared (all but with `rotation`)
    in_flight: list[RangeDrift] = field(default_factory=list)  # differed, then caught up or kept changing
    settled: bool = False  # every drifting range was checked again and none of them is drift
    # the destination's (count, checksum) of each drifting range right after the first pass (`settle`)
    first_pass: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @property
    def status(self) -> Literal["ok", "drift", "error"]:
        if self.error:
            return "error"
        if self.missing_columns or self.problems:
            return "drift"
        if self.settled:
            return "ok"
        drift = (self.source_rows != self.destination_rows or self.checksum == "mismatch" or self.drifting_chunks
                 or self.ranges)
        return "drift" if drift else "ok"

    @property
    def drift_rows(self) -> int:
        """Rows known to differ, for the `DriftRows` metric: a lower bound (ranges past `max_ranges` are not
        narrowed), never below the row-count gap, and at least 1 for a drifting table (a missing column or a
        NULL key is drift too), so that `DriftRows > 0` means exactly "drift"."""
        if self.status != "drift":
            return 0
        gap = abs((self.source_rows or 0) - (self.destination_rows or 0))
        return max(1, gap, sum(r.differing_rows for r in self.ranges))

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table, "destination_table": self.destination_table, "status": self.status,
            "drift_rows": self.drift_rows,
            "source_rows": self.source_rows, "destination_rows": self.destination_rows,
            "key_column": self.key_column, "chunking": self.strategy, "chunks": self.chunks,
            "largest_chunk_rows": self.largest_chunk_rows,
            "drifting_chunks": self.drifting_chunks, "checksum": self.checksum,
            "checksummed_chunks": self.checksummed_chunks,
            "source_checksum": self.source_checksum, "destination_checksum": self.destination_checksum,
            "drift_ranges": [r.as_json() for r in self.ranges], "missing_columns": self.missing_columns,
            "in_flight_ranges": [r.as_json() for r in self.in_flight],
            "problems": self.problems, "error": self.error, "duration_s": self.duration_s,
        }


@dataclass
class VerifyReport:
    pipeline: str
    dataset: str
    checksum: bool
    tables: list[TableReport]

    @property
    def outcome(self) -> Literal["ok", "drift", "error"]:
        """Drift wins over errors: it is the actionable answer; an error alone means 'could not tell'."""
        statuses = {t.status for t in self.tables}
        if "drift" in statuses:
            return "drift"
        return "error" if "error" in statuses else "ok"

    def as_json(self) -> dict[str, Any]:
        statuses = [t.status for t in self.tables]
        return {
            "ok": self.outcome == "ok", "pipeline": self.pipeline, "dataset": self.dataset,
            "checksum": self.checksum,
            "summary": {"tables": len(self.tables), "in_sync": statuses.count("ok"),
                        "drift": statuses.count("drift"), "errors": statuses.count("error")},
            "tables": [t.as_json() for t in self.tables],
        }


# --- one table -----------------------------------------------------------------------------------------


def _bound(value: Any) -> Any:
    """A key read from PostgreSQL as a parameter both sides accept (uuid is text in the destination)."""
    return str(value) if isinstance(value, uuid.UUID) else value


class TableVerifier:
    def __init__(self, source: Side, destination: Side, strategy: Strategy, options: VerifyOptions,
                 report: TableReport) -> None:
        self.src, self.dst, self.strategy, self.options, self.report = source, destination, strategy, options, report

    def run(self) -> None:
        options, report = self.options, self.report
        # no full count(*) on the source: on a large table it is one long statement, the opposite of chunking.
        # The planner's estimate sizes the chunks; the exact total is the sum of the chunks' counts.
        dst_n = self.dst.count()
        ranges = self.plan_chunks(self.source_estimate(), dst_n)
        src_counts, dst_counts = self.src.counts(ranges), self.dst.counts(ranges)
        if self.strategy == "integer":
            ranges, src_counts, dst_counts = self.rebalance(ranges, src_counts, dst_counts)
        report.source_rows, report.destination_rows = sum(src_counts), dst_n
        report.chunks = len(ranges)
        report.largest_chunk_rows = max(max(src_counts), max(dst_counts))
        if sum(dst_counts) != dst_n:
            report.problems.append(f"{dst_n - sum(dst_counts)} destination row(s) have a NULL primary key")
        drifting = [i for i, (s, d) in enumerate(zip(src_counts, dst_counts, strict=True)) if s != d]
        sums: list[tuple[int, int] | None] = [None] * len(ranges)
        if options.checksum:
            src_sum = dst_sum = 0
            rotation = max(1, options.rotation)
            phase = (int(time.time() // 86400) if options.phase is None else options.phase) % rotation
            report.checksummed_chunks = 0
            pace = getattr(self.src.reader, "pace", None)
            for i, r in enumerate(ranges):
                if i % rotation != phase:
                    continue
                report.checksummed_chunks += 1
                if pace is not None:
                    pace(report.table, src_counts[i])
                (_, s), (_, d) = self.src.checksum(r), self.dst.checksum(r)
                sums[i] = (s, d)
                src_sum, dst_sum = (src_sum + s) % CHECKSUM_MOD, (dst_sum + d) % CHECKSUM_MOD
                if s != d and i not in drifting:
                    drifting.append(i)
            if rotation == 1:  # totals of a slice would only look like the table's
                report.source_checksum, report.destination_checksum = f"{src_sum:016x}", f"{dst_sum:016x}"
            report.checksum = "ok" if src_sum == dst_sum and not drifting else "mismatch"
        report.drifting_chunks = len(drifting)
        for i in sorted(drifting):
            budget = options.max_ranges - len(report.ranges)
            if budget <= 0:
                break
            for drift in self.narrow(ranges[i], src_counts[i], dst_counts[i], budget, sums[i]):
                self.add(report.ranges, drift)

    def remember(self) -> None:
        """Before settling: the destination's side of each drifting range, to tell later whether the sync moved it."""
        self.report.first_pass = [self.dst.checksum(d.range) for d in self.report.ranges]

    def settle(self) -> None:
        """Check each drifting range again, `settle_seconds` after the first pass: a range now equal on both sides
        caught up, and one whose destination side changed meanwhile is being written by the sync; both are in
        flight, not drift. A range whose destination stood still while it differs from the source is drift. So rows
        changed at the source but not yet merged are never reported as drift, as long as the sync applies them
        within `settle_seconds`; a drifting row in a range the sync keeps writing to waits for the next verify."""
        report = self.report
        narrowed_all = report.drifting_chunks <= self.options.max_ranges and not any(d.note for d in report.ranges)
        still: list[RangeDrift] = []
        for drift, before in zip(report.ranges, report.first_pass, strict=True):
            source, destination = self.src.checksum(drift.range), self.dst.checksum(drift.range)
            if source == destination or destination != before:
                report.in_flight.append(drift)
            else:
                still.append(drift)
        report.ranges = still
        report.settled = narrowed_all and not still and not report.missing_columns and not report.problems
        if report.settled:  # the first pass's totals were taken while rows were in flight
            report.drifting_chunks = 0
            report.checksum = "ok" if report.checksum != "skipped" else "skipped"

    def add(self, found: list[RangeDrift], drift: RangeDrift) -> None:
        """Append, merging with the previous range when they touch: a lost block reads as one range, not
        as the log2(n) pieces bisection cut it into."""
        prev = found[-1] if found else None
        if prev is None or prev.note or drift.note or prev.range.hi is None or prev.range.hi != drift.range.lo:
            found.append(drift)
            return
        limit = self.options.max_keys

        def total(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a + b

        found[-1] = RangeDrift(
            KeyRange(prev.range.lo, drift.range.hi), prev.source_rows + drift.source_rows,
            prev.destination_rows + drift.destination_rows, (prev.missing + drift.missing)[:limit],
            (prev.extra + drift.extra)[:limit], (prev.changed + drift.changed)[:limit],
            total(prev.missing_count, drift.missing_count), total(prev.extra_count, drift.extra_count),
            total(prev.changed_count, drift.changed_count),
            prev.first_key if prev.first_key is not None else drift.first_key,
            drift.last_key if drift.last_key is not None else prev.last_key,
        )

    def source_estimate(self) -> int:
        """pg_class.reltuples (kept by ANALYZE); an exact count only when there is none (never analyzed,
        partitioned parent), which is then cheap or unavoidable."""
        (estimate,) = self.src.reader.fetch("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                            [self.src.table.replace("%%", "%")])[0]
        return int(estimate) if estimate and estimate > 0 else self.src.count()

    def integer_span(self, r: KeyRange = KeyRange()) -> tuple[int, int] | None:
        """Smallest and largest integer key of both sides in the range, or None when both are empty."""
        ends = [b for b in (*self.src.bounds(r), *self.dst.bounds(r)) if b is not None]
        return (int(min(ends)), int(max(ends))) if ends else None

    def plan_chunks(self, src_rows: int, dst_rows: int) -> list[KeyRange]:
        n = max(1, math.ceil(max(src_rows, dst_rows) / self.options.chunk_rows))
        bounds: list[Any] = []
        if n > 1 and self.strategy == "integer" and (span := self.integer_span()):
            lo, hi = span
            width = max(1, math.ceil((hi - lo + 1) / n))
            bounds = [lo + i * width for i in range(1, n) if lo + i * width <= hi]
        elif n > 1 and self.strategy == "ordered" and src_rows:
            bounds = self.source_quantiles([i / n for i in range(1, n)], src_rows)
        edges = [None, *bounds, None]
        return [KeyRange(a, b) for a, b in itertools.pairwise(edges)]

    def rebalance(self, ranges: list[KeyRange], src_counts: list[int],
                  dst_counts: list[int]) -> tuple[list[KeyRange], list[int], list[int]]:
        """Split the equal-width chunks that sparse or skewed keys made much larger than `chunk_rows`."""
        target = self.options.chunk_rows
        for _ in range(4):
            out: list[tuple[KeyRange, int, int]] = []  # -1: not counted yet
            for r, s, d in zip(ranges, src_counts, dst_counts, strict=True):
                span = self.integer_span(r) if max(s, d) > 2 * target else None
                if span is not None and span[0] < span[1]:
                    n = math.ceil(max(s, d) / target)
                    width = max(1, math.ceil((span[1] - span[0] + 1) / n))
                    cuts = [span[0] + i * width for i in range(1, n) if span[0] + i * width <= span[1]]
                    out += [(KeyRange(a, b), -1, -1) for a, b in itertools.pairwise([r.lo, *cuts, r.hi])]
                else:
                    out.append((r, s, d))
            if all(s >= 0 for _, s, _ in out):
                break
            fresh = [r for r, s, _ in out if s < 0]
            recounted = iter(zip(self.src.counts(fresh), self.dst.counts(fresh), strict=True))
            out = [(r, *next(recounted)) if s < 0 else (r, s, d) for r, s, d in out]
            ranges, src_counts, dst_counts = (list(x) for x in zip(*out, strict=True))  # type: ignore[assignment]
        return ranges, src_counts, dst_counts

    def source_quantiles(self, fractions: list[float], src_rows: int) -> list[Any]:
        sample = ""
        if src_rows > QUANTILE_SAMPLE_ROWS:
            sample = f" TABLESAMPLE SYSTEM ({100 * QUANTILE_SAMPLE_ROWS / src_rows:.6f})"
        rows = self.src.reader.fetch(
            f"SELECT b FROM unnest((SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {self.src.key}) "
            f"FROM {self.src.table}{sample})) WITH ORDINALITY AS u(b, i) ORDER BY i", [fractions])
        bounds: list[Any] = []
        for (b,) in rows:
            if b is not None and (not bounds or _bound(b) != bounds[-1]):
                bounds.append(_bound(b))
        return bounds

    def narrow(self, r: KeyRange, src_n: int, dst_n: int, budget: int,
               sums: tuple[int, int] | None = None) -> list[RangeDrift]:
        """Bisect a drifting range; follow only halves that still differ.

        `sums` are the range's (source, destination) checksums when known: the right half's checksums are then
        the range's minus the left half's, so each level streams only half of the rows.
        """
        if src_n == 0 or dst_n == 0 or max(src_n, dst_n) <= self.options.narrow_rows:
            return [self.diff(r, src_n, dst_n)]
        mid = self.split(r)
        if mid is None:
            return [self.diff(r, src_n, dst_n)]
        halves = [KeyRange(r.lo, mid), KeyRange(mid, r.hi)]
        found: list[RangeDrift] = []
        left: tuple[int, int] | None = None
        for index, (half, s, d) in enumerate(zip(halves, self.src.counts(halves), self.dst.counts(halves),
                                                 strict=True)):
            half_sums: tuple[int, int] | None = None
            if s == d and self.options.checksum:
                if s == 0:
                    half_sums = (0, 0)
                elif index == 1 and sums is not None and left is not None:
                    half_sums = ((sums[0] - left[0]) % CHECKSUM_MOD, (sums[1] - left[1]) % CHECKSUM_MOD)
                else:
                    half_sums = (self.src.checksum(half)[1], self.dst.checksum(half)[1])
            if index == 0:
                left = half_sums
            drifting = s != d or (half_sums is not None and half_sums[0] != half_sums[1])
            if drifting and len(found) < budget:
                for drift in self.narrow(half, s, d, budget - len(found), half_sums):
                    self.add(found, drift)
        return found or [RangeDrift(r, src_n, dst_n, note="the difference vanished when re-read (rows changing?)")]

    def split(self, r: KeyRange) -> Any:
        """A key strictly inside the range's populated span, or None when the range cannot be split."""
        if self.strategy == "integer":
            span = self.integer_span(r)
            if span is None:
                return None
            lo, hi = span[0], span[1] + 1
            mid = (lo + hi) // 2
            return mid if lo < mid < hi else None
        if self.strategy == "ordered":
            pred, params = self.src.predicate(r)
            median, smallest = self.src.reader.fetch(
                f"SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY {self.src.key}), "
                f"percentile_disc(0) WITHIN GROUP (ORDER BY {self.src.key}) FROM {self.src.table} WHERE {pred}",
                params)[0]
            return _bound(median) if median is not None and median != smallest else None
        return None

    def diff_multiset(self, r: KeyRange, src_n: int, dst_n: int) -> RangeDrift:
        """A keyless table: rows one side has more copies of than the other (listed by their values)."""
        drift = RangeDrift(r, src_n, dst_n)
        if max(src_n, dst_n) > DIFF_ROWS_CAP:
            drift.note = f"more than {DIFF_ROWS_CAP} rows: rows not listed"
            return drift
        seen: dict[int, list[str | None]] = {}
        counts = []
        for side in (self.src, self.dst):
            counter: Counter[int] = Counter()
            for _key, values, _raw in side.rows(r):
                digest = row_hash(values)
                counter[digest] += 1
                seen.setdefault(digest, values)
            counts.append(counter)
        missing, extra = counts[0] - counts[1], counts[1] - counts[0]
        drift.missing_count, drift.extra_count, drift.changed_count = sum(missing.values()), sum(extra.values()), 0
        drift.missing = [seen[d] for d in list(missing)[:self.options.max_keys]]
        drift.extra = [seen[d] for d in list(extra)[:self.options.max_keys]]
        if not missing and not extra:
            drift.note = "no difference when re-read (rows changing?)"
        return drift

    def diff(self, r: KeyRange, src_n: int, dst_n: int) -> RangeDrift:
        """Key-level differences of a small range (or a sample of keys when one side is empty)."""
        if self.src.key_count == 0:
            return self.diff_multiset(r, src_n, dst_n)
        drift = RangeDrift(r, src_n, dst_n)
        limit = self.options.max_keys
        if src_n == 0 or dst_n == 0:
            side = self.src if src_n else self.dst
            keys = [_key_json(k) for k in side.sample_keys(r, limit)]
            drift.first_key, drift.last_key = side.bounds(r)
            if src_n:
                drift.missing, drift.missing_count, drift.extra_count, drift.changed_count = keys, src_n, 0, 0
            else:
                drift.extra, drift.extra_count, drift.missing_count, drift.changed_count = keys, dst_n, 0, 0
            return drift
        if max(src_n, dst_n) > DIFF_ROWS_CAP:
            drift.note = f"more than {DIFF_ROWS_CAP} rows share this key range: keys not listed"
            return drift
        source: dict[tuple[str | None, ...], tuple[int, tuple[Any, ...]]] = {
            key: (row_hash(values), raw) for key, values, raw in self.src.rows(r)}
        extra: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        for key, values, raw in self.dst.rows(r):
            found = source.pop(key, None)
            if found is None:
                extra.append(raw)
            elif found[0] != row_hash(values):
                changed.append(found[1])  # the source's spelling of the key
        missing = [raw for _, raw in source.values()]
        drift.missing_count, drift.extra_count, drift.changed_count = len(missing), len(extra), len(changed)
        drift.missing, drift.extra, drift.changed = ([_key_json(k) for k in keys[:limit]]
                                                     for keys in (missing, extra, changed))
        firsts = [k[0] for k in missing + extra + changed if k[0] is not None]
        with contextlib.suppress(TypeError):  # mixed key types between drivers: keep the range only
            drift.first_key, drift.last_key = (min(firsts), max(firsts)) if firsts else (None, None)
        if not firsts:
            drift.note = "no difference when re-read (rows changing?)"
        return drift


# --- entry point ---------------------------------------------------------------------------------------


def _destination_columns(client: SqlClientBase[Any], qualified: str) -> list[str]:
    with client.execute_query(f"SELECT * FROM {qualified} WHERE 1 = 0") as cur:
        return [d[0] for d in cur.description or []]


def verify_table(
    spec: TableSpec,
    engine: sa.Engine,
    client: SqlClientBase[Any],
    naming: NamingConvention,
    options: VerifyOptions,
    settling: TableReport | None = None,
) -> TableReport:
    """Compare one table; `settling`: its first pass's report, whose drifting ranges are checked again."""
    started = time.monotonic()
    dest_name = naming.normalize_tables_path(spec.resource_name)  # `__` is kept: it is dlt's path separator
    report = settling or TableReport(spec.qualified, dest_name,
                                     key_column=spec.primary_key[0] if spec.has_key else "")
    reader = PostgresReader(engine, options.pacing)
    try:
        table = sa.Table(spec.name, sa.MetaData(), schema=spec.schema, autoload_with=engine)
        raw = engine.raw_connection()
        try:  # domains as their base type, exactly as the source plans them
            for name, sa_type in domain_column_types(raw, [spec.schema]).get((spec.schema, spec.name), {}).items():
                table.c[name].type = sa_type
        finally:
            raw.close()
        columns = source_columns(table, spec, naming)
        qualified = client.make_qualified_table_name(dest_name)
        # a keyless table is one chunk whose rows are compared as a multiset (the checksum is a sum: duplicates
        # count), since without a key there is nothing to range over or to diff by
        report.strategy = key_strategy(table.c[spec.primary_key[0]].type) if spec.has_key else "single"
        src_key = _pg_quote(spec.primary_key[0] if spec.has_key else columns[0].source).replace("%", "%%")
        if spec.has_key and isinstance(table.c[spec.primary_key[0]].type, sqltypes.String):
            src_key += ' COLLATE "C"'  # code-point order, as DuckDB and Snowflake compare strings
        source = Side(reader, f"{_pg_quote(spec.schema)}.{_pg_quote(spec.name)}".replace("%", "%%"), src_key,
                      len(spec.primary_key), [], [])
        try:
            present = {name.lower() for name in _destination_columns(client, qualified)}
        except DatabaseUndefinedRelation:
            report.source_rows, report.destination_rows = source.count(), 0
            if report.source_rows:
                report.problems.append(f"destination table {dest_name} does not exist")
            return report

        def exists(name: str) -> bool:
            return client.capabilities.casefold_identifier(name).lower() in present

        kept = [c for c in columns if exists(c.destination)]
        report.missing_columns = [c.source for c in columns if not exists(c.destination)]
        if any(not exists(c.destination) for c in columns[:len(spec.primary_key)]):
            report.error = "primary key column(s) missing in the destination: cannot compare rows"
            return report
        source.select = [c.source_sql for c in kept]
        source.json_columns = [i for i, c in enumerate(kept) if c.is_json]
        source.pg_text_columns = [(i, c.pg_text) for i, c in enumerate(kept) if c.pg_text]
        soft_delete = exists(SOFT_DELETE_COLUMN) and SOFT_DELETE_COLUMN not in {c.destination for c in columns}
        destination = Side(
            DestinationReader(client), qualified, client.escape_column_name(columns[0].destination),
            len(spec.primary_key), [client.escape_column_name(c.destination) for c in kept], source.json_columns,
            where=f"{client.escape_column_name(SOFT_DELETE_COLUMN)} IS NULL" if soft_delete else None,
            width=len(kept),
        )
        for i, c in enumerate(kept):
            if c.pg_text and c.text_destination and exists(c.text_destination):
                destination.text_siblings.append((i, len(destination.select), c.pg_text))
                destination.select.append(client.escape_column_name(c.text_destination))
        verifier = TableVerifier(source, destination, report.strategy, options, report)
        if settling is not None:
            verifier.settle()
        else:
            verifier.run()
            if options.settle_seconds and report.ranges:
                verifier.remember()
    except DatabaseUndefinedRelation as exc:
        report.error = f"destination: {str(exc).splitlines()[0]}"
    except Exception as exc:  # one table failing must not hide the others' answers
        orig = getattr(exc, "orig", None) or exc
        report.error = f"{type(orig).__name__}: {str(orig).strip().splitlines()[0] if str(orig).strip() else ''}"
        if "statement timeout" in str(orig):
            report.error += f" (statement_timeout {options.statement_timeout_ms} ms: lower --chunk-rows or raise " \
                            "--statement-timeout-ms)"
    finally:
        reader.close()
        report.duration_s = round(report.duration_s + time.monotonic() - started, 3)
    return report


def verify(
    pipeline: dlt.Pipeline,
    tables: list[str] | None = None,
    options: VerifyOptions | None = None,
    on_table: Callable[[TableReport], None] | None = None,
    on_settle: Callable[[float, int], None] | None = None,
) -> VerifyReport:
    """Reconcile every replicated table (or those matching `tables`) of `pipeline`'s source."""
    options = options or VerifyOptions()
    settings = load_source_settings(pipeline.pipeline_name)
    engine = make_engine(settings.reader_credentials or settings.credentials, options.statement_timeout_ms)
    try:
        specs = settings.discover(engine)
        if tables:
            specs = [s for s in specs if matches(s.qualified, tables)]
            if not specs:
                raise SourceConfigError(f"--tables {' '.join(tables)} matched no replicated table.")
        naming = pipeline.default_schema.naming if pipeline.default_schema_name else Schema(SOURCE_SCHEMA_NAME).naming
        reports: list[TableReport] = []
        with pipeline.sql_client() as client:
            for spec in specs:
                reports.append(verify_table(spec, engine, client, naming, options))
                if on_table and not (options.settle_seconds and reports[-1].first_pass):
                    on_table(reports[-1])
        settling = [(spec, r) for spec, r in zip(specs, reports, strict=True) if r.first_pass and not r.error]
        if settling:  # one wait for every table, holding no session: the sync applies what was in flight meanwhile
            if on_settle:
                on_settle(options.settle_seconds, sum(len(r.ranges) for _, r in settling))
            time.sleep(options.settle_seconds)
            with pipeline.sql_client() as client:
                for spec, report in settling:
                    verify_table(spec, engine, client, naming, options, settling=report)
                    if on_table:
                        on_table(report)
        return VerifyReport(pipeline.pipeline_name, pipeline.dataset_name, options.checksum, reports)
    finally:
        engine.dispose()
