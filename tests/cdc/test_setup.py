"""`setup` and `teardown`: prerequisites named with their fix, idempotent setup, no superuser needed,
and the CLI subcommands."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from pipelines import cdc as cdc_pipeline
from runner import cli
from runner.exit_codes import ExitCode
from sources.replication.errors import PublicationError, SlotMissing

from .conftest import Harness


def role_dsn(cdc: Harness, role: str) -> str:
    return cdc.dsn.replace(cdc.dsn.split("//", 1)[1].split("@", 1)[0], f"{role}:secret-{role}")


@pytest.fixture()
def role(cdc: Harness) -> Iterator[str]:
    """A login role of this test only; dropped afterwards."""
    name = f"sync_{cdc.database}"
    cdc.sql(f"CREATE ROLE {name} LOGIN PASSWORD 'secret-{name}'",
            f'GRANT CONNECT ON DATABASE "{cdc.database}" TO {name}')
    yield name
    cdc.drop_slots()
    cdc.sql(f"DROP OWNED BY {name}", f"DROP ROLE {name}")


def test_missing_prerequisites_are_named_with_their_fix(cdc: Harness, role: str) -> None:
    cdc.sql("CREATE TABLE app.keyless (a int, b text)", "CREATE TABLE app.keyed (id int PRIMARY KEY)",
            f"GRANT USAGE ON SCHEMA app TO {role}", f"GRANT SELECT ON app.keyed TO {role}")
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__CREDENTIALS", role_dsn(cdc, role))
    cdc.configure(tables='{"app.keyless": {"primary_key": ["a"]}}')
    report = cdc.setup(check_only=True)
    problems = "\n".join(report.problems)
    assert f"ALTER ROLE {role} REPLICATION" in problems
    assert "app.keyless has no primary key or replica identity" in problems
    assert f"GRANT SELECT ON app.keyless TO {role}" in problems
    assert "app.keyed" not in problems and "wal_level" not in problems
    assert cdc.source("SELECT count(*) FROM pg_publication") == [(0,)]  # --check changes nothing


def test_replication_role_without_superuser(cdc: Harness, role: str, caplog: pytest.LogCaptureFixture) -> None:
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY, v text)", "INSERT INTO app.t VALUES (1, 'a')",
            f"ALTER ROLE {role} REPLICATION", f"GRANT USAGE ON SCHEMA app TO {role}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA app TO {role}",
            # the table owner creates the publication once (adding tables needs ownership)
            f"CREATE PUBLICATION {cdc.slot} FOR TABLE app.t")
    cdc.monkeypatch.setenv("SOURCES__POSTGRES__CREDENTIALS", role_dsn(cdc, role))
    assert cdc.setup(check_only=True).problems == []
    report = cdc.setup()
    assert report.slot_created and report.snapshots == {"app__t": 1}
    # a role that may not write logical messages still drains: the run ends on the server's keepalives
    cdc.sql("REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC",
            "INSERT INTO app.t VALUES (2, 'b')")
    with caplog.at_level(logging.WARNING, logger="aurora_sync.cdc"):
        cdc.drain()
    assert any("pg_logical_emit_message is not allowed" in r.getMessage() for r in caplog.records)
    assert cdc.dest_table("app__t", "id, v") == [(1, "a"), (2, "b")]
    # a new table this role does not own cannot be added: the owner gets the exact statement to run
    cdc.sql("CREATE TABLE app.later (id int PRIMARY KEY)", f"GRANT SELECT ON app.later TO {role}")
    with pytest.raises(PublicationError, match=re.escape(f'ALTER PUBLICATION "{cdc.slot}" ADD TABLE "app"."later"')):
        cdc.setup()
    summary = cdc.drain()  # streaming goes on for the others; the new table is reported as pending
    assert summary.pending_tables == ["app.later"] and summary.warnings


def test_setup_is_idempotent_and_teardown_forgets(cdc: Harness) -> None:
    cdc.sql("CREATE TABLE app.a (id int PRIMARY KEY)", "INSERT INTO app.a VALUES (1)")
    first = cdc.setup()
    assert first.slot_created and first.publication_added == ["app.a"]
    again = cdc.setup()
    assert not again.slot_created and again.snapshots == {} and again.publication_added == []
    cdc.sql("CREATE TABLE app.b (id int PRIMARY KEY)", "INSERT INTO app.b VALUES (7)")
    added = cdc.setup()
    assert added.publication_added == ["app.b"] and added.snapshots == {"app__b": 1}

    report = cdc_pipeline.teardown(cdc.pipeline())
    assert report.slot_dropped and report.publication_dropped
    assert cdc.slot_position() is None and cdc.source("SELECT count(*) FROM pg_publication") == [(0,)]
    with pytest.raises(SlotMissing, match="never set up"):
        cdc.drain()
    cdc.sql("INSERT INTO app.a VALUES (2)")
    assert cdc.setup().snapshots == {"app__a": 2, "app__b": 1}
    assert cdc.dest_table("app__a", "id") == [(1,), (2,)]


def test_cli_setup_run_and_teardown(cdc: Harness) -> None:
    assert {"setup", "teardown"} <= {command.name for command in cli.SUBCOMMANDS}
    cdc.pipeline_name = "customers_orders"  # what the CLI's pipeline is called
    cdc.sql("CREATE TABLE app.t (id int PRIMARY KEY)", "INSERT INTO app.t VALUES (1)")
    assert cli.main(["setup", "--check"]) == ExitCode.SUCCESS
    assert cdc.source("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert cli.main(["setup"]) == ExitCode.SUCCESS
    assert cdc.source("SELECT slot_name FROM pg_replication_slots") == [("aurora_sync_customers_orders",)]
    cdc.sql("INSERT INTO app.t VALUES (2)", "DELETE FROM app.t WHERE id = 1")
    assert cli.main(["run", "--mode", "cdc"]) == ExitCode.SUCCESS
    assert cdc.dest("SELECT id FROM customers_orders.app__t") == [(2,)]
    assert cli.main(["teardown"]) == ExitCode.CONFIG_ERROR  # needs --yes
    assert cli.main(["teardown", "--yes"]) == ExitCode.SUCCESS
    assert cdc.source("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    cdc.sql("CREATE TABLE app.nokey (a int)")
    assert cli.main(["setup", "--check"]) == ExitCode.CONFIG_ERROR


def test_cdc_takes_over_tables_loaded_by_the_snapshot_source(cdc: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's pipeline first synced with `sources.postgres` (incremental); CDC then writes the same
    tables (NOT NULL columns included) through the same dlt schema."""
    from local.seed import seed
    from pipelines import customers_orders

    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["customers", "orders"]')
    seed(cdc.dsn, customers=200, orders=500)
    customers_orders.run(pipelines_dir=str(cdc.pipelines_dir)).raise_on_failures()
    customers_orders.run(pipelines_dir=str(cdc.pipelines_dir)).raise_on_failures()  # a merge: staging exists
    cdc.pipeline_name = customers_orders.PIPELINE_NAME
    pipeline = customers_orders.make_pipeline(str(cdc.pipelines_dir))
    cdc_pipeline.setup(pipeline)
    cdc.sql("UPDATE orders.orders SET status = 'paid' WHERE id <= 10",
            "DELETE FROM orders.order_items WHERE order_id = 20",
            "DELETE FROM customers.addresses WHERE id = 5",
            "INSERT INTO customers.customers (id, email, full_name) VALUES (9999, 'cdc@example.com', 'CDC')")
    cdc_pipeline.run_cdc(pipeline)
    dataset = customers_orders.PIPELINE_NAME
    for table, key in (("orders.orders", "id"), ("orders.order_items", "order_id, line_no"),
                       ("customers.addresses", "id"), ("customers.customers", "id")):
        columns = "id, status, total" if table == "orders.orders" else key
        source = cdc.source(f"SELECT {columns} FROM {table} ORDER BY {key}")
        dest = cdc.dest(f"SELECT {columns} FROM {dataset}.{table.replace('.', '__')} ORDER BY {key}")
        assert source == dest, table
