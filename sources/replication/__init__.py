"""Change data capture from PostgreSQL's write-ahead log (logical replication, pgoutput) as dlt sources.

The driver (`pipelines.cdc`) reads bounded batches of changes from the slot (`stream`, `batch`) in the change
format (`changes`) and writes them through a sink; copies of tables come from `snapshot` (one go) and
`chunked_copy` + `reconcile` (chunks). They land in the same tables as the snapshot/incremental source
(`<schema>__<table>`), merged on the primary key, with extra columns: `_lsn` and `_lsn_ordinal` (the version's
position in the stream), and `_deleted` (dlt `hard_delete`) or `_deleted_at` (soft deletes keep the row).

Configuration: `sources.postgres.replication.<key>`, falling back to `sources.postgres.<key>`, so the
DSN (`credentials`), `schemas`, `include`, `exclude` and per-table `tables` overrides are shared with
the snapshot source and only CDC settings live in `[sources.postgres.replication]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Literal

import dlt
import sqlalchemy as sa
from dlt.common.configuration import resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration, ConnectionStringCredentials, configspec
from dlt.extract import DltResource

from sources.postgres.errors import SourceConfigError

from .batch import DeleteMode, system_hints
from .columns import ColumnSpec
from .errors import ReplicationError
from .multiset import multiset_hints

# A batch holds one row per key (`batch.ChangeBatch`), yet dlt's de-duplication stays on: a load retried after a
# crash can put a file into the staging table twice. `_lsn` is its sort key (`system_hints`), which also keeps the
# sign of -0.0 (DuckDB loses it when that window is ordered by a constant, dlt's default).
MERGE = {"disposition": "merge", "strategy": "delete-insert"}
# the same dlt schema (and source state namespace) as `sources.postgres.postgres_replica`: both write the
# same tables, so they share one table definition; CDC keeps its position under this key of that state
SOURCE_NAME = "postgres_replica"
STATE_KEY = "cdc"
SECTIONS = ("sources", "postgres", "replication")
LANDING_FLUSH_SECONDS = 2.0
DIRECT_FLUSH_SECONDS = 5.0

__all__ = ["SOURCE_NAME", "STATE_KEY", "ReplicationError", "ReplicationSettings", "replication_settings",
           "state_resource", "table_hints"]


@configspec
class ReplicationSettings(BaseConfiguration):
    """CDC configuration: `[sources.postgres.replication]`, each key falling back to `[sources.postgres]` (dlt walks
    up the sections), so the DSN, `schemas`, `include`, `exclude` and per-table `tables` are the snapshot source's."""

    credentials: ConnectionStringCredentials = None
    """Writer DSN (logical decoding runs on the writer only; Aurora readers cannot)."""
    schemas: list[str] = None
    reader_credentials: ConnectionStringCredentials | None = None
    """Optional reader DSN (Aurora reader endpoint): chunked copies read their chunks there, each once the reader
    replayed past the chunk's low watermark."""
    include: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    exclude: list[str] = dataclasses.field(default_factory=list)
    tables: dict[str, Any] = dataclasses.field(default_factory=dict)
    slot_name: str | None = None
    publication_name: str | None = None
    delete_mode: DeleteMode = "hard"
    """`hard` removes deleted rows (dlt `hard_delete` on `_deleted`); `soft` keeps them with `_deleted_at` set."""
    truncate_mode: Literal["apply", "fail"] = "apply"
    """`apply` empties the destination table; `fail` stops before confirming it."""
    on_slot_lost: Literal["fail", "resnapshot"] = "fail"
    """`fail` stops with an error when the slot is missing, invalidated or ahead of our state; `resnapshot`
    recreates it and copies every table again."""
    max_batch_rows: int = 100_000
    """A batch is loaded when `max_batch_rows`, `max_batch_bytes` or `max_batch_seconds` is reached."""
    max_batch_bytes: int = 32 << 20
    max_batch_seconds: float | None = None
    """Also the follow-mode flush interval (default 2 s when landing, else 5 s)."""
    heartbeat_seconds: float = 60.0
    """Follow mode writes a `pg_logical_emit_message` this often when idle, so the slot advances on a quiet database
    of a busy cluster (0 disables)."""
    status_interval_seconds: float = 10.0
    idle_ack_bytes: int = 16 << 20
    """When idle, confirm the slot position (a state-only load) once it lags this much."""
    retained_wal_warn_bytes: int = 1 << 30
    """Slot lag (`pg_current_wal_lsn() - confirmed_flush_lsn`) that warns; `retained_wal_fail_bytes` fails the run
    when still exceeded after it."""
    retained_wal_fail_bytes: int = 20 << 30
    auto_add_tables: bool = True
    """Add newly configured/created tables to the publication and snapshot them alone."""
    new_table_check_seconds: float = 300.0
    reread_check_seconds: float = 30.0
    """Follow mode looks this often for keys to read again that the merge or `verify --repair` asked for (one LIST
    of the landing area; `pipelines.cdc.rereads`)."""
    statement_timeout_ms: int = 6 * 3600 * 1000
    block_size_bytes: int = 4 << 20
    dead_letter_url: str = "dead_letter"
    merge_interval_seconds: float = 0.0
    """0 loads every batch into the warehouse before confirming it (one failure domain); above 0, batches land in
    the archive bucket and are confirmed there, and `aurora-sync merge` applies them to the warehouse at this
    cadence (`pipelines.landing`, `pipelines.merge`)."""
    slot_create_timeout_seconds: float = 300.0
    """Creating a slot waits for the transactions writing when it starts (naming them in the log every few
    seconds); after this long it cancels its wait on the server and fails, leaving nothing behind."""

    @property
    def lands(self) -> bool:
        """Batches land in S3 and `merge` applies them (`pipelines.landing`), instead of loading directly."""
        return self.merge_interval_seconds > 0

    @property
    def dsn(self) -> str:
        url = sa.engine.make_url(self.credentials.to_native_representation())
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    @property
    def reader_dsn(self) -> str | None:
        if self.reader_credentials is None:
            return None
        url = sa.engine.make_url(self.reader_credentials.to_native_representation())
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def validate(self) -> ReplicationSettings:
        def one_of(key: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, key) not in allowed:
                raise SourceConfigError(f"`sources.postgres.replication.{key}` must be one of "
                                        f"{', '.join(map(repr, allowed))}; got {getattr(self, key)!r}.")

        def positive(key: str, minimum: float) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
                raise SourceConfigError(f"`sources.postgres.replication.{key}` must be a number >= {minimum}; "
                                        f"got {value!r}.")

        if isinstance(self.schemas, str):
            self.schemas = [s.strip() for s in self.schemas.split(",") if s.strip()]
        if not self.schemas:
            raise SourceConfigError("`sources.postgres.schemas` is empty: name at least one schema to replicate.")
        one_of("delete_mode", ("hard", "soft"))
        one_of("truncate_mode", ("apply", "fail"))
        one_of("on_slot_lost", ("fail", "resnapshot"))
        if self.max_batch_seconds is None:
            # A change waits up to one flush interval before its batch is written. Landing is an S3 put, so it
            # can flush often and keep commit -> landed p95 under 5 s; a direct load costs warehouse statements.
            self.max_batch_seconds = LANDING_FLUSH_SECONDS if self.lands else DIRECT_FLUSH_SECONDS
        positive("max_batch_rows", 1)
        positive("max_batch_bytes", 1 << 16)
        positive("max_batch_seconds", 0.1)
        positive("heartbeat_seconds", 0)
        positive("status_interval_seconds", 1)
        positive("idle_ack_bytes", 0)
        positive("retained_wal_warn_bytes", 0)
        positive("retained_wal_fail_bytes", 0)
        positive("new_table_check_seconds", 1)
        positive("reread_check_seconds", 1)
        positive("block_size_bytes", 1 << 16)
        positive("merge_interval_seconds", 0)
        positive("slot_create_timeout_seconds", 1)
        return self


def replication_settings() -> ReplicationSettings:
    """The CDC settings, resolved from dlt config and validated."""
    return resolve_configuration(ReplicationSettings(), sections=SECTIONS).validate()


def table_hints(columns: list[ColumnSpec], delete_mode: DeleteMode, merge: bool = True,
                keyless: bool = False) -> dict[str, Any]:
    """Column hints of a replicated table; `merge=False` (snapshot loads) leaves out the merge-only
    hints, which the table keeps from earlier merges anyway. A keyless table gets its copies' identity."""
    # `dedup_sort: None` clears the hint the snapshot/incremental source puts on its cursor: one table, one sort
    hints: dict[str, Any] = {c.name: {**c.hint, "dedup_sort": None} for c in columns}
    if keyless:
        hints.update(multiset_hints())
    for name, hint in system_hints(delete_mode).items():
        hints[name] = hint if merge else {k: v for k, v in hint.items() if k not in ("dedup_sort", "hard_delete")}
    return hints


def state_resource(update: Callable[[dict[str, Any]], None]) -> DltResource:
    """Commits CDC state (confirmed LSN, snapshotted tables) in the same load package as the data."""

    def position() -> Iterator[Any]:
        update(dlt.current.source_state().setdefault(STATE_KEY, {}))
        yield from ()

    return dlt.resource(position, name="_cdc_state")
