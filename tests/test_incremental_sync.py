"""Snapshot and incremental sync of the customers and orders schemas into DuckDB, against real PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest

from local.seed import seed
from pipelines import customers_orders
from tests.conftest import execute
from tests.helpers import DATASET, duck_rows, pg_rows

TABLES = {
    "customers.customers": "customers__customers",
    "customers.addresses": "customers__addresses",
    "orders.orders": "orders__orders",
    "orders.order_items": "orders__order_items",
}


def run(tmp_path: Path, **kwargs: object):
    info = customers_orders.run(pipelines_dir=str(tmp_path / "pipelines"), **kwargs)
    info.raise_on_failures()
    return info


def extracted_rows(info) -> dict[str, int]:
    return dict(info.rows)


@pytest.fixture()
def seeded(dlt_env: dict[str, str]) -> str:
    dsn = dlt_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=300, orders=1_200)
    return dsn


def test_initial_load_copies_every_row_and_value(seeded: str, dlt_env: dict[str, str], tmp_path: Path) -> None:
    info = run(tmp_path)
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    for source_table, dest_table in TABLES.items():
        (source_count,) = pg_rows(seeded, f"SELECT count(*) FROM {source_table}")[0]
        (dest_count, distinct_keys) = duck_rows(
            duck, f"SELECT count(*), count(DISTINCT {'(order_id, line_no)' if 'items' in dest_table else 'id'}) "
                  f"FROM {DATASET}.{dest_table}")[0]
        assert dest_count == source_count == distinct_keys, dest_table
        assert extracted_rows(info)[dest_table] == source_count
    columns = "id, email, full_name, country, preferences::text, updated_at"
    source = pg_rows(seeded, f"SELECT {columns} FROM customers.customers ORDER BY id")
    dest = duck_rows(duck, f"SELECT {columns} FROM {DATASET}.customers__customers ORDER BY id")
    assert [(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in source] == \
           [(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in dest]
    source_totals = pg_rows(seeded, "SELECT id, status::text, total FROM orders.orders ORDER BY id")
    dest_totals = duck_rows(duck, f"SELECT id, status, total FROM {DATASET}.orders__orders ORDER BY id")
    assert source_totals == dest_totals


def test_incremental_run_merges_only_changed_rows(seeded: str, dlt_env: dict[str, str], tmp_path: Path) -> None:
    run(tmp_path)
    time.sleep(1.1)  # move now() past the seeded cursor values
    execute(
        seeded,
        "UPDATE orders.orders SET status = 'cancelled' WHERE id IN (1, 2, 3)",
        "INSERT INTO customers.customers (id, email, full_name) VALUES (100001, 'new@example.com', 'New Person')",
        "UPDATE customers.customers SET full_name = 'Renamed' WHERE id = 7",
    )
    info = run(tmp_path)
    extracted = extracted_rows(info)
    # the lookback window (60 s by default) re-reads recently updated rows, but never the whole table
    assert 3 <= extracted["orders__orders"] < 1_200
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    assert duck_rows(duck, f"SELECT id, status FROM {DATASET}.orders__orders WHERE id <= 3 ORDER BY id") == [
        (1, "cancelled"), (2, "cancelled"), (3, "cancelled")]
    changed = f"SELECT full_name FROM {DATASET}.customers__customers WHERE id IN (7, 100001) ORDER BY id"
    assert duck_rows(duck, changed) == [("Renamed",), ("New Person",)]
    for source_table, dest_table in TABLES.items():
        (source_count,) = pg_rows(seeded, f"SELECT count(*) FROM {source_table}")[0]
        (dest_count,) = duck_rows(duck, f"SELECT count(*) FROM {DATASET}.{dest_table}")[0]
        assert source_count == dest_count, dest_table


def test_late_commit_arrives_on_next_sync(database: str, dlt_env: dict[str, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction open across a sync, whose rows carry an updated_at older than the saved cursor."""
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["shop"]')
    monkeypatch.setenv("SOURCES__POSTGRES__LOOKBACK_SECONDS", "1")
    execute(database, "CREATE SCHEMA shop",
            "CREATE TABLE shop.events (id int PRIMARY KEY, note text, updated_at timestamptz NOT NULL DEFAULT now())",
            "INSERT INTO shop.events VALUES (1, 'committed early', now() - interval '1 hour')")
    run(tmp_path)

    late = psycopg2.connect(database)  # BEGIN is implicit: updated_at = now() is this transaction's start
    late_cur = late.cursor()
    late_cur.execute("INSERT INTO shop.events (id, note) VALUES (2, 'late commit')")
    time.sleep(3)  # more than the lookback window
    execute(database, "INSERT INTO shop.events (id, note) VALUES (3, 'committed later')")
    run(tmp_path)  # sees row 3, cursor moves past the open transaction's timestamp
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    assert [r[0] for r in duck_rows(duck, f"SELECT id FROM {DATASET}.shop__events ORDER BY id")] == [1, 3]

    late.commit()
    late.close()
    (late_ts, cursor_ts) = pg_rows(database, "SELECT (SELECT updated_at FROM shop.events WHERE id = 2), "
                                             "(SELECT updated_at FROM shop.events WHERE id = 3)")[0]
    # without the guard this row is lost: it is older than the saved cursor minus the lookback window
    assert late_ts < cursor_ts - timedelta(seconds=1)
    run(tmp_path)
    assert duck_rows(duck, f"SELECT id, note FROM {DATASET}.shop__events ORDER BY id") == [
        (1, "committed early"), (2, "late commit"), (3, "committed later")]


def test_snapshot_mode_replaces_and_detects_deletes(seeded: str, dlt_env: dict[str, str], tmp_path: Path) -> None:
    run(tmp_path)
    execute(seeded, "DELETE FROM orders.order_items WHERE order_id = 5")
    run(tmp_path, mode="snapshot", tables=["orders.order_items"])
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.orders__order_items WHERE order_id = 5") == [(0,)]
    (source_count,) = pg_rows(seeded, "SELECT count(*) FROM orders.order_items")[0]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.orders__order_items") == [(source_count,)]


def test_include_exclude_and_primary_key_override(database: str, dlt_env: dict[str, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    execute(database, "CREATE SCHEMA app",
            "CREATE TABLE app.keep_me (code text, region text, qty int, updated_at timestamptz DEFAULT now())",
            "CREATE TABLE app.skip_archive (id int PRIMARY KEY)",
            "INSERT INTO app.keep_me VALUES ('a', 'eu', 1), ('a', 'us', 2)")
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["app"]')
    monkeypatch.setenv("SOURCES__POSTGRES__EXCLUDE", '["*_archive"]')
    monkeypatch.setenv("SOURCES__POSTGRES__TABLES", '{"app.keep_me": {"primary_key": ["code", "region"]}}')
    info = run(tmp_path)
    assert set(extracted_rows(info)) == {"app__keep_me"}
    schema = info.pipeline.default_schema
    assert schema.get_table_columns("app__keep_me")["code"].get("primary_key") is True
    assert schema.get_table_columns("app__keep_me")["region"].get("primary_key") is True
    time.sleep(1.1)
    execute(database, "UPDATE app.keep_me SET qty = 5, updated_at = now() WHERE region = 'us'")
    run(tmp_path)
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    assert duck_rows(duck, f"SELECT code, region, qty FROM {DATASET}.app__keep_me ORDER BY region") == [
        ("a", "eu", 1), ("a", "us", 5)]
