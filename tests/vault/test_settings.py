"""Where Vault settings and the key → path mapping come from (pure: no server)."""

from __future__ import annotations

import pytest

from runner.vault.errors import VaultConfigError
from runner.vault.settings import SecretRef, VaultSettings, flatten, parse_mapping


def test_refs_parse_paths_keys_and_the_kv_shorthand() -> None:
    assert SecretRef.parse("database/creds/aurora-sync") == SecretRef("database/creds/aurora-sync")
    assert SecretRef.parse("kv/data/aurora-sync/snowflake#private_key") == \
        SecretRef("kv/data/aurora-sync/snowflake", "private_key")
    assert SecretRef.parse("kv:aurora-sync/snowflake#private_key", kv_mount="secret") == \
        SecretRef("secret/data/aurora-sync/snowflake", "private_key")
    for bad in ("", "#key", "path#", "a#b#c"):
        with pytest.raises(VaultConfigError):
            SecretRef.parse(bad)


def test_mapping_from_toml_tables_dotted_keys_and_env_vars() -> None:
    nested = {"sources": {"postgres": {"credentials": "database/creds/aurora-sync"}}}
    assert flatten(nested) == flatten({"sources.postgres.credentials": "database/creds/aurora-sync"})
    mapping = parse_mapping(
        {"destination.snowflake.credentials.private_key": "kv:aurora-sync/snowflake#private_key"},
        {"VAULT__SECRETS__SOURCES__POSTGRES__CREDENTIALS": "database/creds/aurora-sync", "OTHER": "x"},
        "kv",
    )
    assert mapping == {
        "destination.snowflake.credentials.private_key": SecretRef("kv/data/aurora-sync/snowflake", "private_key"),
        "sources.postgres.credentials": SecretRef("database/creds/aurora-sync"),
    }


def test_conventional_env_vars_and_defaults() -> None:
    settings = VaultSettings.from_config(use_dlt=False, environ={
        "VAULT_ADDR": "https://vault.internal:8200", "VAULT_ROLE": "aurora-sync", "VAULT_NAMESPACE": "data",
        "VAULT_CACERT": "/etc/ssl/vault-ca.pem",
        "VAULT_SECRETS": '{"sources.postgres.credentials": "database/creds/aurora-sync"}'})
    assert settings.enabled and settings.method == "aws" and settings.mount == "aws"
    assert settings.tls_verify and settings.ca_cert == "/etc/ssl/vault-ca.pem" and settings.namespace == "data"
    assert settings.aws_region == "us-east-1" and settings.kv_cache_seconds == 300 and settings.prefetch
    token_only = VaultSettings.from_config(use_dlt=False, environ={"VAULT_ADDR": "http://x", "VAULT_TOKEN": "t"})
    assert token_only.method == "token" and not token_only.enabled  # nothing mapped: Vault stays off
    assert not VaultSettings.from_config(use_dlt=False, environ={"VAULT_SKIP_VERIFY": "true"}).tls_verify
    assert "t0ken" not in repr(VaultSettings(token="t0ken", secret_id="t0ken", wrapped_secret_id="t0ken"))


def test_validation_names_what_is_missing() -> None:
    cases = [
        (VaultSettings(addr="http://x", auth_method="ldap"), "Unknown Vault auth method 'ldap'"),
        (VaultSettings(addr="http://x", auth_method="token"), "needs VAULT_TOKEN"),
        (VaultSettings(addr="http://x", auth_method="approle"), "needs VAULT_ROLE_ID"),
        (VaultSettings(addr="http://x", auth_method="approle", role_id="r"), "VAULT_WRAPPED_SECRET_ID"),
        (VaultSettings(addr="http://x", auth_method="aws"), "VAULT_ROLE"),
    ]
    for settings, message in cases:
        with pytest.raises(VaultConfigError, match=message):
            settings.validate()
