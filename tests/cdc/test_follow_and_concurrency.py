"""Follow mode (stream until stopped, flush on stop, idle heartbeats, tables created meanwhile) and the
initial copy + stream under concurrent writes: the destination ends equal to the source, no duplicates."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from sources.replication.lsn import parse_lsn

from .conftest import Harness


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Follower:
    def __init__(self, cdc: Harness) -> None:
        self.stop = threading.Event()
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(cdc,), daemon=True)

    def _run(self, cdc: Harness) -> None:
        try:
            self.result["summary"] = cdc.drain(follow=True, stop=self.stop)
        except BaseException as exc:
            self.result["error"] = exc

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def finish(self) -> Any:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if "error" in self.result:
            raise self.result["error"]
        return self.result["summary"]

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def loaded_changes(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.fields["changes"] for r in caplog.records  # type: ignore[attr-defined]
               if r.getMessage() == "cdc batch loaded")


def test_follow_mode(cdc: Harness, caplog: pytest.LogCaptureFixture) -> None:
    cdc.configure(max_batch_seconds=0.3, heartbeat_seconds=0.5, new_table_check_seconds=1)
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, name text)",
            "INSERT INTO app.t SELECT g, 'n' || g FROM generate_series(1, 10) g")
    cdc.setup()
    with caplog.at_level(logging.INFO, logger="aurora_sync.cdc"), Follower(cdc) as follower:
        cdc.sql("INSERT INTO app.t VALUES (11, 'eleven')", "UPDATE app.t SET name = 'one' WHERE id = 1")
        wait_for(lambda: loaded_changes(caplog) >= 2, what="the first changes to load")

        # idle: heartbeats let the slot advance with no replicated change
        idle_from = cdc.slot_position()[0]  # type: ignore[index]
        cdc.sql("CREATE TABLE public.noise AS SELECT g FROM generate_series(1, 10000) g")
        wait_for(lambda: cdc.slot_position()[0] > idle_from, what="the idle slot to advance")  # type: ignore[index]

        # a table created while following is copied alone, then streamed
        cdc.sql("CREATE TABLE app.later (k text PRIMARY KEY, v int)", "INSERT INTO app.later VALUES ('a', 1)")
        # this table's record: setup's for app.t is there too when an earlier test left the logger at INFO
        wait_for(lambda: any(r.getMessage() == "table snapshotted" and r.fields.get("table") == "app__later"  # type: ignore[attr-defined]
                             for r in caplog.records), what="the new table")
        cdc.sql("INSERT INTO app.later VALUES ('b', 2)", "DELETE FROM app.t WHERE id = 2")
        wait_for(lambda: loaded_changes(caplog) >= 4, what="changes after the new table")
        summary = follower.finish()
    assert summary.stopped_by == "stop" and summary.snapshots == {"app__later": 1}
    assert cdc.dest_table("app__t", "id, name") == cdc.source("SELECT id, name FROM app.t ORDER BY 1")
    assert cdc.dest_table("app__later", "k, v") == [("a", 1), ("b", 2)]
    assert cdc.slot_position() == (parse_lsn(summary.end_lsn), False)


def test_stop_flushes_the_current_batch(cdc: Harness) -> None:
    cdc.configure(max_batch_seconds=600, heartbeat_seconds=0)
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, name text)")
    cdc.setup()
    with Follower(cdc) as follower:
        time.sleep(1.0)
        cdc.sql("INSERT INTO app.t SELECT g, 'n' || g FROM generate_series(1, 100) g")
        time.sleep(1.5)  # received, but far from the 600 s flush interval
        summary = follower.finish()  # what SIGTERM does in the runner
    assert summary.batches == 1 and summary.changes["app__t"].inserts == 100
    assert cdc.dest("SELECT count(*) FROM {ds}.app__t") == [(100,)]
    assert cdc.slot_position() == (parse_lsn(summary.end_lsn), False)


class Writer(threading.Thread):
    """Random small transactions on the replicated tables until stopped."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.ledger = dsn, threading.Event(), threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        conn = psycopg2.connect(self.dsn)
        next_id, next_entry = 100_000, 1
        try:
            while not self.stop.is_set():
                with conn.cursor() as cur:
                    for _ in range(rng.randint(1, 15)):
                        op = rng.random()
                        if op < 0.4:
                            cur.execute("INSERT INTO app.acct VALUES (%s, %s, 'new', 0)", (next_id, rng.randint(0, 99)))
                            next_id += 1
                        elif op < 0.8:
                            cur.execute("UPDATE app.acct SET balance = balance + %s, version = version + 1 "
                                        "WHERE id = %s", (rng.randint(-5, 5), rng.randint(1, next_id)))
                        else:
                            cur.execute("DELETE FROM app.acct WHERE id = %s", (rng.randint(1, next_id),))
                        if self.ledger.is_set():
                            cur.execute("INSERT INTO app.ledger VALUES (%s, %s)", (next_entry, rng.random()))
                            cur.execute("DELETE FROM app.ledger WHERE entry = %s", (rng.randint(1, next_entry),))
                            next_entry += 1
                conn.commit()
                self.transactions += 1
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


@pytest.mark.slow
def test_snapshot_and_stream_under_concurrent_writes(cdc: Harness) -> None:
    cdc.configure(max_batch_rows=3000)
    cdc.sql("CREATE TABLE app.acct (id int PRIMARY KEY, balance bigint, note text, version int)",
            "INSERT INTO app.acct SELECT g, g % 100, md5(g::text), 0 FROM generate_series(1, 50000) g")
    writer = Writer(cdc.dsn)
    writer.start()
    try:
        wait_for(lambda: writer.transactions > 20, what="the writer")
        cdc.setup()  # slot + copy while the writer commits
        cdc.drain()
        cdc.sql("CREATE TABLE app.ledger (entry int PRIMARY KEY, amount float8)")
        writer.ledger.set()
        wait_for(lambda: writer.transactions > 200, what="more writes")
        cdc.drain()  # copies the new table alone while it is being written
        time.sleep(0.5)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None
    cdc.drain()
    assert cdc.dest_table("app__acct", "id, balance, note, version") == cdc.source(
        "SELECT id, balance, note, version FROM app.acct ORDER BY 1")
    assert cdc.dest_table("app__ledger", "entry, amount") == cdc.source(
        "SELECT entry, amount FROM app.ledger ORDER BY 1")
    for table, key in (("app__acct", "id"), ("app__ledger", "entry")):
        assert cdc.dest(f"SELECT count(*) = count(DISTINCT {key}) FROM {{ds}}.{table}") == [(True,)]
    assert writer.transactions > 200
