"""Dynamic credentials live only as long as their lease: renew it while we run, revoke it when we stop.

A background thread renews each lease (and our own Vault token, whose expiry would revoke every
lease it created) at `renew_fraction` of its TTL. When a renewal fails (lease revoked, Vault lost
it) or the lease reaches its `max_ttl`, the thread reads the path again: new credentials replace
the old ones in place, so the next dlt config resolution returns them, and subscribers are told
(`CredentialChange`) so they can open new connections. Superseded leases are not revoked at once:
in-flight transactions keep working until they finish, and the leases are revoked at exit (or
expire at their TTL, whichever comes first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hvac

from runner import logs

from .client import AuthInfo, make_client, translate
from .errors import VaultError
from .settings import VaultSettings

Fetch = Callable[[str], dict[str, Any]]
Relogin = Callable[[], AuthInfo]


@dataclass
class Lease:
    """One issued secret. `data` holds the credentials; never log it, nor the full `lease_id`."""

    path: str
    lease_id: str = field(repr=False)
    renewable: bool
    increment: float  # the TTL first granted: what we ask for on each renewal
    duration: float  # the TTL granted by the last issue or renewal
    data: dict[str, Any] = field(repr=False)
    generation: int = 1
    issued_at: float = field(default_factory=time.monotonic)
    expires_at: float = 0.0
    renew_at: float = 0.0
    renewals: int = 0
    capped: bool = False  # the last renewal was cut short by max_ttl: the next step is a new secret

    @property
    def short_id(self) -> str:
        return "…" + self.lease_id[-6:]


@dataclass(frozen=True)
class CredentialChange:
    """Told to subscribers after new credentials replaced old ones for `path`."""

    path: str
    reason: str  # renewal-failed | max-ttl | not-renewable | relogin
    generation: int


@dataclass
class LeaseStats:
    renewals: int = 0
    renew_failures: int = 0
    refetches: int = 0
    token_renewals: int = 0
    relogins: int = 0
    revoked: int = 0


class LeaseManager:
    """Owns the leases and the token's lifetime; thread-safe. Start with `start()`, end with `stop()`."""

    def __init__(
        self,
        client: hvac.Client,
        settings: VaultSettings,
        auth: AuthInfo,
        fetch: Fetch,
        relogin: Relogin | None = None,
        renew_fraction: float = 2 / 3,
    ) -> None:
        self.client = client
        self.settings = settings
        self.auth = auth
        self.fetch = fetch
        self.relogin_fn = relogin
        self.renew_fraction = renew_fraction
        self.stats = LeaseStats()
        self.changed = threading.Event()
        self.generation = 0
        self._leases: dict[str, Lease] = {}
        self._retired: list[Lease] = []
        self._retired_tokens: list[str] = []
        self._subscribers: list[Callable[[CredentialChange], None]] = []
        self._lock = threading.RLock()
        self._relogin_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token_renew_at: float | None = None
        self._token_capped = False
        self._schedule_token(auth.ttl)

    # --- public API -------------------------------------------------------------------------------

    def acquire(self, path: str, response: dict[str, Any]) -> Lease:
        """Take over the lease in a fresh read `response` of `path`."""
        lease = self._lease_from(path, response, generation=1)
        with self._lock:
            self._leases[path] = lease
        logs.event("vault lease acquired", phase="vault", path=path, lease=lease.short_id, ttl_s=lease.duration,
                   renewable=lease.renewable)
        self._wake.set()
        return lease

    def get(self, path: str) -> Lease | None:
        with self._lock:
            return self._leases.get(path)

    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def subscribe(self, callback: Callable[[CredentialChange], None]) -> Callable[[], None]:
        """Call `callback` (from the renewal thread) after credentials change; returns an unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vault-leases", daemon=True)
            self._thread.start()

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if revoke:
            self.revoke_all()

    def relogin(self, reason: str) -> bool:
        """Log in again (aws/approle) and re-read every leased path under the new token."""
        if self.relogin_fn is None:
            return False
        with self._relogin_lock:
            return self._relogin(reason)

    def _relogin(self, reason: str) -> bool:
        old_token = self.client.token
        try:
            auth = self.relogin_fn()
        except VaultError as exc:
            logs.event("vault re-login failed", logging.ERROR, phase="vault", reason=reason, error=str(exc))
            return False
        with self._lock:
            if self.auth.own_token and old_token:
                self._retired_tokens.append(old_token)
            self.auth = auth
            self.stats.relogins += 1
        self._token_capped = False
        self._schedule_token(auth.ttl)
        logs.event("vault re-login", phase="vault", reason=reason, auth_method=auth.method, token_ttl_s=auth.ttl)
        # leases die with the token that created them: replace them all under the new one
        for lease in self.leases():
            self._refetch(lease, "relogin")
        return True

    def revoke_all(self) -> None:
        """Revoke current and superseded leases, then our own tokens. Failures only log: leases expire anyway."""
        with self._lock:
            current, retired = list(self._leases.values()), list(self._retired)
            self._leases.clear()
            self._retired.clear()
        for lease, quiet in [(lease, False) for lease in current] + [(lease, True) for lease in retired]:
            try:
                with translate(self.settings, f"sys/leases/revoke ({lease.path})"):
                    self.client.adapter.put(f"/v1/sys/leases/revoke/{lease.lease_id}")
                self.stats.revoked += 1
                logs.event("vault lease revoked", logging.DEBUG if quiet else logging.INFO, phase="vault",
                           path=lease.path, lease=lease.short_id, generation=lease.generation)
            except VaultError as exc:
                logs.event("vault lease not revoked; it ends at its TTL", logging.DEBUG if quiet else logging.WARNING,
                           phase="vault", path=lease.path, lease=lease.short_id, error=str(exc))
        if self.auth.own_token:
            for token in [*self._retired_tokens, self.client.token]:
                self._revoke_token(token)
            self._retired_tokens.clear()

    # --- the renewal thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_delay())
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._tick()
            except Exception as exc:  # keep renewing whatever happens; never log values
                logs.event("vault renewal loop error", logging.WARNING, phase="vault", error=type(exc).__name__)
                self._stop.wait(1.0)

    def _next_delay(self) -> float:
        now = time.monotonic()
        due = [lease.renew_at for lease in self.leases()]
        if self._token_renew_at is not None:
            due.append(self._token_renew_at)
        return max(0.05, min([60.0, *(d - now for d in due)]))

    def _tick(self) -> None:
        now = time.monotonic()
        if self._token_renew_at is not None and now >= self._token_renew_at:
            self._renew_token()
        for lease in self.leases():
            if time.monotonic() >= lease.renew_at:
                self._renew_lease(lease)

    def _schedule_token(self, ttl: float) -> None:
        self._token_renew_at = time.monotonic() + ttl * self.renew_fraction if ttl > 0 else None

    def _renew_token(self) -> None:
        if self._token_capped or not self.auth.renewable:
            # max TTL reached (or never renewable): only a new login extends our life
            if not self.relogin("token-max-ttl"):
                self._token_renew_at = None
                logs.event("vault token cannot be extended; its leases end with it", logging.WARNING, phase="vault")
            return
        increment = self.auth.ttl
        try:
            with translate(self.settings, "auth/token/renew-self"):
                response = self.client.auth.token.renew_self(increment=int(increment))
        except VaultError as exc:
            logs.event("vault token renewal failed", logging.WARNING, phase="vault", error=str(exc))
            if not self.relogin("token-renewal-failed"):
                self._token_renew_at = time.monotonic() + 5.0
            return
        granted = float(response["auth"]["lease_duration"])
        self.stats.token_renewals += 1
        self._token_capped = granted < increment
        self._schedule_token(granted)
        logs.event("vault token renewed", logging.DEBUG, phase="vault", ttl_s=granted)

    def _renew_lease(self, lease: Lease) -> None:
        if lease.capped or not lease.renewable:
            self._refetch(lease, "max-ttl" if lease.capped else "not-renewable")
            return
        try:
            with translate(self.settings, f"sys/leases/renew ({lease.path})"):
                response = self.client.adapter.put(
                    f"/v1/sys/leases/renew/{lease.lease_id}", json={"increment": int(lease.increment)})
        except VaultError as exc:
            self.stats.renew_failures += 1
            logs.event("vault lease renewal failed; fetching new credentials", logging.WARNING, phase="vault",
                       path=lease.path, lease=lease.short_id, error=str(exc))
            self._refetch(lease, "renewal-failed")
            return
        granted = float(response["lease_duration"])
        now = time.monotonic()
        lease.duration = granted
        lease.expires_at = now + granted
        lease.renew_at = now + granted * self.renew_fraction
        lease.renewals += 1
        lease.capped = granted < lease.increment  # Vault grants whole seconds; less means max_ttl
        self.stats.renewals += 1
        logs.event("vault lease renewed", logging.DEBUG, phase="vault", path=lease.path, lease=lease.short_id,
                   ttl_s=granted)

    def _refetch(self, old: Lease, reason: str) -> None:
        try:
            response = self.fetch(old.path)
        except VaultError as exc:
            now = time.monotonic()
            old.renew_at = now + min(5.0, max(0.5, (old.expires_at - now) / 4))
            logs.event("vault credentials refetch failed; retrying", logging.ERROR, phase="vault", path=old.path,
                       reason=reason, error=str(exc))
            return
        new = self._lease_from(old.path, response, generation=old.generation + 1)
        with self._lock:
            self._leases[old.path] = new
            self._retired.append(old)
            self.stats.refetches += 1
            self.generation += 1
            subscribers = list(self._subscribers)
        logs.event("vault credentials replaced", logging.WARNING if reason == "renewal-failed" else logging.INFO,
                   phase="vault", path=old.path, reason=reason, lease=new.short_id, generation=new.generation)
        change = CredentialChange(old.path, reason, new.generation)
        self.changed.set()
        for callback in subscribers:
            try:
                callback(change)
            except Exception as exc:
                logs.event("credential change subscriber failed", logging.ERROR, phase="vault",
                           error=type(exc).__name__)

    def _lease_from(self, path: str, response: dict[str, Any], generation: int) -> Lease:
        duration = float(response.get("lease_duration") or 0)
        now = time.monotonic()
        return Lease(
            path=path,
            lease_id=str(response["lease_id"]),
            renewable=bool(response.get("renewable")),
            increment=duration,
            duration=duration,
            data=dict(response.get("data") or {}),
            generation=generation,
            issued_at=now,
            expires_at=now + duration,
            renew_at=now + duration * self.renew_fraction,
        )

    def _revoke_token(self, token: str | None) -> None:
        if not token:
            return
        client = make_client(self.settings, warn=False)
        client.token = token
        try:
            with translate(self.settings, "auth/token/revoke-self"):
                client.auth.token.revoke_self()
            logs.event("vault token revoked", logging.DEBUG, phase="vault")
        except VaultError as exc:
            logs.event("vault token not revoked; it ends at its TTL", logging.DEBUG, phase="vault", error=str(exc))
