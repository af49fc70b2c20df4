"""Guard against late commits (dlt issue 2269).

A row written by a transaction that is still open when we read is invisible to us, yet its
`updated_at` (set from `now()`, the transaction's start time) can be older than the cursor we are
about to save. Timestamp-cursor tools skip such rows forever. Before each read we record the start
of the oldest transaction still open in the database; the next read starts no later than that
instant (minus the lookback window), so a late commit is always re-read. The merge on the primary
key makes the re-read harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

OLDEST_OPEN_TRANSACTION_SQL = sa.text(
    """
    SELECT coalesce(min(xact_start), now()) AS guard, now() AS db_now
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND pid <> pg_backend_pid()
      AND backend_type = 'client backend'
      AND xact_start IS NOT NULL
    """
)


def oldest_open_transaction(engine: sa.Engine) -> datetime:
    """Start time of the oldest open transaction in this database, or the server's now().

    Needs `pg_read_all_stats` (part of `pg_monitor`) to see other users' transactions; without it
    PostgreSQL hides their `xact_start` and only the lookback window protects against late commits.
    Run against the writer: a reader replica does not see the writer's open transactions.
    """
    with engine.connect() as conn:
        row = conn.execute(OLDEST_OPEN_TRANSACTION_SQL).one()
    return row.guard.astimezone(UTC)


def effective_start(
    lagged_last_value: datetime | None,
    previous_guard: datetime | None,
    lookback: timedelta,
    cursor_timezone: str,
) -> datetime | None:
    """The lower bound of this read: the lagged cursor, or earlier if a transaction was open then."""
    if lagged_last_value is None or previous_guard is None:
        return lagged_last_value
    bound = previous_guard - lookback
    if lagged_last_value.tzinfo is None:
        # naive `timestamp` cursor: interpret the guard in the zone the application writes in
        bound = bound.astimezone(ZoneInfo(cursor_timezone)).replace(tzinfo=None)
    return min(lagged_last_value, bound)
