"""Extraction through `COPY ... TO STDOUT` parsed into Arrow with a schema taken from the catalog.

Why not dlt's built-in backends: `sqlalchemy` builds Python objects per value (about 2.7k rows/s
here), `pyarrow` still goes through row tuples, and ConnectorX drops time zones and double-wraps JSON.
COPY streams at the server's speed; Arrow's C++ CSV reader parses it on other threads with the exact
types we chose in `type_mapping`. We plug in through dlt's documented seam (`BaseTableLoader`) so that
dlt still owns incremental cursors, state, schema evolution and merging.

Memory stays flat: COPY writes into an OS pipe (64 KiB of back-pressure) and Arrow emits one record
batch per `block_size` bytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, BinaryIO

import dlt
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from dlt.common import logger
from dlt.common.libs.pyarrow import add_constant_column
from dlt.sources.sql_database.helpers import BaseTableLoader

from . import dead_letters
from .chunking import Chunk, ChunkRead, SnapshotSettings, Throttle, log_chunk, paced, wait_until_calm
from .conversion import RejectedRow, convert_batch, csv_parse_type
from .late_commits import effective_start, oldest_open_transaction
from .type_mapping import ColumnPlan, plan_column

GUARD_STATE_KEY = "late_commit_guard"
SHAPE_STATE_KEY = "shape"
LOAD_ID_COLUMN = "_dlt_load_id"


class CopyTableLoader(BaseTableLoader):
    """dlt table loader: PostgreSQL COPY (CSV) → Arrow record batches."""

    def load_rows(self, backend_kwargs: dict[str, Any] | None = None) -> Iterator[pa.Table]:
        options = dict(backend_kwargs or {})
        # the columns as of this read, committed with its package: the next run compares (see `shapes`); a chunk
        # of a table writes into its table's state, not a state of its own
        resource = str(options.get("resource_name", self.table.name))
        dlt.current.resource_state(resource)[SHAPE_STATE_KEY] = options.get("shape") or []
        if self.incremental is not None:
            self._apply_late_commit_guard(options)
        chunk: Chunk | None = options.get("chunk")
        if chunk is not None:
            yield from self._load_chunk(options, chunk)
            return
        yield from self._tables(options)

    def _tables(self, options: dict[str, Any]) -> Iterator[pa.Table]:
        overrides: dict[str, str] = dict(options.get("column_types") or {})
        plans = [plan_column(c, overrides.get(c.name)) for c in self.table.columns]
        query = self._make_query().with_only_columns(
            *(sa.literal_column(p.select_sql).label(p.name) for p in plans), maintain_column_froms=True
        ).select_from(self.table)
        if options.get("chunk") is not None:
            query = query.where(options["chunk"].clause())
        sql = self.compile_query(query)
        logger.info(f"COPY extract of {self.table.fullname}: {sql}")
        for table, rejected in self._copy_to_arrow(sql, plans, int(options.get("block_size", 4 << 20))):
            if rejected:
                path = dead_letters.write(
                    str(options.get("dead_letter_url") or dead_letters.DEFAULT_URL),
                    dlt.current.pipeline().pipeline_name,
                    str(options.get("resource_name", self.table.name)),
                    list(options.get("primary_key", [])),
                    rejected,
                )
                logger.error(f"{self.table.fullname}: {len(rejected)} row(s) could not be converted; "
                             f"dead-lettered to {path}")
            if table.num_rows:
                yield table

    def _load_chunk(self, options: dict[str, Any], chunk: Chunk) -> Iterator[pa.Table]:
        """One chunk of a large table (`chunking`): waits for a calm source, then reads at the configured pace."""
        settings: SnapshotSettings = options["pacing"]
        raw = self.engine.raw_connection()
        try:
            paused = wait_until_calm(raw, settings, self.table.fullname)
        finally:
            raw.close()
        read = ChunkRead(chunk, paused_seconds=paused)
        throttle = Throttle(settings.max_rows_per_second, settings.max_bytes_per_second)
        # Chunks are appended, and an append is not idempotent: a task killed during a load, whose successor
        # reads the chunk again, would leave its rows twice. Tagged with their load id, those rows are found and
        # deleted (`pipelines.chunk_ledger`). dlt's own switch (`add_dlt_load_id`) would tag every table of
        # every pipeline, CDC's included; this tags chunk rows only.
        load_id = dlt.current.load_package_state()["load_id"]
        for table in paced(self._tables(options), throttle, read):
            yield add_constant_column(table, LOAD_ID_COLUMN, pa.string(), load_id, nullable=True)
        log_chunk(read, str(options.get("resource_name", self.table.name)))

    def _apply_late_commit_guard(self, options: dict[str, Any]) -> None:
        """Lower this read's start to the previous run's oldest open transaction; record a new one.

        dlt's `lag` already re-reads a fixed window and disables boundary de-duplication (the merge
        de-duplicates). The guard widens that window only when a transaction was open, so we lower the
        bound incremental filters on (`start_value`) before the first row is yielded.
        """
        state = dlt.current.resource_state()
        guard_engine: sa.Engine = options.get("guard_engine") or self.engine
        new_guard = oldest_open_transaction(guard_engine)
        previous = state.get(GUARD_STATE_KEY)
        start = effective_start(
            self.last_value,
            pa.scalar(previous, pa.string()).cast(pa.timestamp("us", tz="UTC")).as_py() if previous else None,
            timedelta(seconds=float(options.get("lookback_seconds", 0))),
            str(options.get("cursor_timezone", "UTC")),
        )
        if start is not None and start != self.last_value:
            logger.warning(
                f"{self.table.fullname}: a transaction was open at the last sync; "
                f"re-reading from {start} instead of {self.last_value}"
            )
            self.last_value = start
            self.incremental.start_value = start
        state[GUARD_STATE_KEY] = new_guard.isoformat()

    def _copy_to_arrow(
        self, select_sql: str, plans: list[ColumnPlan], block_size: int
    ) -> Iterator[tuple[pa.Table, list[RejectedRow]]]:
        not_null = frozenset(c.name for c in self.table.columns if c.nullable is False)  # the key (see source)
        yield from copy_to_arrow(
            self.engine.raw_connection(), select_sql, plans, block_size, not_null, name=self.table.name
        )


def arrow_schema(plans: list[ColumnPlan], not_null: frozenset[str] = frozenset()) -> pa.Schema:
    """The Arrow schema our CSV parsing produces; NOT NULL is carried so it agrees with dlt's hints."""
    return pa.schema(
        pa.field(p.name, pa.binary() if p.decode_hex else p.arrow_type, nullable=p.name not in not_null)
        for p in plans
    )


def csv_to_arrow(
    source: BinaryIO, plans: list[ColumnPlan], block_size: int, not_null: frozenset[str] = frozenset()
) -> Iterator[tuple[pa.Table, list[RejectedRow]]]:
    """Parse PostgreSQL's CSV text into exact Arrow types, one table per `block_size` bytes.

    Shared by the COPY snapshot path and the logical-replication path (whose pgoutput text values are
    the same output functions COPY uses), so both land in identical destination types. Unquoted empty
    fields are NULL, quoted empty ones are empty strings.
    """
    reader = pa_csv.open_csv(
        source,
        read_options=pa_csv.ReadOptions(column_names=[p.name for p in plans], block_size=block_size),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={p.name: csv_parse_type(p) for p in plans},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty string, unquoted empty is NULL
            true_values=["t"],
            false_values=["f"],
        ),
    )
    for batch in reader:
        yield convert_batch(batch, plans, not_null)


def copy_to_arrow(
    raw: Any,
    select_sql: str,
    plans: list[ColumnPlan],
    block_size: int,
    not_null: frozenset[str] = frozenset(),
    *,
    name: str = "copy",
    close: bool = True,
) -> Iterator[tuple[pa.Table, list[RejectedRow]]]:
    """`COPY (select_sql) TO STDOUT` on the DB-API connection `raw`, parsed by `csv_to_arrow`.

    `close=False` leaves the connection (and its transaction, e.g. one that imported a snapshot) open
    for the next table.
    """
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as sink:
                raw.cursor().copy_expert(f"COPY ({select_sql}) TO STDOUT WITH (FORMAT csv)", sink, 1 << 20)
        except BaseException as exc:  # re-raised in the consumer thread
            failure.append(exc)

    producer = threading.Thread(target=produce, name=f"copy-{name}", daemon=True)
    producer.start()
    source = os.fdopen(read_fd, "rb")
    try:
        yield from csv_to_arrow(source, plans, block_size, not_null)
    except pa.ArrowInvalid as exc:
        producer.join()  # the producer records its error only after it closed the pipe
        if failure:  # the server's error (permission, timeout, ...) is the story; the parser just saw no input
            raise failure[0] from None
        if "Empty CSV file" in str(exc):
            return  # no rows matched
        raise
    finally:
        # cleanup must not replace the error being raised (or raise while a generator is collected): on a
        # connection the server already dropped, cancel() and close() fail too
        if producer.is_alive():
            with contextlib.suppress(Exception):
                raw.cancel()  # consumer stopped early or failed: stop the server-side COPY too
        source.close()
        producer.join()
        if close:
            with contextlib.suppress(Exception):
                raw.close()
    if failure:
        raise failure[0]
