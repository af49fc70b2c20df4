"""`make demo`: a throwaway PostgreSQL with sample data, synced into demo.duckdb by the real CLI.

It runs the main job twice (initial load, then after some inserts and updates) and fails loudly
if any table's row count differs between source and destination.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

from local.postgres import LocalPostgres
from local.seed import seed, table_counts

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DUCKDB_FILE = PROJECT_ROOT / "demo.duckdb"
DATASET = "customers_orders"
TABLES = ["customers.customers", "customers.addresses", "orders.orders", "orders.order_items"]
console = Console()


def aurora_sync(env: dict[str, str], *args: str) -> None:
    command = [str(Path(sys.executable).parent / "aurora-sync"), "--no-json-logs", *args]
    console.print(f"[bold]$ aurora-sync {' '.join(args)}[/bold]")
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"aurora-sync {' '.join(args)} failed with exit code {result.returncode}")
    console.print(f"  done in {time.monotonic() - started:.1f} s")


def destination_counts() -> dict[str, int]:
    con = duckdb.connect(str(DUCKDB_FILE), read_only=True)
    try:
        return {
            t: con.execute(f"SELECT count(*) FROM {DATASET}.{t.replace('.', '__')}").fetchone()[0] for t in TABLES
        }
    finally:
        con.close()


def compare(dsn: str, title: str) -> bool:
    source, dest = table_counts(dsn, TABLES), destination_counts()
    table = Table(title=title)
    for column in ("table", "source rows", "destination rows", "match"):
        table.add_column(column, justify="right" if "rows" in column else "left")
    for name in TABLES:
        ok = source[name] == dest[name]
        table.add_row(name, f"{source[name]:,}", f"{dest[name]:,}", "[green]yes[/green]" if ok else "[red]NO[/red]")
    console.print(table)
    return source == dest


def main() -> int:
    DUCKDB_FILE.unlink(missing_ok=True)
    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="aurora-sync-demo-") as work:
        console.print(f"Started a throwaway PostgreSQL on 127.0.0.1:{pg.port} (wal_level=logical)")
        dsn = pg.url()
        started = time.monotonic()
        seed(dsn, customers=5_000, orders=30_000)
        console.print(f"Seeded sample data in {time.monotonic() - started:.1f} s: {table_counts(dsn, TABLES)}")
        env = {
            **os.environ,
            "SOURCES__POSTGRES__CREDENTIALS": dsn,
            "DESTINATION__DUCKDB__CREDENTIALS": str(DUCKDB_FILE),
            "DLT_DATA_DIR": str(Path(work) / "dlt"),
        }
        aurora_sync(env, "run", "--pipeline", "customers_orders")
        ok = compare(dsn, "After the initial load")

        console.print("Inserting 100 orders and updating 250 customers in the source ...")
        import psycopg2

        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("""
                INSERT INTO orders.orders (id, customer_id, status, total, placed_at)
                SELECT 100000 + g, g, 'new', 10 * g, now() FROM generate_series(1, 100) g;
                INSERT INTO orders.order_items (order_id, line_no, sku, quantity, unit_price)
                SELECT 100000 + g, 1, 'SKU-NEW', 1, 10 * g FROM generate_series(1, 100) g;
                UPDATE customers.customers SET full_name = full_name || ' (updated)' WHERE id % 20 = 0;
            """)
        conn.close()
        aurora_sync(env, "run", "--pipeline", "customers_orders")
        ok = compare(dsn, "After inserts and updates (incremental run)") and ok
        (updated,) = duckdb.connect(str(DUCKDB_FILE), read_only=True).execute(
            f"SELECT count(*) FROM {DATASET}.customers__customers WHERE full_name LIKE '%(updated)'").fetchone()
        console.print(f"Updated customers visible in DuckDB: {updated} (expected 250)")
        ok = ok and updated == 250

        console.print("\n[bold]Change data capture[/bold]: a publication and a replication slot, then deletes "
                      "(which no updated_at cursor can see) stream from the WAL")
        aurora_sync(env, "setup", "--pipeline", "customers_orders")
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("""
                DELETE FROM orders.order_items WHERE order_id IN (SELECT id FROM orders.orders WHERE id <= 10);
                DELETE FROM orders.orders WHERE id <= 10;
                UPDATE customers.customers SET country = 'NL' WHERE id = 1;
            """)
        conn.close()
        console.print("Deleted orders 1-10 (and their items) and updated customer 1 in the source ...")
        aurora_sync(env, "run", "--pipeline", "customers_orders", "--mode", "cdc")
        ok = compare(dsn, "After the CDC run (deletes included)") and ok
        (left,) = duckdb.connect(str(DUCKDB_FILE), read_only=True).execute(
            f"SELECT count(*) FROM {DATASET}.orders__orders WHERE id <= 10").fetchone()
        console.print(f"Deleted orders still in DuckDB: {left} (expected 0)")
        ok = ok and left == 0
        aurora_sync(env, "teardown", "--pipeline", "customers_orders", "--yes")
    console.print(f"PostgreSQL stopped. The replica is in {DUCKDB_FILE.name}: "
                  f"duckdb {DUCKDB_FILE.name} -c 'SHOW ALL TABLES'")
    if not ok:
        console.print("[red bold]Source and destination differ.[/red bold]")
        return 1
    console.print("[green bold]Source and destination match.[/green bold]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
