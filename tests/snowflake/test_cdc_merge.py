"""The merge contract with the CDC source: rows carry `_lsn` (bigint) and `_deleted` (bool); in Snowflake the
latest LSN per key wins, a delete removes the row, a replayed batch changes nothing, and a new column is added.

The CDC source itself belongs to another issue; this resource only mimics its output contract (hints
`dedup_sort` on `_lsn` and `hard_delete` on `_deleted`, delete-insert merge), through the same Snowflake
destination config, S3 stage and archive as production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import pytest

from local.fakesnow_adapter import FakeSnowflake
from pipelines.destinations import archive_filesystem
from sources.replication import MERGE
from tests.snowflake.conftest import Bucket, assert_sql_snapshot, bootstrap, sf_rows, statements_on

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

PIPELINE = "cdc_contract"
TABLE = '"CDC_CONTRACT"."CUSTOMERS__ACCOUNTS"'
SCHEMA = pa.schema([("id", pa.int64()), ("email", pa.string()), ("balance", pa.decimal128(12, 2)),
                    ("_lsn", pa.int64()), ("_deleted", pa.bool_())])


def cdc_resource(rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> Any:
    @dlt.resource(
        name="customers__accounts", primary_key="id",
        write_disposition=MERGE,
        columns={"_lsn": {"data_type": "bigint", "dedup_sort": "desc"},
                 "_deleted": {"data_type": "bool", "hard_delete": True}},
    )
    def accounts() -> Any:
        yield pa.Table.from_pylist(rows, schema=schema)

    return accounts()


def pipeline(tmp_path: Path) -> dlt.Pipeline:
    return dlt.pipeline(PIPELINE, destination="snowflake", staging=archive_filesystem(), dataset_name=PIPELINE,
                        pipelines_dir=str(tmp_path / "pipelines"), progress=None)


def replica() -> list[tuple[Any, ...]]:
    return [tuple(r) for r in sf_rows(f"SELECT id, email, balance, _lsn FROM {TABLE} ORDER BY id")]


def row(i: int, email: str, balance: str, lsn: int, deleted: bool = False, **extra: Any) -> dict[str, Any]:
    from decimal import Decimal

    return {"id": i, "email": email, "balance": Decimal(balance), "_lsn": lsn, "_deleted": deleted, **extra}


def test_cdc_merge_applies_latest_lsn_and_deletes(
    sf_env: dict[str, str], fake_sf: FakeSnowflake, bucket: Bucket, tmp_path: Path
) -> None:
    from decimal import Decimal

    assert bootstrap() == 0
    p = pipeline(tmp_path)
    p.run(cdc_resource([row(i, f"a{i}@x", f"{i}.00", 10 + i) for i in range(1, 6)])).raise_on_failed_jobs()
    assert replica() == [(i, f"a{i}@x", Decimal(f"{i}.00"), 10 + i) for i in range(1, 6)]

    changes = [
        row(1, "late@x", "1.50", 21),        # two versions of 1 staged (a retried load): LSN 22 wins
        row(1, "latest@x", "1.75", 22),
        row(2, "a2@x", "2.00", 23, deleted=True),   # deleted
        row(3, "gone@x", "3.30", 25, deleted=True),  # updated, then deleted in the same batch
        row(6, "new@x", "6.00", 26, deleted=True),  # inserted and deleted within the batch: never appears
        row(7, "seven@x", "7.00", 27),
    ]
    p.run(cdc_resource(changes)).raise_on_failed_jobs()
    expected = [(1, "latest@x", Decimal("1.75"), 22), (4, "a4@x", Decimal("4.00"), 14),
                (5, "a5@x", Decimal("5.00"), 15), (7, "seven@x", Decimal("7.00"), 27)]
    assert replica() == expected
    merge_sql = statements_on(fake_sf.executed, TABLE, "DELETE", "INSERT", "MERGE")
    assert [s.split()[0].upper() for s in merge_sql] == ["DELETE", "INSERT"] * 2  # one merge per batch
    assert_sql_snapshot("merge_cdc", merge_sql[-2:])

    # the slot re-delivers the same batch after a crash before the position was confirmed: nothing changes
    p.run(cdc_resource(changes)).raise_on_failed_jobs()
    assert replica() == expected

    # a column added at the source arrives with the next batch; older rows have NULL
    with_tier = SCHEMA.append(pa.field("tier", pa.string()))
    p.run(cdc_resource([row(4, "a4@x", "4.40", 30, tier="gold")], with_tier)).raise_on_failed_jobs()
    assert sf_rows(f"SELECT id, balance, tier FROM {TABLE} ORDER BY id") == [
        (1, Decimal("1.75"), None), (4, Decimal("4.40"), "gold"), (5, Decimal("5.00"), None),
        (7, Decimal("7.00"), None)]
