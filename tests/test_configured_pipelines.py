"""A pipeline defined only in `.dlt/config.toml` (`[pipelines.<name>]`, `pipelines.registry`): `setup`, `run` and
`verify` work for it by name, with its own schemas, dataset and state, beside `customers_orders`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from local.seed import seed
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import duck_rows, pg_rows
from tests.test_verify import AURORA_SYNC

BILLING = """

[pipelines.billing]
schemas = ["billing"]
dataset_name = "billing_replica"
destination = "duckdb"
mode = "cdc"
schedule = "rate(15 minutes)"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The image's working directory: the repository's config.toml plus one more pipeline, and nothing else."""
    root = tmp_path / "app"
    (root / ".dlt").mkdir(parents=True)
    (root / ".dlt" / "config.toml").write_text((PROJECT_ROOT / ".dlt" / "config.toml").read_text() + BILLING)
    return root


def cli(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AURORA_SYNC, "--json-logs", *args], cwd=project, env=subprocess_env(env),
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_pipeline_from_configuration_runs_setup_run_and_verify(dlt_env: dict[str, str], project: Path) -> None:
    dsn = dlt_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=30, orders=60)  # customers_orders' schemas: not billing's
    execute(dsn, "CREATE SCHEMA billing",
            "CREATE TABLE billing.invoices (id int PRIMARY KEY, amount numeric(12,2), updated_at timestamptz "
            "DEFAULT now())",
            "INSERT INTO billing.invoices (id, amount) SELECT g, g * 1.5 FROM generate_series(1, 500) g")
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]

    listed = cli(project, dlt_env, "run", "--help")
    assert "billing" in listed.stdout and "customers_orders" in listed.stdout, listed.stdout

    setup = cli(project, dlt_env, "setup", "--pipeline", "billing")
    assert setup.returncode == ExitCode.SUCCESS, setup.stderr[-3000:]
    execute(dsn, "UPDATE billing.invoices SET amount = -1 WHERE id <= 7", "DELETE FROM billing.invoices WHERE id > 490",
            "INSERT INTO billing.invoices (id, amount) VALUES (9001, 3.25)")
    run = cli(project, dlt_env, "run", "--pipeline", "billing")  # no --mode: the entry says cdc
    assert run.returncode == ExitCode.SUCCESS, run.stderr[-3000:]
    modes = {json.loads(line).get("mode") for line in run.stderr.splitlines() if line.startswith("{")}
    assert "cdc" in modes, run.stderr[-2000:]

    assert duck_rows(duck, "SELECT count(*), sum(amount) FROM billing_replica.billing__invoices") == \
        [tuple(r) for r in pg_rows(dsn, "SELECT count(*), sum(amount) FROM billing.invoices")]
    tables = {r[0] for r in duck_rows(duck, "SELECT table_name FROM information_schema.tables "
                                            "WHERE table_schema = 'billing_replica' AND table_name NOT LIKE '\\_%' "
                                            "ESCAPE '\\'")}
    assert tables == {"billing__invoices"}, tables  # its own schemas only

    verify = cli(project, dlt_env, "verify", "--pipeline", "billing", "--checksum", "--json")
    assert verify.returncode == ExitCode.SUCCESS, verify.stdout + verify.stderr[-2000:]
    assert [t["table"] for t in json.loads(verify.stdout)["tables"]] == ["billing.invoices"]

    # customers_orders is untouched by all this and still runs as before, under its own name
    plain = cli(project, dlt_env, "run", "--pipeline", "customers_orders")
    assert plain.returncode == ExitCode.SUCCESS, plain.stderr[-3000:]
    assert duck_rows(duck, "SELECT count(*) FROM customers_orders.orders__orders") == [(60,)]

    unknown = cli(project, dlt_env, "run", "--pipeline", "nope")
    assert unknown.returncode == ExitCode.CONFIG_ERROR and "billing" in unknown.stderr, unknown.stderr


def test_an_entry_maps_onto_dlts_pipeline_scoped_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each key of `[pipelines.<name>]` answers the lookup dlt makes for that pipeline; other pipelines and the
    shared sections do not see it, and a secret is never taken from a provider that may not hold one."""
    import dlt
    from dlt.common.configuration.resolve import inject_section
    from dlt.common.configuration.specs.config_section_context import ConfigSectionContext

    from pipelines import registry
    from sources.postgres.settings import load_source_settings

    monkeypatch.setenv("PIPELINES__LEDGER__SCHEMAS", '["ledger", "gl"]')
    monkeypatch.setenv("PIPELINES__LEDGER__CREDENTIALS", "postgresql://ledger@localhost:5432/ledger")
    monkeypatch.setenv("PIPELINES__LEDGER__REPLICATION__DELETE_MODE", "soft")
    monkeypatch.setenv("PIPELINES__LEDGER__DESTINATION", "duckdb")
    monkeypatch.setenv("SOURCES__POSTGRES__CREDENTIALS", "postgresql://shared@localhost:5432/shared")
    registry.register()
    assert "ledger" in registry.pipeline_names() and "customers_orders" in registry.pipeline_names()

    ledger = load_source_settings("ledger")
    assert ledger.schemas == ["ledger", "gl"] and ledger.credentials.username == "ledger"
    shared = load_source_settings("customers_orders")
    assert shared.schemas == ["customers", "orders"] and shared.credentials.username == "shared"

    from sources.replication import replication_settings

    with inject_section(ConfigSectionContext(pipeline_name="ledger")):
        assert replication_settings().delete_mode == "soft"  # type: ignore[call-arg]
    assert replication_settings().delete_mode == "hard"  # type: ignore[call-arg]
    pipeline = dlt.pipeline(pipeline_name="ledger", pipelines_dir=str(tmp_path / "dlt"))
    assert pipeline.destination is not None and pipeline.destination.destination_name == "duckdb"
    assert registry.default_mode("ledger") == "incremental"
    monkeypatch.setenv("PIPELINES__LEDGER__MODE", "sideways")
    with pytest.raises(Exception, match="sideways"):
        registry.default_mode("ledger")
