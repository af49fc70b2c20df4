"""`verify --repair`: make the drifting tables exact again, reading as little of the source as it can.

- **Integer-keyed tables** (one key column, the `integer` chunking of `replica.verify`): each drifting range is read
  again from the source through the chunked snapshot's reader (`postgres_replica(chunks=...)`, one short read-only
  transaction per range) and merged by key; then the destination's keys in that range that the source no longer has
  (an extra row, a delete the cursor cannot see) are deleted. Only those ranges are read.
- **Every other table** (no key, a composite or non-integer key, drift not narrowed to ranges, a missing column):
  the whole table is copied again (`run --mode snapshot --tables`, what `resync` does), and the report says why.
- **CDC pipelines** are not written here: their rows carry stream positions that only the follower's watermarked
  reads may write. The drifting ranges' keys (the source's and the destination's) are asked of the follower through
  the landing area (`pipelines.cdc.rereads`); it reads them under its watermarks, and a key the source no longer
  has ends deleted. Integer-keyed tables only; for the others the report names the command that copies the table
  again under the stream's watermarks. Needs the archive bucket (always there in production).

For the other pipelines the caller holds the run lock, so no scheduled run interleaves; rows the application
changes during the repair are the next run's, as always. The caller verifies the repaired tables again (for a CDC
pipeline once the follower has read them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import dlt

from pipelines.landing import landing_pipeline
from pipelines.landing_area import LandingArea, rereads_area
from replica.verify import TableReport, VerifyReport
from sources.postgres import MERGE, postgres_replica
from sources.postgres.chunking import Chunk
from sources.postgres.limits import snapshot_workers
from sources.postgres.session import make_engine
from sources.postgres.settings import load_source_settings
from sources.replication import SOURCE_NAME as CDC_SOURCE
from sources.replication import STATE_KEY as CDC_STATE
from sources.replication import replication_settings


@dataclass
class TableRepair:
    table: str
    action: Literal["ranges", "table", "requested", "skipped"]
    reason: str = ""
    ranges: list[list[Any]] = field(default_factory=list)  # [lo, hi] of each range read again
    rows_read: int = 0
    rows_deleted: int = 0
    keys_requested: int = 0  # CDC: keys asked of the follower
    request: str = ""  # CDC: the request's name in the landing area, deleted once the follower has read it

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "action": self.action, "reason": self.reason, "ranges": self.ranges,
                "rows_read": self.rows_read, "rows_deleted": self.rows_deleted,
                **({"keys_requested": self.keys_requested} if self.action == "requested" else {})}


def follows_the_wal(pipeline: dlt.Pipeline) -> bool:
    """The pipeline is loaded by CDC: a slot in its CDC state, as the warehouse holds it (direct) or the landing area
    (when batches land: `merge_interval_seconds` > 0)."""
    def has_slot(p: dlt.Pipeline) -> bool:
        p.sync_destination()
        return bool(p.state.get("sources", {}).get(CDC_SOURCE, {}).get(CDC_STATE, {}).get("slot"))

    return has_slot(pipeline) or (replication_settings().lands and has_slot(landing_pipeline(pipeline)))


def _why_whole(t: TableReport, key: list[str], max_ranges: int) -> str | None:
    if not key:
        return "no primary key: a keyless table is copied again whole"
    if len(key) > 1 or t.strategy != "integer":
        return "its key is not one integer column: ranges are repaired on integer keys only"
    if t.missing_columns or t.problems:
        return "; ".join([*t.problems, *(["columns missing in the destination"] if t.missing_columns else [])])
    if not t.ranges or len(t.ranges) >= max_ranges:
        return f"its drift was not narrowed to key ranges (more than --max-ranges {max_ranges})"
    return None


def repair(pipeline: dlt.Pipeline, module: Any, report: VerifyReport, *, max_ranges: int,
           dead_letter_url: str | None = None) -> list[TableRepair]:
    """Repair every drifting table of `report` (see the module docstring); `module`: the pipeline's module."""
    drifting = [t for t in report.tables if t.status == "drift"]
    if not drifting:
        return []
    cdc = follows_the_wal(pipeline)
    area = rereads_area(pipeline) if cdc else None
    if cdc and area is None:
        return [_recopy(pipeline, t.table, "no archive bucket is configured to ask the follower through")
                for t in drifting]
    settings = load_source_settings(pipeline.pipeline_name)
    engine = make_engine(settings.credentials, 300_000)
    try:
        specs = {s.qualified: s for s in settings.discover(engine)}
        done: list[TableRepair] = []
        for t in drifting:
            spec = specs[t.table]
            why = _why_whole(t, list(spec.primary_key), max_ranges)
            if area is not None:
                done.append(_recopy(pipeline, t.table, why) if why else _request(pipeline, area, engine, spec, t))
                continue
            if why is not None:
                result = module.run(mode="snapshot", tables=[t.table], dead_letter_url=dead_letter_url,
                                    pipeline=pipeline)
                result.raise_on_failures()
                done.append(TableRepair(t.table, "table", why, rows_read=sum(result.rows.values())))
                continue
            done.append(_repair_ranges(pipeline, engine, spec, t, dead_letter_url))
        return done
    finally:
        engine.dispose()


def _recopy(pipeline: dlt.Pipeline, table: str, why: str) -> TableRepair:
    return TableRepair(table, "skipped", f"a CDC pipeline ({why}): stop the follower, then `aurora-sync run "
                                         f"--pipeline {pipeline.pipeline_name} --mode cdc --tables {table}` copies it "
                                         "again under the stream's watermarks")


def _chunks(spec: Any, t: TableReport) -> list[Chunk]:
    """The drifting ranges as chunks of the table's one integer key."""
    return [Chunk(spec.qualified, index, "key", spec.primary_key[0], r.range.lo, r.range.hi)
            for index, r in enumerate(t.ranges)]


def _keys_in_ranges(pipeline: dlt.Pipeline, engine: Any, spec: Any, t: TableReport,
                    chunks: list[Chunk]) -> list[tuple[set[Any], list[Any]]]:
    """Per range: the keys the source holds (exactly as a re-read of the chunk selects them), and the destination's."""
    key = spec.primary_key[0]
    quoted = '"' + key.replace('"', '""') + '"'
    table = f'"{spec.schema}"."{spec.name}"'.replace("%", "%%")  # psycopg2 interpolates the text
    found = []
    with pipeline.sql_client() as client:
        target = client.make_qualified_table_name(t.destination_table)
        column = client.escape_column_name(pipeline.default_schema.naming.normalize_identifier(key))
        for chunk in chunks:
            where_src, params = chunk.predicate()
            with engine.connect() as conn:
                present = {row[0] for row in conn.exec_driver_sql(
                    f"SELECT {quoted} FROM {table} WHERE {where_src}", tuple(params))}
            where_dst, params = _between(column, chunk.lo, chunk.hi)
            held = [row[0] for row in client.execute_sql(f"SELECT {column} FROM {target} WHERE {where_dst}",
                                                         *params) or []]
            found.append((present, held))
    return found


def _request(pipeline: dlt.Pipeline, area: LandingArea, engine: Any, spec: Any, t: TableReport) -> TableRepair:
    """A CDC table's drifting ranges: their keys are asked of the follower (see the module docstring)."""
    chunks = _chunks(spec, t)
    ranges = _keys_in_ranges(pipeline, engine, spec, t, chunks)
    keys = sorted({k for present, held in ranges for k in (*present, *held)})
    name = area.request_reread(spec.resource_name, [[str(k)] for k in keys])
    return TableRepair(t.table, "requested", f"the follower reads {len(keys)} key(s) again under its watermarks",
                       [[c.lo, c.hi] for c in chunks], keys_requested=len(keys), request=name)


def _repair_ranges(pipeline: dlt.Pipeline, engine: Any, spec: Any, t: TableReport,
                   dead_letter_url: str | None) -> TableRepair:
    chunks = _chunks(spec, t)
    # At most `workers` ranges per package, as a chunked snapshot loads them (`pipelines.chunked`): each range is a
    # parallelized resource whose COPY keeps a pooled connection until dlt resumes it, and the pool holds `workers`
    # + 1. With every range in one package, dlt's extract threads all waited for a connection while the holders
    # waited for a thread: the repair hung for the pool's 300 s timeout (seen in make test).
    per_package = snapshot_workers()  # type: ignore[call-arg]
    read = 0
    for first in range(0, len(chunks), per_package):
        group = chunks[first:first + per_package]
        source = postgres_replica(only_tables=[spec.qualified], chunks={spec.resource_name: group},
                                  chunk_disposition=MERGE, dead_letter_url=dead_letter_url)  # type: ignore[arg-type]
        info = pipeline.run(source)
        info.raise_on_failed_jobs()
        read += sum(n for name, n in (pipeline.last_trace.last_normalize_info.row_counts.items()
                                      if pipeline.last_trace and pipeline.last_trace.last_normalize_info else [])
                    if name == spec.resource_name)
    gone = [k for present, held in _keys_in_ranges(pipeline, engine, spec, t, chunks) for k in held
            if k not in present]
    with pipeline.sql_client() as client:
        target = client.make_qualified_table_name(t.destination_table)
        column = client.escape_column_name(pipeline.default_schema.naming.normalize_identifier(spec.primary_key[0]))
        for start in range(0, len(gone), 1000):
            part = gone[start:start + 1000]
            client.execute_sql(f"DELETE FROM {target} WHERE {column} IN ({', '.join(['%s'] * len(part))})", *part)
    return TableRepair(t.table, "ranges", "", [[c.lo, c.hi] for c in chunks], read, len(gone))


def _between(column: str, lo: Any, hi: Any) -> tuple[str, list[Any]]:
    parts, params = [], []
    if lo is not None:
        parts.append(f"{column} >= %s")
        params.append(lo)
    if hi is not None:
        parts.append(f"{column} < %s")
        params.append(hi)
    return " AND ".join(parts) or "1 = 1", params
