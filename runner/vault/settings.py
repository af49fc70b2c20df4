"""Where the runner finds Vault: the `[vault]` section of dlt's config, overridable by the usual env vars.

Precedence, highest first: the conventional env var (`VAULT_ADDR`, `VAULT_TOKEN`, ...), then dlt's own
layering (`VAULT__ADDR` env var, `.dlt/secrets.toml`, `.dlt/config.toml`). ECS task definitions set
only non-secret env vars (`VAULT_ADDR`, `VAULT_AUTH_METHOD=aws`, `VAULT_ROLE`); the task role is the
credential.

The secret mapping `vault.secrets` names, for each dlt config key, the Vault path that supplies it:

    [vault.secrets]
    "sources.postgres.credentials" = "database/creds/aurora-sync"                   # whole secret: fields
    "destination.snowflake.credentials.private_key" = "kv/data/aurora-sync/snowflake#private_key"  # one key

or as env vars, one per key (`VAULT__SECRETS__SOURCES__POSTGRES__CREDENTIALS=database/creds/aurora-sync`)
or all at once as JSON (`VAULT_SECRETS='{"sources.postgres.credentials": "database/creds/aurora-sync"}'`).
`kv:aurora-sync/snowflake#private_key` is shorthand for `<kv_mount>/data/aurora-sync/snowflake#private_key`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import VaultConfigError

AUTH_METHODS = ("aws", "approle", "token")
ENV_SECRETS_PREFIX = "VAULT__SECRETS__"


@dataclass(frozen=True)
class SecretRef:
    """A Vault API path (relative to /v1) and optionally one key of the secret's data."""

    path: str
    key: str | None = None

    @classmethod
    def parse(cls, text: str, kv_mount: str = "kv") -> SecretRef:
        text = text.strip()
        path, _, key = text.partition("#")
        if path.startswith("kv:"):
            path = f"{kv_mount.strip('/')}/data/{path[3:].lstrip('/')}"
        path = path.strip("/")
        if not path or "#" in key or (text.count("#") and not key):
            raise VaultConfigError(f"Invalid Vault reference {text!r} in `vault.secrets`: use `path` or `path#key`.")
        return cls(path, key or None)

    def __str__(self) -> str:
        return f"{self.path}#{self.key}" if self.key else self.path


@dataclass
class VaultSettings:
    """Everything needed to log in and resolve secrets. Secrets (token, secret_id) are never logged."""

    addr: str | None = None
    auth_method: str | None = None
    role: str | None = None
    namespace: str | None = None
    ca_cert: str | None = None
    tls_verify: bool = True
    auth_mount: str | None = None
    kv_mount: str = "kv"
    timeout: float = 10.0
    kv_cache_seconds: float = 300.0
    prefetch: bool = True
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    wrapped_secret_id: str | None = field(default=None, repr=False)
    aws_region: str = "us-east-1"
    aws_sts_endpoint: str | None = None
    aws_header_value: str | None = None
    secrets: dict[str, SecretRef] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Vault is used when an address is configured and at least one key is mapped to it."""
        return bool(self.addr) and bool(self.secrets)

    @property
    def mount(self) -> str:
        return (self.auth_mount or self.method).strip("/")

    @property
    def method(self) -> str:
        """The configured auth method, or `token` when only VAULT_TOKEN is set, else `aws` (ECS)."""
        if self.auth_method:
            return self.auth_method
        return "token" if self.token else "aws"

    def validate(self) -> None:
        if not self.addr:
            raise VaultConfigError("Vault is not configured: set VAULT_ADDR or `vault.addr`.")
        method = self.method
        if method not in AUTH_METHODS:
            raise VaultConfigError(
                f"Unknown Vault auth method {method!r} (`vault.auth_method` / VAULT_AUTH_METHOD); "
                f"use one of {', '.join(AUTH_METHODS)}."
            )
        if method == "token" and not self.token:
            raise VaultConfigError("Vault auth method `token` needs VAULT_TOKEN (or `vault.token` in secrets.toml).")
        if method == "approle":
            if not self.role_id:
                raise VaultConfigError("Vault auth method `approle` needs VAULT_ROLE_ID (or `vault.role_id`).")
            if not (self.secret_id or self.wrapped_secret_id):
                raise VaultConfigError(
                    "Vault auth method `approle` needs VAULT_SECRET_ID or VAULT_WRAPPED_SECRET_ID "
                    "(a response-wrapping token for the secret_id)."
                )
        if method == "aws" and not self.role:
            raise VaultConfigError("Vault auth method `aws` needs the Vault role: VAULT_ROLE or `vault.role`.")

    @classmethod
    def from_config(cls, environ: Mapping[str, str] | None = None, use_dlt: bool = True) -> VaultSettings:
        """Read settings from env vars and dlt config (call before the Vault provider is registered)."""
        env = os.environ if environ is None else environ
        look = _Lookup(env, use_dlt)
        kv_mount = look.text("kv_mount", "VAULT_KV_MOUNT") or "kv"
        return cls(
            addr=look.text("addr", "VAULT_ADDR"),
            auth_method=look.text("auth_method", "VAULT_AUTH_METHOD"),
            role=look.text("role", "VAULT_ROLE"),
            namespace=look.text("namespace", "VAULT_NAMESPACE"),
            ca_cert=look.text("ca_cert", "VAULT_CACERT"),
            tls_verify=look.tls_verify(),
            auth_mount=look.text("auth_mount", "VAULT_AUTH_MOUNT"),
            kv_mount=kv_mount,
            timeout=look.number("timeout", "VAULT_CLIENT_TIMEOUT", 10.0),
            kv_cache_seconds=look.number("kv_cache_seconds", "VAULT_KV_CACHE_SECONDS", 300.0),
            prefetch=look.flag("prefetch", "VAULT_PREFETCH", True),
            token=look.text("token", "VAULT_TOKEN", secret=True),
            role_id=look.text("role_id", "VAULT_ROLE_ID"),
            secret_id=look.text("secret_id", "VAULT_SECRET_ID", secret=True),
            wrapped_secret_id=look.text("wrapped_secret_id", "VAULT_WRAPPED_SECRET_ID", secret=True),
            aws_region=look.text("aws_region", "VAULT_AWS_REGION") or "us-east-1",
            aws_sts_endpoint=look.text("aws_sts_endpoint", "VAULT_AWS_STS_ENDPOINT"),
            aws_header_value=look.text("aws_header_value", "VAULT_AWS_HEADER_VALUE"),
            secrets=parse_mapping(look.mapping(), env, kv_mount),
        )


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"sources": {"postgres": {"credentials": "p"}}}` and `{"sources.postgres.credentials": "p"}` alike."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, full))
        else:
            flat[full] = str(value)
    return flat


def parse_mapping(configured: Mapping[str, Any] | None, env: Mapping[str, str], kv_mount: str) -> dict[str, SecretRef]:
    flat = flatten(configured or {})
    for name, value in env.items():
        if name.startswith(ENV_SECRETS_PREFIX) and value:
            flat[name[len(ENV_SECRETS_PREFIX):].lower().replace("__", ".")] = value
    return {key.lower(): SecretRef.parse(ref, kv_mount) for key, ref in flat.items()}


class _Lookup:
    """Conventional env var first, then dlt's providers under the `vault` section."""

    def __init__(self, env: Mapping[str, str], use_dlt: bool = True) -> None:
        self.env = env
        self.use_dlt = use_dlt

    def raw(self, key: str, env_name: str | None, secret: bool = False) -> Any:
        if env_name and self.env.get(env_name):
            return self.env[env_name]
        if not self.use_dlt:
            return None
        import dlt

        accessor = dlt.secrets if secret else dlt.config
        return accessor.get(f"vault.{key}")

    def text(self, key: str, env_name: str | None, secret: bool = False) -> str | None:
        value = self.raw(key, env_name, secret)
        return (str(value).strip() or None) if value is not None else None

    def number(self, key: str, env_name: str, default: float) -> float:
        value = self.raw(key, env_name)
        try:
            return default if value is None else float(value)
        except (TypeError, ValueError):
            raise VaultConfigError(f"`vault.{key}` / {env_name} must be a number of seconds.") from None

    def flag(self, key: str, env_name: str, default: bool) -> bool:
        value = self.raw(key, env_name)
        return default if value is None else _truthy(value)

    def tls_verify(self) -> bool:
        # VAULT_SKIP_VERIFY is the Vault CLI's switch; verification stays on unless it is set explicitly
        if self.env.get("VAULT_SKIP_VERIFY"):
            return not _truthy(self.env["VAULT_SKIP_VERIFY"])
        return self.flag("tls_verify", "VAULT_TLS_VERIFY", True)

    def mapping(self) -> Mapping[str, Any] | None:
        text = self.env.get("VAULT_SECRETS")
        if text:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise VaultConfigError("VAULT_SECRETS must be a JSON object of dlt key -> Vault path.") from None
        elif not self.use_dlt:
            return None
        else:
            import dlt

            value = dlt.config.get("vault.secrets")
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise VaultConfigError("`vault.secrets` must be a table (or JSON object).") from None
        if value is not None and not isinstance(value, Mapping):
            raise VaultConfigError("`vault.secrets` must map dlt keys to Vault paths.")
        return value


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")
