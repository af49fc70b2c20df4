"""Landing: CDC writes each batch to S3 and confirms the WAL as soon as it is there; `merge` applies it later.

With `merge_interval_seconds > 0` ([sources.postgres.replication]), the CDC pipeline's destination is not the
warehouse but the landing area of the archive bucket, `<bucket>/<dataset>_landing/`, written by dlt's
filesystem destination (`archive_filesystem`: `<schema>/<table>/<load_id>.<file_id>.parquet`). Its dlt state (the
confirmed LSN, the tables copied, chunked copies in progress) is stored there with every load, so the slot
advances whenever S3 is up, whatever the warehouse is doing: a warehouse outage costs freshness, never WAL on the
writer. `pipelines.merge` applies what landed, in order, to the warehouse on its own cadence.

Every landing load appends; nothing is replaced or deleted in the landing area (dlt's `replace` and
`drop_resources` would delete landed files the merge has not read yet). What a load means for each of its
tables is one row of `_aurora_ops`: `changes` (rows to merge by key), `snapshot` (the table's whole content
follows from here, `reload` when its destination table is dropped first), `chunk` (rows of a chunked copy, read
between two watermarks: they merge like changes at that position), `truncate` and `columns` (a new column). Each
row carries `seq`, the landing's own sequence number kept in the CDC state (committed with the load, so it is
exactly once), the table's primary key and column hints, and the time it landed.

The warehouse is not current when a batch lands, so what needed it moves to the merge: unchanged TOAST values
(`_aurora_unchanged`: the columns to take from the row's previous version, found under `_aurora_lookup_k<i>`)
and keyless tables' deletes (landed as ordered changes, `sources.replication.batch.CHANGE_COLUMN`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.configuration import resolve_configuration
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.configuration.specs import BaseConfiguration, configspec
from dlt.extract import DltResource

from pipelines.destinations import archive_filesystem
from sources.postgres.errors import SourceConfigError
from sources.replication import SOURCE_NAME, STATE_KEY, state_resource
from sources.replication.batch import PreparedTable
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN

log = logging.getLogger("aurora_sync.cdc")

LANDING_SUFFIX = "_landing"
# The landing area is `<bucket>/<dataset>/_landing/`: inside the pipeline's own prefix, so its task role's S3
# grant and the archive's lifecycle rule cover it, and `restore --all` skips it (a leading underscore).
LANDING_DIR = "_landing"
OPS_TABLE = "_aurora_ops"
UNCHANGED_COLUMN = "_aurora_unchanged"  # JSON list of the columns whose value is the previous version's
LOOKUP_PREFIX = "_aurora_lookup_k"  # + key position: the key of that previous version (the old key if it changed)
SEQ_KEY = "landing_seq"  # in the CDC state: the last landing's sequence number (see `next_seq`)
KINDS = ("changes", "snapshot", "chunk", "truncate", "columns")
# hints that only mean something to a merge: the landing area appends, and keeps them in `_aurora_ops` instead
_MERGE_ONLY_HINTS = ("primary_key", "merge_key", "hard_delete", "dedup_sort", "unique")


@dataclass
class Op:
    """What one landing load does to one table (a row of `_aurora_ops`), with its rows."""

    kind: str
    table: str  # resource name, `<schema>__<table>`
    primary_key: list[str]
    hints: dict[str, Any]
    rows: Iterable[pa.Table] | Callable[[], Iterator[pa.Table]] = field(default_factory=list)
    lsn: int = 0
    commit_time: datetime | None = None
    reload: bool = False
    delete_mode: str = "hard"

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


@configspec
class LandingConfiguration(BaseConfiguration):
    bucket_url: str | None = None


def landing_bucket_url() -> str:
    """The archive bucket (`[destination.filesystem] bucket_url`), which the landing area shares."""
    try:
        config = resolve_configuration(LandingConfiguration(), sections=("destination", "filesystem"))
    except ConfigFieldMissingException:
        config = LandingConfiguration()
    if not config.bucket_url:
        raise SourceConfigError(
            "`sources.postgres.replication.merge_interval_seconds` > 0 lands changes in the archive bucket, but "
            "none is configured: set `[destination.filesystem] bucket_url` (DESTINATION__FILESYSTEM__BUCKET_URL, "
            "e.g. s3://<bucket>, the Terraform output), or set merge_interval_seconds = 0 to load directly.")
    return str(config.bucket_url)


def landing_dataset(pipeline: dlt.Pipeline) -> str:
    """The landing area's folder in the bucket."""
    return f"{pipeline.dataset_name or pipeline.pipeline_name}/{LANDING_DIR}"


def landing_pipeline(pipeline: dlt.Pipeline) -> dlt.Pipeline:
    """The pipeline CDC lands with: `<name>_landing`, its state in the landing area.

    A pipeline that used to load directly carries its CDC state (slot, confirmed LSN, tables) over on the first
    landing, so switching needs no new snapshot. (Switching back needs one: the slot is then ahead of the
    direct pipeline's state, which `run` detects.)
    """
    landing = dlt.pipeline(pipeline_name=pipeline.pipeline_name + LANDING_SUFFIX, pipelines_dir=pipeline.pipelines_dir,
                           destination=archive_filesystem(bucket_url=landing_bucket_url().rstrip("/") + "/" + (
                               pipeline.dataset_name or pipeline.pipeline_name)),
                           dataset_name=LANDING_DIR)
    return landing


def carry_over_state(pipeline: dlt.Pipeline, landing: dlt.Pipeline) -> dict[str, Any] | None:
    """The direct pipeline's CDC state when the landing pipeline has none yet (see `landing_pipeline`)."""
    landed = landing.state.get("sources", {}).get(SOURCE_NAME, {}).get(STATE_KEY)
    direct = pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(STATE_KEY)
    if landed or not direct:
        return None
    return dict(direct)


def landing_hints(hints: dict[str, Any]) -> dict[str, Any]:
    """A table's column hints as the landing area needs them: types, without what only a merge means."""
    out: dict[str, Any] = {}
    for name, hint in hints.items():
        if name == ROW_KEY_COLUMN:
            continue  # a keyless table's copies get their keys in the merge
        out[name] = {k: v for k, v in hint.items() if k not in _MERGE_ONLY_HINTS}
    return out


def landed_rows(prepared: PreparedTable) -> pa.Table:
    """A prepared batch table as it lands: unchanged TOAST values stay NULL, named per row with the key to take
    them from, instead of being completed from a warehouse that is not current yet."""
    arrow = prepared.arrow
    if not prepared.fill_masks:
        return arrow
    assert prepared.fill_keys is not None
    names = list(prepared.fill_masks)
    masks = [prepared.fill_masks[n].to_pylist() for n in names]
    unchanged = [json.dumps([n for n, m in zip(names, row, strict=True) if m]) if any(row) else None
                 for row in zip(*masks, strict=True)]
    arrow = arrow.append_column(UNCHANGED_COLUMN, pa.array(unchanged, pa.string()))
    for i, key in enumerate(prepared.fill_keys.column_names):
        arrow = arrow.append_column(LOOKUP_PREFIX + str(i), prepared.fill_keys[key])
    return arrow


def next_seq(previous: int | None, load_id: str) -> int:
    """The next landing's sequence number: above the previous one, and never below the load's time in ms.

    The merge skips every op at or below a table's merged seq, and its positions outlive the CDC state (they are
    in the warehouse). After `teardown` + `setup` (the CDC state cleared) a counter from 1 would be skipped, and
    the new snapshot never merged; the load's clock keeps the numbers above everything landed before it.
    """
    return max(int(previous or 0) + 1, int(float(load_id) * 1000))


def _ops_rows(ops: list[Op], seq: int, load_id: str) -> pa.Table:
    now = datetime.now(UTC)
    return pa.table({
        "seq": pa.array([seq] * len(ops), pa.int64()),
        "position": pa.array(list(range(len(ops))), pa.int64()),
        "load_id": pa.array([load_id] * len(ops), pa.string()),
        "table_name": pa.array([o.table for o in ops], pa.string()),
        "kind": pa.array([o.kind for o in ops], pa.string()),
        "reload": pa.array([o.reload for o in ops], pa.bool_()),
        "lsn": pa.array([o.lsn for o in ops], pa.int64()),
        "commit_time": pa.array([o.commit_time for o in ops], pa.timestamp("us", tz="UTC")),
        "landed_at": pa.array([now] * len(ops), pa.timestamp("us", tz="UTC")),
        "primary_key": pa.array([json.dumps(o.primary_key) for o in ops], pa.string()),
        "hints": pa.array([json.dumps(o.hints, default=str) for o in ops], pa.string()),
        "delete_mode": pa.array([o.delete_mode for o in ops], pa.string()),
    })


@dlt.source(name=SOURCE_NAME, section="replication", max_table_nesting=0, root_key=False)
def land(ops: list[Op], update_state: Callable[[dict[str, Any]], None] | None = None) -> Iterable[DltResource]:
    """One landing load: every op's rows appended to its table, the ops in `_aurora_ops` under the next `seq`,
    and the CDC state, in one package. At most one op per table: the merge reads a table's rows by load."""
    assert len({o.table for o in ops}) == len(ops), "one op per table and load"
    for op in ops:
        rows = op.rows() if callable(op.rows) else op.rows
        yield dlt.resource(rows, name=op.table, table_name=op.table, write_disposition="append",
                           columns=landing_hints(op.hints))

    def ops_table() -> Iterator[pa.Table]:
        if not ops:
            return
        state = dlt.current.source_state().setdefault(STATE_KEY, {})
        load_id = str(dlt.current.load_package_state()["load_id"])
        state[SEQ_KEY] = seq = next_seq(state.get(SEQ_KEY), load_id)
        yield _ops_rows(ops, seq, load_id)

    yield dlt.resource(ops_table, name=OPS_TABLE, write_disposition="append")
    yield state_resource(update_state or (lambda state: None))


def keyless_change_columns() -> tuple[str, ...]:
    """The columns a keyless table's landed changes carry besides its values (`batch.CHANGE_COLUMN` ...)."""
    from sources.replication.batch import CHANGE_COLUMN, CHANGE_KEY_COLUMN, COMMIT_TIME_COLUMN, LSN_COLUMN

    return (ROW_HASH_COLUMN, CHANGE_COLUMN, CHANGE_KEY_COLUMN, COMMIT_TIME_COLUMN, LSN_COLUMN)
