"""The slot's health before and after a run: missing, invalidated, ahead of our state, in use, retaining WAL."""

from __future__ import annotations

import logging
import time
from typing import Any

from sources.replication.errors import (
    RetainedWalExceeded,
    SlotAheadOfState,
    SlotInUse,
    SlotInvalidated,
    SlotMissing,
)
from sources.replication.lsn import format_lsn
from sources.replication.slot import SlotHealth, slot_health

from .context import Cdc
from .summary import event


def check_health(cdc: Cdc, health: SlotHealth | None, state: dict[str, Any]) -> str | None:
    """None when the slot can be streamed, else why it must be recreated (raises unless allowed)."""
    settings = cdc.settings
    problem: Exception | None = None
    if health is None:
        if not state.get("tables"):
            raise SlotMissing(f"Replication slot {cdc.slot!r} does not exist and this pipeline was never set up "
                              "for CDC: run `aurora-sync setup` first.")
        problem = SlotMissing(
            f"Replication slot {cdc.slot!r} no longer exists (dropped, or lost in a failover to a new writer); "
            "changes since the last run cannot be read: resnapshot with `aurora-sync setup --resnapshot` or set "
            "`on_slot_lost = \"resnapshot\"`.")
    elif health.wal_status == "lost":
        problem = SlotInvalidated(
            f"Replication slot {cdc.slot!r} was invalidated by PostgreSQL (max_slot_wal_keep_size exceeded), so "
            "changes were lost: resnapshot with `aurora-sync setup --resnapshot` or `on_slot_lost = \"resnapshot\"`.")
    elif state.get("confirmed_lsn") is not None and (health.confirmed_flush_lsn or 0) > int(state["confirmed_lsn"]):
        problem = SlotAheadOfState(
            f"Replication slot {cdc.slot!r} confirmed up to {format_lsn(health.confirmed_flush_lsn)} but this "
            f"pipeline only loaded up to {format_lsn(int(state['confirmed_lsn']))}: another consumer advanced the "
            "slot (or the destination was restored from an older state), so changes were lost. Resnapshot with "
            "`aurora-sync setup --resnapshot` or set `on_slot_lost = \"resnapshot\"`.")
    elif health.active and still_active(cdc):
        raise SlotInUse(f"Replication slot {cdc.slot!r} is in use by PID {health.active_pid}; retry when that "
                        "sync has stopped.")
    if problem is None:
        return None
    if settings.on_slot_lost != "resnapshot":
        raise problem
    event(f"{problem} Resnapshotting (on_slot_lost = resnapshot).", logging.WARNING)
    return str(problem)


def still_active(cdc: Cdc, wait: float = 10.0) -> bool:
    """A walsender whose client just died (a killed task) stays active until the server notices."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        health = slot_health(cdc.meta, cdc.slot)
        if health is None or not health.active:
            return False
        time.sleep(0.2)
    return True


def retained_wal(cdc: Cdc, health: SlotHealth | None, *, final: bool) -> None:
    if health is None:
        return
    fields = health.as_fields()
    settings = cdc.settings
    retained = health.retained_wal_bytes
    if final:
        cdc.summary.retained_wal_bytes = retained
        cdc.summary.pinned_wal_bytes = health.pinned_wal_bytes
        cdc.summary.wal_status = health.wal_status
    event("replication slot", **fields)
    if final and retained > settings.retained_wal_fail_bytes:
        raise RetainedWalExceeded(
            f"Replication slot {cdc.slot!r} still retains {retained / 2**30:.1f} GiB of WAL after this run (limit "
            f"retained_wal_fail_bytes = {settings.retained_wal_fail_bytes / 2**30:.1f} GiB): the sync cannot keep "
            "up or is not running often enough. Run in follow mode, raise batch sizes, or drop the slot "
            "(`aurora-sync teardown`) before storage fills.")
    if retained > settings.retained_wal_warn_bytes:
        message = (f"Replication slot {cdc.slot!r} retains {retained / 2**20:.0f} MiB of WAL (warning above "
                   f"{settings.retained_wal_warn_bytes / 2**20:.0f} MiB)")
        cdc.summary.warnings.append(message)
        event(message, logging.WARNING, **fields)


def wait_for_slot(cdc: Cdc, lsn: int, timeout: float = 5.0) -> SlotHealth | None:
    """The server applies feedback asynchronously; wait briefly so the reported health is current."""
    deadline = time.monotonic() + timeout
    while True:
        health = slot_health(cdc.meta, cdc.slot)
        if health is None or (health.confirmed_flush_lsn or 0) >= lsn or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def unfinished_setup(health: SlotHealth | None, state: dict[str, Any]) -> str | None:
    """Why the slot on the source needs someone's attention though no run failed: a `setup` killed or failing after it
    created the slot leaves it holding WAL on the writer with no run consuming it. None when there is nothing to say.

    `state` is the pipeline's CDC state (`sources.<source>.cdc`) as the destination holds it."""
    if health is None:
        return None
    held = f"it holds {health.retained_wal_bytes / 2**20:.1f} MiB of WAL on the writer"
    if state.get("confirmed_lsn") is None:
        return (f"replication slot {health.slot_name!r} exists but no setup finished with it (a setup was killed or "
                f"failed after creating it): {held}. Run `aurora-sync setup` again to finish, or "
                "`aurora-sync teardown` to drop it.")
    copying = sorted(t.get("resource", name) for name, t in state.get("tables", {}).items() if t.get("copy"))
    if copying and not health.active:
        return (f"the initial copy of {', '.join(copying)} is not finished and no sync is streaming the slot "
                f"{health.slot_name!r}: {held}. `aurora-sync setup` or the next `aurora-sync run --mode cdc` "
                "finishes it.")
    return None
