"""Vault failures as one sentence an operator can act on, naming the path and auth method, never a value.

hvac and requests errors carry URLs, response bodies and sometimes request data; we never show their
text. Each error here is built from what we asked for (path, auth method, dlt key) and the HTTP
status alone, so a secret cannot reach a log line or an exit message through an exception.
"""

from __future__ import annotations

from runner.exit_codes import ExitCode


class VaultError(Exception):
    """Base class: `str(exc)` is shown to the operator as is; `code` is the process exit code."""

    code: ExitCode = ExitCode.CONFIG_ERROR

    def __init__(self, message: str, path: str | None = None, auth_method: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.auth_method = auth_method


class VaultConfigError(VaultError):
    """The `[vault]` configuration is incomplete or inconsistent."""


class VaultUnreachable(VaultError):
    """Vault cannot be reached, is sealed or failed (5xx): the next run may succeed."""

    code = ExitCode.FAILURE


class VaultTLSError(VaultError):
    """TLS verification of Vault's certificate failed: a CA bundle problem, not a transient one."""


class VaultAuthFailed(VaultError):
    """Login was refused (wrong role_id/secret_id, unbound IAM principal, ...)."""


class VaultPermissionDenied(VaultError):
    """The token is valid but its policies do not allow this path."""


class VaultTokenExpired(VaultError):
    """The token is expired, revoked or unknown to Vault."""


class VaultPathNotFound(VaultError):
    """Nothing is stored at the path (or the path is not a secret)."""


class VaultKeyNotFound(VaultError):
    """The secret exists but has no such key."""
