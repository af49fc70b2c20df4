"""The real `snowflake-connector-python` against fakesnow's HTTP server: dlt's credentials URL carries
host/port/protocol as query parameters, and the connector signs in with the key pair (a JWT), as in production."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.fakesnow_adapter import FakeSnowflake, fake_snowflake_server
from local.moto_s3 import LocalS3
from local.seed import seed
from pipelines import customers_orders
from tests.helpers import pg_rows
from tests.snowflake.conftest import DATABASE, DATASET, Bucket, bootstrap

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")


@pytest.fixture()
def server(s3: LocalS3) -> Iterator[FakeSnowflake]:
    with fake_snowflake_server(s3.s3fs()) as fake:
        yield fake


def query(fake: FakeSnowflake, sql: str) -> list[tuple[Any, ...]]:
    import snowflake.connector

    conn = snowflake.connector.connect(user="analyst", password="unused-by-the-fake", account="fakeaccount",
                                       database=DATABASE, network_timeout=30, **fake.connect_params())
    try:
        with conn.cursor() as cur:
            return list(cur.execute(sql).fetchall())
    finally:
        conn.close()


def test_customers_orders_through_the_http_server_with_key_pair_auth(
    sf_env: dict[str, str], server: FakeSnowflake, bucket: Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snowflake.connector.auth.keypair import AuthByKeyPair

    endpoint = f"host={server.host}&port={server.port}&protocol={server.protocol}"
    monkeypatch.setenv("DESTINATION__SNOWFLAKE__CREDENTIALS",
                       f"snowflake://AURORA_SYNC_LOADER@fakeaccount/{DATABASE}?warehouse=AURORA_SYNC_LOAD_WH"
                       f"&role=AURORA_SYNC_LOADER&{endpoint}")
    monkeypatch.setenv("SNOWFLAKE_BOOTSTRAP__CREDENTIALS", f"snowflake://admin:unused-by-the-fake@fakeaccount/?{endpoint}")
    jwt_logins: list[str] = []
    prepare = AuthByKeyPair.prepare

    def counting_prepare(self: AuthByKeyPair, *args: Any, **kwargs: Any) -> Any:
        jwt_logins.append(kwargs.get("account") or "")
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(AuthByKeyPair, "prepare", counting_prepare)

    dsn = sf_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=50, orders=120)
    assert bootstrap() == 0
    info = customers_orders.run(pipelines_dir=str(tmp_path / "p"))
    info.raise_on_failures()
    assert jwt_logins, "dlt should have signed in with the private key (JWT), not a password"

    expected = pg_rows(dsn, "SELECT id, email, full_name, country, preferences::text, updated_at "
                            "FROM customers.customers ORDER BY id")
    actual = query(server, f"SELECT id, email, full_name, country, preferences, updated_at "
                           f"FROM {DATASET}.CUSTOMERS__CUSTOMERS ORDER BY id")
    assert [(*r[:4], json.loads(r[4]), r[5]) for r in actual] == [(*r[:4], json.loads(r[4]), r[5]) for r in expected]
    assert query(server, f"SELECT id, status, total FROM {DATASET}.ORDERS__ORDERS ORDER BY id") == pg_rows(
        dsn, "SELECT id, status::text, total FROM orders.orders ORDER BY id")
    assert any(s.startswith("COPY INTO") and "@AURORA_SYNC.RAW.ARCHIVE_STAGE" in s for s in server.executed)


def test_the_stand_in_makes_transactions_wait_and_aborts_a_dead_sessions_one(s3: LocalS3) -> None:
    """Patch 6 over HTTP: a second writer of a row waits for the first (Snowflake's row lock; DuckDB would fail it
    with "Conflict on update", a 500 the connector retries for minutes), and a client that died inside its
    transaction does not block the others for ever."""
    import threading
    import time

    import snowflake.connector

    with fake_snowflake_server(s3.s3fs(), dead_after_s=2) as fake:
        def connect() -> Any:
            return snowflake.connector.connect(user="analyst", password="unused-by-the-fake", account="fakeaccount",
                                               network_timeout=30, **fake.connect_params())

        setup = connect()
        setup.cursor().execute("CREATE DATABASE turns")
        setup.cursor().execute("CREATE SCHEMA turns.public")
        setup.cursor().execute("CREATE TABLE turns.public.fence (id INT, v INT)")
        setup.cursor().execute("INSERT INTO turns.public.fence VALUES (1, 0)")

        def value() -> int:
            return int(setup.cursor().execute("SELECT v FROM turns.public.fence WHERE id = 1").fetchone()[0])

        first, second = connect(), connect()
        first.autocommit(False)
        first.cursor().execute("UPDATE turns.public.fence SET v = v + 1 WHERE id = 1")
        done: list[float] = []

        def waiter() -> None:
            second.autocommit(False)
            second.cursor().execute("UPDATE turns.public.fence SET v = v + 10 WHERE id = 1")
            second.commit()
            second.autocommit(True)
            done.append(time.monotonic())

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(1.0)  # less than dead_after_s: the first is alive, the second must still be waiting
        assert not done, "the second transaction did not wait for the first"
        committed = time.monotonic()
        first.commit()
        first.autocommit(True)
        thread.join(30)
        assert done and done[0] >= committed
        assert value() == 11

        dead = connect()  # a client killed with kill -9 inside its transaction: never sends another statement
        dead.autocommit(False)
        dead.cursor().execute("UPDATE turns.public.fence SET v = 1000 WHERE id = 1")
        started = time.monotonic()
        survivor = connect()
        survivor.autocommit(False)
        survivor.cursor().execute("UPDATE turns.public.fence SET v = v + 1 WHERE id = 1")
        survivor.commit()
        survivor.autocommit(True)
        assert 2 <= time.monotonic() - started < 30
        assert value() == 12, "the dead session's update was not rolled back"
        with pytest.raises(snowflake.connector.errors.ProgrammingError, match="Transaction aborted"):
            dead.cursor().execute("UPDATE turns.public.fence SET v = 2000 WHERE id = 1")
        assert value() == 12
        for conn in (setup, first, second, dead, survivor):
            conn.close()


def test_the_stand_in_answers_a_long_statement_in_progress_as_snowflake_does(s3: LocalS3) -> None:
    """Patch 7: a statement that waits longer than the connector's read timeout is answered "in progress" and
    polled for; before, the connector timed out and re-sent it, and the second `autocommit=False` failed."""
    import threading
    import time

    import snowflake.connector

    with fake_snowflake_server(s3.s3fs(), in_progress_after_s=0.5) as fake:
        def connect(**extra: Any) -> Any:
            return snowflake.connector.connect(user="analyst", password="unused-by-the-fake", account="fakeaccount",
                                               network_timeout=60, **fake.connect_params(), **extra)

        setup = connect()
        setup.cursor().execute("CREATE DATABASE waits")
        setup.cursor().execute("CREATE SCHEMA waits.public")
        setup.cursor().execute("CREATE TABLE waits.public.fence (id INT, v INT)")
        setup.cursor().execute("INSERT INTO waits.public.fence VALUES (1, 0)")
        first = connect()
        impatient = connect(socket_timeout=2)  # the read timeout the wait below outlasts
        first.autocommit(False)
        first.cursor().execute("UPDATE waits.public.fence SET v = v + 1 WHERE id = 1")
        errors: list[BaseException] = []

        def waiter() -> None:
            try:
                impatient.autocommit(False)
                impatient.cursor().execute("UPDATE waits.public.fence SET v = v * 10 WHERE id = 1")
                impatient.commit()
                impatient.autocommit(True)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(4)  # twice the waiter's read timeout
        first.commit()
        first.autocommit(True)
        thread.join(60)
        assert not thread.is_alive() and not errors, errors
        assert fake.answered_in_progress >= 1
        assert setup.cursor().execute("SELECT v FROM waits.public.fence").fetchall() == [(10,)]
        for conn in (setup, first, impatient):
            conn.close()
