"""What one merge cycle costs in Snowflake statements (`docs/costs.md`), counted from the SQL dlt really sends
(fakesnow's query log), for 1 and for 10 tables with changes waiting. The count must grow by a fixed number of
statements per table and not with the number of landed batches: a cycle is one package, one merge per table.
An idle cycle sends none."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from local.fakesnow_adapter import FakeSnowflake
from pipelines import cdc as cdc_pipeline
from pipelines import customers_orders
from pipelines.merge import merge_landed
from tests.snowflake.conftest import (  # noqa: F401  (fixtures)
    Bucket,
    bootstrap,
    bucket,
    fake_sf,
    key_pair,
    s3,
    sf_env,
)

from .conftest import Harness

pytestmark = [pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning"), pytest.mark.slow]


def verb(statement: str) -> str:
    words = re.sub(r"\s+", " ", statement.strip()).upper().split(" ")
    if words[0] in ("CREATE", "ALTER", "DROP") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


def cycle(cdc: Harness, fake: FakeSnowflake, tables: list[str], batches: int) -> tuple[Counter[str], float]:
    """`batches` landed batches of changes to every table, then one merge cycle: its statements and seconds."""
    for round_ in range(batches):
        cdc.sql(*[f"UPDATE app.{t} SET v = v + {round_ + 1} WHERE id <= 20" for t in tables],
                *[f"INSERT INTO app.{t} SELECT coalesce(max(id), 0) + 1, {round_} FROM app.{t}" for t in tables])
        cdc_pipeline.run_cdc(customers_orders.make_pipeline(str(cdc.pipelines_dir)))
    pipeline = customers_orders.make_pipeline(str(cdc.pipelines_dir))
    fake.executed.clear()
    started = time.monotonic()
    summary = merge_landed(pipeline)
    seconds = time.monotonic() - started
    assert summary.failed_tables == {} and summary.batches == batches and summary.packages == 1
    return Counter(verb(s) for s in fake.executed), seconds


def test_statements_per_merge_cycle(cdc: Harness, sf_env: dict[str, str], fake_sf: FakeSnowflake,  # noqa: F811
                                    bucket: Bucket) -> None:  # noqa: F811
    assert bootstrap() == 0
    # one load job at a time: every merge job updates the fencing row first (`pipelines.fence`), which Snowflake
    # serialises by waiting and fakesnow (DuckDB) by failing one and retrying it: that would blur the count
    cdc.monkeypatch.setenv("LOAD__WORKERS", "1")
    cdc.pipeline_name = customers_orders.PIPELINE_NAME
    cdc.configure(merge_interval_seconds=300)
    tables = [f"t{i:02d}" for i in range(10)]
    for t in tables:
        cdc.sql(f"CREATE TABLE app.{t} (id int PRIMARY KEY, v int)",
                f"INSERT INTO app.{t} SELECT g, g FROM generate_series(1, 100) g")
    cdc_pipeline.setup(customers_orders.make_pipeline(str(cdc.pipelines_dir)))
    merge_landed(customers_orders.make_pipeline(str(cdc.pipelines_dir)))  # the initial copies
    cycle(cdc, fake_sf, tables, batches=1)  # the first merge of each table also creates its staging table

    one, one_s = cycle(cdc, fake_sf, tables[:1], batches=1)
    ten, ten_s = cycle(cdc, fake_sf, tables, batches=1)
    ten_many, ten_many_s = cycle(cdc, fake_sf, tables, batches=5)
    per_table = {k: (ten[k] - one[k]) / 9 for k in sorted(set(one) | set(ten))}
    print(f"\nmerge cycle statements, 1 table: {sum(one.values())} {dict(one)} ({one_s:.1f} s in fakesnow)")
    print(f"10 tables: {sum(ten.values())} {dict(ten)} ({ten_s:.1f} s); 10 tables x 5 batches: "
          f"{sum(ten_many.values())} ({ten_many_s:.1f} s)")
    print(f"per extra table: {per_table}")
    assert all(v == int(v) for v in per_table.values()), per_table  # a fixed number per table
    assert "CREATE TABLE" not in ten and "ALTER TABLE" not in ten  # steady state: no DDL
    assert ten_many == ten  # five landed batches cost what one does: one merge per table per cycle
    assert per_table.get("MERGE", 0) + per_table.get("DELETE", 0) >= 1

    # nothing landed since: the cycle only lists the bucket and never wakes the warehouse
    fake_sf.executed.clear()
    idle = merge_landed(customers_orders.make_pipeline(str(cdc.pipelines_dir)))
    assert idle.idle and idle.batches == 0 and fake_sf.executed == []
