"""Change data capture into the destination: `setup`, `run_cdc`, `teardown` (docs/cdc.md).

The package is cut along its seams:
- `driver`: the streaming loop (batches read, written, then confirmed);
- `sinks`: where writes go, the warehouse directly (`pipelines.apply`) or the landing area in S3 (`pipelines.merge`
  applies it later through the same apply);
- `copies`: copying tables while streaming: in one go under an exported snapshot, in chunks reconciled with the
  stream (DBLog), and keys read again;
- `tables`: which tables need a copy (new, set aside, changed in ways the WAL does not show);
- `health`: the slot's health; `lifecycle`: setup and teardown; `context`, `summary`, `generated`.
"""

from __future__ import annotations

from .driver import AFTER_LOAD_BEFORE_ACK, CRASH_ENV, run_cdc
from .lifecycle import SetupReport, TeardownReport, setup, teardown
from .sinks import history_pipeline
from .summary import CdcSummary, TableChanges

__all__ = ["AFTER_LOAD_BEFORE_ACK", "CRASH_ENV", "CdcSummary", "SetupReport", "TableChanges", "TeardownReport",
           "history_pipeline", "run_cdc", "setup", "teardown"]
