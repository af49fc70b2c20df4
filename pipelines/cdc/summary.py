"""What a CDC run did (`CdcSummary`), and the structured log line every CDC module writes."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("aurora_sync.cdc")
LANDING_LAGS_KEPT = 10_000


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, message, extra={"fields": {"phase": "cdc", **fields}})


@dataclass
class TableChanges:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    truncates: int = 0


@dataclass
class CdcSummary:
    """What one `run_cdc` did; `as_fields()` is ready for a log line or metrics."""

    changes: dict[str, TableChanges] = field(default_factory=dict)  # per destination table
    batches: int = 0
    start_lsn: str | None = None  # slot's confirmed position when the run started
    end_lsn: str | None = None  # position confirmed to the server (and committed in dlt state)
    retained_wal_bytes: int = 0  # pg_current_wal_lsn() - confirmed_flush_lsn at the end
    pinned_wal_bytes: int = 0  # pg_current_wal_lsn() - restart_lsn at the end
    wal_status: str | None = None
    lag_seconds: float = 0.0  # last batch: load finished minus its newest commit time
    duration: float = 0.0
    snapshots: dict[str, int] = field(default_factory=dict)  # rows copied per table (initial/added tables)
    pending_tables: list[str] = field(default_factory=list)  # configured but not yet replicated
    dead_lettered: int = 0
    filled_rows: int = 0  # rows whose unchanged TOAST values (or soft-delete tombstones) came from an earlier version
    unresolved_toast_rows: int = 0  # versions with a value known nowhere: written as tombstones, read again
    repaired_rows: int = 0  # keys read again from the source because their values were known nowhere else
    replayed_rows: int = 0  # versions the destination already held (a replay after a crash): changed nothing
    warnings: list[str] = field(default_factory=list)
    stopped_by: str = "drained"  # drained | stop
    failed_tables: dict[str, dict[str, str]] = field(default_factory=dict)  # set aside by this run (isolation)
    recovered_tables: list[str] = field(default_factory=list)  # set aside before, copied again by this run
    lands: bool = False  # batches landed in S3 for `merge` (`pipelines.landing`) instead of loading directly
    # per landed batch, seconds from the commit of its oldest change (the one that waited longest) to landed;
    # the latest LANDING_LAGS_KEPT of them, so a follower that runs for months keeps a bounded list
    landing_lags: list[float] = field(default_factory=list)
    landed_batches: int = 0

    def table(self, name: str) -> TableChanges:
        return self.changes.setdefault(name, TableChanges())

    @property
    def total_changes(self) -> int:
        return sum(c.inserts + c.updates + c.deletes + c.truncates for c in self.changes.values())

    @property
    def landing_lag_p95(self) -> float | None:
        """Commit to landed in S3, 95th percentile over this run's landed batches."""
        if not self.landing_lags:
            return None
        ordered = sorted(self.landing_lags)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def as_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["total_changes"] = self.total_changes
        fields.pop("landing_lags")
        fields["landing_lag_p95_s"] = self.landing_lag_p95
        return fields
