"""Landing: CDC writes each batch to S3 and confirms the WAL as soon as it is there; `merge` applies it later.

With `merge_interval_seconds > 0` ([sources.postgres.replication]), the CDC pipeline's destination is not the
warehouse but the landing area of the archive bucket, `<bucket>/_landing/<dataset>/`, written by dlt's
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
from datetime import UTC, datetime
from typing import Any

import dlt
import pyarrow as pa
from dlt.common.configuration import resolve_configuration
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.configuration.specs import BaseConfiguration, configspec
from dlt.extract import DltResource

from pipelines.destinations import archive_filesystem
from pipelines.ops import Op
from sources.postgres.errors import SourceConfigError
from sources.replication import SOURCE_NAME, STATE_KEY, state_resource
from sources.replication.multiset import ROW_KEY_COLUMN

log = logging.getLogger("aurora_sync.cdc")

LANDING_SUFFIX = "_landing"
# The landing area is `<bucket>/_landing/<dataset>/`: beside the pipelines' archive prefixes, not in them, so the
# archive's lifecycle rules (transition to cold storage, expiry) never touch a load that is not merged yet; what
# `merge` consumed it removes itself after `landing_retention_days` (`pipelines.landing_area`).
LANDING_DIR = "_landing"
OPS_TABLE = "_aurora_ops"
SEQ_KEY = "landing_seq"  # in the CDC state: the last landing's sequence number (see `next_seq`)
LAST_KEY = "landing_last"  # in the CDC state: the last landing load (its index entry, written after it completed)
# hints that only mean something to a merge: the landing area appends, and keeps them in `_aurora_ops` instead
_MERGE_ONLY_HINTS = ("primary_key", "merge_key", "hard_delete", "dedup_sort", "unique")


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
    return f"{LANDING_DIR}/{pipeline.dataset_name or pipeline.pipeline_name}"


def landing_pipeline(pipeline: dlt.Pipeline) -> dlt.Pipeline:
    """The pipeline CDC lands with: `<name>_landing`, its state in the landing area.

    A pipeline that used to load directly carries its CDC state (slot, confirmed LSN, tables) over on the first
    landing, so switching needs no new snapshot. (Switching back needs one: the slot is then ahead of the
    direct pipeline's state, which `run` detects.)
    """
    landing = dlt.pipeline(pipeline_name=pipeline.pipeline_name + LANDING_SUFFIX, pipelines_dir=pipeline.pipelines_dir,
                           destination=archive_filesystem(bucket_url=landing_bucket_url().rstrip("/") + "/" +
                                                          LANDING_DIR),
                           dataset_name=pipeline.dataset_name or pipeline.pipeline_name)
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


def next_seq(previous: int | None) -> int:
    """The next landing's sequence number: the previous one plus one, with no gaps and no clock. It lives in the CDC
    state, which `teardown` keeps it in, so a new `setup` never lands below what `merge` already applied."""
    return int(previous or 0) + 1


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
        "ordinal": pa.array([o.ordinal for o in ops], pa.int64()),
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
        previous = int(state.get(SEQ_KEY) or 0)
        state[SEQ_KEY] = seq = next_seq(previous)
        state[LAST_KEY] = {"seq": seq, "prev": previous, "load_id": load_id, "tables": sorted(o.table for o in ops),
                           "landed_at": datetime.now(UTC).isoformat()}
        yield _ops_rows(ops, seq, load_id)

    yield dlt.resource(ops_table, name=OPS_TABLE, write_disposition="append")
    yield state_resource(update_state or (lambda state: None))
