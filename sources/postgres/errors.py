"""Errors that tell the operator what to fix, in one sentence, without leaking credentials."""

from __future__ import annotations

import psycopg2
import sqlalchemy as sa


class SourceError(Exception):
    """Base class: the message is shown to the operator as is."""


class SourceConfigError(SourceError, ValueError):
    """A configuration value is invalid."""


class SchemaNotFound(SourceError):
    """A configured PostgreSQL schema does not exist or is not visible to the user."""


class PrimaryKeyMissing(SourceError):
    """A table has neither a primary key nor a configured one, so merges cannot be exact."""


class SourceUnreachable(SourceError):
    """The database cannot be reached right now: worth retrying later."""


class SourceAuthFailed(SourceError):
    """The database refused the credentials or does not exist: retrying will not help."""


class TLSVerificationFailed(SourceError):
    """TLS to the database could not be set up or its certificate was not trusted: retrying will not help."""


TLS_FAILURES = ("certificate verify failed", "does not match host name", "root certificate file",
                "server does not support ssl", "ssl error", "sslmode value")


def describe_url(engine_or_url: sa.Engine | str) -> str:
    """host:port/database with user, never the password."""
    url = engine_or_url.url if isinstance(engine_or_url, sa.Engine) else sa.engine.make_url(engine_or_url)
    return f"{url.username}@{url.host}:{url.port or 5432}/{url.database}"


def explain_connection_error(exc: BaseException, where: str) -> SourceError | None:
    """Map a driver error to an actionable message, or None when it is not a connection problem."""
    text = str(getattr(exc, "orig", exc))
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return SourceAuthFailed(
            f"PostgreSQL rejected the credentials for {where}: check the user and password in "
            "`sources.postgres.credentials` (or the Vault path that supplies them)."
        )
    if any(s in lowered for s in TLS_FAILURES):
        detail = text.strip().splitlines()[-1].split("failed: ", 1)[-1]
        return TLSVerificationFailed(
            f"TLS to {where} failed ({detail}): check that `sslrootcert` / `sources.postgres.ssl_root_cert` is the "
            "CA bundle that signed the server's certificate (Amazon RDS: global-bundle.pem) and that the DSN's host "
            "is the name in the certificate (the cluster endpoint, not an IP address)."
        )
    if "does not exist" in lowered and "database" in lowered:
        return SourceAuthFailed(f"The database in {where} does not exist: check `sources.postgres.credentials`.")
    if any(s in lowered for s in ("could not connect", "connection refused", "timeout expired",
                                  "could not translate host name", "server closed the connection")):
        return SourceUnreachable(
            f"Cannot reach PostgreSQL at {where}: check the host and port, that the server is running, "
            "and that security groups / pg_hba.conf allow this client."
        )
    return None


# SQLSTATE classes/codes that mean "the connection or the server went away", not "this table is wrong"
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_connection_error(exc: BaseException) -> bool:
    """The source itself is unreachable or restarting: the whole run should fail and be retried, rather than
    one table be set aside. A statement timeout or a permission error is about one table, and is not this."""
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, SourceUnreachable | psycopg2.InterfaceError):
        return True
    if isinstance(orig, psycopg2.OperationalError):
        code = getattr(orig, "pgcode", None)
        if code is None:  # no SQLSTATE: the connection broke before the server could answer
            return True
        return code.startswith(_CONNECTION_STATES[0]) or code in _CONNECTION_STATES[1:]
    return isinstance(explain_connection_error(orig, "the source"), SourceUnreachable)
