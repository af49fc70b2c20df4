"""`setup` and `teardown`: the publication and the slot on the source, and the first copy of every table."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import dlt

from sources.postgres.chunking import snapshot_settings
from sources.replication import ReplicationSettings
from sources.replication.ddl import install_ddl_capture
from sources.replication.errors import PrerequisiteMissing, SlotInUse
from sources.replication.lsn import format_lsn
from sources.replication.slot import (
    check_prerequisites,
    connect,
    drop_publication,
    drop_slot,
    ensure_publication,
    slot_health,
    table_refusals,
)

from . import copies, tables
from .context import Cdc
from .driver import run
from .summary import event


@dataclass
class SetupReport:
    slot: str
    publication: str
    problems: list[str] = field(default_factory=list)
    publication_added: list[str] = field(default_factory=list)
    publication_removed: list[str] = field(default_factory=list)
    slot_created: bool = False
    snapshots: dict[str, int] = field(default_factory=dict)
    start_lsn: str | None = None
    failed_tables: dict[str, dict[str, str]] = field(default_factory=dict)  # refused or failed to copy: set aside
    dead_lettered: int = 0
    ddl_capture: str = ""  # whether DDL is announced in the stream (`sources.replication.ddl`), and if not why


def setup(pipeline: dlt.Pipeline, *, check_only: bool = False, resnapshot: bool = False,
          settings: ReplicationSettings | None = None, dead_letter_url: str | None = None) -> SetupReport:
    """Make the source ready for CDC and copy the tables once.

    Checks prerequisites (naming every missing one), creates or syncs the publication `aurora_sync_<pipeline>` for
    the configured tables, creates the slot with an exported snapshot and copies every table under it. Idempotent:
    with the slot in place it only adds (and copies) tables not replicated yet. `resnapshot` drops and recreates the
    slot and copies everything again.
    """
    snapshot_settings()  # type: ignore[call-arg]  # every setting is valid before anything is created
    cdc = Cdc(pipeline, settings, dead_letter_url)
    report = SetupReport(cdc.slot, cdc.publication)
    try:
        return _setup(cdc, report, check_only=check_only, resnapshot=resnapshot)
    except BaseException as exc:
        if report.slot_created:
            _drop_created_slot(cdc, exc)
        raise
    finally:
        cdc.close()


def _drop_created_slot(cdc: Cdc, failure: BaseException) -> None:
    """A setup that fails after it created the slot drops it: a slot left behind holds WAL on the writer."""
    try:
        admin = connect(cdc.dsn, read_only=False, statement_timeout_ms=60_000)
        try:
            drop_slot(admin, cdc.slot)
        finally:
            admin.close()
        event(f"setup failed ({type(failure).__name__}); the replication slot {cdc.slot!r} it created was dropped, "
              "so it holds no WAL: run setup again once the cause is fixed", logging.ERROR)
    except Exception as exc:  # the setup's own error is the one to report; this one is added to the log
        event(f"setup failed and the replication slot {cdc.slot!r} it created could not be dropped ({exc}): it holds "
              "WAL on the writer until `aurora-sync setup` succeeds or `aurora-sync teardown` drops it",
              logging.ERROR)


def _setup(cdc: Cdc, report: SetupReport, *, check_only: bool, resnapshot: bool) -> SetupReport:
    specs = cdc.discover()
    slot = slot_health(cdc.meta, cdc.slot)
    report.problems = check_prerequisites(cdc.meta, specs, cdc.slot, slot_needed=slot is None or resnapshot,
                                          with_tables=False)
    refusals = table_refusals(cdc.meta, specs)
    if check_only:
        report.problems += refusals.values()
        return report
    if report.problems:
        raise PrerequisiteMissing("Logical replication prerequisites are missing:\n- " +
                                  "\n- ".join(report.problems))
    if slot is not None and slot.active:
        raise SlotInUse(f"Replication slot {cdc.slot!r} is in use by PID {slot.active_pid}: stop the running "
                        "sync before running setup.")
    cdc.sink.finish_pending()
    # a table CDC cannot replicate is refused alone (and never published: its updates would fail)
    refused = [s for s in specs if s.qualified in refusals]
    specs = [s for s in specs if s.qualified not in refusals]
    admin = connect(cdc.dsn, read_only=False, statement_timeout_ms=60_000)
    try:
        report.publication_added, report.publication_removed = ensure_publication(
            admin, cdc.publication, specs, drop_extra=True)
        capture = install_ddl_capture(admin)  # DDL at its place in the stream; a status, not an error, if refused
        report.ddl_capture = capture.message
        if not capture.active:
            event(f"DDL capture is not installed: {capture.message}", logging.WARNING)
        if resnapshot and slot is not None:
            drop_slot(admin, cdc.slot)
            slot = None
    finally:
        admin.close()
    if slot is None:  # from the moment the slot exists, a failure drops it again (`_drop_created_slot`)
        report.start_lsn = format_lsn(copies.bootstrap(cdc, specs,
                                                       created=lambda: setattr(report, "slot_created", True)))
    else:
        state = cdc.state()
        if state.get("confirmed_lsn") is None:  # the slot exists but this destination never used it
            confirmed = slot.confirmed_flush_lsn
            cdc.save_state(lambda s: s.update(slot=cdc.slot, publication=cdc.publication, confirmed_lsn=confirmed,
                                              tables={}))
            state = cdc.state()
        todo = [s for s in specs if s.qualified not in state.get("tables", {})]
        if todo:
            _, copied = copies.snapshot_alone(cdc, todo)
            tables.note_recovered(cdc, state, copied)
        report.start_lsn = format_lsn(slot.confirmed_flush_lsn)
    for spec in refused:
        cdc.set_aside(spec, "setup", refusals[spec.qualified])
    if any(t.get("copy") or t.get(copies.REPAIRS_KEY) for t in cdc.state().get("tables", {}).values()):
        # chunked copies land as the stream reaches their watermarks: stream until they are all in
        run(cdc, follow=False, resnapshot_patterns=None, stop=None, started=time.monotonic())
    report.snapshots = dict(cdc.summary.snapshots)
    report.failed_tables = dict(cdc.summary.failed_tables)
    report.dead_lettered = cdc.summary.dead_lettered
    event("cdc setup finished", slot=cdc.slot, publication=cdc.publication, slot_created=report.slot_created,
          snapshots=report.snapshots, publication_added=report.publication_added)
    return report


@dataclass
class TeardownReport:
    slot: str
    publication: str
    slot_dropped: bool = False
    publication_dropped: bool = False


def teardown(pipeline: dlt.Pipeline, *, keep_publication: bool = False,
             settings: ReplicationSettings | None = None) -> TeardownReport:
    """Drop the slot (so the source stops retaining WAL) and the publication, and forget the CDC position.

    The destination tables stay. A later `setup` copies every table again.
    """
    cdc = Cdc(pipeline, settings)
    try:
        report = TeardownReport(cdc.slot, cdc.publication)
        admin = connect(cdc.dsn, read_only=False, statement_timeout_ms=60_000)
        try:
            report.slot_dropped = drop_slot(admin, cdc.slot)
            if not keep_publication:
                report.publication_dropped = drop_publication(admin, cdc.publication)
        finally:
            admin.close()
        cdc.pipeline.sync_destination()
        if cdc.state():
            cdc.save_state(_forget)
        event("cdc teardown finished", slot=cdc.slot, slot_dropped=report.slot_dropped,
              publication_dropped=report.publication_dropped)
        return report
    finally:
        cdc.close()


def _forget(state: dict[str, Any]) -> None:
    """Everything but what outlives a slot: the landing's sequence numbers (`merge` positions are above them)."""
    kept = {k: v for k, v in state.items() if k == "landing_seq"}
    state.clear()
    state.update(kept)
