"""Fencing (issue: exact under races and crashes, scenario 7): a merge or follower that lost its lock without knowing it
(the advisory lock's session ended in a failover, by `idle_session_timeout` or in a network partition) can never
commit after another task took over: its next write fails inside the warehouse, and the task exits 3."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipelines import apply
from pipelines.fence import LockLost, fenced_pipeline, take_over
from pipelines.merge import MERGE_SUFFIX, applier, merge_landed
from runner.errors import classify
from runner.exit_codes import ExitCode

from .conftest import Harness

pytestmark = pytest.mark.slow


def test_a_merge_that_lost_its_lock_cannot_commit_after_another_took_over(cdc: Harness, tmp_path: Path) -> None:
    cdc.configure(merge_interval_seconds=300)
    cdc.monkeypatch.setenv("DESTINATION__FILESYSTEM__BUCKET_URL", (tmp_path / "bucket").as_uri())
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)",
            "INSERT INTO app.t SELECT g, 'v' || g FROM generate_series(1, 100) g")
    cdc.setup()
    merge_landed(cdc.pipeline())

    # merge A holds the token, then stalls (a GC pause, a partition) while its lock's session is gone ...
    stale = fenced_pipeline(cdc.pipeline(), "merge", pipeline_name=cdc.pipeline().pipeline_name + MERGE_SUFFIX)
    take_over(stale)
    # ... and merge B, which took the lock meanwhile, merges newer changes
    cdc.sql("UPDATE app.t SET v = 'newer' WHERE id <= 10")
    cdc.drain()
    assert merge_landed(cdc.pipeline()).batches >= 1
    # A wakes up and writes what it had folded: older versions of those keys
    older = pa.table({"id": pa.array(list(range(1, 11)), pa.int32()), "v": [f"old {i}" for i in range(1, 11)],
                      "_lsn": pa.array([1] * 10, pa.int64()), "_lsn_ordinal": pa.array([0] * 10, pa.int64())})
    with pytest.raises(LockLost) as lost:
        applier(stale).apply([apply.Part("app__t", "merge", [older], ["id"])], lambda state: None)
    code, message = classify(lost.value)
    assert code == ExitCode.LOCK_HELD and "lost its lock" in message
    assert cdc.dest("SELECT count(*) FROM {ds}.app__t WHERE v = 'newer'") == [(10,)], "nothing of A's was committed"


def test_a_follower_that_lost_its_lock_cannot_commit_after_a_new_one_started(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)", "INSERT INTO app.t VALUES (1, 'a')")
    cdc.setup()
    from pipelines.cdc.sinks import DirectSink

    stale = DirectSink(cdc.pipeline())
    stale.finish_pending()  # took over as the follower
    cdc.sql("UPDATE app.t SET v = 'b' WHERE id = 1")
    cdc.drain()  # a new follower takes over and applies
    row = pa.table({"id": pa.array([1], pa.int32()), "v": ["stale"], "_lsn": pa.array([1], pa.int64()),
                    "_lsn_ordinal": pa.array([0], pa.int64())})
    with pytest.raises(LockLost):
        stale.applier.apply([apply.Part("app__t", "merge", [row], ["id"])], lambda state: None)
    assert cdc.dest("SELECT v FROM {ds}.app__t") == [("b",)]
