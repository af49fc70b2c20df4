"""Observers of a dlt run, plugged in through dlt's progress `Collector` interface (a public seam
that sees every step and every table's row counts).

- `TableProgress`: one live progress line per table on a terminal, for long snapshots.
- `Failpoints`: kills the process at a named point of the run (`AURORA_SYNC_FAILPOINT=load_mid`), in the
  N-th run of that step when `AURORA_SYNC_FAILPOINT_STEP_RUN=N` (a later package), `load_mid` once
  `AURORA_SYNC_FAILPOINT_JOBS` jobs of the package are loaded (default 1). Inert unless set. It exists so
  the fault tests can crash a *real* sync process exactly mid-extract, mid-normalize or mid-load and prove
  the next run repairs it.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from dlt.common.runtime.collector import Collector

if TYPE_CHECKING:
    from rich.progress import Progress

FAILPOINT_ENV = "AURORA_SYNC_FAILPOINT"
FAILPOINT_STEP_RUN_ENV = "AURORA_SYNC_FAILPOINT_STEP_RUN"
FAILPOINT_JOBS_ENV = "AURORA_SYNC_FAILPOINT_JOBS"
FAILPOINTS = ("extract_start", "extract_mid", "normalize_start", "normalize_mid", "load_start", "load_mid",
              "after_load")
# pipelines/cdc: a batch is loaded, its LSN not yet confirmed; pipelines/destinations: a landing load's state is
# written, its `_dlt_loads` entry not yet
CDC_FAILPOINTS = ("after_load_before_ack", "landing_state_written", "slot_created")


_REACHED: dict[str, int] = {}


def crash_at(point: str) -> None:
    """A failpoint outside dlt's steps (e.g. `after_load`: loaded, but before the runner finished); with
    `AURORA_SYNC_FAILPOINT_STEP_RUN=N`, the N-th time the process reaches it."""
    if os.environ.get(FAILPOINT_ENV) == point:
        _REACHED[point] = _REACHED.get(point, 0) + 1
        if _REACHED[point] >= int(os.environ.get(FAILPOINT_STEP_RUN_ENV) or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class Failpoints(Collector):
    def __init__(self, point: str) -> None:
        if point not in FAILPOINTS + CDC_FAILPOINTS:
            raise ValueError(f"{FAILPOINT_ENV}={point!r}; known: {', '.join(FAILPOINTS + CDC_FAILPOINTS)}")
        self.point = point
        self.step = ""
        self.step_run = int(os.environ.get(FAILPOINT_STEP_RUN_ENV) or 1)
        self.runs: dict[str, int] = {}
        self.jobs_to_load = int(os.environ.get(FAILPOINT_JOBS_ENV) or 1)
        self.jobs_loaded = 0

    def _crash_if(self, point: str) -> None:
        if point == self.point and self.runs.get(self.step) == self.step_run:
            os.kill(os.getpid(), signal.SIGKILL)

    def _start(self, step: str) -> None:
        self.step = step.split(" ", 1)[0].lower()  # "Extract postgres_replica" -> "extract"
        self.runs[self.step] = self.runs.get(self.step, 0) + 1
        self.jobs_loaded = 0
        self._crash_if(f"{self.step}_start")

    def update(self, name: str, inc: int = 1, total: int | None = None, inc_total: int | None = None,
               message: str | None = None, label: str | None = None) -> None:
        counts_work = inc > 0 and name != "Resources"
        if counts_work and self.step != "load":
            self._crash_if(f"{self.step}_mid")
        elif counts_work and name == "Jobs":
            self.jobs_loaded += inc
            if self.jobs_loaded >= self.jobs_to_load:
                self._crash_if("load_mid")

    def _stop(self) -> None:
        pass


class TableProgress(Collector):
    """Rows per table as they stream, on a TTY (dlt's own bars need tqdm/enlighten)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}

    def _start(self, step: str) -> None:
        # rich only on a terminal: ECS tasks and scripted runs never draw it, so they do not import it
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TextColumn("{task.completed:>12,.0f} rows"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=False)
        self.progress.start()
        self.tasks = {}
        self.step = step

    def update(self, name: str, inc: int = 1, total: int | None = None, inc_total: int | None = None,
               message: str | None = None, label: str | None = None) -> None:
        if self.progress is None or not self.step.startswith("Extract") or name == "Resources":
            return
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(f"extract {name}", total=None)
        self.progress.update(self.tasks[name], advance=inc)

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def collector_for(interactive: bool) -> Collector | None:
    point = os.environ.get(FAILPOINT_ENV)
    if point:
        return Failpoints(point)
    return TableProgress() if interactive else None
