"""Initial copy of a table under an exported snapshot, without writing anything to the source.

The slot (or, for a table added later, a temporary slot) exports a snapshot that sees exactly the
transactions committed before its consistent LSN. Each table is read in its own REPEATABLE READ READ
ONLY transaction that imports it (SET TRANSACTION SNAPSHOT), with the same COPY→Arrow parsing as the
snapshot source. Rows carry `_lsn` = the consistent LSN; the stream then skips that table's
transactions that committed before it, so the copy and the stream neither overlap nor leave a gap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pyarrow as pa

from sources.postgres.catalog import TableSpec
from sources.postgres.conversion import RejectedRow
from sources.postgres.copy_loader import arrow_schema, copy_to_arrow
from sources.postgres.session import APPLICATION_NAME, session_options
from sources.postgres.shapes import Shape, read_shapes
from sources.postgres.transport import secure_dsn

from . import multiset
from .batch import DeleteMode, system_columns
from .columns import ColumnSpec, TypeResolver
from .slot import qualified_identifier

COLUMNS_SQL = """
SELECT a.attname, a.atttypid, a.atttypmod
FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY {order}
"""


def table_columns(conn: Any, spec: TableSpec, resolver: TypeResolver) -> list[ColumnSpec]:
    """Every column, stored generated ones last: the order in which the change stream completes a row
    (pgoutput before PostgreSQL 18 leaves generated columns out; CDC computes them, see `columns`)."""
    relation = qualified_identifier(spec).as_string(conn)
    order = "a.attgenerated <> '', a.attnum" if conn.server_version >= 120000 else "a.attnum"
    with conn.cursor() as cur:
        cur.execute(COLUMNS_SQL.format(order=order), (relation,))
        rows = cur.fetchall()
    return [resolver.column(name, int(oid), int(typmod), name in spec.primary_key, spec.overrides.get(name))
            for name, oid, typmod in rows]


def _resolver(conn: Any) -> TypeResolver:
    def run(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()

    return TypeResolver(run)


class TableSnapshot:
    """Reads one table under an exported snapshot; `columns` is known once `open()` returned."""

    def __init__(self, dsn: str, snapshot_name: str, spec: TableSpec, lsn: int, *, delete_mode: DeleteMode,
                 block_size: int, statement_timeout_ms: int) -> None:
        self.dsn, self.snapshot_name, self.spec, self.lsn = dsn, snapshot_name, spec, lsn
        self.delete_mode, self.block_size, self.statement_timeout_ms = delete_mode, block_size, statement_timeout_ms
        self.columns: list[ColumnSpec] = []
        self.rows = 0
        self.rejected: list[RejectedRow] = []
        self._conn: Any = None

    def open(self) -> list[ColumnSpec]:
        conn = psycopg2.connect(secure_dsn(self.dsn), application_name=APPLICATION_NAME, connect_timeout=10,
                                options=session_options(self.statement_timeout_ms))
        conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        self._conn = conn
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (self.snapshot_name,))
        self.columns = table_columns(conn, self.spec, _resolver(conn))
        return self.columns

    def shape(self) -> Shape:
        """The table's shape as of the snapshot, to record with the copy: the stream carries every DDL after it.
        The live catalog could already hold a DDL that committed since the snapshot (the copy then looks newer than
        it is, and that DDL, when the stream reaches it, like no change at all)."""
        if self._conn is None:
            self.open()
        return read_shapes(self._conn, [self.spec]).get(self.spec.qualified, [])

    def read(self) -> Iterator[pa.Table]:
        """Arrow tables of at most `block_size` bytes of CSV each, with the CDC system columns added."""
        if self._conn is None:
            self.open()
        plans = [c.plan for c in self.columns]
        select = "SELECT {} FROM {}".format(
            ", ".join(p.select_sql for p in plans), qualified_identifier(self.spec).as_string(self._conn))
        try:
            keys = frozenset(self.spec.primary_key)
            for table, rejected in copy_to_arrow(self._conn, select, plans, self.block_size, keys,
                                                 name=self.spec.name, close=False):
                self.rejected += rejected
                if not table.num_rows:
                    continue
                if not self.spec.has_key:  # every copy of a keyless row gets an identity (see `multiset`)
                    hashes = multiset.row_hashes(table, [c.name for c in self.columns])
                    table = table.append_column(multiset.ROW_KEY_COLUMN, pa.array(
                        multiset.snapshot_keys(self.lsn, self.rows, table.num_rows), pa.string()))
                    table = table.append_column(multiset.ROW_HASH_COLUMN, pa.array(hashes, pa.string()))
                for name, column in system_columns(self.delete_mode, [self.lsn] * table.num_rows,
                                                   [None] * table.num_rows).items():
                    table = table.append_column(name, column)
                self.rows += table.num_rows
                yield table
            if not self.rows:  # an empty table still replaces what the destination had
                empty = arrow_schema(plans, frozenset(self.spec.primary_key)).empty_table()
                if not self.spec.has_key:
                    empty = empty.append_column(multiset.ROW_KEY_COLUMN, pa.array([], pa.string()))
                    empty = empty.append_column(multiset.ROW_HASH_COLUMN, pa.array([], pa.string()))
                for name, column in system_columns(self.delete_mode, [], []).items():
                    empty = empty.append_column(name, column)
                yield empty
        finally:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            finally:
                self._conn.close()
                self._conn = None
