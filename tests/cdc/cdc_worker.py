"""Test-only entry: one CDC drain in its own process, so a test can SIGKILL it at a chosen point.

Usage: python -m tests.cdc.cdc_worker <pipeline_name> <pipelines_dir> <dataset>
Configuration comes from the environment (SOURCES__POSTGRES__*, DESTINATION__DUCKDB__CREDENTIALS) and
AURORA_SYNC_FAILPOINT (pipelines/progress.py: e.g. after_load_before_ack, load_mid with AURORA_SYNC_FAILPOINT_JOBS)
makes the process kill itself at that point.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import dlt  # here, not above: a process the fork server runs has them imported already

    from pipelines.cdc import run_cdc
    from pipelines.progress import collector_for

    name, pipelines_dir, dataset = argv[:3]
    pipeline = dlt.pipeline(pipeline_name=name, destination="duckdb", dataset_name=dataset,
                            pipelines_dir=pipelines_dir, progress=collector_for(interactive=False))
    summary = run_cdc(pipeline)
    print(json.dumps({"batches": summary.batches, "end_lsn": summary.end_lsn}))
    return 0


if __name__ == "__main__":
    from runner.fork_server import delegate_or_run  # forked from the test process's server when it runs one

    sys.exit(delegate_or_run("tests.cdc.cdc_worker:main", main))
