"""`make demo-snowflake`: the production Snowflake path on this machine, with stand-ins for AWS and Snowflake.

Starts a throwaway PostgreSQL with sample data, a moto S3 endpoint (the archive bucket, SSE-KMS) and
fakesnow's HTTP server (the real snowflake-connector-python signs in with a throwaway key pair), bootstraps the
stage, runs the customers_orders pipeline into fake Snowflake through the S3 stage, prints per-table counts,
restores one table from the archive, and stops everything.

The pipeline runs in this process because the fakesnow adapter (local/fakesnow_adapter.py) must patch dlt's
Snowflake capabilities where dlt runs; everything else is configured exactly as in production, by env vars.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from local.fakesnow_adapter import FakeSnowflake, fake_snowflake_server
from local.moto_s3 import LocalS3
from local.postgres import LocalPostgres
from local.seed import seed, table_counts

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TABLES = ["customers.customers", "customers.addresses", "orders.orders", "orders.order_items"]
DATABASE, DATASET = "AURORA_SYNC", "CUSTOMERS_ORDERS"
console = Console()


def throwaway_key_pair() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def environment(dsn: str, s3: LocalS3, bucket: str, kms_key: str, fake: FakeSnowflake, work: Path) -> dict[str, str]:
    """The task environment of production, pointed at the stand-ins."""
    private, public = throwaway_key_pair()
    endpoint = f"host={fake.host}&port={fake.port}&protocol={fake.protocol}"
    return {
        "SOURCES__POSTGRES__CREDENTIALS": dsn,
        "DLT_DATA_DIR": str(work / "dlt"),
        "RUNTIME__LOG_LEVEL": "WARNING",
        "CUSTOMERS_ORDERS__DESTINATION_TYPE": "snowflake",
        "CUSTOMERS_ORDERS__STAGING_TYPE": "pipelines.destinations.archive_filesystem",
        "DESTINATION__FILESYSTEM__BUCKET_URL": f"s3://{bucket}",
        "DESTINATION__FILESYSTEM__KWARGS": json.dumps(
            {"s3_additional_kwargs": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}}),
        "DESTINATION__SNOWFLAKE__CREDENTIALS": f"snowflake://AURORA_SYNC_LOADER@demoaccount/{DATABASE}"
                                              f"?warehouse=AURORA_SYNC_LOAD_WH&role=AURORA_SYNC_LOADER&{endpoint}",
        "DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY": private,
        "SNOWFLAKE_BOOTSTRAP__CREDENTIALS": f"snowflake://demo-admin:unused-by-the-fake@demoaccount/?{endpoint}",
        "SNOWFLAKE_BOOTSTRAP__STORAGE_AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/aurora-sync-demo-snowflake",
        "SNOWFLAKE_BOOTSTRAP__PUBLIC_KEY": public,
        **s3.dlt_env(),
    }


def snowflake_rows(fake: FakeSnowflake, sql: str) -> list[tuple[Any, ...]]:
    import snowflake.connector

    conn = snowflake.connector.connect(user="demo", password="unused-by-the-fake", account="demoaccount",
                                       database=DATABASE, network_timeout=30, **fake.connect_params())
    try:
        with conn.cursor() as cur:
            return list(cur.execute(sql).fetchall())
    finally:
        conn.close()


def main() -> int:
    from runner import logs

    os.chdir(PROJECT_ROOT)  # dlt reads .dlt/config.toml from the working directory
    logs.setup(json_lines=False)  # the runner's log format and its filter for known dlt noise
    # fakesnow's DuckDB calls warn about an extra Arrow copy: a stand-in detail, not the demo's concern
    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="aurora-demo-sf-") as tmp:
        work = Path(tmp)
        console.print("[bold]Starting PostgreSQL, moto S3 and fakesnow's server...[/bold]")
        pg = stack.enter_context(LocalPostgres())
        s3 = stack.enter_context(LocalS3())
        bucket = f"aurora-sync-demo-{int(time.time())}"
        s3.create_bucket(bucket)
        fake = stack.enter_context(fake_snowflake_server(s3.s3fs()))
        dsn = pg.url()
        seed(dsn, customers=2_000, orders=10_000)
        os.environ.update(environment(dsn, s3, bucket, s3.create_kms_key(), fake, work))

        from replica.snowflake_bootstrap import execute, generate, select, settings_from_config

        statements = generate(settings_from_config())
        console.print(f"snowflake-bootstrap: {len(statements)} statements; fakesnow runs the database, schema, "
                      "file format and stage (`aurora-sync snowflake-bootstrap --print` shows them all)")
        import snowflake.connector

        admin = snowflake.connector.connect(user="demo-admin", password="unused-by-the-fake",
                                            account="demoaccount", network_timeout=30, **fake.connect_params())
        try:
            execute(admin, select(statements, ["database", "schema", "file_format", "stage"]))
        finally:
            admin.close()

        from pipelines import customers_orders

        started = time.monotonic()
        info = customers_orders.run(pipelines_dir=str(work / "pipelines"))
        info.raise_on_failures()
        console.print(f"customers_orders loaded through s3://{bucket} in {time.monotonic() - started:.1f} s")

        keys = [o["Key"] for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        source = table_counts(dsn, TABLES)
        report = Table(title="PostgreSQL → S3 archive → Snowflake (fakesnow)")
        for column in ("table", "source rows", "snowflake rows", "archived files", "match"):
            report.add_column(column, justify="left" if column in ("table", "match") else "right")
        ok = True
        for name in TABLES:
            (count,) = snowflake_rows(fake, f"SELECT count(*) FROM {DATASET}.{name.replace('.', '__').upper()}")[0]
            files = sum(1 for k in keys if k.startswith(f"customers_orders/{name.replace('.', '/')}/"))
            match = int(count) == source[name]
            ok &= match
            report.add_row(name, f"{source[name]:,}", f"{int(count):,}", str(files),
                           "[green]yes[/green]" if match else "[red]NO[/red]")
        console.print(report)

        from replica.restore import restore

        restored = restore("orders.orders", f"duckdb:///{work / 'restored.duckdb'}", f"s3://{bucket}",
                           "customers_orders")
        console.print(f"restore orders.orders from the archive: {restored.rows:,} rows "
                      f"(source {source['orders.orders']:,})")
        ok &= restored.rows == source["orders.orders"]
        console.print("[bold green]OK[/bold green]" if ok else "[bold red]MISMATCH[/bold red]")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
