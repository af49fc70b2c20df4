"""A pipeline run whose PostgreSQL user comes from Vault's database engine and whose destination from KV.

Everything real: OpenBao dev server, PostgreSQL, dlt, DuckDB. The only credentials the run has are
an AppRole role_id/secret_id; the DSN host/port/database are plain config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import hvac
import psycopg2
import pytest

from local.openbao import LocalOpenBao
from pipelines import customers_orders
from runner.vault import CredentialChange, VaultSettings, activate
from tests.conftest import PROJECT_ROOT, execute
from tests.helpers import DATASET, duck_rows, pg_rows

from .conftest import CREDS_PATH, DUCKDB_KV, VaultDb, kv_put, pg_role_exists, set_token_ttl, vault_env

TABLES = {"customers.customers": "customers__customers", "orders.orders": "orders__orders"}


def run_pipeline(tmp_path: Path) -> None:
    info = customers_orders.run(pipelines_dir=str(tmp_path / "pipelines"), tables=list(TABLES))
    info.raise_on_failures()


def assert_replica_complete(db: VaultDb, duck: Path) -> None:
    for source, dest in TABLES.items():
        source_ids = [r[0] for r in pg_rows(db.dsn, f"SELECT id FROM {source} ORDER BY id")]
        dest_ids = [r[0] for r in duck_rows(duck, f"SELECT id FROM {DATASET}.{dest} ORDER BY id")]
        assert dest_ids == source_ids, dest


def test_run_takes_pg_user_from_database_engine_and_destination_from_kv_and_revokes_at_exit(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
    in_process_env,
) -> None:
    duck = tmp_path / "from-kv.duckdb"
    kv_put(root, DUCKDB_KV, database=str(duck))
    in_process_env(vault_env(bao, vault_db, approle, tmp_path))

    with activate() as session:
        assert session is not None and session.auth.method == "approle"
        lease = session.leases.get(CREDS_PATH)
        assert lease is not None and lease.renewable
        user = lease.data["username"]
        assert user.startswith("v-approle-aurora-s") and pg_role_exists(vault_db.dsn, user)
        run_pipeline(tmp_path)
        # the source connected as the Vault-issued user (the superuser DSN is configured nowhere)
        privileges = pg_rows(vault_db.dsn, "SELECT rolsuper, rolcreaterole, pg_has_role(rolname, 'rds_replication', "
                                           f"'member') FROM pg_roles WHERE rolname = '{user}'")
        assert privileges == [(False, False, True)]

    assert_replica_complete(vault_db, duck)  # the DuckDB file exists only at the path KV named
    assert not pg_role_exists(vault_db.dsn, user), "lease revoked at exit: the PostgreSQL role is dropped"
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(vault_db.dsn.replace("postgres:", f"{user}:", 1)).close()


def test_lease_and_token_are_renewed_during_a_run_longer_than_their_ttl(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
    in_process_env, short_ttl,
) -> None:
    # TTLs short enough to need several renewals in the run, long enough that a renewal due at 2/3 of one still
    # happens in time on a CI machine with both cores busy (3 s leases expired there, starved of the GIL)
    short_ttl("5s", "60s")
    set_token_ttl(root, "6s", "60s")
    try:
        kv_put(root, DUCKDB_KV, database=str(tmp_path / "renew.duckdb"))
        in_process_env(vault_env(bao, vault_db, approle, tmp_path))
        with activate() as session:
            assert session is not None
            lease = session.leases.get(CREDS_PATH)
            assert lease is not None and lease.duration == 5
            started = time.monotonic()
            runs = 0
            while time.monotonic() - started < 12 or runs < 2:  # well past the 5 s TTL
                run_pipeline(tmp_path)
                runs += 1
            assert session.leases.get(CREDS_PATH) is lease, "renewed in place: the same credentials throughout"
            assert lease.renewals >= 2 and session.leases.stats.refetches == 0
            assert session.leases.stats.token_renewals >= 1
            # Vault answers a lookup only for a live lease; its whole-second `ttl` may read 0 just before the
            # next renewal when the machine is loaded, so liveness is the lookup itself succeeding
            looked_up = root.adapter.put("/v1/sys/leases/lookup", json={"lease_id": lease.lease_id})["data"]
            assert looked_up["ttl"] >= 0 and looked_up["renewable"]
            user = lease.data["username"]
            assert pg_role_exists(vault_db.dsn, user)
        assert not pg_role_exists(vault_db.dsn, user)
    finally:
        set_token_ttl(root, "30m", "24h")


def test_failed_renewal_fetches_new_credentials_and_the_next_run_reconnects_without_loss(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
    in_process_env, short_ttl,
) -> None:
    # 6 s: renewal at 4 s leaves 2 s of slack; with 3 s a loaded machine let the second lease expire unrenewed, and
    # the run that follows found its role dropped
    short_ttl("6s", "60s")
    duck = tmp_path / "reconnect.duckdb"
    kv_put(root, DUCKDB_KV, database=str(duck))
    in_process_env(vault_env(bao, vault_db, approle, tmp_path))
    changes: list[CredentialChange] = []
    with activate() as session:
        assert session is not None
        session.on_credentials_change(changes.append)
        first = session.leases.get(CREDS_PATH)
        assert first is not None
        run_pipeline(tmp_path)

        # someone revokes our lease (or Vault lost it): the role is dropped, renewal fails
        root.adapter.put(f"/v1/sys/leases/revoke/{first.lease_id}")
        assert not pg_role_exists(vault_db.dsn, first.data["username"])
        assert session.credentials_changed.wait(20), "renewal failure should fetch new credentials"
        session.credentials_changed.clear()
        second = session.leases.get(CREDS_PATH)
        assert second is not None and second.generation == 2
        assert second.data["username"] != first.data["username"]
        assert [(c.path, c.reason, c.generation) for c in changes] == [(CREDS_PATH, "renewal-failed", 2)]

        # rows written while the credentials changed
        execute(vault_db.dsn,
                "INSERT INTO customers.customers (id, email, full_name) VALUES (910001, 'r1@example.com', 'R1')",
                "INSERT INTO orders.orders (id, customer_id, status, total, placed_at) "
                "VALUES (910001, 910001, 'new', 1, now())")
        run_pipeline(tmp_path)  # a new source resolves the new credentials through the provider
        assert pg_role_exists(vault_db.dsn, second.data["username"])
    assert_replica_complete(vault_db, duck)
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.customers__customers WHERE id = 910001") == [(1,)]
    assert not pg_role_exists(vault_db.dsn, second.data["username"])
    execute(vault_db.dsn, "DELETE FROM orders.orders WHERE id = 910001",
            "DELETE FROM customers.customers WHERE id = 910001")


def test_lease_at_max_ttl_is_replaced_before_it_expires(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
    in_process_env, short_ttl,
) -> None:
    # TTLs leave ~2 s of slack at each step: a busy CI machine (the whole suite on 2 cores) delayed the
    # renewal of a 2 s/4 s lease past its expiry, which Vault reports as a failed renewal, not max_ttl
    short_ttl("6s", "12s")
    in_process_env(vault_env(bao, vault_db, approle, tmp_path, mapping={"sources.postgres.credentials": CREDS_PATH}))
    seen = threading.Event()
    with activate() as session:
        assert session is not None
        first = session.leases.get(CREDS_PATH)
        assert first is not None
        session.on_credentials_change(lambda change: seen.set() if change.reason == "max-ttl" else None)
        assert seen.wait(30)
        second = session.leases.get(CREDS_PATH)
        assert second is not None and second.data["username"] != first.data["username"]
        user = second.data["username"]
        conn = psycopg2.connect(host="127.0.0.1", port=vault_db.port, dbname=vault_db.name, user=user,
                                password=second.data["password"])
        conn.close()
    assert not pg_role_exists(vault_db.dsn, user)
    assert not pg_role_exists(vault_db.dsn, first.data["username"])


SIGTERM_SCRIPT = """
import sys, time
from runner import logs
from runner.vault import activate
logs.setup()
with activate() as session:
    print(session.leases.get(sys.argv[1]).data["username"], flush=True)
    time.sleep(60)
"""


def test_sigterm_revokes_the_lease(
    bao: LocalOpenBao, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("VAULT", "SOURCES__", "BAO_"))},
           **vault_env(bao, vault_db, approle, tmp_path, mapping={"sources.postgres.credentials": CREDS_PATH})}
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, CREDS_PATH], cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        user = process.stdout.readline().strip()
        assert user and pg_role_exists(vault_db.dsn, user), process.stderr.read() if not user else ""
        process.terminate()  # what ECS sends on StopTask
        assert process.wait(timeout=20) == 143
    finally:
        if process.poll() is None:
            process.kill()
    assert not pg_role_exists(vault_db.dsn, user)
    assert "vault lease revoked" in (process.stderr.read() if process.stderr else "")


def test_namespace_and_tls_with_a_private_ca(tmp_path: Path) -> None:
    """TLS is verified by default: without the CA the login fails clearly; with `ca_cert` it works."""
    from runner.errors import classify
    from runner.exit_codes import ExitCode
    from runner.vault.client import connect
    from runner.vault.errors import VaultTLSError
    from runner.vault.settings import SecretRef

    with LocalOpenBao(tls=True) as server:
        admin = server.client()
        admin.sys.create_namespace("team")
        team = hvac.Client(url=server.addr, token=server.root_token, verify=server.ca_cert, namespace="team")
        team.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
        team.secrets.kv.v2.create_or_update_secret("aurora-sync/app", secret={"k": "in-namespace"}, mount_point="kv")
        settings = VaultSettings(addr=server.addr, auth_method="token", token=server.root_token, namespace="team",
                                 secrets={"x.y": SecretRef.parse("kv/data/aurora-sync/app#k")})
        with pytest.raises(VaultTLSError) as failed:
            connect(settings)
        assert classify(failed.value) == (ExitCode.CONFIG_ERROR, str(failed.value))
        assert "ca_cert" in str(failed.value) and "`token`" in str(failed.value)
        settings.ca_cert = server.ca_cert
        with activate(settings) as session:
            assert session is not None and session.value("x.y") == "in-namespace"
