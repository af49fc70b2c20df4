"""Test-only entry: one CDC drain in its own process, so a test can SIGKILL it at a chosen point.

Usage: python -m tests.cdc.cdc_worker <pipeline_name> <pipelines_dir> <dataset>
Configuration comes from the environment (SOURCES__POSTGRES__*, DESTINATION__DUCKDB__CREDENTIALS) and
AURORA_SYNC_FAILPOINT=after_load_before_ack makes the process kill itself after the first load.
"""

from __future__ import annotations

import json
import sys

import dlt

from pipelines.cdc import run_cdc


def main() -> None:
    name, pipelines_dir, dataset = sys.argv[1:4]
    pipeline = dlt.pipeline(pipeline_name=name, destination="duckdb", dataset_name=dataset,
                            pipelines_dir=pipelines_dir, progress=None)
    summary = run_cdc(pipeline)
    print(json.dumps({"batches": summary.batches, "end_lsn": summary.end_lsn}))


if __name__ == "__main__":
    main()
