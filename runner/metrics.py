"""CloudWatch metrics through the Embedded Metric Format: a metric is a JSON log line with an `_aws`
block, so no agent and no PutMetricData permission are needed. Names match terraform/modules/monitoring.
"""

from __future__ import annotations

import time
from typing import Any

from . import logs

UNITS = {
    "RowsExtracted": "Count",
    "RowsLoaded": "Count",
    "RunDurationSeconds": "Seconds",
    "LagSeconds": "Seconds",
    "SlotRetainedWalBytes": "Bytes",
    "DeadLetters": "Count",
    "RunFailures": "Count",
    "TableFailures": "Count",  # per table: set aside by this run, the others loaded (see pipelines/isolation.py)
    "RunSucceeded": "Count",
    # land and merge (pipelines/landing.py, pipelines/merge.py)
    "LandingLagSeconds": "Seconds",  # per landed batch: newest commit to durable in S3
    "MergeLagSeconds": "Seconds",  # after a merge cycle: age of the oldest landed batch not merged yet
    "BatchesMerged": "Count",
    "MergeDurationSeconds": "Seconds",
    # `verify` (runner/commands/verify.py): per table, and their sum per pipeline for the drift alarm
    "DriftRows": "Count",  # rows known to differ (a lower bound; at least 1 for a drifting table)
    "DriftRanges": "Count",  # drifting key ranges reported
    "VerifySucceeded": "Count",  # per pipeline: 1 once every table was verified, 0 if one could not be
}
NAMESPACE = "AuroraSnowflakeSync"


def emit(pipeline: str, values: dict[str, float], table: str | None = None, namespace: str = NAMESPACE) -> None:
    dimensions = ["Pipeline", "Table"] if table else ["Pipeline"]
    fields: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": [{"Name": name, "Unit": UNITS[name]} for name in values],
            }],
        },
        "Pipeline": pipeline,
        **({"Table": table} if table else {}),
        **values,
    }
    logs.event("metrics", **fields)
