"""`aurora-sync restore`: the S3 archive rebuilds a table as it was at two different points in time, and each
rebuild matches the source as it was then (values, not counts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pytest

from local.fakesnow_adapter import FakeSnowflake
from local.postgres import LocalPostgres
from local.seed import seed
from pipelines import customers_orders
from pipelines.destinations import archive_filesystem
from replica.restore import RestoreError, restore
from runner import cli
from tests.conftest import execute, fresh_database
from tests.helpers import pg_rows
from tests.snowflake.conftest import Bucket, bootstrap

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

ORDERS = "id, customer_id, status, total, currency, placed_at, updated_at"
CUSTOMERS = "id, email, full_name, country, preferences, created_at, updated_at"


@pytest.fixture()
def target_db(pg: LocalPostgres) -> Iterator[str]:
    """An empty PostgreSQL database to restore into (the disaster-recovery target)."""
    with fresh_database(pg, "restore") as dsn:
        yield dsn


def aurora_sync(*args: str) -> int:
    return cli.main(["--no-json-logs", *args])


def source_orders(dsn: str) -> list[tuple[Any, ...]]:
    return pg_rows(dsn, f"SELECT {ORDERS.replace('status', 'status::text')} FROM orders.orders ORDER BY id")


def source_customers(dsn: str, extra: str = "") -> list[tuple[Any, ...]]:
    columns = CUSTOMERS.replace("preferences", "preferences::text") + extra
    return pg_rows(dsn, f"SELECT {columns} FROM customers.customers ORDER BY id")


def duck(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def normalized_json(rows: list[tuple[Any, ...]], index: int) -> list[tuple[Any, ...]]:
    import json

    return [(*r[:index], r[index] and json.loads(r[index]), *r[index + 1:]) for r in rows]


def test_restore_rebuilds_tables_at_two_points_in_time(
    sf_env: dict[str, str], fake_sf: FakeSnowflake, bucket: Bucket, target_db: str, tmp_path: Path
) -> None:
    dsn = sf_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=80, orders=300)
    assert bootstrap() == 0
    customers_orders.run(pipelines_dir=str(tmp_path / "p")).raise_on_failures()
    orders_t1, customers_t1 = source_orders(dsn), source_customers(dsn)
    t1 = time.time()
    time.sleep(1.1)

    execute(
        dsn,
        "UPDATE orders.orders SET status = 'cancelled', total = 0 WHERE id BETWEEN 10 AND 20",
        "INSERT INTO orders.orders (id, customer_id, status, total, placed_at) VALUES (5001, 1, 'new', 9.99, now())",
        "ALTER TABLE customers.customers ADD COLUMN loyalty_tier text",
        "UPDATE customers.customers SET loyalty_tier = 'gold', email = 'vip@example.com' WHERE id = 2",
    )
    customers_orders.run(pipelines_dir=str(tmp_path / "p")).raise_on_failures()
    orders_t2, customers_t2 = source_orders(dsn), source_customers(dsn, ", loyalty_tier")
    t2 = time.time()
    assert orders_t1 != orders_t2 and customers_t1 != [r[:7] for r in customers_t2]

    # t1 into PostgreSQL, through the CLI, with an ISO timestamp
    as_of_t1 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t1)) + f".{int((t1 % 1) * 1e6):06d}+00:00"
    assert aurora_sync("restore", "--table", "orders.orders", "--as-of", as_of_t1, "--to", target_db) == 0
    assert pg_rows(target_db, f"SELECT {ORDERS} FROM orders.orders ORDER BY id") == orders_t1
    # PostgreSQL column types follow the archived Arrow types
    assert dict(pg_rows(target_db, "SELECT column_name, data_type FROM information_schema.columns WHERE "
                                   "table_schema = 'orders' AND table_name = 'orders'")) | {} == {
        "id": "bigint", "customer_id": "bigint", "status": "text", "total": "numeric", "currency": "text",
        "placed_at": "timestamp with time zone", "updated_at": "timestamp with time zone"}
    # an existing target is never overwritten by accident
    assert aurora_sync("restore", "--table", "orders.orders", "--to", target_db) == 2
    # t2 (unix seconds) replaces it
    assert aurora_sync("restore", "--table", "orders.orders", "--as-of", str(t2), "--to", target_db,
                       "--if-exists", "replace") == 0
    assert pg_rows(target_db, f"SELECT {ORDERS} FROM orders.orders ORDER BY id") == orders_t2

    # customers at both times into DuckDB: the column added between them exists only at t2
    duck_file = tmp_path / "restored.duckdb"
    bucket_url, dataset = sf_env["DESTINATION__FILESYSTEM__BUCKET_URL"], "customers_orders"
    restore("customers.customers", f"duckdb:///{duck_file}", bucket_url, dataset, as_of=t1, as_table="t1.customers")
    result = restore("customers.customers", f"duckdb:///{duck_file}", bucket_url, dataset, as_of=t2,
                     as_table="t2.customers")
    assert result.rows == len(customers_t2) and len(result.load_ids) == 2
    assert normalized_json(duck(duck_file, f"SELECT {CUSTOMERS} FROM t1.customers ORDER BY id"), 4) == \
        normalized_json(customers_t1, 4)
    assert normalized_json(duck(duck_file, f"SELECT {CUSTOMERS}, loyalty_tier FROM t2.customers ORDER BY id"), 4) \
        == normalized_json(customers_t2, 4)
    with pytest.raises(RestoreError, match="no load"):
        restore("customers.customers", f"duckdb:///{duck_file}", bucket_url, dataset, as_of=t1 - 3600,
                as_table="t0.customers")


def snapshot_resource(ids: list[int], tag: str) -> Any:
    @dlt.resource(name="customers__accounts", primary_key="id", write_disposition="replace")
    def accounts() -> Any:
        yield pa.table({"id": pa.array(ids, pa.int64()), "email": [f"{tag}{i}@x" for i in ids]})

    return accounts()


def cdc_resource(rows: list[tuple[int, str, int, bool]]) -> Any:
    @dlt.resource(
        name="customers__accounts", primary_key="id",
        write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        columns={"_lsn": {"data_type": "bigint", "dedup_sort": "desc"},
                 "_deleted": {"data_type": "bool", "hard_delete": True}},
    )
    def accounts() -> Any:
        yield pa.Table.from_pylist([{"id": i, "email": e, "_lsn": lsn, "_deleted": d} for i, e, lsn, d in rows],
                                   schema=pa.schema([("id", pa.int64()), ("email", pa.string()),
                                                     ("_lsn", pa.int64()), ("_deleted", pa.bool_())]))

    return accounts()


def test_restore_replays_cdc_deletes_and_restarts_at_a_full_snapshot(
    sf_env: dict[str, str], fake_sf: FakeSnowflake, bucket: Bucket, tmp_path: Path
) -> None:
    assert bootstrap() == 0
    p = dlt.pipeline("accounts", destination="snowflake", staging=archive_filesystem(), dataset_name="accounts",
                     pipelines_dir=str(tmp_path / "p"), progress=None)
    points = []
    p.run(snapshot_resource([1, 2, 3, 4], "a")).raise_on_failed_jobs()
    points.append(time.time())
    p.run(cdc_resource([(2, "a2@x", 50, True), (3, "b3@x", 51, False), (3, "c3@x", 52, False),
                        (5, "b5@x", 53, False)])).raise_on_failed_jobs()
    points.append(time.time())
    p.run(snapshot_resource([1, 3, 9], "s")).raise_on_failed_jobs()  # a resnapshot: 4 and 5 are gone
    points.append(time.time())

    expected = [
        [(1, "a1@x"), (2, "a2@x"), (3, "a3@x"), (4, "a4@x")],
        [(1, "a1@x"), (3, "c3@x"), (4, "a4@x"), (5, "b5@x")],
        [(1, "s1@x"), (3, "s3@x"), (9, "s9@x")],
    ]
    target = tmp_path / "accounts.duckdb"
    for i, (as_of, rows) in enumerate(zip(points, expected, strict=True)):
        restore("customers.accounts", f"duckdb:///{target}", sf_env["DESTINATION__FILESYSTEM__BUCKET_URL"],
                "accounts", as_of=as_of, as_table=f"at_{i}.accounts")
        assert duck(target, f"SELECT id, email FROM at_{i}.accounts ORDER BY id") == rows, f"as of point {i}"
    # CDC bookkeeping columns are not part of the restored table
    assert [r[0] for r in duck(target, "DESCRIBE at_1.accounts")] == ["id", "email"]
    # and the replica in Snowflake agrees with the latest restore
    from tests.snowflake.conftest import sf_rows

    assert sf_rows('SELECT id, email FROM "ACCOUNTS"."CUSTOMERS__ACCOUNTS" ORDER BY id') == expected[-1]


def test_restore_from_a_local_filesystem_archive(
    dlt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The filesystem destination (selected by config alone) writes the same archive; restore reads a local one."""
    dsn = dlt_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=40, orders=150)
    archive = tmp_path / "bucket"
    monkeypatch.setenv("CUSTOMERS_ORDERS__DESTINATION_TYPE", "pipelines.destinations.archive_filesystem")
    monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", archive.as_uri())
    customers_orders.run(pipelines_dir=str(tmp_path / "p")).raise_on_failures()
    assert sorted(p.name for p in (archive / "customers_orders" / "orders").iterdir()) == ["order_items", "orders"]

    target = tmp_path / "restored.duckdb"
    assert aurora_sync("restore", "--table", "orders.order_items", "--to", f"duckdb:///{target}") == 0
    columns = "order_id, line_no, sku, quantity, unit_price, updated_at"
    expected = pg_rows(dsn, f"SELECT {columns} FROM orders.order_items ORDER BY order_id, line_no")
    assert duck(target, f"SELECT {columns} FROM orders.order_items ORDER BY order_id, line_no") == expected
    assert isinstance(expected[0][4], Decimal)
