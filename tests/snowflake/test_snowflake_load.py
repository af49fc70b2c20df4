"""customers_orders into (fake) Snowflake through the S3 stage, with the real dlt Snowflake SQL, the real S3
upload to a moto endpoint, COPY INTO from S3 through the named stage, and merges. Values are compared, not counts."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from local.fakesnow_adapter import FakeSnowflake
from local.moto_s3 import LocalS3
from local.seed import seed
from pipelines import customers_orders
from tests.conftest import execute
from tests.helpers import pg_rows
from tests.snowflake.conftest import (
    DATASET,
    STAGE,
    Bucket,
    assert_sql_snapshot,
    bootstrap,
    sf_rows,
    statements_on,
)

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

TABLES = {
    "customers.customers": "CUSTOMERS__CUSTOMERS",
    "customers.addresses": "CUSTOMERS__ADDRESSES",
    "orders.orders": "ORDERS__ORDERS",
    "orders.order_items": "ORDERS__ORDER_ITEMS",
}
ARCHIVE_KEY = re.compile(r"^customers_orders/(customers|orders)/(\w+)/(\d+\.\d+)\.\w+\.parquet$")


def run(tmp_path: Path, **kwargs: Any) -> Any:
    info = customers_orders.run(pipelines_dir=str(tmp_path / "pipelines"), **kwargs)
    info.raise_on_failures()
    return info


def sf(sql: str) -> list[tuple[Any, ...]]:
    return sf_rows(sql)


def as_plain(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Snowflake's NUMBER(19,0) comes back as Decimal; compare it with PostgreSQL's int as int."""
    return [tuple(int(v) if isinstance(v, Decimal) and v == v.to_integral_value() and v.as_tuple().exponent == 0
                  else v for v in row) for row in rows]


def archive_keys(s3: LocalS3, bucket: Bucket) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def assert_replica_matches_source(dsn: str) -> None:
    checks = {
        "customers.customers": ("id, email, full_name, country, updated_at, created_at", "id"),
        "customers.addresses": ("id, customer_id, kind, line1, city, postcode, updated_at", "id"),
        "orders.orders": ("id, customer_id, status::text, total, currency, placed_at, updated_at", "id"),
        "orders.order_items": ("order_id, line_no, sku, quantity, unit_price, updated_at", "order_id, line_no"),
    }
    for source, (columns, order) in checks.items():
        expected = pg_rows(dsn, f"SELECT {columns} FROM {source} ORDER BY {order}")
        dest_columns = columns.replace("::text", "")
        actual = as_plain(sf(f"SELECT {dest_columns} FROM {DATASET}.{TABLES[source]} ORDER BY {order}"))
        assert actual == expected, source
    # jsonb arrives as VARIANT with the same document
    expected_json = [(i, p and json.loads(p)) for i, p in pg_rows(
        dsn, "SELECT id, preferences::text FROM customers.customers ORDER BY id")]
    actual_json = [(int(i), p and json.loads(p)) for i, p in sf(
        f"SELECT id, preferences FROM {DATASET}.CUSTOMERS__CUSTOMERS ORDER BY id")]
    assert actual_json == expected_json


def test_customers_orders_load_through_s3_stage_then_merge_changes_and_new_column(
    sf_env: dict[str, str], fake_sf: FakeSnowflake, s3: LocalS3, bucket: Bucket, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = sf_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=120, orders=1_500)
    monkeypatch.setenv("SOURCES__POSTGRES__BLOCK_SIZE_BYTES", "65536")  # several Arrow batches → several files
    assert bootstrap() == 0

    info = run(tmp_path)
    assert info.infos[-1].destination_type.endswith("snowflake")
    assert_replica_matches_source(dsn)

    # the staged files are the archive: <pipeline>/<schema>/<table>/<load_id>.<file_id>.parquet, SSE-KMS
    first_keys = archive_keys(s3, bucket)
    data_keys = [k for k in first_keys if ARCHIVE_KEY.match(k)]
    assert {ARCHIVE_KEY.match(k).group(1, 2) for k in data_keys} == {
        ("customers", "customers"), ("customers", "addresses"), ("orders", "orders"), ("orders", "order_items")}
    assert len([k for k in data_keys if "/order_items/" in k]) > 1, "file_max_bytes should split the table"
    head = s3.client().head_object(Bucket=bucket.name, Key=data_keys[0])
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == bucket.kms_key_arn
    manifest_key = next(k for k in first_keys if k.startswith("customers_orders/_manifests/orders/order_items/"))
    manifest = json.loads(s3.client().get_object(Bucket=bucket.name, Key=manifest_key)["Body"].read())
    assert manifest["primary_key"] == ["order_id", "line_no"] and manifest["write_disposition"] == "merge"

    # COPY INTO read those very files from S3 through the named stage (fakesnow records the URLs it loaded)
    loaded = {r[0] for r in sf("SELECT file_name FROM information_schema.load_history")}
    assert {f"{bucket.url}/{k}" for k in data_keys} <= loaded
    # the SQL dlt sent is the reviewed SQL: COPY through the stage, one DELETE + one INSERT per table and batch
    items = f'"{DATASET}"."ORDERS__ORDER_ITEMS"'
    copies = statements_on(fake_sf.executed, '"ORDERS__ORDER_ITEMS"', "COPY")
    assert len(copies) == len([k for k in data_keys if "/order_items/" in k])
    assert all(f"FROM @{STAGE}" in c for c in copies)
    assert_sql_snapshot("copy_parquet", copies[:1], bucket.name)
    assert_sql_snapshot("copy_jsonl_state", statements_on(fake_sf.executed, "_DLT_PIPELINE_STATE", "COPY"),
                        bucket.name)
    assert_sql_snapshot("merge_incremental", statements_on(fake_sf.executed, items, "DELETE", "INSERT", "MERGE"))
    executed_first_run = len(fake_sf.executed)

    # second run: updates, inserts and a new column
    time.sleep(1.1)
    execute(
        dsn,
        "UPDATE orders.orders SET status = 'shipped', total = 12.34 WHERE id IN (5, 6)",
        "UPDATE orders.order_items SET quantity = 99 WHERE order_id = 7 AND line_no = 1",
        "ALTER TABLE customers.customers ADD COLUMN loyalty_tier text",
        "UPDATE customers.customers SET loyalty_tier = 'gold', full_name = 'Ada Renamed' WHERE id = 3",
        "INSERT INTO customers.customers (id, email, full_name, loyalty_tier) "
        "VALUES (9001, 'n@example.com', 'New', 'new')",
    )
    run(tmp_path)
    assert_replica_matches_source(dsn)
    assert sf(f"SELECT id, full_name, loyalty_tier FROM {DATASET}.CUSTOMERS__CUSTOMERS WHERE id IN (3, 9001, 4) "
              "ORDER BY id") == [(3, "Ada Renamed", "gold"), (4, pg_rows(dsn, "SELECT full_name FROM "
                                 "customers.customers WHERE id = 4")[0][0], None), (9001, "New", "new")]
    assert sf(f"SELECT id, status, total FROM {DATASET}.ORDERS__ORDERS WHERE id IN (5, 6) ORDER BY id") == [
        (5, "shipped", Decimal("12.34")), (6, "shipped", Decimal("12.34"))]
    # the first load's files are still there (keep_staged_files, no truncation of staged tables)
    second_keys = archive_keys(s3, bucket)
    assert set(first_keys) <= set(second_keys) and len(second_keys) > len(first_keys)
    second_run = fake_sf.executed[executed_first_run:]
    for table in TABLES.values():
        merges = statements_on(second_run, f'"{DATASET}"."{table}"', "DELETE", "INSERT", "MERGE")
        assert [m.split()[0].upper() for m in merges] == ["DELETE", "INSERT"], table
