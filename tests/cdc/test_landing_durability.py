"""Landing durability (issue: exact under races and crashes, scenario 7): a landed load that is missing before it
was merged stops the merge instead of being skipped, and nothing between the follower and the merge depends on a
wall clock (a replacement follower whose clock is behind lands loads the merge still finds)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from bench.landing_listing import run
from pipelines.landing_area import LandingArea, LandingGap
from pipelines.merge import merge_landed

from .conftest import Harness

pytestmark = pytest.mark.slow


@pytest.fixture()
def landed(cdc: Harness, tmp_path: Path) -> Harness:
    cdc.configure(merge_interval_seconds=300, max_batch_rows=200)
    cdc.monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)",
            "INSERT INTO app.t SELECT g, 'v' || g FROM generate_series(1, 300) g")
    cdc.setup()
    merge_landed(cdc.pipeline())
    return cdc


def same(cdc: Harness) -> None:
    source = cdc.source("SELECT id, v FROM app.t ORDER BY 1")
    assert cdc.dest_table("app__t", "id, v", "id") == [tuple(r) for r in source]


def test_a_landed_load_deleted_before_its_merge_stops_the_merge(landed: Harness) -> None:
    cdc = landed
    cdc.sql("UPDATE app.t SET v = 'a' WHERE id <= 100", "UPDATE app.t SET v = 'b' WHERE id > 200",
            "INSERT INTO app.t SELECT g, 'new' FROM generate_series(301, 700) g")
    cdc.drain()
    area = LandingArea(cdc.pipeline())
    entries = [e for e in area.index() if "app__t" in e.tables]
    assert len(entries) >= 3
    before = cdc.dest("SELECT count(*) FROM {ds}.app__t")
    missing = entries[len(entries) // 2]
    area.fs.rm(f"{area.base}/_index/{missing.name}")  # expired, or deleted by hand
    with pytest.raises(LandingGap, match=f"{missing.seq}"):
        merge_landed(cdc.pipeline())
    assert cdc.dest("SELECT count(*) FROM {ds}.app__t") == before, "nothing after the gap was applied"
    area.write_index(missing)  # restored (e.g. from a bucket version): the merge goes on, exact
    merge_landed(cdc.pipeline())
    same(cdc)


def test_a_follower_whose_clock_is_behind_lands_loads_the_merge_still_finds(landed: Harness) -> None:
    cdc = landed
    cdc.sql("UPDATE app.t SET v = 'first' WHERE id <= 50")
    cdc.drain()
    merge_landed(cdc.pipeline())
    # a replacement follower on a host whose clock runs a day behind: its load ids (wall-clock times) sort first
    behind = itertools.count(1_700_000_000)
    cdc.sql("UPDATE app.t SET v = 'later' WHERE id > 250", "DELETE FROM app.t WHERE id BETWEEN 100 AND 120")
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr("dlt.extract.storage.create_load_id", lambda: f"{next(behind)}.5")
        cdc.drain()
    merged = merge_landed(cdc.pipeline())
    assert merged.batches >= 1
    same(cdc)
    assert merge_landed(cdc.pipeline()).idle


def test_only_what_every_table_merged_is_ever_removed_from_the_landing_area(landed: Harness) -> None:
    cdc = landed
    cdc.monkeypatch.setenv("MERGE__LANDING_RETENTION_DAYS", "0.0002")  # about 17 seconds
    area = LandingArea(cdc.pipeline())
    merged = {e.seq for e in area.index()}
    time.sleep(18)
    cdc.sql("UPDATE app.t SET v = 'kept' WHERE id <= 20")
    cdc.drain()
    waiting = {e.seq for e in area.index()} - merged
    assert waiting
    # a merge that fails before it applies anything removes nothing
    cdc.monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", "/nonexistent/dir/r.duckdb")
    with pytest.raises(Exception):  # noqa: B017 - the warehouse is unreachable: any error, nothing removed
        merge_landed(cdc.pipeline())
    assert {e.seq for e in area.index()} >= merged | waiting
    cdc.monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", cdc.duck)
    summary = merge_landed(cdc.pipeline())
    assert summary.removed_loads == len(merged), "the loads merged and older than the retention are removed"
    assert {e.seq for e in area.index()} == waiting, "a load merged a moment ago stays its retention time"
    same(cdc)
    assert merge_landed(cdc.pipeline()).idle


def test_an_idle_merge_cycle_lists_once_however_many_loads_the_landing_area_holds() -> None:
    """The merge lists the landing index after its last merged load (S3 StartAfter): an idle cycle is one LIST
    request at 200 loads and at 2,000, a cycle after 50 new loads one more (`bench/landing_listing.py` runs it at
    100,000). Was: every cycle listed the whole `_dlt_loads` folder, a thousand requests after a month."""
    small, large = run([200, 2_000])
    assert small.idle_list_requests == large.idle_list_requests == 1, (small, large)
    assert small.busy_list_requests == large.busy_list_requests == 1, (small, large)
