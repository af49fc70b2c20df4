"""A real OpenBao dev server configured by `vault/setup.sh` against a database on the session PostgreSQL.

One OpenBao and one seeded source database serve the whole module set (the dev server starts in
~0.3 s, setup.sh in ~1.5 s); tests that change the dynamic role's TTLs restore them. The Vault
admin in PostgreSQL is a dedicated non-superuser role with CREATEROLE and the replicated schemas'
privileges WITH GRANT OPTION (PostgreSQL 15 lets it grant only what it holds with grant option).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import psycopg2
import pytest

from local.openbao import LocalOpenBao, OpenBaoNotAvailable, find_bao
from local.postgres import LocalPostgres
from local.seed import seed
from tests.conftest import PROJECT_ROOT, execute

ROLE = "aurora-sync"
CREDS_PATH = f"database/creds/{ROLE}"
DUCKDB_KV = "aurora-sync/duckdb"
PG_ENV_PREFIXES = ("SOURCES__", "DESTINATION__", "CUSTOMERS_ORDERS__", "VAULT", "DLT_", "RUNTIME__")
DEFAULT_TTL, DEFAULT_MAX_TTL = "10m", "30m"


@dataclass
class VaultDb:
    """The source database Vault issues users for."""

    name: str
    dsn: str  # superuser DSN, for test setup and checks only
    port: int
    admin_user: str


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOpenBao]:
    try:
        find_bao()
    except OpenBaoNotAvailable as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.mktemp("bao")
    server = LocalOpenBao(audit_log=base / "audit.log", base_dir=base).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def root(bao: LocalOpenBao) -> hvac.Client:
    return bao.client()


def setup_env(bao: LocalOpenBao, db: VaultDb, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "PG_"))},
        **bao.env(),
        "VAULT_BIN": find_bao(),
        "PG_HOST": "127.0.0.1",
        "PG_PORT": str(db.port),
        "PG_DATABASE": db.name,
        "PG_ADMIN_USER": db.admin_user,
        "PG_SSLMODE": "disable",
        "DB_DEFAULT_TTL": DEFAULT_TTL,
        "DB_MAX_TTL": DEFAULT_MAX_TTL,
        "TOKEN_TTL": "30m",
        "ENABLE_AWS_AUTH": "0",  # OpenBao has no AWS auth method (see test_aws_auth.py)
        **extra,
    }


def run_setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(PROJECT_ROOT / "vault" / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def create_vault_admin(dsn: str, admin_user: str, admin_password: str) -> None:
    """The role Vault manages users with, as docs/secrets.md asks for on Aurora."""
    execute(
        dsn,
        # Aurora has rds_replication; here a NOLOGIN stand-in keeps the creation statements identical
        "DO $$ BEGIN CREATE ROLE rds_replication NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        f"CREATE ROLE {admin_user} LOGIN CREATEROLE PASSWORD '{admin_password}'",
        f"GRANT rds_replication TO {admin_user} WITH ADMIN OPTION",
        f"GRANT USAGE ON SCHEMA customers, orders TO {admin_user} WITH GRANT OPTION",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA customers, orders TO {admin_user} WITH GRANT OPTION",
    )


@pytest.fixture(scope="session")
def vault_db(pg: LocalPostgres, bao: LocalOpenBao, root: hvac.Client) -> Iterator[VaultDb]:
    """A seeded database, a Vault admin role in it, and Vault configured by vault/setup.sh."""
    suffix = uuid.uuid4().hex[:8]
    name, admin_user, admin_password = f"vault_src_{suffix}", f"vault_admin_{suffix}", secrets.token_urlsafe(18)
    execute(pg.url(), f'CREATE DATABASE "{name}"')
    dsn = pg.url(database=name)
    seed(dsn, customers=200, orders=500)
    create_vault_admin(dsn, admin_user, admin_password)
    db = VaultDb(name, dsn, pg.port, admin_user)
    result = run_setup(setup_env(bao, db, PG_ADMIN_PASSWORD=admin_password))
    assert result.returncode == 0, result.stderr
    assert admin_password not in result.stdout + result.stderr
    try:
        yield db
    finally:
        root.adapter.put(f"/v1/sys/leases/revoke-prefix/{CREDS_PATH}")
        execute(pg.url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def set_role_ttl(root: hvac.Client, ttl: str, max_ttl: str) -> None:
    role = root.read(f"database/roles/{ROLE}")["data"]
    root.write_data(f"database/roles/{ROLE}", data={
        "db_name": role["db_name"], "creation_statements": role["creation_statements"],
        "revocation_statements": role["revocation_statements"], "default_ttl": ttl, "max_ttl": max_ttl})


@pytest.fixture()
def short_ttl(root: hvac.Client, vault_db: VaultDb) -> Iterator[Any]:
    """`short_ttl(ttl, max_ttl)` shortens the dynamic role's TTLs for one test."""
    yield lambda ttl, max_ttl: set_role_ttl(root, ttl, max_ttl)
    set_role_ttl(root, DEFAULT_TTL, DEFAULT_MAX_TTL)


def set_token_ttl(root: hvac.Client, ttl: str, max_ttl: str) -> None:
    root.write_data(f"auth/approle/role/{ROLE}", data={"token_ttl": ttl, "token_max_ttl": max_ttl})


@pytest.fixture()
def approle(root: hvac.Client, vault_db: VaultDb) -> dict[str, str]:
    """The role_id and a fresh secret_id of the pipeline's AppRole."""
    role_id = root.read(f"auth/approle/role/{ROLE}/role-id")["data"]["role_id"]
    secret_id = root.adapter.post(f"/v1/auth/approle/role/{ROLE}/secret-id")["data"]["secret_id"]
    return {"role_id": role_id, "secret_id": secret_id}


def kv_put(root: hvac.Client, path: str, **data: str) -> int:
    response = root.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="kv")
    return int(response["data"]["version"])


def pg_role_exists(dsn: str, name: str) -> bool:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,))
            return bool(cur.fetchone()[0])
    finally:
        conn.close()


def vault_env(bao: LocalOpenBao, db: VaultDb, approle: dict[str, str], tmp_path: Path,
              mapping: dict[str, str] | None = None) -> dict[str, str]:
    """Env for a run that gets everything secret from Vault: the DB user (dynamic), the DuckDB path (KV)."""
    mapping = mapping if mapping is not None else {
        "sources.postgres.credentials": CREDS_PATH,
        "destination.duckdb.credentials": f"kv/data/{DUCKDB_KV}#database",
    }
    return {
        "VAULT_ADDR": bao.addr,
        "VAULT_AUTH_METHOD": "approle",
        "VAULT_ROLE_ID": approle["role_id"],
        "VAULT_SECRET_ID": approle["secret_id"],
        "VAULT_SECRETS": json.dumps(mapping),
        # the non-secret half of the source credentials; user and password come from Vault
        "SOURCES__POSTGRES__CREDENTIALS__DRIVERNAME": "postgresql",
        "SOURCES__POSTGRES__CREDENTIALS__HOST": "127.0.0.1",
        "SOURCES__POSTGRES__CREDENTIALS__PORT": str(db.port),
        "SOURCES__POSTGRES__CREDENTIALS__DATABASE": db.name,
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNTIME__LOG_LEVEL": "WARNING",
    }


@pytest.fixture()
def in_process_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`apply(env)`: set exactly these variables for an in-process run (no stray DSN or token)."""

    def apply(env: dict[str, str]) -> None:
        for name in list(os.environ):
            if name.startswith(PG_ENV_PREFIXES) or name.startswith("BAO_"):
                monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(PROJECT_ROOT)

    return apply


def project_dir(tmp_path: Path, db: VaultDb, vault_lines: str = "") -> Path:
    """A project directory whose .dlt/config.toml is ours plus `vault_lines` (the lines docs/secrets.md
    gives for the real config). The source's host/port/database stay env vars: dlt refuses a
    credentials table in config.toml."""
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True, exist_ok=True)
    config = (PROJECT_ROOT / ".dlt" / "config.toml").read_text() + "\n" + vault_lines
    (project / ".dlt" / "config.toml").write_text(config)
    return project


def cli(project: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, with only the env given (plus PATH/HOME-like basics)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(PG_ENV_PREFIXES) and not k.startswith("BAO_")}
    return subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "aurora-sync"), *args], cwd=project,
                          env={**base, **env}, capture_output=True, text=True, timeout=timeout, check=False)


def error_line(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The runner's final JSON error line on stderr."""
    for line in reversed(result.stderr.splitlines()):
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("level") == "ERROR":
                return record
    raise AssertionError(f"no JSON error line in stderr:\n{result.stderr[-3000:]}")
