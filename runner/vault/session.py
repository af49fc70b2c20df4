"""A logged-in Vault session: the hvac client, its secret store, lease manager and dlt provider.

Imported by `runner.vault.activate` only when Vault is configured (hvac and requests are not loaded otherwise).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import hvac
from dlt.common.configuration.container import Container
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext

from .client import AuthInfo, connect, login
from .leases import CredentialChange, LeaseManager
from .provider import SecretStore, VaultConfigProvider
from .settings import VaultSettings


class VaultSession:
    """A logged-in client, its secret store, lease manager and dlt provider."""

    def __init__(self, settings: VaultSettings, client: hvac.Client, auth: AuthInfo) -> None:
        self.settings = settings
        self.client = client
        self.auth = auth
        relogin = None if settings.method == "token" else self._relogin
        self.leases = LeaseManager(client, settings, auth, fetch=lambda path: self.store.read(path), relogin=relogin)
        self.store = SecretStore(client, settings, self.leases)
        self.provider = VaultConfigProvider(self.store, settings.secrets)

    @classmethod
    def open(cls, settings: VaultSettings) -> VaultSession:
        client, auth = connect(settings)
        return cls(settings, client, auth)

    def _relogin(self) -> AuthInfo:
        return login(self.client, self.settings)

    @property
    def credentials_changed(self) -> threading.Event:
        """Set when any leased credential was replaced; the consumer clears it after reconnecting."""
        return self.leases.changed

    def on_credentials_change(self, callback: Callable[[CredentialChange], None]) -> Callable[[], None]:
        return self.leases.subscribe(callback)

    def value(self, dlt_key: str) -> Any:
        """The value Vault supplies for a mapped dlt key (for code that does not go through dlt config)."""
        *sections, key = dlt_key.split(".")
        return self.provider.get_value(key, Any, None, *sections)[0]

    def prefetch(self) -> None:
        """Read every mapped path now, so errors surface before the pipeline starts."""
        for dlt_key, ref in self.settings.secrets.items():
            self.store.value(ref, dlt_key)

    def register(self) -> None:
        import dlt

        dlt.config.register_provider(self.provider)

    def unregister(self) -> None:
        # dlt has no public removal; the provider list is a plain list on the run context
        providers = Container()[PluggableRunContext].providers.providers
        if self.provider in providers:
            providers.remove(self.provider)

    def close(self) -> None:
        self.unregister()
        self.leases.stop(revoke=True)
