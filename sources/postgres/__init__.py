"""PostgreSQL (Aurora) tables as a dlt source: snapshots and `updated_at` incremental merges.

Built on dlt's `sql_table`, so dlt owns reflection, incremental state, schema evolution and merge;
extraction goes through our COPY→Arrow loader (`copy_loader`) for speed and exact types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import dlt
import sqlalchemy as sa
from dlt.common import logger
from dlt.common.configuration.specs import ConnectionStringCredentials
from dlt.extract import DltResource
from dlt.sources.sql_database import sql_table

from .catalog import TableSpec, discover_tables, matches
from .chunking import Chunk, SnapshotSettings, snapshot_settings
from .copy_loader import CopyTableLoader
from .errors import SourceConfigError, describe_url, explain_connection_error
from .pg_types import domain_column_types
from .session import make_engine
from .shapes import Shape, read_shapes
from .type_mapping import adapt_sqlalchemy_type, override_type

SyncMode = Literal["incremental", "snapshot"]
# the dlt source (and schema, and state namespace) every table of a pipeline lives in, CDC included
SOURCE_NAME = "postgres_replica"


def _validate(name: str, value: Any, kind: type, minimum: float | None = None) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SourceConfigError(f"`sources.postgres.{name}` must be a {kind.__name__}, got {value!r}.")
    if minimum is not None and value < minimum:
        raise SourceConfigError(f"`sources.postgres.{name}` must be >= {minimum}, got {value!r}.")


def _state_update(name: str, update: Callable[[dict[str, Any]], None]) -> DltResource:
    """A resource with no rows that updates this source's state: committed with its package, like data."""

    def state() -> Iterator[Any]:
        update(dlt.current.source_state())
        yield from ()

    return dlt.resource(state, name=name)


@dlt.source(name=SOURCE_NAME, max_table_nesting=0)
def source_state(update: Callable[[dict[str, Any]], None]) -> Iterable[DltResource]:
    """A package with no rows, only this source's state: commits bookkeeping the way data is committed."""
    yield _state_update("_source_state", update)


@dlt.source(name=SOURCE_NAME, max_table_nesting=0)
def postgres_replica(
    credentials: ConnectionStringCredentials = dlt.secrets.value,
    reader_credentials: ConnectionStringCredentials | None = dlt.secrets.value,
    schemas: list[str] = dlt.config.value,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    tables: dict[str, Any] | None = None,
    cursor_column: str = "updated_at",
    lookback_seconds: float = 60.0,
    cursor_timezone: str = "UTC",
    statement_timeout_ms: int = 6 * 3600 * 1000,
    block_size_bytes: int = 4 << 20,
    mode: SyncMode = "incremental",
    only_tables: list[str] | None = None,
    only_keys: dict[str, list[dict[str, Any]]] | None = None,
    dead_letter_url: str | None = None,
    reread_tables: list[str] | None = None,
    chunks: dict[str, list[Chunk]] | None = None,
    chunk_disposition: str = "append",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Iterable[DltResource]:
    """Every table of `schemas` that matches `include` and not `exclude`.

    Args:
        credentials: writer DSN; used for discovery and for the late-commit guard.
        reader_credentials: optional reader DSN (Aurora reader endpoint) for the bulk reads.
        tables: per-table overrides keyed by `schema.table`: `primary_key`, `cursor_column`, and
            `columns.<name>.data_type` (a typed destination column instead of the lossless default).
        lookback_seconds: re-read window behind the cursor (clock skew, replica lag).
        mode: `incremental` merges rows newer than the cursor; `snapshot` re-reads and replaces.
        only_tables: restrict this run to these `schema.table` patterns (runner `--tables`).
        only_keys: re-read just these rows, `{"schema.table": [{pk: value}, ...]}` (dead-letter replay).
        dead_letter_url: where rows that cannot be converted go (`s3://bucket/dead_letter`; default a
            local `dead_letter/` folder).
        reread_tables: destination tables to read in full this run, whatever their cursor (a schema change the
            cursor cannot see filled their existing rows; see `shapes`).
        chunks: read only these chunks of these tables (destination table → chunks), each a resource of its own
            loaded with `chunk_disposition`, in parallel; `progress` updates the source state in the same package
            (`pipelines.chunked`).
    """
    if isinstance(schemas, str):
        schemas = [s.strip() for s in schemas.split(",") if s.strip()]
    _validate("schemas", schemas, list)
    if not schemas:
        raise SourceConfigError("`sources.postgres.schemas` is empty: name at least one schema to replicate.")
    _validate("lookback_seconds", float(lookback_seconds) if isinstance(lookback_seconds, int) else lookback_seconds,
              float, 0)
    _validate("statement_timeout_ms", statement_timeout_ms, int, 0)
    _validate("block_size_bytes", block_size_bytes, int, 1 << 16)
    if mode not in ("incremental", "snapshot"):
        raise SourceConfigError(f"`mode` must be 'incremental' or 'snapshot', got {mode!r}.")
    overrides = {str(k): dict(v) for k, v in (tables or {}).items()}
    pacing = snapshot_settings() if chunks is not None else None  # type: ignore[call-arg]
    chunk_count = sum(len(parts) for parts in (chunks or {}).values())
    if pacing is not None and chunk_count > pacing.workers:
        # each chunk's COPY keeps its pooled connection until dlt resumes its generator: more chunks than the pool's
        # `workers` connections leave dlt's extract threads waiting on the pool until it times out (a repair once
        # hung 300 s this way). Callers put at most `workers` chunks in one source (`pipelines.chunked`, `repair`).
        raise ValueError(f"{chunk_count} chunks in one source, but the source's pools "
                         f"serve {pacing.workers} readers (`sources.postgres.snapshot.workers`): pass at most that "
                         "many chunks per source.")

    writer = make_engine(credentials, statement_timeout_ms)
    reader = make_engine(reader_credentials, statement_timeout_ms) if reader_credentials else writer
    try:
        specs = discover_tables(writer, schemas, include or ["*"], exclude or [], cursor_column, overrides)
    except sa.exc.OperationalError as exc:
        raise (explain_connection_error(exc, describe_url(writer)) or exc) from None
    if only_tables:
        specs = [s for s in specs if matches(s.qualified, only_tables)]
        if not specs:
            raise SourceConfigError(f"--tables {' '.join(only_tables)} matched no replicated table.")
    if only_keys is not None:
        specs = [s for s in specs if only_keys.get(s.qualified)]
    raw = writer.raw_connection()
    try:
        shapes = read_shapes(raw, specs)
        domains = domain_column_types(raw, schemas)
    finally:
        raw.close()

    if chunks is not None:
        for spec in [s for s in specs if s.resource_name in chunks]:
            parts = chunks[spec.resource_name]
            for chunk in parts:
                resource = _table_resource(
                    spec, reader, writer, "snapshot", lookback_seconds, cursor_timezone, block_size_bytes,
                    dead_letter_url, shape=shapes.get(spec.qualified, []),
                    domains=domains.get((spec.schema, spec.name), {}), chunk=chunk, pacing=pacing,
                    disposition=chunk_disposition)
                yield resource.parallelize() if len(parts) > 1 else resource
        if progress is not None:
            yield _state_update("_snapshot_progress", progress)
        return

    for spec in specs:
        resource = _table_resource(
            spec, reader, writer, mode, lookback_seconds, cursor_timezone, block_size_bytes, dead_letter_url,
            keys=(only_keys or {}).get(spec.qualified), shape=shapes.get(spec.qualified, []),
            reread=spec.resource_name in (reread_tables or ()), domains=domains.get((spec.schema, spec.name), {}),
        )
        yield resource


# dlt de-duplicates the staging rows of every merge (a load retried after a crash can stage a file twice); its
# window is ordered by the `dedup_sort` column set in `_table_resource`, not by a constant, because DuckDB loses
# the sign of -0.0 in a window ordered by a constant
MERGE = {"disposition": "merge", "strategy": "delete-insert"}


def _table_resource(
    spec: TableSpec,
    reader: sa.Engine,
    writer: sa.Engine,
    mode: SyncMode,
    lookback_seconds: float,
    cursor_timezone: str,
    block_size_bytes: int,
    dead_letter_url: str | None,
    keys: list[dict[str, Any]] | None = None,
    shape: Shape | None = None,
    reread: bool = False,
    domains: dict[str, Any] | None = None,
    chunk: Chunk | None = None,
    pacing: SnapshotSettings | None = None,
    disposition: str = "replace",
) -> DltResource:
    incremental = None
    write_disposition: Any = "replace"
    query_adapter = None
    if chunk is not None:
        write_disposition = disposition  # replace for the first chunks of a snapshot, append for the rest
    elif keys and spec.has_key:
        # a handful of known rows (dead-letter replay): merge them, leave the cursor alone
        write_disposition = MERGE
        query_adapter = _keys_filter(spec, keys)
    elif mode == "incremental" and spec.has_key and reread:
        # a schema change filled the existing rows (no WAL, no cursor move): read them all once, and merge
        write_disposition = MERGE
    elif mode == "incremental" and spec.cursor_column and spec.has_key:
        # dlt's `lag` is our lookback window; it must be > 0 so dlt keeps the cursor forward-only
        # and leaves de-duplication to the merge (see copy_loader's late-commit guard)
        incremental = dlt.sources.incremental(spec.cursor_column, lag=max(lookback_seconds, 1.0))
        write_disposition = MERGE
    elif mode == "incremental" and not spec.has_key:
        logger.warning(f"{spec.qualified} has no primary key or NOT NULL unique index: it is re-copied in full "
                       "on every run (add a key to merge only its changes)")
    elif mode == "incremental":
        logger.warning(f"{spec.qualified} has no cursor column: it is re-read in full on every run")

    resource = sql_table(
        credentials=reader,
        table=spec.name,
        schema=spec.schema,
        backend="pyarrow",
        table_loader_class=CopyTableLoader,
        reflection_level="full",
        type_adapter_callback=adapt_sqlalchemy_type,
        table_adapter_callback=_destination_shape(spec, domains or {}),
        incremental=incremental,
        query_adapter_callback=query_adapter,
        backend_kwargs={
            "resource_name": spec.resource_name,
            "primary_key": list(spec.primary_key),
            "column_types": spec.overrides,
            "dead_letter_url": dead_letter_url,
            "guard_engine": writer,
            "lookback_seconds": lookback_seconds,
            "cursor_timezone": cursor_timezone,
            "block_size": block_size_bytes,
            "shape": shape or [],
            "chunk": chunk,
            "pacing": pacing,
        },
        write_disposition=write_disposition,
        primary_key=list(spec.primary_key) or None,
    )
    if chunk is not None:
        resource.apply_hints(table_name=spec.resource_name)
        return resource.with_name(f"{spec.resource_name}__chunk{chunk.index}")
    if write_disposition is MERGE:
        # the staging de-duplication keeps the newest version of a key, ordered by a real column (see MERGE); a
        # table CDC loaded before sorts by `_lsn`, which is cleared here (dlt allows one sort column per table)
        sort_column = spec.cursor_column or spec.primary_key[0]
        resource.apply_hints(columns={sort_column: {"name": sort_column, "dedup_sort": "desc"},
                                      "_lsn": {"name": "_lsn", "dedup_sort": None}})
    return resource.with_name(spec.resource_name)


def _destination_shape(spec: TableSpec, domains: dict[str, Any]) -> Any:
    """dlt `table_adapter_callback`: what the destination table looks like, decided on the reflected table.

    Only key columns are NOT NULL in the destination. dlt would copy every source NOT NULL, and then a routine
    `ADD COLUMN c ... NOT NULL DEFAULT ...` makes dlt add a NOT NULL column to a table that has rows: the load
    fails, and its package is retried before anything else forever. Configured `data_type` overrides replace
    the reflected type, so dlt's hint and our COPY parsing agree; so do domains' base types (`domains`).
    """
    key = set(spec.primary_key)
    overrides = spec.overrides

    def adapt(table: sa.Table) -> None:
        for column in table.columns:
            column.nullable = column.name not in key
            if column.name in domains:
                column.type = domains[column.name]
            if column.name in overrides:
                column.type = override_type(overrides[column.name], f"{spec.qualified}.{column.name}")

    return adapt


def _keys_filter(spec: TableSpec, keys: list[dict[str, Any]]) -> Any:
    def adapt(query: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
        columns = [table.c[name] for name in spec.primary_key]
        wanted = [tuple(key[name] for name in spec.primary_key) for key in keys]
        return query.where(sa.tuple_(*columns).in_(wanted))

    return adapt
