"""One pipeline's CDC context: settings, names, the source session, the sink, and what the run did so far."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dlt

from pipelines.apply import Applied
from pipelines.isolation import FAILED_TABLES_KEY
from pipelines.ops import Op
from sources.postgres import dead_letters
from sources.postgres.catalog import TableSpec, discover_tables
from sources.postgres.session import make_engine
from sources.postgres.shapes import read_shapes
from sources.replication import ReplicationSettings, replication_settings
from sources.replication.batch import LiveTable, RowChange
from sources.replication.columns import TypeResolver
from sources.replication.ddl import ddl_capture_status
from sources.replication.pgoutput import Value
from sources.replication.slot import connect, object_name, query

from .generated import generated_values
from .sinks import Sink, StateUpdate, Unresolved, make_sink
from .summary import CdcSummary, event


class Cdc:
    """Settings, names and sessions of one CDC pipeline, and its sink (`sinks`): where writes and state go."""

    def __init__(self, pipeline: dlt.Pipeline, settings: ReplicationSettings | None = None,
                 dead_letter_url: str | None = None) -> None:
        self.settings = settings or replication_settings()  # type: ignore[call-arg]
        if dead_letter_url:
            self.settings.dead_letter_url = dead_letter_url
        self.direct = pipeline
        self.sink: Sink = make_sink(pipeline, self.settings)
        self.pipeline = self.sink.pipeline  # where the CDC state lives
        self.slot = self.settings.slot_name or object_name(pipeline.pipeline_name)
        self.publication = self.settings.publication_name or object_name(pipeline.pipeline_name)
        self.dsn = self.settings.dsn
        self.meta = connect(self.dsn, statement_timeout_ms=60_000)
        self.summary = CdcSummary(lands=self.sink.lands)
        self.shapes: dict[str, Any] = {}  # tables whose recorded shape changed harmlessly: saved with the next state
        self._resolver: TypeResolver | None = None
        self._ddl_capture: bool | None = None
        self.on_progress: Callable[[CdcSummary], None] = lambda summary: None

    @property
    def lands(self) -> bool:
        return self.sink.lands

    def close(self) -> None:
        self.meta.close()

    def state(self) -> dict[str, Any]:
        return self.sink.state()

    # -- source ------------------------------------------------------------------------------------
    def discover(self) -> list[TableSpec]:
        engine = make_engine(self.dsn, 60_000)
        try:
            return discover_tables(engine, self.settings.schemas, self.settings.include, self.settings.exclude,
                                   "updated_at", {str(k): dict(v) for k, v in self.settings.tables.items()})
        finally:
            engine.dispose()

    def query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return query(self.meta, statement, params)

    def resolver(self) -> TypeResolver:
        return TypeResolver(self.query)

    @property
    def resolver_cache(self) -> TypeResolver:
        if self._resolver is None:
            self._resolver = self.resolver()
        return self._resolver

    def shape(self, spec: TableSpec) -> Any:
        return read_shapes(self.meta, [spec]).get(spec.qualified, [])

    @property
    def ddl_capture(self) -> bool:
        """The source's event triggers announce every DDL in the stream (`sources.replication.ddl`): a table's storage
        changing (VACUUM FULL, CLUSTER, TRUNCATE) then means nothing by itself; without them it means a copy."""
        if self._ddl_capture is None:
            self._ddl_capture = ddl_capture_status(self.meta).active
        return self._ddl_capture

    def generated_values(self, table: LiveTable, rows: list[RowChange],
                         values_rows: list[list[Value]]) -> list[list[Value]]:
        return generated_values(self.meta, self.query, self.resolver_cache, table, rows, values_rows)

    # -- destination ---------------------------------------------------------------------------------
    def write(self, ops: list[Op], update: StateUpdate | None = None, *, refresh: str | None = None,
              on_unresolved: Unresolved | None = None) -> Applied:
        """One package of table writes and the CDC state they bring about, through the sink."""
        applied = self.sink.write(ops, update, refresh=refresh, on_unresolved=on_unresolved)
        self.summary.replayed_rows += sum(applied.replayed.values())
        self.summary.unresolved_toast_rows += sum(t.num_rows for t in applied.unresolved.values())
        for table, count in applied.unmatched_deletes.items():
            self.summary.warnings.append(f"{table}: {count} delete(s) found no copy")
        return applied

    def save_state(self, update: StateUpdate) -> None:
        """A load with no rows, only CDC state: used to record a position before confirming it."""
        self.sink.save_state(update)

    def set_aside(self, spec: TableSpec, step: str, error: str) -> None:
        """Stop replicating one table whose load or copy fails, so that the others go on. Its changes are not
        applied any more; the next run (or follow mode's table check) copies it again from a fresh snapshot,
        which makes it exact again once the cause is fixed."""
        since = datetime.now(UTC).isoformat()

        def update(state: dict[str, Any]) -> None:
            state.get("tables", {}).pop(spec.qualified, None)
            failed = state.setdefault(FAILED_TABLES_KEY, {})
            failed[spec.resource_name] = {"table": spec.resource_name, "step": step, "error": error,
                                          "since": failed.get(spec.resource_name, {}).get("since", since)}

        self.save_state(update)
        self.summary.failed_tables[spec.resource_name] = {"table": spec.resource_name, "step": step, "error": error}
        event(f"{spec.resource_name} set aside ({step} failed: {error}); the other tables go on", logging.ERROR,
              table=spec.resource_name)

    def dead_letter(self, resource: str, primary_key: list[str], rejected: list[Any]) -> None:
        if rejected:
            path = dead_letters.write(self.settings.dead_letter_url, self.pipeline.pipeline_name, resource,
                                      primary_key, rejected)
            self.summary.dead_lettered += len(rejected)
            event("rows dead-lettered", logging.ERROR, table=resource, rows=len(rejected), path=path)
