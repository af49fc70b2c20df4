"""Fixtures for the Snowflake path: a moto S3 server per session, a bucket per test, fakesnow, throwaway keys.

The same env vars an ECS task would get select Snowflake with the S3 archive stage; only the endpoint (moto) and
Snowflake itself (fakesnow through local/fakesnow_adapter.py) are stand-ins.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from local.fakesnow_adapter import FakeSnowflake
from local.moto_s3 import LocalS3, MotoNotAvailable

DATABASE = "AURORA_SYNC"  # from .dlt/config.toml
STAGE = "AURORA_SYNC.RAW.ARCHIVE_STAGE"
DATASET = "CUSTOMERS_ORDERS"
STAGING_TYPE = "pipelines.destinations.archive_filesystem"
ROLE_ARN = "arn:aws:iam::123456789012:role/aurora-sync-test-snowflake"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str


@dataclass(frozen=True)
class Bucket:
    name: str
    url: str
    kms_key_arn: str


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    try:
        server = LocalS3().start()
    except MotoNotAvailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def make_key_pair() -> KeyPair:
    """A throwaway RSA key: no key material lives in the repository."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return KeyPair(private, public)


@pytest.fixture(scope="session")
def key_pair() -> KeyPair:
    """One throwaway key per test session."""
    return make_key_pair()


@pytest.fixture()
def bucket(s3: LocalS3) -> Bucket:
    name = f"aurora-sync-{uuid.uuid4().hex[:12]}"
    return Bucket(name, s3.create_bucket(name), s3.create_kms_key())


def snowflake_env(s3: LocalS3, bucket: Bucket, key_pair: KeyPair) -> dict[str, str]:
    """What production sets in the task environment (see .dlt/config.toml), pointed at the stand-ins."""
    import json

    env = {
        "CUSTOMERS_ORDERS__DESTINATION_TYPE": "snowflake",
        "CUSTOMERS_ORDERS__STAGING_TYPE": STAGING_TYPE,
        "DESTINATION__FILESYSTEM__BUCKET_URL": bucket.url,
        "DESTINATION__FILESYSTEM__KWARGS": json.dumps({"s3_additional_kwargs": {
            "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": bucket.kms_key_arn}}),
        "DESTINATION__SNOWFLAKE__CREDENTIALS__HOST": "fakeaccount",
        "DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE": DATABASE,
        "DESTINATION__SNOWFLAKE__CREDENTIALS__USERNAME": "AURORA_SYNC_LOADER",
        "DESTINATION__SNOWFLAKE__CREDENTIALS__WAREHOUSE": "AURORA_SYNC_LOAD_WH",
        "DESTINATION__SNOWFLAKE__CREDENTIALS__ROLE": "AURORA_SYNC_LOADER",
        "DESTINATION__SNOWFLAKE__CREDENTIALS__PRIVATE_KEY": key_pair.private_pem,
        "SNOWFLAKE_BOOTSTRAP__STORAGE_AWS_ROLE_ARN": ROLE_ARN,
        "SNOWFLAKE_BOOTSTRAP__PUBLIC_KEY": key_pair.public_pem,
        "SNOWFLAKE_BOOTSTRAP__CREDENTIALS": "snowflake://bootstrap-admin:unused@fakeaccount/",
        "DATA_WRITER__FILE_MAX_BYTES": "20000",  # several files per table, as 100-250 MB files would be in production
        "DATA_WRITER__BUFFER_MAX_ITEMS": "1000",
    }
    env.update(s3.dlt_env())
    return env


@pytest.fixture()
def sf_env(monkeypatch: pytest.MonkeyPatch, dlt_env: dict[str, str], s3: LocalS3, bucket: Bucket,
           key_pair: KeyPair) -> dict[str, str]:
    env = {**dlt_env, **snowflake_env(s3, bucket, key_pair)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture()
def fake_sf(s3: LocalS3) -> Iterator[FakeSnowflake]:
    """fakesnow in-process: every `snowflake.connector.connect` in this test talks to one DuckDB-backed fake."""
    from local.fakesnow_adapter import fake_snowflake

    with fake_snowflake(s3.s3fs()) as fake:
        yield fake


def sf_rows(sql: str, **connect: Any) -> list[tuple[Any, ...]]:
    """Query the (fake) Snowflake through the connector, as an analyst would."""
    import snowflake.connector

    conn = snowflake.connector.connect(database=DATABASE, **connect)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def bootstrap(*extra: str) -> int:
    """`aurora-sync snowflake-bootstrap` for the objects fakesnow can create (database, schema, format, stage)."""
    from runner import cli

    return cli.main(["--no-json-logs", "snowflake-bootstrap", "--only", "database", "schema", "file_format", "stage",
                     *extra])


SNAPSHOTS = Path(__file__).parent / "snapshots"
_LOAD_ID = re.compile(r"\b\d{10}\.\d+\b")
_FILE_ID = re.compile(r"(<load_id>)\.[A-Za-z0-9]{10}\.")


def normalize_sql(sql: str, bucket: str | None = None) -> str:
    """Stable text of one statement: load ids, file ids and the bucket name replaced, runs of blanks collapsed."""
    if bucket:
        sql = sql.replace(bucket, "<bucket>")
    sql = _FILE_ID.sub(r"\1.<file_id>.", _LOAD_ID.sub("<load_id>", sql))
    lines = [re.sub(r"\s+", " ", line).strip() for line in sql.strip().splitlines()]
    return "\n".join(line for line in lines if line) + "\n"


def statements_on(executed: list[str], table: str, *verbs: str) -> list[str]:
    """The statements dlt sent that start with one of `verbs` and name `table` (e.g. '"DS"."T"')."""
    return [s for s in executed if s.lstrip().upper().startswith(verbs) and table in s]


def assert_sql_snapshot(name: str, statements: list[str], bucket: str | None = None) -> None:
    """Compare dlt's SQL with the reviewed snapshot; UPDATE_SQL_SNAPSHOTS=1 rewrites it (review the diff!)."""
    text = ";\n".join(normalize_sql(s, bucket) for s in statements)
    path = SNAPSHOTS / f"{name}.sql"
    if os.environ.get("UPDATE_SQL_SNAPSHOTS") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with UPDATE_SQL_SNAPSHOTS=1 and review it"
    assert text == path.read_text(), (
        f"dlt now emits different SQL than the reviewed {path.name}. Review the change (Snowflake cost and "
        "semantics: one MERGE per table and batch, COPY options), then run with UPDATE_SQL_SNAPSHOTS=1."
    )
