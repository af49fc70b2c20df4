"""A transaction larger than a batch is loaded in several batches; the slot is confirmed only once the
whole transaction is in the destination."""

from __future__ import annotations

import logging

import pytest

from sources.replication.lsn import parse_lsn

from .conftest import Harness


def test_large_transaction_is_split_and_confirmed_only_at_its_commit(
        cdc: Harness, caplog: pytest.LogCaptureFixture) -> None:
    cdc.configure(max_batch_rows=1000)
    cdc.sql("CREATE TABLE app.big (id int PRIMARY KEY, payload text, n int)",
            "INSERT INTO app.big SELECT g, 'seed', 0 FROM generate_series(1, 100) g")
    cdc.setup()
    start = cdc.slot_position()
    assert start is not None
    cdc.sql("BEGIN; INSERT INTO app.big SELECT g, md5(g::text), g FROM generate_series(101, 10100) g; "
            "UPDATE app.big SET n = -1 WHERE id <= 100; DELETE FROM app.big WHERE id BETWEEN 5000 AND 5099; COMMIT")
    with caplog.at_level(logging.INFO, logger="aurora_sync.cdc"):
        summary = cdc.drain()
    batches = [r.fields for r in caplog.records if r.getMessage() == "cdc batch loaded"]  # type: ignore[attr-defined]
    assert summary.batches == len(batches) >= 10
    assert all(b["changes"] <= 1000 for b in batches)
    # every batch before the last holds part of the transaction: none of them may confirm it
    assert {parse_lsn(b["confirmed_lsn"]) for b in batches[:-1]} == {start[0]}
    assert parse_lsn(batches[-1]["confirmed_lsn"]) > start[0]
    counts = summary.changes["app__big"]
    assert (counts.inserts, counts.updates, counts.deletes) == (10000, 100, 100)
    assert cdc.dest_table("app__big", "id, payload, n") == cdc.source("SELECT id, payload, n FROM app.big ORDER BY 1")
    assert cdc.dest("SELECT count(*) = count(DISTINCT id) FROM {ds}.app__big") == [(True,)]
