"""Fault tests on the production path: the S3 endpoint becomes unreachable during a load, then comes
back. The run fails with a clear message and a non-zero exit; the next run catches up exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local.moto_s3 import LocalS3
from local.seed import seed
from local.tcp_proxy import TcpProxy
from runner import cli
from runner.exit_codes import ExitCode
from tests.conftest import execute
from tests.helpers import pg_rows
from tests.snowflake.conftest import DATASET, bootstrap, sf_rows

TABLES = {"orders.orders": "id", "customers.customers": "id"}


@pytest.fixture()
def s3_proxy(s3: LocalS3, monkeypatch: pytest.MonkeyPatch, sf_env: dict[str, str]) -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(s3.endpoint_url.rsplit(":", 1)[1])).resume()
    monkeypatch.setenv("DESTINATION__FILESYSTEM__CREDENTIALS__ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("RUNNER__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("RUNNER__BACKOFF_INITIAL_SECONDS", "0.5")
    monkeypatch.setenv("RUNNER__DEAD_LETTER_URL", str(Path(sf_env["DLT_DATA_DIR"]) / "dead_letter"))
    yield proxy
    proxy.pause()


def assert_exact(dsn: str) -> None:
    for table, key in TABLES.items():
        source = pg_rows(dsn, f"SELECT {key}, updated_at FROM {table} ORDER BY {key}")
        dest = sf_rows(f'SELECT {key}, updated_at FROM "{DATASET}"."{table.replace(".", "__").upper()}" '
                       f"ORDER BY {key}")
        assert [(r[0], r[1].timestamp()) for r in dest] == [(r[0], r[1].timestamp()) for r in source], table


def test_s3_outage_during_load_then_exact_catch_up(sf_env: dict[str, str], fake_sf: object,
                                                   s3_proxy: TcpProxy, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = sf_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=200, orders=600)
    assert bootstrap() == 0
    assert cli.main(["--json-logs", "run"]) == ExitCode.SUCCESS
    assert_exact(dsn)

    execute(dsn, "UPDATE orders.orders SET status = 'paid' WHERE id <= 50",
            "INSERT INTO customers.customers (id, email, full_name) VALUES (9001, 'x@example.com', 'X')")
    s3_proxy.pause()  # extract and normalize read PostgreSQL; the load's upload to S3 fails
    capsys.readouterr()
    assert cli.main(["--json-logs", "run"]) == ExitCode.FAILURE
    errors = capsys.readouterr().err
    assert "Traceback" not in errors and '"level": "ERROR"' in errors

    s3_proxy.resume()
    execute(dsn, "DELETE FROM orders.order_items WHERE order_id = 7",
            "UPDATE customers.customers SET full_name = 'after outage' WHERE id = 1")
    assert cli.main(["--json-logs", "run"]) == ExitCode.SUCCESS
    assert_exact(dsn)
    assert sf_rows(f'SELECT count(*) FROM "{DATASET}"."ORDERS__ORDERS" WHERE status = \'paid\'')[0][0] >= 50
