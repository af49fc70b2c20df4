"""Connections to the source database that cannot hurt production.

Every session is read-only, bounded by `statement_timeout` and `idle_in_transaction_session_timeout`,
and named `aurora-snowflake-sync` so DBAs can see (and kill) it in `pg_stat_activity`. The text
formats are pinned so COPY output parses the same whatever the server defaults are.
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from dlt.common.configuration import resolve_configuration
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.configuration.specs import ConnectionStringCredentials

from .errors import SourceConfigError
from .limits import pool_limits
from .transport import secure_url

APPLICATION_NAME = "aurora-snowflake-sync"


def session_options(statement_timeout_ms: int, read_only: bool = True) -> str:
    settings = {
        "default_transaction_read_only": "on" if read_only else "off",
        "statement_timeout": str(statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(max(statement_timeout_ms, 600_000)),
        "lock_timeout": "5000",
        "TimeZone": "UTC",
        "DateStyle": "ISO",
        "IntervalStyle": "iso_8601",
        "extra_float_digits": "3",
        "bytea_output": "hex",
    }
    return " ".join(f"-c {k}={v}" for k, v in settings.items())


def writer_dsn() -> str:
    """The writer DSN, resolved through dlt's providers (env, secrets.toml, Vault) exactly as the source's
    `credentials` argument is, whether given whole or field by field."""
    try:
        credentials = resolve_configuration(
            ConnectionStringCredentials(), sections=("sources", "postgres", "credentials"))
    except ConfigFieldMissingException:
        raise SourceConfigError("Missing configuration: sources.postgres.credentials (the source DSN). Set it in "
                                ".dlt/secrets.toml, SOURCES__POSTGRES__CREDENTIALS, or Vault.") from None
    return str(credentials.to_native_representation())


def make_engine(
    credentials: ConnectionStringCredentials | str,
    statement_timeout_ms: int,
    connect_timeout_s: int = 10,
    **engine_kwargs: Any,
) -> sa.Engine:
    """A SQLAlchemy engine whose every connection is a read-only, time-bounded session, in a bounded pool."""
    if isinstance(credentials, ConnectionStringCredentials):
        url = credentials.to_native_representation()
    else:
        url = credentials
    url = secure_url(sa.engine.make_url(url).set(drivername="postgresql+psycopg2"))
    engine = sa.create_engine(
        url,
        connect_args={
            "application_name": APPLICATION_NAME,
            "connect_timeout": connect_timeout_s,
            "options": session_options(statement_timeout_ms),
        },
        pool_pre_ping=True,
        **{**pool_limits(), **engine_kwargs},
    )
    _ENGINES.add(engine)
    return engine


# Engines handed to dlt resources live as long as the source object; their pooled sessions stay open until the
# garbage collector finds them. A process that runs again (a loop, a test, a long-lived worker) would then count
# the last run's sessions against the role's CONNECTION LIMIT, so a run closes them when it ends.
_ENGINES: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def close_idle_sessions() -> None:
    """Close the pooled source sessions of every engine this process made (those in use close when returned)."""
    for engine in list(_ENGINES):
        engine.dispose()
