"""A slot created while a TRUNCATE commits must still decode (race soak, follow seed 8; `create_slot`'s docstring).

The interleaving, made deterministic: a long transaction L is open when creation starts (creation waits for it);
T truncates the published table; H keeps the snapshot builder from finishing; L commits, T commits, R refills the
table, H commits and the slot is consistent. PostgreSQL 15 then fails to decode any later write to the table with
"could not map filenode" on every start: 5 of 5 times before `create_slot` compared the catalog around creation.
An ADD COLUMN in T's place fails silently instead: the later insert is decoded without the new column.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from local.postgres import LocalPostgres
from sources.replication.slot import create_slot
from tests.conftest import fresh_database

PUBLICATION = "race_pub"
SLOT = "race_slot"
DECODE = ("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
          "'proto_version', '1', 'publication_names', %s)")


@pytest.fixture
def dsn(pg: LocalPostgres) -> Iterator[str]:
    with fresh_database(pg, prefix="slotrace") as url:
        yield url


def connect(dsn: str, autocommit: bool = True) -> Any:
    # commits flushed before they return: decoding reads only flushed WAL, and the test cluster commits async
    conn = psycopg2.connect(dsn, options="-c synchronous_commit=on")
    conn.autocommit = autocommit
    return conn


def run(conn: Any, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def wait_for_creation_to_block(admin: Any, deadline_s: float = 20.0) -> None:
    """Until the walsender creating the slot waits on a transaction: it has logged its first running_xacts."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if run(admin, "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'walsender' "
                      "AND wait_event = 'transactionid'"):
            return
        time.sleep(0.01)
    raise AssertionError("slot creation never waited for the open transaction")


@pytest.mark.parametrize("catalog_change", ["TRUNCATE t", "ALTER TABLE t ADD COLUMN w int DEFAULT 5"])
def test_a_slot_created_while_a_catalog_change_commits_decodes_what_comes_after(dsn: str, catalog_change: str) -> None:
    admin = connect(dsn)
    run(admin, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    run(admin, "CREATE TABLE other (id serial PRIMARY KEY, v text)")
    run(admin, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
    run(admin, f"CREATE PUBLICATION {PUBLICATION} FOR TABLE t, other")
    long, truncating, holding, refill = (connect(dsn, autocommit=False) for _ in range(4))
    created: dict[str, Any] = {}

    def create() -> None:
        try:
            with create_slot(dsn, SLOT, report_every=60.0) as exported:
                created["lsn"] = exported.consistent_lsn
        except Exception as exc:  # reported by the assertion below
            created["error"] = exc

    try:
        run(long, "INSERT INTO other (v) VALUES ('long')")
        creator = threading.Thread(target=create, daemon=True)
        creator.start()
        wait_for_creation_to_block(admin)
        run(truncating, catalog_change)
        run(holding, "INSERT INTO other (v) VALUES ('hold')")
        long.commit()
        time.sleep(0.2)  # the builder logs its next running_xacts, T still among them
        truncating.commit()
        run(refill, "INSERT INTO t SELECT g, 'refill' FROM generate_series(1001, 1050) g")
        refill.commit()
        time.sleep(0.1)
        holding.commit()
        creator.join(60)
        assert not creator.is_alive() and "error" not in created, created
        run(admin, "INSERT INTO t VALUES (100001, 'after')")
        run(admin, "INSERT INTO other (v) VALUES ('after')")
        messages = [bytes(row[0]) for row in run(admin, DECODE, (SLOT, PUBLICATION))]
        assert len(messages) == 8  # BEGIN, RELATION, INSERT, COMMIT for each of the two transactions
        relation_t = next(m for m in messages if m[:1] == b"R" and b"\x00t\x00" in m)
        if "ADD COLUMN" in catalog_change:  # column flags byte, name, NUL
            assert b"\x00w\x00" in relation_t, "decoded with the columns t had before the ALTER"
    finally:
        for conn in (long, truncating, holding, refill):
            conn.close()
        run(admin, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            (SLOT,))
        admin.close()
