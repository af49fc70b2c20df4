"""Audit: setup.sh puts an audit device in place before it changes anything, and every run logs the identities it
used (Vault role and entity, AWS principal, database role) without a secret."""

from __future__ import annotations

import json
from pathlib import Path

import hvac

from local.openbao import LocalOpenBao, find_bao
from runner.exit_codes import ExitCode

from .conftest import DUCKDB_KV, VaultDb, cli, kv_put, project_dir, run_setup, setup_env, vault_env


def test_setup_keeps_the_servers_audit_device_and_every_request_is_audited(
        bao: LocalOpenBao, vault_db: VaultDb, root: hvac.Client) -> None:
    result = run_setup(setup_env(bao, vault_db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "== audit device" and lines[1].strip() == "already enabled: raw/", lines[:3]
    assert bao.audit_log is not None and b'"path":"database/roles/aurora-sync"' in bao.audit_log.read_bytes()


def test_setup_stops_before_any_change_when_no_audit_device_can_be_enabled(
        tmp_path: Path, vault_db: VaultDb) -> None:
    (tmp_path / "bare").mkdir()
    with LocalOpenBao(base_dir=tmp_path / "bare") as bare:  # no audit device, and OpenBao refuses one by API
        result = run_setup(setup_env(bare, vault_db))
        assert result.returncode == 1
        assert "accepts audit devices only from its configuration file" in result.stderr
        assert 'audit "file" "aurora-sync" { options { file_path = "/vault/logs/aurora-sync-audit.log" } }' in \
            result.stderr
        mounts = bare.client().sys.list_mounted_secrets_engines()["data"]
        assert "database/" not in mounts and "kv/" not in mounts  # nothing was configured without an audit trail
        skipped = run_setup(setup_env(bare, vault_db, AUDIT_DEVICE="0", PG_ADMIN_PASSWORD="unused-here"))
        assert "== audit device" not in skipped.stdout
    assert find_bao()


def test_every_run_logs_its_identities_and_no_secret(
        bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path) -> None:
    duck = tmp_path / "replica.duckdb"
    kv_put(root, DUCKDB_KV, database=str(duck))
    env = vault_env(bao, vault_db, approle, tmp_path)
    result = cli(project_dir(tmp_path, vault_db), {**env, "SOURCES__POSTGRES__SCHEMAS": '["customers"]'},
                 "--json-logs", "run")
    assert result.returncode == ExitCode.SUCCESS, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    identity = [line for line in lines if line["message"] == "identity"]
    assert len(identity) == 1
    fields = identity[0]
    assert fields["vault_auth"] == "approle" and fields["vault_role"] == "aurora-sync"
    assert fields["vault_policies"] == "aurora-sync"
    assert fields["vault_display_name"] == "approle"
    entity = root.read(f"identity/entity/id/{fields['vault_entity_id']}")  # a real entity of this login
    assert entity is not None and entity["data"]["aliases"][0]["mount_type"] == "approle"
    assert fields["aws_principal"] == "not used"  # DuckDB destination: no S3 archive, so no AWS identity
    assert fields["db_role"].startswith("v-approle-aurora-s") and fields["db_ssl"] is False
    # no secret anywhere in the output: not the AppRole credentials, the token, nor the issued password
    lookup = root.adapter.post("/v1/auth/approle/login", json={
        "role_id": approle["role_id"], "secret_id": approle["secret_id"]})["auth"]
    output = result.stdout + result.stderr
    for secret in (approle["secret_id"], approle["role_id"], lookup["client_token"], lookup["accessor"]):
        assert secret not in output
    assert "password" not in json.dumps(fields).lower()
