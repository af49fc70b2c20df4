"""CDC into Snowflake (fakesnow, S3 archive stage on moto) as production runs it: the same pipeline,
destination config and stage. Checks the SQL CDC itself issues there: reading current values for
unchanged TOAST, TRUNCATE, and the hard-delete merge."""

from __future__ import annotations

import pytest

from local.fakesnow_adapter import FakeSnowflake
from pipelines import cdc as cdc_pipeline
from pipelines import customers_orders
from tests.snowflake.conftest import (  # noqa: F401  (fixtures)
    DATASET,
    Bucket,
    bootstrap,
    bucket,
    fake_sf,
    key_pair,
    s3,
    sf_env,
    sf_rows,
)

from .conftest import Harness

pytestmark = [pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning"), pytest.mark.slow]
BIG = 20_000


def test_cdc_into_snowflake(cdc: Harness, sf_env: dict[str, str], fake_sf: FakeSnowflake,  # noqa: F811
                            bucket: Bucket) -> None:  # noqa: F811
    assert bootstrap() == 0
    cdc.sql("CREATE TABLE app.docs (id int PRIMARY KEY, title text, body text)",
            "ALTER TABLE app.docs ALTER COLUMN body SET STORAGE EXTERNAL",
            f"INSERT INTO app.docs SELECT g, 'title ' || g, repeat(chr(64 + g), {BIG}) FROM generate_series(1, 5) g",
            "CREATE TABLE app.tags (name text PRIMARY KEY)", "INSERT INTO app.tags VALUES ('a'), ('b')")
    cdc.pipeline_name = customers_orders.PIPELINE_NAME
    pipeline = customers_orders.make_pipeline(str(cdc.pipelines_dir))
    assert cdc_pipeline.setup(pipeline).snapshots == {"app__docs": 5, "app__tags": 2}

    cdc.sql("UPDATE app.docs SET title = 'renamed' WHERE id IN (1, 2)",  # body is not resent
            "DELETE FROM app.docs WHERE id = 3",
            "INSERT INTO app.docs VALUES (6, 'six', 'small')",
            "TRUNCATE app.tags", "INSERT INTO app.tags VALUES ('c')")
    summary = cdc_pipeline.run_cdc(pipeline)
    assert summary.filled_rows == 2 and summary.changes["app__tags"].truncates == 1

    rows = sf_rows(f"SELECT id, title, length(body), left(body, 1) FROM {DATASET}.APP__DOCS ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "renamed", BIG, "A"), (2, "renamed", BIG, "B"), (4, "title 4", BIG, "D"),
                                        (5, "title 5", BIG, "E"), (6, "six", 5, "s")]
    assert [tuple(r) for r in sf_rows(f"SELECT name FROM {DATASET}.APP__TAGS ORDER BY name")] == [("c",)]
