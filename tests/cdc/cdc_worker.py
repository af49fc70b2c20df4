"""Test-only entry: one CDC drain in its own process, so a test can SIGKILL it at a chosen point.

Usage: python -m tests.cdc.cdc_worker <pipeline_name> <pipelines_dir> <dataset>
Configuration comes from the environment (SOURCES__POSTGRES__*, DESTINATION__DUCKDB__CREDENTIALS) and
AURORA_SYNC_FAILPOINT (pipelines/progress.py: e.g. after_load_before_ack, load_mid with AURORA_SYNC_FAILPOINT_JOBS)
makes the process kill itself at that point.
"""

from __future__ import annotations

import json
import sys

import dlt

from pipelines.cdc import run_cdc
from pipelines.progress import collector_for


def main() -> None:
    name, pipelines_dir, dataset = sys.argv[1:4]
    pipeline = dlt.pipeline(pipeline_name=name, destination="duckdb", dataset_name=dataset,
                            pipelines_dir=pipelines_dir, progress=collector_for(interactive=False))
    summary = run_cdc(pipeline)
    print(json.dumps({"batches": summary.batches, "end_lsn": summary.end_lsn}))


if __name__ == "__main__":
    main()
