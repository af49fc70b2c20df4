"""Turn any failure into one actionable sentence and an exit code; stack traces only with --debug."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import sqlalchemy as sa
from dlt.common.configuration.exceptions import (
    ConfigFieldMissingException,
    ConfigurationValueError,
    ConfigValueCannotBeCoercedException,
)

from pipelines.fence import LockLost
from pipelines.isolation import TablesFailed
from pipelines.isolation import causes as chain
from sources.postgres.errors import SourceError, SourceUnreachable, explain_connection_error

from .exit_codes import ExitCode
from .vault.errors import VaultError


class RunnerError(Exception):
    """An error the runner itself raises, with its exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.code = code


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The whole chain, hidden context included (`pipelines.isolation.causes`)."""
    return chain(exc, suppressed=True)


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    for cause in causes(exc):
        if isinstance(cause, VaultError):  # names the path and auth method, never a value
            return cause.code, str(cause)
        if isinstance(cause, RunnerError):
            return cause.code, str(cause)
        if isinstance(cause, LockLost):  # another task took over while this one ran: it stops, nothing is lost
            return ExitCode.LOCK_HELD, str(cause)
        if isinstance(cause, TablesFailed):  # the other tables were loaded; the next run retries these
            return ExitCode.FAILURE, str(cause)
        if isinstance(cause, SourceUnreachable):
            return ExitCode.FAILURE, str(cause)
        if isinstance(cause, SourceError):
            return ExitCode.CONFIG_ERROR, str(cause)
        if isinstance(cause, ConfigFieldMissingException):
            keys = ", ".join(cause.fields)
            return ExitCode.CONFIG_ERROR, (
                f"Missing configuration: {keys} (for {cause.spec_name}). Set it in .dlt/config.toml, "
                f".dlt/secrets.toml, an env var such as SOURCES__POSTGRES__CREDENTIALS, or Vault."
            )
        if isinstance(cause, ConfigValueCannotBeCoercedException):
            return ExitCode.CONFIG_ERROR, (
                f"Invalid configuration value for `{cause.field_name}`: expected {cause.hint}."
            )
        if isinstance(cause, ConfigurationValueError):
            return ExitCode.CONFIG_ERROR, f"Invalid configuration: {cause}"
        if isinstance(cause, sa.exc.OperationalError | sa.exc.InterfaceError | psycopg2.OperationalError):
            explained = explain_connection_error(cause, "the source database")
            if explained:
                return classify(explained)
    root = list(causes(exc))[-1]
    return ExitCode.FAILURE, f"{type(root).__name__}: {root}"
