"""Where CDC writes: the warehouse directly, or the landing area in S3 that `merge` applies later.

Both sinks take the same ops (`pipelines.ops.Op`) with the CDC state update that goes with them, and commit them in
one load package: the direct sink through the shared apply (`pipelines.apply`, the apply invariant), the landing sink
as an append to the archive bucket (`pipelines.landing`), which `merge` later hands to the same apply. Choosing one
is the only place `merge_interval_seconds` matters to the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import dlt
import pyarrow as pa
from dlt.extract import DltResource
from dlt.pipeline.exceptions import PipelineStepFailed

from pipelines import apply, landing
from pipelines.fence import fenced_pipeline, take_over
from pipelines.isolation import TableLoadFailed, culprit, describe, is_about_no_table
from pipelines.landing_area import IndexEntry, LandingArea, Reread, rereads_area
from pipelines.ops import Op
from sources.replication import SOURCE_NAME, STATE_KEY, ReplicationSettings, replication_settings, state_resource
from sources.replication.lsn import format_lsn

from .summary import event

StateUpdate = Callable[[dict[str, Any]], None]
Unresolved = Callable[[str, pa.Table], None]  # (table, keys written as tombstones: a value known nowhere)


def cdc_state(pipeline: dlt.Pipeline) -> dict[str, Any]:
    """The CDC state (slot, confirmed LSN, tables copied, copies in progress) as the pipeline holds it."""
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(STATE_KEY, {}))


@dlt.source(name=SOURCE_NAME, section="replication", max_table_nesting=0, root_key=False)
def cdc_apply(resources: list[DltResource], update_state: StateUpdate) -> Iterable[DltResource]:
    """One package of the direct sink: the tables' writes and the CDC state they bring about."""
    yield from resources
    yield state_resource(update_state)


def _part(op: Op) -> apply.Part:
    if op.kind == "snapshot":
        return apply.Part(op.table, "replace", op.rows, op.primary_key, op.hints, op.delete_mode,
                          position=(op.lsn, 0), reload=op.reload)
    if op.kind == "truncate":
        return apply.Part(op.table, "truncate", primary_key=op.primary_key, hints=op.hints,
                          delete_mode=op.delete_mode, position=(op.lsn, op.ordinal), commit_time=op.commit_time)
    rows = op.rows() if callable(op.rows) else op.rows
    return apply.Part(op.table, "columns" if op.kind == "columns" else "merge", list(rows), op.primary_key,
                      op.hints, op.delete_mode)


def _finish_packages(pipeline: dlt.Pipeline) -> None:
    """Load packages an interrupted run left on this disk; one that can no longer load is aborted (dlt rewinds the
    state to before it, so its changes are streamed again), never retried forever."""
    pipeline.sync_destination()
    if not pipeline.has_pending_data:
        return
    event("loading packages left by an interrupted run")
    try:
        if pipeline.list_extracted_load_packages():
            pipeline.normalize()
        pipeline.load().raise_on_failed_jobs()
    except PipelineStepFailed as exc:
        if is_about_no_table(exc):
            raise
        if pipeline.has_pending_data:
            pipeline.abort_packages()
        event(f"a load package left by an earlier run could not be loaded ({describe(exc)}); it was discarded and "
              "its changes are read again", logging.WARNING)


class Sink:
    """Commits CDC writes and CDC state; `pipeline` is where that state lives."""

    lands: bool = False
    pipeline: dlt.Pipeline

    def write(self, ops: list[Op], update: StateUpdate | None = None, *, refresh: str | None = None,
              on_unresolved: Unresolved | None = None) -> apply.Applied:
        raise NotImplementedError

    def save_state(self, update: StateUpdate) -> None:
        """A package with no rows, only CDC state: records a position before it is confirmed."""
        self.write([], update)

    def finish_pending(self) -> None:
        raise NotImplementedError

    def rereads(self) -> list[Reread]:
        """Keys another process asks to be read again: the merge (tombstoned versions) or `verify --repair`."""
        return []

    def reread_done(self, reread: Reread) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return cdc_state(self.pipeline)


class DirectSink(Sink):
    """Every batch is applied to the warehouse before its position is confirmed to the slot."""

    def __init__(self, pipeline: dlt.Pipeline) -> None:
        # its own staging dataset: a follower that lost its lock cannot commit once another took over (`fence`)
        self.pipeline = fenced_pipeline(pipeline, "cdc")
        self.applier = apply.Applier(self.pipeline, SOURCE_NAME, cdc_apply,  # type: ignore[arg-type]
                                     lambda: cdc_state(self.pipeline))
        self._holding = False
        self._requests = rereads_area(pipeline)  # `verify --repair` asks here for keys to read again

    def rereads(self) -> list[Reread]:
        return self._requests.rereads() if self._requests is not None else []

    def reread_done(self, reread: Reread) -> None:
        if self._requests is not None:
            self._requests.reread_done(reread)

    def _take_over(self) -> None:
        """Before this task's first write: from now on, any earlier holder's commits fail (`fence`)."""
        if not self._holding:
            take_over(self.pipeline)
            self._holding = True

    def write(self, ops: list[Op], update: StateUpdate | None = None, *, refresh: str | None = None,
              on_unresolved: Unresolved | None = None) -> apply.Applied:
        self._take_over()
        return self.applier.apply([_part(op) for op in ops], update, refresh=refresh, on_unresolved=on_unresolved)

    def finish_pending(self) -> None:
        self._take_over()
        _finish_packages(self.pipeline)
        self.applier.finish_pending()


class LandingSink(Sink):
    """Every batch lands in the archive bucket and is confirmed there; `merge` applies it to the warehouse."""

    lands = True

    def __init__(self, direct: dlt.Pipeline) -> None:
        self.direct = direct
        self.pipeline = landing.landing_pipeline(direct)
        self.area = LandingArea(direct)

    def write(self, ops: list[Op], update: StateUpdate | None = None, *, refresh: str | None = None,
              on_unresolved: Unresolved | None = None) -> apply.Applied:
        try:  # landing only appends: a reload is the merge's to do (`Op.reload`), never a refresh here
            info = self.pipeline.run(landing.land(ops, update))
        except PipelineStepFailed as exc:
            if is_about_no_table(exc):
                raise
            if self.pipeline.has_pending_data:
                self.pipeline.abort_packages()
            raise TableLoadFailed(culprit(exc), exc.step, describe(exc)) from exc
        info.raise_on_failed_jobs()
        if self.pipeline.has_pending_data:  # never confirm an LSN whose package did not land
            raise RuntimeError("dlt left a landing package pending after a successful run; not confirming.")
        if ops:
            self._index()
        return apply.Applied()

    def _index(self) -> None:
        """The landed load's index entry, which is what `merge` lists: written once the load completed."""
        last = self.state().get(landing.LAST_KEY)
        if last:
            self.area.write_index(IndexEntry.from_json(last))

    def rereads(self) -> list[Reread]:
        return self.area.rereads()

    def reread_done(self, reread: Reread) -> None:
        self.area.reread_done(reread)

    def finish_pending(self) -> None:
        _finish_packages(self.pipeline)
        self.carry_over_state()
        last = self.state().get(landing.LAST_KEY)
        if last and not self.area.has_index(IndexEntry.from_json(last)):  # died between a load and its index entry
            self._index()

    def carry_over_state(self) -> None:
        """The first landing of a pipeline that loaded directly starts from its CDC state. That state is in the
        warehouse: a fresh task (every ECS task) has none on disk, and without it would copy every table again."""
        if not self.state():
            self.direct.sync_destination()
        carried = landing.carry_over_state(self.direct, self.pipeline)
        if carried:
            self.save_state(lambda state: state.update(carried))
            event("CDC state carried over from direct loading to landing",
                  lsn=format_lsn(int(carried.get("confirmed_lsn") or 0)))


def make_sink(pipeline: dlt.Pipeline, settings: ReplicationSettings) -> Sink:
    return LandingSink(pipeline) if settings.lands else DirectSink(pipeline)


def history_pipeline(pipeline: dlt.Pipeline, settings: ReplicationSettings | None = None) -> dlt.Pipeline:
    """Where a CDC run's record goes: the landing area when batches land, so the follower never waits on the
    warehouse (not even for its own history); the warehouse when every batch loads there anyway."""
    lands = (settings or replication_settings()).lands  # type: ignore[call-arg]
    return landing.landing_pipeline(pipeline) if lands else pipeline


__all__ = ["DirectSink", "LandingSink", "Sink", "cdc_state", "history_pipeline", "make_sink"]


