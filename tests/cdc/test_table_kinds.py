"""Partitioned tables replicate under their root's name; generated columns are not replicated (pgoutput
does not send them), so they are not copied either."""

from __future__ import annotations

from .conftest import Harness


def test_partitioned_table_and_generated_column(cdc: Harness) -> None:
    cdc.sql(
        "CREATE TABLE app.events (id int, day date, what text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)",
        "CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "INSERT INTO app.events VALUES (1, '2024-03-01', 'a'), (2, '2025-03-01', 'b')",
        "CREATE TABLE app.prices (id int PRIMARY KEY, net numeric(10, 2), "
        "gross numeric(10, 2) GENERATED ALWAYS AS (net * 1.2) STORED)",
        "INSERT INTO app.prices (id, net) VALUES (1, 10)",
    )
    report = cdc.setup()
    assert report.snapshots == {"app__events": 2, "app__prices": 1}
    cdc.sql("INSERT INTO app.events VALUES (3, '2024-07-01', 'c'), (4, '2025-07-01', 'd')",
            "UPDATE app.events SET what = 'moved' WHERE id = 1",
            "UPDATE app.events SET day = '2025-03-02' WHERE id = 1",  # moves the row to another partition
            "DELETE FROM app.events WHERE id = 2",
            "UPDATE app.prices SET net = 20 WHERE id = 1", "INSERT INTO app.prices (id, net) VALUES (2, 5)")
    summary = cdc.drain()
    assert set(summary.changes) == {"app__events", "app__prices"}
    assert cdc.dest_table("app__events", "id, day, what") == cdc.source(
        "SELECT id, day, what FROM app.events ORDER BY 1")
    assert cdc.dest_table("app__prices", "id, net") == cdc.source("SELECT id, net FROM app.prices ORDER BY 1")
    columns = cdc.dest("SELECT column_name FROM information_schema.columns WHERE table_schema = '{ds}' "
                       "AND table_name = 'app__prices'")
    assert ("gross",) not in columns
