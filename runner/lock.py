"""One run per pipeline at a time, even when two ECS tasks fire together.

A session-level `pg_try_advisory_lock` on the source writer: it writes nothing, needs no privilege,
and PostgreSQL releases it when the session ends, so a killed task cannot leave a stale lock.
(Behind RDS Proxy, session locks pin the connection; connect the runner to the cluster endpoint.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from sources.postgres.errors import describe_url, explain_connection_error
from sources.postgres.session import APPLICATION_NAME, session_options
from sources.postgres.transport import secure_dsn

from . import identity
from .errors import RunnerError
from .exit_codes import ExitCode


def lock_key(pipeline_name: str) -> int:
    """A stable signed 64-bit key (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"aurora-sync:{pipeline_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def pipeline_lock(dsn: str, pipeline_name: str) -> Iterator[None]:
    try:
        conn = psycopg2.connect(secure_dsn(dsn), application_name=f"{APPLICATION_NAME} lock",
                                options=session_options(10_000), connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise (explain_connection_error(exc, describe_url(dsn)) or exc) from None
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(pipeline_name),))
            acquired = bool(cur.fetchone()[0])
        if not acquired:
            raise RunnerError(
                f"Another run of pipeline {pipeline_name!r} holds the lock; this run did nothing. "
                "If no other run is active, the lock frees itself when that session ends.",
                ExitCode.LOCK_HELD,
            )
        identity.log_identity(conn)  # once per run, on the session it already has
        yield
    finally:
        conn.close()  # ends the session, which releases the lock on every exit path
