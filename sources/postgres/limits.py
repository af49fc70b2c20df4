"""How many connections one run may open to the source, derived from a single setting: the snapshot `workers`.

Today a snapshot reads one table at a time (`workers = 1`); chunked parallel snapshots will read `workers`
ranges at once and feed this same key (`[sources.postgres.snapshot] workers`). Every SQLAlchemy engine the sync
creates (`sources.postgres.session.make_engine`) gets a pool of `workers` connections plus one overflow for
discovery and the late-commit guard, so a run can never open more than `connection_budget(workers)` sessions,
the number `sources/postgres/grants.sql` and docs/security.md use for the role's CONNECTION LIMIT.
"""

from __future__ import annotations

from dlt.common.configuration import with_config

from .errors import SourceConfigError

SECTIONS = ("sources", "postgres", "snapshot")
POOL_TIMEOUT_SECONDS = 300  # a reader waits this long for a free pooled connection before failing the run
# sessions outside the two engine pools: the pipeline lock, and for CDC the walsender and its control session (a
# snapshot run that shares its chunks with helper tasks holds its chunk claims on one more: still within 3); each
# helper task (`aurora-sync snapshot-helper`) is a run of its own in this count
OTHER_SESSIONS = 3


@with_config(sections=SECTIONS)
def snapshot_workers(workers: int = 1) -> int:
    """Resolve `sources.postgres.snapshot.workers` (falling back to `sources.postgres.workers`).

    Args:
        workers: tables (later: key ranges) read at the same time; bounds every source connection pool.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise SourceConfigError(
            f"`sources.postgres.snapshot.workers` must be an integer from 1 to 64, got {workers!r}.")
    return workers


def pool_limits(workers: int | None = None) -> dict[str, int]:
    """SQLAlchemy QueuePool arguments: `workers` readers plus one overflow, never more."""
    workers = snapshot_workers() if workers is None else workers  # type: ignore[call-arg]
    return {"pool_size": workers, "max_overflow": 1, "pool_timeout": POOL_TIMEOUT_SECONDS}


def connection_budget(workers: int | None = None) -> int:
    """The most sessions one run opens: a writer and a reader pool, plus the lock and the CDC stream."""
    limits = pool_limits(workers)
    return 2 * (limits["pool_size"] + limits["max_overflow"]) + OTHER_SESSIONS
