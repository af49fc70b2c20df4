"""No secret value in logs, error messages, --debug output or dlt's traces.

Runs the real CLI with `--debug`, once succeeding and several times failing, with known secrets: the
PostgreSQL password Vault's database engine issued (read back from OpenBao's raw audit log, which
sees every response), the Vault tokens it issued, the AppRole secret_id, a static reader password
and the Snowflake key pair from KV. Then it scans every byte the runs wrote: stdout, stderr and the
whole dlt data directory (pipeline state, trace.pickle, load packages), decompressing what is gzipped.
"""

from __future__ import annotations

import gzip
import json
import secrets
from pathlib import Path
from typing import Any

import hvac

from local.openbao import LocalOpenBao
from tests.conftest import execute
from tests.helpers import DATASET, duck_rows

from .conftest import CREDS_PATH, DUCKDB_KV, VaultDb, cli, error_line, kv_put, project_dir, vault_env

VAULT_CONFIG = """
[vault]
auth_method = "approle"

[vault.secrets]
"sources.postgres.credentials" = "database/creds/aurora-sync"
"sources.postgres.reader_credentials" = "kv/data/aurora-sync/postgres-reader#dsn"
"destination.duckdb.credentials" = "kv:aurora-sync/duckdb#database"
"destination.snowflake.credentials.private_key" = "kv/data/aurora-sync/snowflake#private_key"
"destination.snowflake.credentials.private_key_passphrase" = "kv/data/aurora-sync/snowflake#private_key_passphrase"
"""


def issued_by_vault(audit_log: Path, offset: int) -> set[str]:
    """Passwords, lease ids and tokens in Vault's responses since `offset` (the raw audit device logs them)."""
    found: set[str] = set()
    with audit_log.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            entry = json.loads(line)
            response: dict[str, Any] = entry.get("response") or {}
            data = response.get("data") or {}
            if entry.get("type") == "response" and entry["request"]["path"] == CREDS_PATH:
                found.add(data["password"])
                # lease ids are not credentials, but we promise to log only their last characters
                found.add((response.get("secret") or {}).get("lease_id") or response.get("lease_id"))
            if (response.get("auth") or {}).get("client_token"):
                found.add(response["auth"]["client_token"])
    found.discard(None)  # type: ignore[arg-type]
    return found


def scanned_files(root: Path) -> dict[Path, bytes]:
    contents = {}
    for path in root.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            contents[path] = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    return contents


def leaks(secret_values: set[str], outputs: dict[str, bytes]) -> list[tuple[str, str]]:
    return [(where, secret[:4] + "…") for where, blob in outputs.items() for secret in secret_values
            if secret.encode() in blob]


def test_no_secret_in_output_errors_debug_or_dlt_traces(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
) -> None:
    assert bao.audit_log is not None
    offset = bao.audit_log.stat().st_size
    reader_user, reader_password = f"reader_{secrets.token_hex(4)}", secrets.token_urlsafe(20)
    execute(vault_db.dsn, f"CREATE ROLE {reader_user} LOGIN PASSWORD '{reader_password}'",
            f"GRANT USAGE ON SCHEMA customers, orders TO {reader_user}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA customers, orders TO {reader_user}")
    private_key, passphrase = "-----BEGIN ENCRYPTED PRIVATE KEY-----" + secrets.token_hex(40), secrets.token_hex(16)
    duck = tmp_path / "hygiene.duckdb"
    kv_put(root, "aurora-sync/postgres-reader",
           dsn=f"postgresql://{reader_user}:{reader_password}@127.0.0.1:{vault_db.port}/{vault_db.name}")
    kv_put(root, "aurora-sync/snowflake", private_key=private_key, private_key_passphrase=passphrase)
    kv_put(root, DUCKDB_KV, database=str(duck))
    project = project_dir(tmp_path, vault_db, VAULT_CONFIG)
    data_dir = tmp_path / "dlt"
    env = {"VAULT_ADDR": bao.addr, "VAULT_ROLE_ID": approle["role_id"], "VAULT_SECRET_ID": approle["secret_id"],
           "DLT_DATA_DIR": str(data_dir)}
    env.update({k: v for k, v in vault_env(bao, vault_db, approle, tmp_path).items() if k.startswith("SOURCES__")})

    runs = {
        "success": cli(project, env, "--debug", "run"),
        "success-text": cli(project, env, "--debug", "--no-json-logs", "run", "--mode", "snapshot"),
        # fails inside the source, after the Vault-issued user connected
        "source-failure": cli(project, env, "--debug", "run", "--tables", "nope.nothing"),
        # fails in Vault resolution, after a lease was taken (the missing key comes last)
        "vault-failure": cli(project, {**env, "VAULT__SECRETS__DESTINATION__DUCKDB__CREDENTIALS":
                                       f"kv/data/{DUCKDB_KV}#no_such_key"}, "--debug", "run"),
    }
    assert runs["success"].returncode == 0, runs["success"].stderr[-3000:]
    assert runs["success-text"].returncode == 0, runs["success-text"].stderr[-3000:]
    assert runs["source-failure"].returncode == 2
    assert "matched no replicated table" in error_line(runs["source-failure"])["message"]
    assert runs["vault-failure"].returncode == 2
    assert "has no key `no_such_key`" in error_line(runs["vault-failure"])["message"]
    assert duck_rows(duck, f"SELECT count(*) FROM {DATASET}.customers__customers") == [(200,)]

    issued = issued_by_vault(bao.audit_log, offset)
    known = {approle["secret_id"], reader_password, private_key, passphrase, bao.root_token} | issued
    assert len(issued) >= 12, "each of the 4 runs got a database password, a lease and a token from Vault"
    # the scanner does find them where they legitimately are
    assert leaks(issued, {"audit": bao.audit_log.read_bytes()})

    outputs: dict[str, bytes] = {}
    for name, result in runs.items():
        outputs[f"{name}:stdout"] = result.stdout.encode()
        outputs[f"{name}:stderr"] = result.stderr.encode()
        assert "DEBUG" in result.stderr  # --debug really was on
    files = scanned_files(data_dir)
    assert any(path.name == "trace.pickle" for path in files), sorted(p.name for p in files)
    outputs.update({str(path): blob for path, blob in files.items()})
    assert leaks(known, outputs) == []
    # the lease of every run was revoked
    users = [json.loads(line)["response"]["data"]["username"] for line in
             bao.audit_log.read_bytes()[offset:].splitlines()
             if json.loads(line).get("type") == "response" and json.loads(line)["request"]["path"] == CREDS_PATH]
    assert len(users) == 4
    assert execute_scalar(vault_db.dsn, "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", users) == 0


def execute_scalar(dsn: str, sql: str, *params: Any) -> Any:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]
    finally:
        conn.close()
