"""Which chunks of a snapshot are in the destination, whoever loaded them: a ledger table next to the data.

With helper tasks (`pipelines.snapshot_helper`) a table's chunks are loaded by several dlt pipelines, so the
coordinator's dlt state no longer knows every finished chunk. Each chunk package therefore also appends one row
per chunk to `_aurora_snapshot_chunks`; a chunk counts as done when its row's load is complete in `_dlt_loads`
(dlt writes that entry last), exactly the rule dlt applies to its own state rows.

The same rule finds the rows of loads that never completed: a task killed during a load (or a new ECS task that
lacks the old one's local package) leaves appended rows whose `_dlt_load_id` has no completed load, and the
chunk is then read again. `delete_incomplete_loads` removes those rows before a snapshot is declared finished,
under the exclusive table lock so no load in flight is mistaken for one.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

import dlt
from dlt.destinations.exceptions import DatabaseUndefinedRelation

log = logging.getLogger("aurora_sync.snapshot")
LEDGER_TABLE = "_aurora_snapshot_chunks"
LOAD_ID = "_dlt_load_id"


def ledger_rows(resource: str, generation: str, indexes: list[int]) -> list[dict[str, Any]]:
    task = f"{socket.gethostname()}:{os.getpid()}"
    now = datetime.now(UTC)
    return [{"resource": resource, "generation": generation, "chunk": i, "task": task, "loaded_at": now}
            for i in indexes]


def ledger_resource(rows: list[dict[str, Any]]) -> Any:
    """A dlt resource appending these ledger rows: it goes into the chunks' own package."""
    return dlt.resource(rows, name=LEDGER_TABLE, write_disposition="append",
                        columns={"chunk": {"data_type": "bigint", "nullable": False}})


def done_chunks(pipeline: dlt.Pipeline, resource: str, generation: str) -> set[int]:
    """Chunks of this snapshot whose load completed, by any task (empty when no ledger exists yet)."""
    with pipeline.sql_client() as client:
        col = client.escape_column_name
        sql = (f"SELECT l.{col('chunk')} FROM {client.make_qualified_table_name(LEDGER_TABLE)} l "
               f"JOIN {client.make_qualified_table_name('_dlt_loads')} d ON l.{col(LOAD_ID)} = d.{col('load_id')} "
               f"WHERE d.{col('status')} = 0 AND l.{col('resource')} = %s AND l.{col('generation')} = %s")
        try:
            rows = client.execute_sql(sql, resource, generation) or []
        except DatabaseUndefinedRelation:
            return set()
    return {int(row[0]) for row in rows}


def delete_incomplete_loads(pipeline: dlt.Pipeline, resource: str) -> int:
    """Delete the table's rows whose load never completed; the caller holds the exclusive table lock."""
    with pipeline.sql_client() as client:
        col = client.escape_column_name
        table = client.make_qualified_table_name(resource)
        loads = client.make_qualified_table_name("_dlt_loads")
        where = f"{col(LOAD_ID)} NOT IN (SELECT {col('load_id')} FROM {loads} WHERE {col('status')} = 0)"
        try:
            counted = client.execute_sql(f"SELECT count(*) FROM {table} WHERE {where}") or [(0,)]
        except DatabaseUndefinedRelation:
            return 0
        count = int(counted[0][0])
        if count:
            client.execute_sql(f"DELETE FROM {table} WHERE {where}")
            log.warning(f"{resource}: deleted {count} row(s) of loads that never completed (a task stopped during "
                        "a load; their chunks were read again)", extra={"fields": {"phase": "snapshot",
                                                                                   "table": resource,
                                                                                   "rows": count}})
    return count
