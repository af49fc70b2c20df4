"""Vault as one more dlt config provider: mapped keys resolve from Vault, with no change to pipeline code.

dlt asks every provider for each key it resolves (`sources.postgres.credentials`, then, because
that is a credentials object, its fields `...credentials.username`, `...credentials.password`, ...).
`VaultConfigProvider` answers only for keys named in `vault.secrets`:

* `key = "path#field"` answers `key` with one value of the secret;
* `key = "path"` answers `key` with the whole secret and `key.<field>` with its fields. dlt does not
  take a mapping as a credentials' native value, so it asks field by field: the dynamic database
  secret (`username`, `password`) fills those two fields and host, port and database come from
  `[sources.postgres.credentials]` in config.toml.

We subclass `ConfigProvider` rather than dlt's `VaultDocProvider`: that one maps dlt key names onto
Vault key names (and looks up toml fragments), whereas our mapping is explicit, so a lookup of an
unmapped key costs nothing and never touches the network, and a dynamic path is read once per lease
(every read of `database/creds/<role>` creates a new database user).

It is appended after dlt's own providers (`dlt.config.register_provider`), so an env var or
secrets.toml value still wins, as everywhere in dlt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hvac
from dlt.common.configuration.container import Container
from dlt.common.configuration.providers.provider import ConfigProvider, get_key_name
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext
from dlt.common.typing import AnyType

from runner import logs

from .client import describe, require_key, token_is_valid, translate
from .errors import VaultPathNotFound, VaultTokenExpired
from .leases import LeaseManager
from .settings import SecretRef, VaultSettings

PROVIDER_NAME = "Vault"
# fields of dlt's ConnectionStringCredentials (and its subclasses) that may be configured beside a secret
CONNECTION_FIELDS = ("drivername", "host", "port", "database", "query")


@dataclass
class _Cached:
    data: dict[str, Any]
    version: int | None
    read_at: float


class SecretStore:
    """Reads Vault paths: KV secrets are cached for `kv_cache_seconds`, leased ones live in `LeaseManager`."""

    def __init__(self, client: hvac.Client, settings: VaultSettings, leases: LeaseManager) -> None:
        self.client = client
        self.settings = settings
        self.leases = leases
        self._kv: dict[str, _Cached] = {}
        self._lock = threading.RLock()

    def read(self, path: str, dlt_key: str | None = None) -> dict[str, Any]:
        """One GET of `path`; the raw response (with lease fields). Raises `VaultError`s only."""
        with translate(self.settings, path, dlt_key, token_check=lambda: token_is_valid(self.client)):
            response = self.client.adapter.get(f"/v1/{path}")
        if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
            raise VaultPathNotFound(f"Vault returned no secret at {describe(self.settings, path, dlt_key)}.",
                                    path, self.settings.method)
        return response

    def data(self, path: str, dlt_key: str | None = None) -> dict[str, Any]:
        """The secret's key/value data (KV v2 unwrapped), read at most once per lease or cache period."""
        with self._lock:
            lease = self.leases.get(path)
            if lease is not None:
                return lease.data
            cached = self._kv.get(path)
            if cached is not None and time.monotonic() - cached.read_at < self.settings.kv_cache_seconds:
                return cached.data
            try:
                response = self.read(path, dlt_key)
            except VaultTokenExpired:
                # aws/approle: a long follow run outlived its token; log in again once and retry
                if not self.leases.relogin("token-expired"):
                    raise
                response = self.read(path, dlt_key)
            if response.get("lease_id"):
                return self.leases.acquire(path, response).data
            data, version = self._kv_payload(response, path, dlt_key)
            self._kv[path] = _Cached(data, version, time.monotonic())
            logs.event("vault secret read", phase="vault", path=path, version=version, key=dlt_key)
            return data

    def value(self, ref: SecretRef, dlt_key: str | None = None) -> Any:
        data = self.data(ref.path, dlt_key)
        if ref.key is None:
            return dict(data)
        return require_key(data, ref.key, self.settings, ref.path, dlt_key)

    def version(self, path: str) -> int | None:
        """KV v2 version last read for `path` (for logs and tests)."""
        with self._lock:
            cached = self._kv.get(path)
            return cached.version if cached else None

    def _kv_payload(
        self, response: dict[str, Any], path: str, dlt_key: str | None
    ) -> tuple[dict[str, Any], int | None]:
        data = response["data"]
        metadata = data.get("metadata")
        if isinstance(metadata, Mapping) and "version" in metadata and "data" in data:
            if data["data"] is None:  # KV v2: the latest version is deleted or destroyed
                raise VaultPathNotFound(
                    f"The latest version of the Vault secret at {describe(self.settings, path, dlt_key)} is deleted.",
                    path, self.settings.method)
            return dict(data["data"]), int(metadata["version"])
        return dict(data), None


class VaultConfigProvider(ConfigProvider):
    """Answers dlt lookups for the keys in `vault.secrets` (see the module docstring)."""

    def __init__(self, store: SecretStore, mapping: Mapping[str, SecretRef]) -> None:
        self.store = store
        self.mapping = dict(mapping)

    def _match(self, full_key: str) -> tuple[str, SecretRef, list[str]] | None:
        """The mapped key that covers `full_key`, and the fields below it (`[]` for an exact match)."""
        ref = self.mapping.get(full_key)
        if ref is not None:
            return full_key, ref, []
        parts = full_key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:cut])
            ref = self.mapping.get(parent)
            if ref is not None:
                return parent, ref, parts[cut:]
        return None

    def get_value(self, key: str, hint: type[Any], pipeline_name: str | None, *sections: str) -> tuple[Any, str]:
        full_key = get_key_name(key, ".", *((pipeline_name,) if pipeline_name else ()), *sections)
        match = self._match(full_key)
        if match is None:
            return None, full_key
        mapped_key, ref, fields = match
        if not fields:
            value = self.store.value(ref, mapped_key)
            if isinstance(value, dict):
                # a whole secret (say {username, password}) lands on the fields configured for the same
                # key elsewhere (host, port, database from env vars), so code that reads the key as one
                # value (`dlt.secrets.get("sources.postgres.credentials")`) gets complete credentials
                value = {**self._configured(key, pipeline_name, sections, value), **value}
            return value, full_key
        if ref.key is not None:
            return None, full_key  # one value is mapped, not an object with fields
        node: Any = self.store.data(ref.path, mapped_key)
        for field_name in fields:
            if not isinstance(node, Mapping) or field_name not in node:
                return None, full_key
            node = node[field_name]
        return node, full_key

    def _configured(self, key: str, pipeline_name: str | None, sections: tuple[str, ...],
                    have: Mapping[str, Any]) -> dict[str, Any]:
        """Connection fields other providers hold for this key (a table, or per field such as the env var
        SOURCES__POSTGRES__CREDENTIALS__HOST), earlier providers winning; fields Vault has are skipped."""
        merged: dict[str, Any] = {}
        wanted = [f for f in CONNECTION_FIELDS if f not in have]
        for provider in reversed(Container()[PluggableRunContext].providers.providers):
            if provider is self or provider.is_empty or not provider.supports_sections:
                continue
            try:
                table, _ = provider.get_value(key, AnyType, pipeline_name, *sections)
                if isinstance(table, Mapping):
                    merged.update({str(k): v for k, v in table.items() if not isinstance(v, Mapping)})
                for name in wanted:
                    value, _ = provider.get_value(name, AnyType, pipeline_name, *sections, key)
                    if value is not None:
                        merged[name] = value
            except Exception:
                continue  # a provider that cannot answer (or refuses a secret) adds nothing
        return merged

    def get_value_location(self, key: str, pipeline_name: str | None, *sections: str) -> str:
        match = self._match(get_key_name(key, ".", *((pipeline_name,) if pipeline_name else ()), *sections))
        return f"vault:{match[1]}" if match else ""

    @property
    def supports_secrets(self) -> bool:
        return True

    @property
    def supports_sections(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    @property
    def is_empty(self) -> bool:
        return not self.mapping

    @property
    def locations(self) -> list[str]:
        return [self.store.settings.addr or ""]
