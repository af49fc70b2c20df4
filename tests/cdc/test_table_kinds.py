"""Table kinds beyond a plain primary key: partitioned tables (replicated under their root's name), stored
generated columns (pgoutput before PostgreSQL 18 does not send them: CDC computes them), tables keyed by a
NOT NULL unique index, and tables with no key at all (an exact multiset, with REPLICA IDENTITY FULL)."""

from __future__ import annotations

from .conftest import Harness


def test_partitioned_table_and_generated_column(cdc: Harness) -> None:
    cdc.sql(
        "CREATE TABLE app.events (id int, day date, what text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)",
        "CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
        "CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "INSERT INTO app.events VALUES (1, '2024-03-01', 'a'), (2, '2025-03-01', 'b')",
        "CREATE TABLE app.prices (id int PRIMARY KEY, net numeric(10, 2), label text, "
        "gross numeric(10, 2) GENERATED ALWAYS AS (net * 1.2) STORED, "
        "tag text GENERATED ALWAYS AS (upper(label) || ':' || id) STORED)",
        "INSERT INTO app.prices (id, net, label) VALUES (1, 10, 'a')",
    )
    report = cdc.setup()
    assert report.snapshots == {"app__events": 2, "app__prices": 1}
    assert cdc.dest_table("app__prices", "id, gross, tag") == cdc.source("SELECT id, gross, tag FROM app.prices")
    cdc.sql("INSERT INTO app.events VALUES (3, '2024-07-01', 'c'), (4, '2025-07-01', 'd')",
            "UPDATE app.events SET what = 'moved' WHERE id = 1",
            "UPDATE app.events SET day = '2025-03-02' WHERE id = 1",  # moves the row to another partition
            "DELETE FROM app.events WHERE id = 2",
            "UPDATE app.prices SET net = 20 WHERE id = 1", "INSERT INTO app.prices (id, net, label) VALUES (2, 5, 'b')",
            # a large value is TOASTed: an update that leaves it unchanged does not resend it
            "INSERT INTO app.prices (id, net, label) VALUES (3, 1, repeat('x', 100000))",
            "UPDATE app.prices SET net = 7 WHERE id = 3")
    summary = cdc.drain()
    assert set(summary.changes) == {"app__events", "app__prices"}
    assert cdc.dest_table("app__events", "id, day, what") == cdc.source(
        "SELECT id, day, what FROM app.events ORDER BY 1")
    # the generated values are the source's, for inserted and updated rows alike
    assert cdc.dest_table("app__prices", "id, net, gross, length(tag), left(tag, 3)") == cdc.source(
        "SELECT id, net, gross, length(tag), left(tag, 3) FROM app.prices ORDER BY 1")


def test_a_table_keyed_by_a_unique_index(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.codes (code text NOT NULL, region text NOT NULL, name text, UNIQUE (code, region))",
            "ALTER TABLE app.codes REPLICA IDENTITY USING INDEX codes_code_region_key",
            "INSERT INTO app.codes VALUES ('a', 'eu', 'A'), ('b', 'eu', 'B')")
    cdc.setup()
    cdc.sql("UPDATE app.codes SET name = 'A2' WHERE code = 'a'", "UPDATE app.codes SET region = 'us' WHERE code = 'b'",
            "INSERT INTO app.codes VALUES ('c', 'us', 'C')")
    cdc.drain()
    assert cdc.dest_table("app__codes", "code, region, name", order="1, 2") == cdc.source(
        "SELECT code, region, name FROM app.codes ORDER BY 1, 2")


def test_a_keyless_table_is_an_exact_multiset(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.log (n int, msg text)", "ALTER TABLE app.log REPLICA IDENTITY FULL",
            "INSERT INTO app.log VALUES (1, 'x'), (1, 'x'), (1, 'x'), (2, 'y'), (NULL, NULL)")
    cdc.setup()
    multiset = "SELECT n, msg, count(*) FROM {t} GROUP BY ALL ORDER BY 1 NULLS LAST, 2"
    assert cdc.dest(multiset.format(t="{ds}.app__log")) == cdc.source(multiset.format(t="app.log").replace(
        "GROUP BY ALL", "GROUP BY 1, 2"))
    # an update or a delete touches exactly one of identical rows (ctid picks one at the source)
    cdc.sql("UPDATE app.log SET msg = 'z' WHERE ctid = (SELECT min(ctid) FROM app.log WHERE n = 1)",
            "DELETE FROM app.log WHERE ctid = (SELECT max(ctid) FROM app.log WHERE n = 1 AND msg = 'x')",
            "INSERT INTO app.log VALUES (2, 'y'), (3, 'w')",
            "DELETE FROM app.log WHERE n = 3",  # inserted and deleted before the next sync
            "DELETE FROM app.log WHERE n IS NULL")
    cdc.drain()
    assert cdc.dest(multiset.format(t="{ds}.app__log")) == cdc.source(multiset.format(t="app.log").replace(
        "GROUP BY ALL", "GROUP BY 1, 2"))
    assert cdc.source("SELECT count(*) FROM app.log WHERE n = 1 AND msg = 'x'") == [(1,)]


def test_a_keyless_table_without_full_identity_is_refused_alone(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.loose (a int)", "CREATE TABLE app.fine (id int PRIMARY KEY)",
            "INSERT INTO app.fine VALUES (1)", "INSERT INTO app.loose VALUES (1)")
    report = cdc.setup()
    assert report.snapshots == {"app__fine": 1}
    assert "REPLICA IDENTITY FULL" in report.failed_tables["app__loose"]["error"]
    assert cdc.source(f"SELECT tablename FROM pg_publication_tables WHERE pubname = '{cdc.slot}'") == [("fine",)]
    cdc.sql("UPDATE app.loose SET a = 2", "INSERT INTO app.fine VALUES (2)")  # the source's updates still work
    summary = cdc.drain()
    assert "app__loose" in summary.failed_tables and cdc.dest_table("app__fine", "id") == [(1,), (2,)]
    cdc.sql("ALTER TABLE app.loose REPLICA IDENTITY FULL")  # the fix: the next run copies it
    summary = cdc.drain()
    assert not summary.failed_tables and summary.recovered_tables == ["app__loose"]
    assert cdc.dest_table("app__loose", "a") == [(2,)]
