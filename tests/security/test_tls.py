"""TLS by default, against a real PostgreSQL serving a certificate from a throwaway CA.

The "remote" host is `db.aurora.test` with `hostaddr=127.0.0.1`: libpq connects to loopback but verifies the
certificate against the name, exactly as through an SSM/SSH port-forward to Aurora, and the policy treats it as
remote. No traffic leaves the machine; a refused DSN is refused before any connection is attempted, which the
listening-socket test proves by counting accepted connections.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from local.postgres import LocalPostgres, PostgresNotAvailable, execute
from local.tls import CertificateAuthority, enable_tls
from runner.exit_codes import ExitCode
from sources.postgres import transport
from sources.postgres.ca_bundle import BUNDLE_PATH
from sources.postgres.session import make_engine
from tests.test_run_operations import aurora_sync, events

REMOTE_NAME = "db.aurora.test"


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[LocalPostgres, Path]]:
    try:
        server = LocalPostgres().start()
    except PostgresNotAvailable as exc:
        pytest.skip(str(exc))
    try:
        ca = enable_tls(server, [REMOTE_NAME, "localhost", "127.0.0.1"])
        execute(server.url(), "CREATE SCHEMA app",
                "CREATE TABLE app.items (id int PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now())",
                "INSERT INTO app.items (id) SELECT generate_series(1, 10)")
        yield server, ca
    finally:
        server.cleanup()


def remote_dsn(server: LocalPostgres, port: int | None = None, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"hostaddr": "127.0.0.1", **params}.items())
    return f"postgresql://{server.user}:{server.password}@{REMOTE_NAME}:{port or server.port}/postgres?{query}"


@pytest.fixture()
def env(tmp_path: Path, tls_pg: tuple[LocalPostgres, Path]) -> dict[str, str]:
    server, ca = tls_pg
    return {
        "SOURCES__POSTGRES__CREDENTIALS": remote_dsn(server),
        "SOURCES__POSTGRES__SSL_ROOT_CERT": str(ca),
        "SOURCES__POSTGRES__SCHEMAS": '["app"]',
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "RUNNER__MAX_ATTEMPTS": "1",
    }


def test_loopback_dsns_are_left_alone_and_remote_ones_get_verify_full_with_the_rds_bundle() -> None:
    local = "postgresql://u:p@127.0.0.1:5432/db"
    assert transport.secure_dsn(local) == local
    socket_dsn = "host=localhost dbname=db sslmode=disable"
    assert transport.secure_dsn(socket_dsn) == socket_dsn
    secured = psycopg2.extensions.parse_dsn(transport.secure_dsn("postgresql://u:p@writer.cluster-x.rds.test/db"))
    assert secured["sslmode"] == "verify-full" and secured["sslrootcert"] == str(BUNDLE_PATH)
    url = make_engine("postgresql://u:p@writer.cluster-x.rds.test/db", 1000).url
    assert url.query == {"sslmode": "verify-full", "sslrootcert": str(BUNDLE_PATH)}
    # a loopback hostaddr behind a remote name is a tunnel to a remote server: still remote
    assert transport.remote_hosts({"host": REMOTE_NAME, "hostaddr": "127.0.0.1"}) == [REMOTE_NAME]
    with pytest.raises(transport.InsecureTransport, match="sslmode=require"):
        transport.secure_dsn("host=192.0.2.10 dbname=db sslmode=require")


def test_verify_full_with_the_right_ca_connects_encrypted_and_doctor_shows_it(env: dict[str, str]) -> None:
    result = aurora_sync(env, "doctor", "--json")
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["source: connection"]["status"] == "ok", result.stdout
    tls = checks["source: TLS"]
    assert tls["status"] == "ok" and tls["detail"].startswith("encrypted (TLSv1.3"), tls
    assert f"verified (sslmode=verify-full, CA {env['SOURCES__POSTGRES__SSL_ROOT_CERT']})" in tls["detail"]
    # and a sync runs over it; the server agrees the session was encrypted
    run = aurora_sync(env, "run")
    assert run.returncode == ExitCode.SUCCESS, run.stderr
    identity = next(e for e in events(run) if e["message"] == "identity")
    assert identity["db_ssl"] is True and identity["db_sslmode"] == "verify-full"
    # CDC's own connections (control session, exported-snapshot copy, the walsender) go through the same policy
    for command in (["setup"], ["run", "--mode", "cdc"], ["teardown", "--yes"]):
        result = aurora_sync(env, *command)
        assert result.returncode == ExitCode.SUCCESS, (command, result.stderr[-1500:])


def test_a_wrong_ca_fails_with_a_clear_message(env: dict[str, str], tmp_path: Path) -> None:
    wrong = tmp_path / "other-ca.pem"
    wrong.write_bytes(CertificateAuthority.create("some other CA").pem())
    result = aurora_sync({**env, "SOURCES__POSTGRES__SSL_ROOT_CERT": str(wrong)}, "run")
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr
    message = events(result)[-1]["message"]
    assert message.startswith(f"TLS to postgres@{REMOTE_NAME}:") and "certificate verify failed" in message, message
    assert "sslrootcert" in message and "global-bundle.pem" in message


def test_a_certificate_for_another_name_is_refused(
        env: dict[str, str], tls_pg: tuple[LocalPostgres, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server, ca = tls_pg
    monkeypatch.setenv("SOURCES__POSTGRES__SSL_ROOT_CERT", str(ca))
    engine = make_engine(remote_dsn(server).replace(REMOTE_NAME, "other.aurora.test"), 5000)
    with pytest.raises(sa.exc.OperationalError, match="does not match host name"):
        engine.connect()
    engine.dispose()
    result = aurora_sync({**env, "SOURCES__POSTGRES__CREDENTIALS": remote_dsn(server).replace(
        REMOTE_NAME, "other.aurora.test")}, "run")
    assert result.returncode == ExitCode.CONFIG_ERROR and "does not match host name" in events(result)[-1]["message"]


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-ca"])
def test_plain_or_unverified_tcp_to_a_remote_host_is_refused_before_connecting(
        env: dict[str, str], tls_pg: tuple[LocalPostgres, Path], sslmode: str) -> None:
    server, _ = tls_pg
    with socket.socket() as listener:  # stands where the DSN points: any connection attempt would be accepted
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        dsn = remote_dsn(server, port=listener.getsockname()[1], sslmode=sslmode)
        for command in (["run"], ["run", "--mode", "cdc"], ["doctor", "--json"]):
            result = aurora_sync({**env, "SOURCES__POSTGRES__CREDENTIALS": dsn}, *command)
            output = result.stdout + result.stderr
            assert f"sslmode={sslmode}: a host that is not loopback needs sslmode=verify-full" in output, output
            assert server.password not in output
            if command[0] == "run":
                assert result.returncode == ExitCode.CONFIG_ERROR, output
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected


def test_allow_insecure_transport_connects_and_warns_on_every_run(
        env: dict[str, str], tls_pg: tuple[LocalPostgres, Path]) -> None:
    server, _ = tls_pg
    insecure = {**env, "SOURCES__POSTGRES__CREDENTIALS": remote_dsn(server, sslmode="disable"),
                "SOURCES__POSTGRES__ALLOW_INSECURE_TRANSPORT": "true"}
    for _ in range(2):
        result = aurora_sync(insecure, "run")
        assert result.returncode == ExitCode.SUCCESS, result.stderr
        warnings = [e for e in events(result) if e["level"] == "WARNING" and "allow_insecure_transport" in e["message"]]
        assert len(warnings) == 1 and f"TLS is not verified for the source host {REMOTE_NAME}" in warnings[0]["message"]
    report = json.loads(aurora_sync(insecure, "doctor", "--json").stdout)
    tls = next(c for c in report["checks"] if c["name"] == "source: TLS")
    assert tls["status"] == "warn" and tls["detail"].startswith("not encrypted; not verified (sslmode=disable)")


def test_a_missing_ca_bundle_is_a_configuration_error(env: dict[str, str], tmp_path: Path) -> None:
    result = aurora_sync({**env, "SOURCES__POSTGRES__SSL_ROOT_CERT": str(tmp_path / "absent.pem")}, "run")
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert f"The CA bundle {tmp_path / 'absent.pem'} for verifying {REMOTE_NAME} does not exist" in result.stderr
