"""Every secret from Vault: log in, add Vault to dlt's config providers, renew leases, revoke at exit.

The runner wraps each command in `activate()`:

    with vault.activate() as session:      # None when Vault is not configured
        run_the_command()

On entry it logs in (`aws`, `approle` or `token`), reads every mapped path once (so a wrong path or
policy fails before the pipeline starts), registers `VaultConfigProvider` with dlt and starts the
lease renewal thread. On exit, normal or not, including SIGTERM from ECS, it revokes the leases (the
database users are dropped) and our own token.

Reconnecting on credential change (CDC follow mode, long runs): new credentials replace old ones
in the provider as soon as Vault issues them, so anything that resolves `sources.postgres.credentials`
again (building the source again: `postgres_replica(...)`) connects as the new user. A loop learns
that it should rebuild through `session.credentials_changed` (a `threading.Event`) or a callback:

    session = vault.current_session()
    while following:
        if session and session.credentials_changed.is_set():
            session.credentials_changed.clear()
            source = postgres_replica(...)   # engines built from the new credentials
        ... process the next batch; the slot/cursor only advances after a commit, so nothing is lost ...

`session.on_credentials_change(callback)` calls `callback(CredentialChange)` from the renewal
thread; keep it short (set a flag). Old credentials stay valid until their lease ends or the run
exits, so a batch in flight finishes on its connection.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from runner import logs

from .errors import VaultError
from .settings import SecretRef, VaultSettings

if TYPE_CHECKING:
    from .leases import CredentialChange, Lease
    from .session import VaultSession

__all__ = [
    "CredentialChange",
    "Lease",
    "SecretRef",
    "VaultError",
    "VaultSession",
    "VaultSettings",
    "activate",
    "current_session",
]

# hvac (and requests) load only when Vault is on: `activate` imports `.session`, and these names are
# looked up on first use, so a run without Vault (and every `runner.errors` import) does not pay for them
_LAZY = {"VaultSession": ".session", "CredentialChange": ".leases", "Lease": ".leases"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_current: VaultSession | None = None


def current_session() -> VaultSession | None:
    """The active session, for code deep in a pipeline that wants credential-change notices."""
    return _current


@contextmanager
def activate(settings: VaultSettings | None = None) -> Iterator[VaultSession | None]:
    """Log in, register the provider, renew leases; revoke everything on exit. Yields None when off."""
    global _current
    settings = settings or VaultSettings.from_config()
    if not settings.enabled:
        if settings.addr:
            logs.event("Vault address set but `vault.secrets` maps no keys: not using Vault", logging.WARNING,
                       phase="vault")
        yield None
        return
    if _current is not None:
        raise VaultError("Vault is already active in this process.")
    from .session import VaultSession

    session = VaultSession.open(settings)
    try:
        with _sigterm_exits():
            session.leases.start()
            if settings.prefetch:
                session.prefetch()
            session.register()
            _current = session
            yield session
    finally:
        _current = None
        session.close()


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Make SIGTERM (ECS stop) unwind the stack so `finally` revokes; Python's default kills without it.

    Installed only on the main thread and only when nobody else handles SIGTERM: a command with its
    own graceful stop (follow mode) ends its loop and returns, which exits this context normally.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        logs.event("SIGTERM: stopping and revoking Vault leases", logging.WARNING, phase="vault")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
