"""A durable run history in the destination itself (`_aurora_sync_runs`), so `status` works from any
machine: ECS tasks start with an empty disk, and dlt's local trace dies with the task.

Loaded through dlt like any other table (append), following dlt's documented pattern of loading the
run trace into the destination.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dlt

from . import logs

RUNS_TABLE = "_aurora_sync_runs"


def record(pipeline: dlt.Pipeline, run: dict[str, Any]) -> None:
    """Append one run record; never fails the run (the destination may be the thing that is down)."""
    row = {"run_id": logs.RUN_ID, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **run}
    try:
        pipeline.run([row], table_name=RUNS_TABLE, write_disposition="append",
                     columns={"rows": {"data_type": "json"}, "error": {"data_type": "text", "nullable": True},
                              "failed_tables": {"data_type": "json", "nullable": True},
                              "verified": {"data_type": "json", "nullable": True},
                              "repairs": {"data_type": "json", "nullable": True}})
    except Exception as exc:
        logs.event(f"run history not recorded: {type(exc).__name__}", logging.WARNING)


def recent(pipeline: dlt.Pipeline, limit: int = 20, mode: str | None = None) -> list[dict[str, Any]]:
    """The newest run records first; `mode`: only those (a daily verify among 288 merges a day)."""
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name(RUNS_TABLE)
        if not client.has_dataset():
            return []
        where = "WHERE mode = %s " if mode else ""
        try:
            with client.execute_query(f"SELECT * FROM {table} {where}ORDER BY recorded_at DESC LIMIT {int(limit)}",
                                      *([mode] if mode else [])) as cur:
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
        except Exception:
            return []  # no run recorded yet
    return [dict(zip(names, r, strict=True)) for r in rows]
