"""The repository's policies are least-privilege, setup.sh is idempotent, and a rotated Snowflake key
written as a new KV version reaches the next run without a redeploy."""

from __future__ import annotations

import hvac
import hvac.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dlt.common.configuration.resolve import resolve_configuration
from dlt.destinations.impl.snowflake.configuration import SnowflakeCredentials

from local.openbao import LocalOpenBao
from runner.vault import VaultSettings, activate
from runner.vault.errors import VaultAuthFailed
from runner.vault.settings import SecretRef

from .conftest import CREDS_PATH, ROLE, VaultDb, run_setup, setup_env

SNOWFLAKE_KV = "aurora-sync/snowflake"


def token_with(root: hvac.Client, *policies: str) -> hvac.Client:
    token = root.auth.token.create(policies=list(policies), no_default_policy=True, ttl="10m")["auth"]["client_token"]
    return hvac.Client(url=root.url, token=token)


def denied(call) -> bool:  # type: ignore[no-untyped-def]
    try:
        call()
    except hvac.exceptions.Forbidden:
        return True
    return False


def test_pipeline_policy_allows_its_paths_and_nothing_else(root: hvac.Client, vault_db: VaultDb) -> None:
    root.secrets.kv.v2.create_or_update_secret(SNOWFLAKE_KV, secret={"private_key": "k"}, mount_point="kv")
    root.secrets.kv.v2.create_or_update_secret("payments/db", secret={"password": "p"}, mount_point="kv")
    sync = token_with(root, "aurora-sync")
    # allowed: its KV secrets, its dynamic role, its own leases (URL form) and token
    assert sync.read(f"kv/data/{SNOWFLAKE_KV}")["data"]["data"] == {"private_key": "k"}
    creds = sync.read(CREDS_PATH)
    sync.adapter.put(f"/v1/sys/leases/renew/{creds['lease_id']}", json={"increment": 60})
    sync.auth.token.lookup_self()
    sync.auth.token.renew_self()
    other = root.read(CREDS_PATH)  # a lease the root token took
    # denied: other teams' secrets, writing or listing KV, the engines' config, other leases' endpoints
    assert denied(lambda: sync.read("kv/data/payments/db"))
    assert denied(lambda: sync.secrets.kv.v2.create_or_update_secret(SNOWFLAKE_KV, secret={"x": "y"},
                                                                     mount_point="kv"))
    assert denied(lambda: sync.list("kv/metadata/aurora-sync"))
    assert denied(lambda: sync.read(f"database/roles/{ROLE}"))
    assert denied(lambda: sync.read("database/config/aurora"))
    assert denied(lambda: sync.read("database/creds/someone-else"))
    assert denied(lambda: sync.sys.renew_lease(creds["lease_id"]))  # body form: lease not scoped by path
    assert denied(lambda: sync.sys.revoke_lease(other["lease_id"]))
    assert denied(lambda: sync.adapter.put("/v1/sys/leases/revoke-prefix/database/creds"))
    assert denied(lambda: sync.sys.list_policies())
    assert denied(lambda: sync.auth.token.create(policies=["aurora-sync"]))
    assert denied(lambda: sync.read("cubbyhole/anything"))  # no default policy attached
    sync.adapter.put(f"/v1/sys/leases/revoke/{creds['lease_id']}")
    root.sys.revoke_lease(other["lease_id"])
    # the login roles setup.sh wrote carry only this policy
    approle = root.read(f"auth/approle/role/{ROLE}")["data"]
    assert approle["token_policies"] == ["aurora-sync"] and approle["token_no_default_policy"] is True


def test_setup_script_is_idempotent(bao: LocalOpenBao, vault_db: VaultDb) -> None:
    result = run_setup(setup_env(bao, vault_db))  # no admin password needed: the connection is kept
    assert result.returncode == 0, result.stderr
    assert "exists, kept" in result.stdout


def key_pair(passphrase: bytes) -> tuple[str, bytes]:
    """An encrypted PKCS#8 PEM private key and its DER form (what dlt hands the Snowflake connector)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(passphrase)).decode()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, der


def resolved_snowflake_key() -> bytes:
    """What dlt's own Snowflake credentials resolve to, through the provider chain: no pipeline code involved. As
    DER bytes: the connector gets the key parsed (sources.dlt_speedups)."""
    credentials = resolve_configuration(SnowflakeCredentials(), sections=("destination", "snowflake"))
    key = credentials.to_connector_params()["private_key"]
    if isinstance(key, bytes):
        return key
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_rotated_snowflake_key_is_picked_up_by_the_next_run(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb, approle: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"DESTINATION__SNOWFLAKE__CREDENTIALS__HOST": "org-account",
                        "DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE": "AURORA_SYNC",
                        "DESTINATION__SNOWFLAKE__CREDENTIALS__USERNAME": "AURORA_SYNC_LOADER"}.items():
        monkeypatch.setenv(name, value)
    operator = token_with(root, "aurora-sync-rotate")  # the rotation job's policy from the repository
    old_pem, old_der = key_pair(b"old-passphrase")
    first = operator.secrets.kv.v2.create_or_update_secret(
        SNOWFLAKE_KV, secret={"private_key": old_pem, "private_key_passphrase": "old-passphrase"},
        mount_point="kv")["data"]["version"]

    def settings(**overrides: object) -> VaultSettings:
        return VaultSettings(
            addr=bao.addr, auth_method="approle", role_id=approle["role_id"], secret_id=approle["secret_id"],
            secrets={"destination.snowflake.credentials.private_key": SecretRef.parse(f"kv:{SNOWFLAKE_KV}#private_key"),
                     "destination.snowflake.credentials.private_key_passphrase":
                         SecretRef.parse(f"kv:{SNOWFLAKE_KV}#private_key_passphrase")},
            **overrides)  # type: ignore[arg-type]

    with activate(settings()) as run1:
        assert run1 is not None and resolved_snowflake_key() == old_der
        assert run1.store.version(f"kv/data/{SNOWFLAKE_KV}") == first

        # rotation: new key in RSA_PUBLIC_KEY_2 (Snowflake side), then the new private key as version 2
        new_pem, new_der = key_pair(b"new-passphrase")
        version = operator.secrets.kv.v2.create_or_update_secret(
            SNOWFLAKE_KV, secret={"private_key": new_pem, "private_key_passphrase": "new-passphrase"},
            mount_point="kv")["data"]["version"]
        assert version == first + 1
        assert resolved_snowflake_key() == old_der  # a run in progress keeps the key it started with

    with activate(settings()) as run2:  # the next scheduled run: same image, same task definition
        assert run2 is not None and resolved_snowflake_key() == new_der
        assert run2.store.version(f"kv/data/{SNOWFLAKE_KV}") == first + 1

    with activate(settings(kv_cache_seconds=0)) as follow:  # a long-running follow process re-reads KV
        assert follow is not None
        operator.secrets.kv.v2.create_or_update_secret(
            SNOWFLAKE_KV, secret={"private_key": old_pem, "private_key_passphrase": "old-passphrase"}, mount_point="kv")
        assert resolved_snowflake_key() == old_der


def test_wrapped_secret_id_is_unwrapped_once_and_checked(
    bao: LocalOpenBao, root: hvac.Client, vault_db: VaultDb,
) -> None:
    role_id = root.read(f"auth/approle/role/{ROLE}/role-id")["data"]["role_id"]
    wrapped = root.adapter.post(f"/v1/auth/approle/role/{ROLE}/secret-id", wrap_ttl="60s")["wrap_info"]["token"]
    settings = VaultSettings(addr=bao.addr, auth_method="approle", role_id=role_id, wrapped_secret_id=wrapped,
                             secrets={"sources.postgres.credentials": SecretRef.parse(CREDS_PATH)})
    with activate(settings) as session:
        assert session is not None and session.auth.policies == ["aurora-sync"]
    with pytest.raises(VaultAuthFailed, match="already used"), activate(settings):  # a wrapping token unwraps once
        pass
    # a wrapping token that does not hold an AppRole secret_id is refused before it is unwrapped
    settings.wrapped_secret_id = root.adapter.post("/v1/sys/wrapping/wrap", json={"secret_id": "x"},
                                                   wrap_ttl="60s")["wrap_info"]["token"]
    with pytest.raises(VaultAuthFailed, match="came from `sys/wrapping/wrap`"), activate(settings):
        pass
