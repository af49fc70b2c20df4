"""A helper task: more readers for the chunked snapshots a pipeline's run (the coordinator) has in progress.

One task reads a terabyte table in hours; helper tasks (`aurora-sync snapshot-helper`, ECS tasks started next to
the run, `[sources.postgres.snapshot] helper_tasks` on the run) share its chunks. A helper never plans, replaces
or finishes a snapshot, so there is one writer of every decision that is not idempotent:

1. It reads the coordinator's snapshot plans from the coordinator's dlt state in the destination (a plan is there
   once its first package, the one that replaced the table, has committed).
2. For a plan whose generation lock the coordinator holds (`chunk_claims`), it takes the table lock shared,
   claims up to `workers` chunks no one holds and the ledger does not list, and loads them in one package of its
   own dlt pipeline (`<pipeline>_helper`, a fresh working folder and its own schema name, so nothing of the
   coordinator's state or schema is ever written by a helper) with their ledger rows (`chunk_ledger`).
3. It exits when the snapshots it helped with are finished, or when it found nothing to do for `idle_seconds`.

A helper killed at any point frees its claims with its session; a load it left half done is read again by someone
else and its rows are deleted by the coordinator before the snapshot finishes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dlt
from dlt.common.schema import Schema

from .chunk_claims import ChunkClaims, claim_some
from .chunk_ledger import done_chunks, ledger_resource, ledger_rows
from .chunked import ChunkedSnapshot, ChunkSource, in_progress

log = logging.getLogger("aurora_sync.snapshot")
HELPER_SUFFIX = "_helper"
POLL_SECONDS = 5.0
LOCAL_DESTINATIONS = ("duckdb", "motherduck")  # one process's database file: a second loader cannot open it


@dataclass
class HelperResult:
    chunks: dict[str, int] = field(default_factory=dict)  # resource -> chunks this helper loaded
    rows: dict[str, int] = field(default_factory=dict)


class HelperConfigError(ValueError):
    """The destination cannot take loads from several processes: helpers cannot work there."""


def help_snapshots(make_coordinator: Callable[[str], dlt.Pipeline], make_source: ChunkSource, claims: ChunkClaims,
                   workers: int, idle_seconds: float, stop: threading.Event | None = None) -> HelperResult:
    """Load chunks of the coordinator's snapshots in progress until there was nothing to do for `idle_seconds`.

    `make_coordinator(pipelines_dir)` builds the coordinator's pipeline (only its state is read, from the
    destination, into a folder of our own)."""
    work_dir = tempfile.mkdtemp(prefix="aurora-sync-helper-")
    result = HelperResult()
    try:
        coordinator = make_coordinator(f"{work_dir}/coordinator")
        if coordinator.destination.destination_name in LOCAL_DESTINATIONS:
            raise HelperConfigError(
                f"snapshot helpers need a warehouse that several tasks can load at once (Snowflake); "
                f"{coordinator.destination.destination_name} is one process's database file. Use "
                "`[sources.postgres.snapshot] workers` to read more chunks at once in one task.")
        helper = dlt.pipeline(pipeline_name=coordinator.pipeline_name + HELPER_SUFFIX,
                              pipelines_dir=f"{work_dir}/helper", destination=coordinator.destination,
                              staging=coordinator.staging, dataset_name=coordinator.dataset_name)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_seconds and not (stop and stop.is_set()):
            coordinator.sync_destination()  # the plans as committed now
            plans = in_progress(coordinator)
            if result.chunks and not plans:
                break  # we helped, and every snapshot is finished: nothing will come before the next run
            worked = False
            for resource, entry in sorted(plans.items()):
                if not entry.get("table"):
                    continue  # begun by a version that did not record the table: the coordinator finishes it
                snapshot = ChunkedSnapshot.from_state(resource, str(entry["table"]), entry)
                worked |= _help_one(helper, snapshot, make_source, claims, workers, result, stop)
            if worked:
                idle_since = time.monotonic()
            elif stop is not None:
                stop.wait(POLL_SECONDS)
            else:
                time.sleep(POLL_SECONDS)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # never resume a package: a killed helper's chunk is re-read
    return result


def _help_one(helper: dlt.Pipeline, snapshot: ChunkedSnapshot, make_source: ChunkSource, claims: ChunkClaims,
              workers: int, result: HelperResult, stop: threading.Event | None) -> bool:
    """Load chunks of one snapshot while there are chunks no one holds; whether any were loaded."""
    resource, generation = snapshot.resource, snapshot.generation
    worked = False
    while not (stop and stop.is_set()) and claims.generation_live(resource, generation):
        done = snapshot.done | done_chunks(helper, resource, generation)
        pending = [c.index for c in snapshot.chunks if c.index not in done]
        if not pending:
            break
        with claims.table(resource, exclusive=False):
            if not claims.generation_live(resource, generation):
                break  # finished or abandoned while we waited for the table lock
            picked = claim_some(claims, generation, pending, workers)
            if not picked:
                break  # everything left is being loaded by someone else
            try:
                fresh = done_chunks(helper, resource, generation)  # loaded between our look and our claim
                group = [c for c in snapshot.chunks if c.index in picked and c.index not in fresh]
                if group:
                    source = make_source({resource: group}, "append", None)
                    source.resources.add(ledger_resource(ledger_rows(resource, generation,
                                                                     [c.index for c in group])))
                    helper.run(source, schema=Schema(helper.pipeline_name))
                    trace = helper.last_trace
                    counts = trace.last_normalize_info.row_counts if trace and trace.last_normalize_info else {}
                    result.rows[resource] = result.rows.get(resource, 0) + int(counts.get(resource, 0))
                    result.chunks[resource] = result.chunks.get(resource, 0) + len(group)
                    worked = True
                    log.info("helper chunks loaded", extra={"fields": {
                        "phase": "snapshot", "table": resource, "chunks": [c.index for c in group]}})
            finally:
                for index in picked:
                    claims.release(generation, index)
    return worked
