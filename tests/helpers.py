"""Reading back what landed, from the source and from DuckDB, for value-level comparisons."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import psycopg2

DATASET = "customers_orders"


def duck_rows(db_file: str | Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db_file), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def pg_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def log_events(lines: Iterable[str], message: str) -> list[dict[str, Any]]:
    """The JSON log lines (`--json-logs`) whose message is `message`, parsed; other output is skipped."""
    return [event for event in (json.loads(line) for line in lines if line.startswith("{"))
            if event.get("message") == message]
