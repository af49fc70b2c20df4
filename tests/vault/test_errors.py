"""Each Vault failure gives one clear sentence naming the path and auth method, never a value, and a
non-zero exit, through the real CLI (`aurora-sync run` in a subprocess)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hvac
import pytest

from local.openbao import LocalOpenBao, free_port_pair
from runner.vault import VaultSettings, activate
from runner.vault.errors import VaultTokenExpired
from runner.vault.settings import SecretRef

from .conftest import CREDS_PATH, DUCKDB_KV, VaultDb, cli, error_line, kv_put, project_dir, vault_env

SECRET_MAPPING = {"sources.postgres.credentials": CREDS_PATH}


def policy_token(root: hvac.Client, ttl: str = "10m") -> str:
    """A token with exactly the pipeline's policy, as the AWS/AppRole login would issue."""
    return root.auth.token.create(policies=["aurora-sync"], no_default_policy=True, ttl=ttl)["auth"]["client_token"]


def run_failing(tmp_path: Path, db: VaultDb, env: dict[str, str], secrets: tuple[str, ...] = ()) -> tuple[int, str]:
    result = cli(project_dir(tmp_path, db), env, "run", "--tables", "customers.customers")
    record = error_line(result)
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
    assert record["exit_code"] == result.returncode
    return result.returncode, record["message"]


def test_vault_unreachable_exits_1_naming_address_path_and_method(
    bao: LocalOpenBao, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
) -> None:
    env = vault_env(bao, vault_db, approle, tmp_path, mapping=SECRET_MAPPING)
    env["VAULT_ADDR"] = f"http://127.0.0.1:{free_port_pair()}"  # nothing listens there
    code, message = run_failing(tmp_path, vault_db, env, (approle["secret_id"],))
    assert code == 1
    assert message.startswith(f"Cannot reach Vault at {env['VAULT_ADDR']} on `auth/approle/login` "
                              "(auth method `approle`)")


def test_permission_denied_exits_2_naming_path_method_and_key(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, tmp_path: Path,
) -> None:
    token = policy_token(root)
    root.secrets.kv.v2.create_or_update_secret("payments/db", secret={"password": "not-ours"}, mount_point="kv")
    env = vault_env(bao, vault_db, {"role_id": "", "secret_id": ""}, tmp_path, mapping={
        **SECRET_MAPPING, "destination.duckdb.credentials": "kv/data/payments/db#password"})
    env.update(VAULT_AUTH_METHOD="token", VAULT_TOKEN=token)
    code, message = run_failing(tmp_path, vault_db, env, (token, "not-ours"))
    assert code == 2
    assert message.startswith("Vault denied access to `kv/data/payments/db` (auth method `token`, "
                              "for `destination.duckdb.credentials`)")


def test_missing_path_exits_2(bao: LocalOpenBao, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path) -> None:
    env = vault_env(bao, vault_db, approle, tmp_path, mapping={
        **SECRET_MAPPING, "destination.duckdb.credentials": "kv/data/aurora-sync/no-such-secret#database"})
    code, message = run_failing(tmp_path, vault_db, env, (approle["secret_id"],))
    assert code == 2
    assert message.startswith("Vault has no secret at `kv/data/aurora-sync/no-such-secret` "
                              "(auth method `approle`, for `destination.duckdb.credentials`)")


def test_missing_key_exits_2_listing_key_names_only(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], tmp_path: Path,
) -> None:
    duck = str(tmp_path / "secret-path.duckdb")
    kv_put(root, DUCKDB_KV, database=duck)
    env = vault_env(bao, vault_db, approle, tmp_path, mapping={
        **SECRET_MAPPING, "destination.duckdb.credentials": f"kv/data/{DUCKDB_KV}#path"})
    code, message = run_failing(tmp_path, vault_db, env, (approle["secret_id"], duck))
    assert code == 2
    assert message == (f"The Vault secret at `kv/data/{DUCKDB_KV}` (auth method `approle`, for "
                       "`destination.duckdb.credentials`) has no key `path` (keys present: database).")


def test_expired_token_exits_2(bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, tmp_path: Path) -> None:
    token = policy_token(root, ttl="1s")
    time.sleep(1.5)
    env = vault_env(bao, vault_db, {"role_id": "", "secret_id": ""}, tmp_path, mapping=SECRET_MAPPING)
    env.update(VAULT_AUTH_METHOD="token", VAULT_TOKEN=token)
    code, message = run_failing(tmp_path, vault_db, env, (token,))
    assert code == 2
    assert message.startswith("Vault rejected the token at `auth/token/lookup-self` (auth method `token`): "
                              "it is expired, revoked or unknown")


def test_wrong_secret_id_exits_2(bao: LocalOpenBao, vault_db: VaultDb, approle: dict[str, str],
                                 tmp_path: Path) -> None:
    wrong = "00000000-0000-0000-0000-000000000000"
    env = vault_env(bao, vault_db, {**approle, "secret_id": wrong}, tmp_path, mapping=SECRET_MAPPING)
    code, message = run_failing(tmp_path, vault_db, env, (wrong,))
    assert code == 2
    assert message.startswith("Vault login failed at `auth/approle/login` (auth method `approle`): ")


def test_token_expiring_mid_run_is_named_with_the_path_being_read(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb,
) -> None:
    kv_put(root, DUCKDB_KV, database="/tmp/x.duckdb")
    token = policy_token(root)
    settings = VaultSettings(addr=bao.addr, auth_method="token", token=token, kv_cache_seconds=0,
                             secrets={"destination.duckdb.credentials": SecretRef.parse(f"kv:{DUCKDB_KV}#database")})
    with activate(settings) as session:
        assert session is not None
        root.auth.token.revoke(token)
        with pytest.raises(VaultTokenExpired) as expired:
            session.value("destination.duckdb.credentials")
    assert str(expired.value).startswith(f"Vault token expired or was revoked while reading `kv/data/{DUCKDB_KV}` "
                                         "(auth method `token`, for `destination.duckdb.credentials`)")


def test_approle_token_revoked_mid_run_logs_in_again(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str],
) -> None:
    kv_put(root, DUCKDB_KV, database="/tmp/y.duckdb")
    settings = VaultSettings(addr=bao.addr, auth_method="approle", role_id=approle["role_id"],
                             secret_id=approle["secret_id"], kv_cache_seconds=0,
                             secrets={"destination.duckdb.credentials": SecretRef.parse(f"kv:{DUCKDB_KV}#database")})
    with activate(settings) as session:
        assert session is not None
        root.auth.token.revoke(session.client.token)
        assert session.value("destination.duckdb.credentials") == "/tmp/y.duckdb"
        assert session.leases.stats.relogins == 1


def test_vault_settings_errors_are_config_errors(bao: LocalOpenBao, vault_db: VaultDb, tmp_path: Path) -> None:
    env = vault_env(bao, vault_db, {"role_id": "", "secret_id": ""}, tmp_path, mapping=SECRET_MAPPING)
    env.pop("VAULT_ROLE_ID")
    env.pop("VAULT_SECRET_ID")
    code, message = run_failing(tmp_path, vault_db, env)
    assert code == 2 and "needs VAULT_ROLE_ID" in message
    env.update(VAULT_SECRETS=json.dumps({"sources.postgres.credentials": "kv/data/x#"}))
    code, message = run_failing(tmp_path, vault_db, env)
    assert code == 2 and "Invalid Vault reference" in message
