"""What CDC reads from, and does directly to, the warehouse besides dlt's loads.

Both the direct path (`pipelines.cdc`, loading every batch itself) and the merge of landed batches
(`pipelines.merge`) complete unchanged TOAST values from the rows the warehouse holds, find a keyless table's
live copies to delete, and empty a table on TRUNCATE. `schema_name` is the dlt schema of the pipeline doing it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.schema import Schema
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from sources.replication.batch import DELETED_AT_COLUMN, LSN_COLUMN
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN

IN_LIST = 500  # keys per query: well under every destination's limit on a statement's parameters


def table_name(pipeline: dlt.Pipeline, schema_name: str, resource_name: str) -> str:
    """The warehouse's name for a table: dlt normalizes `zoo__Every Type` to `zoo__every_type`."""
    schema = pipeline.schemas.get(schema_name)
    naming = schema.naming if schema else Schema(schema_name).naming
    return str(naming.normalize_tables_path(resource_name))


def _column(pipeline: dlt.Pipeline, schema_name: str) -> Any:
    schema = pipeline.schemas.get(schema_name)
    return (schema.naming if schema else Schema(schema_name).naming).normalize_identifier


def current_rows(pipeline: dlt.Pipeline, schema_name: str, resource_name: str, keys: pa.Table,
                 columns: list[str]) -> pa.Table | None:
    """The warehouse's current `columns` (source names) of the rows with these keys (`keys`: one column per key
    column, source names, typed), as a table of the key columns and those of `columns` the table has; None when
    the table or every row is missing."""
    column = _column(pipeline, schema_name)
    key_names = list(keys.column_names)
    unique = sorted({k for k in zip(*(keys[c].to_pylist() for c in key_names), strict=True) if k[0] is not None},
                    key=repr)
    if not unique:
        return None
    rows: list[tuple[Any, ...]] = []
    with pipeline.sql_client(schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        try:
            with client.execute_query(f"SELECT * FROM {target} WHERE 1 = 0") as cursor:
                present = {d[0].lower() for d in cursor.description or []}
        except DatabaseUndefinedRelation:
            return None
        wanted = [c for c in columns if column(c).lower() in present and c not in key_names]

        def escape(name: str) -> str:
            return str(client.escape_column_name(column(name)))

        selected = ", ".join(escape(c) for c in [*key_names, *wanted])
        for start in range(0, len(unique), IN_LIST):
            chunk = unique[start:start + IN_LIST]
            if len(key_names) == 1:
                where = f"{escape(key_names[0])} IN ({', '.join(['%s'] * len(chunk))})"
                params = [k[0] for k in chunk]
            else:
                one = "(" + " AND ".join(f"{escape(k)} = %s" for k in key_names) + ")"
                where = " OR ".join([one] * len(chunk))
                params = [v for k in chunk for v in k]
            rows += client.execute_sql(f"SELECT {selected} FROM {target} WHERE {where}", *params) or []
    names = [*key_names, *wanted]
    return pa.table({n: pa.array([r[i] for r in rows]) for i, n in enumerate(names)}) if rows else None


def existing_copies(pipeline: dlt.Pipeline, schema_name: str, resource_name: str, hashes: set[str],
                    delete_mode: str) -> dict[str, list[str]]:
    """A keyless table's live copies in the warehouse (their `_row_key`s) for the given row hashes."""
    copies: dict[str, list[str]] = {}
    wanted = sorted(hashes)
    with pipeline.sql_client(schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        key, digest = client.escape_column_name(ROW_KEY_COLUMN), client.escape_column_name(ROW_HASH_COLUMN)
        live = f" AND {client.escape_column_name(DELETED_AT_COLUMN)} IS NULL" if delete_mode == "soft" else ""
        for start in range(0, len(wanted), IN_LIST):
            chunk = wanted[start:start + IN_LIST]
            try:
                rows = client.execute_sql(f"SELECT {digest}, {key} FROM {target} WHERE {digest} IN "
                                          f"({', '.join(['%s'] * len(chunk))}){live}", *chunk) or []
            except DatabaseUndefinedRelation:
                return {}
            for row_hash, row_key in rows:
                copies.setdefault(str(row_hash), []).append(str(row_key))
    return copies


def truncate(pipeline: dlt.Pipeline, schema_name: str, resource_name: str, delete_mode: str, lsn: int,
             commit_time: datetime | None) -> bool:
    """TRUNCATE at the source: delete the table's rows (hard) or mark the live ones deleted (soft). Idempotent.
    False when the table was never loaded (nothing to empty)."""
    with pipeline.sql_client(schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        try:
            if delete_mode == "hard":
                client.execute_sql(f"DELETE FROM {target}")
            else:
                client.execute_sql(
                    f"UPDATE {target} SET {client.escape_column_name(DELETED_AT_COLUMN)} = %s, "
                    f"{client.escape_column_name(LSN_COLUMN)} = %s "
                    f"WHERE {client.escape_column_name(DELETED_AT_COLUMN)} IS NULL", commit_time, lsn)
        except DatabaseUndefinedRelation:
            return False
    return True
