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

from sources.replication.changes import DELETED_AT_COLUMN, LSN_COLUMN, ORDINAL_COLUMN, Position
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN

IN_LIST = 500  # keys per query: well under every destination's limit on a statement's parameters


def table_name(pipeline: dlt.Pipeline, schema_name: str, resource_name: str) -> str:
    """The warehouse's name for a table: dlt normalizes `zoo__Every Type` to `zoo__every_type`."""
    schema = pipeline.schemas.get(schema_name)
    naming = schema.naming if schema else Schema(schema_name).naming
    return str(naming.normalize_tables_path(resource_name))


def _sql_client(pipeline: dlt.Pipeline, schema_name: str) -> Any:
    """The warehouse's SQL client on the pipeline's dataset, also before the schema's first package made it known
    (a merge whose first op is a TRUNCATE: dlt would raise SchemaNotFoundError and wedge every merge after it)."""
    return pipeline.sql_client(schema_name if schema_name in pipeline.schemas else None)


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
    with _sql_client(pipeline, schema_name) as client:
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
                    delete_mode: str) -> dict[str, list[tuple[str, int, int]]]:
    """A keyless table's live copies in the warehouse for the given row hashes: (`_row_key`, `_lsn`, `_lsn_ordinal`),
    positions (0, 0) where a table from before them has none."""
    copies: dict[str, list[tuple[str, int, int]]] = {}
    wanted = sorted(hashes)
    with _sql_client(pipeline, schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        present = _present_columns(client, target)
        if present is None:
            return {}
        key, digest = client.escape_column_name(ROW_KEY_COLUMN), client.escape_column_name(ROW_HASH_COLUMN)
        lsn = client.escape_column_name(LSN_COLUMN) if LSN_COLUMN in present else "0"
        ordinal = client.escape_column_name(ORDINAL_COLUMN) if ORDINAL_COLUMN in present else "0"
        live = f" AND {client.escape_column_name(DELETED_AT_COLUMN)} IS NULL" if delete_mode == "soft" else ""
        for start in range(0, len(wanted), IN_LIST):
            chunk = wanted[start:start + IN_LIST]
            rows = client.execute_sql(f"SELECT {digest}, {key}, {lsn}, {ordinal} FROM {target} WHERE {digest} IN "
                                      f"({', '.join(['%s'] * len(chunk))}){live}", *chunk) or []
            for row_hash, row_key, at, place in rows:
                copies.setdefault(str(row_hash), []).append((str(row_key), int(at or 0), int(place or 0)))
    return copies


def _present_columns(client: Any, target: str) -> set[str] | None:
    """The table's columns (lower case), or None when it does not exist."""
    try:
        with client.execute_query(f"SELECT * FROM {target} WHERE 1 = 0") as cursor:
            return {d[0].lower() for d in cursor.description or []}
    except DatabaseUndefinedRelation:
        return None


def _before(client: Any, position: Position, with_ordinal: bool) -> str:
    """SQL: the row's version is older than `position` (rows without a position are older than anything)."""
    lsn, ordinal = position
    lsn_col = client.escape_column_name(LSN_COLUMN)
    if not with_ordinal:  # a table from before ordinals: its rows count as ordinal 0
        return f"({lsn_col} IS NULL OR {lsn_col} {'<=' if ordinal > 0 else '<'} {int(lsn)})"
    ord_col = client.escape_column_name(ORDINAL_COLUMN)
    return (f"({lsn_col} IS NULL OR {lsn_col} < {int(lsn)} OR ({lsn_col} = {int(lsn)} AND "
            f"COALESCE({ord_col}, 0) < {int(ordinal)}))")


def truncate(pipeline: dlt.Pipeline, schema_name: str, resource_name: str, delete_mode: str, position: Position,
             commit_time: datetime | None) -> bool:
    """TRUNCATE at the source: delete the rows (hard) or mark the live ones deleted (soft) whose version is older
    than the TRUNCATE. Applying it again, even after later rows were loaded, changes nothing: it is guarded by
    position. False when the table was never loaded (nothing to empty)."""
    with _sql_client(pipeline, schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        present = _present_columns(client, target)
        if present is None:
            return False
        older = _before(client, position, ORDINAL_COLUMN in present)
        if delete_mode == "hard":
            client.execute_sql(f"DELETE FROM {target} WHERE {older}")
        else:
            assignments = [f"{client.escape_column_name(DELETED_AT_COLUMN)} = %s",
                           f"{client.escape_column_name(LSN_COLUMN)} = %s"]
            params: list[Any] = [commit_time, position[0]]
            if ORDINAL_COLUMN in present:
                assignments.append(f"{client.escape_column_name(ORDINAL_COLUMN)} = %s")
                params.append(position[1])
            client.execute_sql(
                f"UPDATE {target} SET {', '.join(assignments)} "
                f"WHERE {client.escape_column_name(DELETED_AT_COLUMN)} IS NULL AND {older}", *params)
    return True


def newest_lsn(pipeline: dlt.Pipeline, schema_name: str, resource_name: str) -> int | None:
    """The newest commit LSN any row of the table carries (a metadata lookup in Snowflake); None for no table or
    no rows. Versions after it cannot be in the table yet, so only those at or before it need a guard read."""
    with _sql_client(pipeline, schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        present = _present_columns(client, target)
        if present is None or LSN_COLUMN not in present:
            return None
        rows = client.execute_sql(f"SELECT MAX({client.escape_column_name(LSN_COLUMN)}) FROM {target}") or []
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def delete_copies(pipeline: dlt.Pipeline, schema_name: str, resource_name: str, delete_mode: str,
                  deletes: list[list[Any]]) -> int:
    """Remove (hard) or mark deleted (soft) a keyless table's copies by their `_row_key`: idempotent, so a delete
    recorded before a crash is simply applied again. `deletes`: [row key, commit time (ISO), lsn, ordinal]."""
    if not deletes:
        return 0
    with _sql_client(pipeline, schema_name) as client:
        target = client.make_qualified_table_name(table_name(pipeline, schema_name, resource_name))
        present = _present_columns(client, target)
        if present is None:
            return 0
        key = client.escape_column_name(ROW_KEY_COLUMN)
        for start in range(0, len(deletes), IN_LIST):
            chunk = deletes[start:start + IN_LIST]
            if delete_mode == "hard":
                client.execute_sql(f"DELETE FROM {target} WHERE {key} IN ({', '.join(['%s'] * len(chunk))})",
                                   *[d[0] for d in chunk])
                continue
            ordinal = (f", {client.escape_column_name(ORDINAL_COLUMN)} = %s" if ORDINAL_COLUMN in present else "")
            for row_key, deleted_at, lsn, position in chunk:  # each copy its own time; rare (soft + keyless)
                params = [deleted_at, lsn, *([position] if ordinal else []), row_key]
                client.execute_sql(
                    f"UPDATE {target} SET {client.escape_column_name(DELETED_AT_COLUMN)} = %s, "
                    f"{client.escape_column_name(LSN_COLUMN)} = %s{ordinal} WHERE {key} = %s AND "
                    f"{client.escape_column_name(DELETED_AT_COLUMN)} IS NULL", *params)
    return len(deletes)
