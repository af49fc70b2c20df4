"""`verify --checksum` reports drift to CloudWatch (Embedded Metric Format), which the drift and
"verify did not run" alarms of terraform/modules/monitoring watch.

A real PostgreSQL and the DuckDB file the pipeline loaded; drift is made in DuckDB only, so the source stays the
truth. The metric lines are read from the task's stderr exactly as CloudWatch Logs would receive them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from local.seed import seed
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, subprocess_env
from tests.helpers import DATASET
from tests.test_verify import AURORA_SYNC, load, tamper


@pytest.fixture(autouse=True)
def dead_letters_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOURCES__POSTGRES__DEAD_LETTER_URL", str(tmp_path / "dead_letter"))


def emf_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines that carry an EMF directive (`_aws.CloudWatchMetrics`)."""
    lines = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "CloudWatchMetrics" in event.get("_aws", {}):
            lines.append(event)
    return lines


def test_verify_emits_drift_metrics(dlt_env: dict[str, str], tmp_path: Path) -> None:
    seed(dlt_env["SOURCES__POSTGRES__CREDENTIALS"], customers=200, orders=800)
    load(tmp_path)
    tamper(dlt_env["DESTINATION__DUCKDB__CREDENTIALS"],
           f"DELETE FROM {DATASET}.orders__orders WHERE id IN (10, 11, 12)",  # one lost block
           f"UPDATE {DATASET}.orders__orders SET status = 'tampered' WHERE id = 700")  # a changed value far away

    result = subprocess.run([AURORA_SYNC, "--json-logs", "verify", "--checksum", "--json", "--chunk-rows", "100"],
                            env=subprocess_env(dlt_env), cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == ExitCode.DRIFT_FOUND, result.stdout + result.stderr
    report = {t["table"]: t for t in json.loads(result.stdout)["tables"]}
    assert report["orders.orders"]["drift_rows"] == 4 and report["customers.customers"]["drift_rows"] == 0

    lines = emf_lines(result.stderr)
    per_table = {e["Table"]: e for e in lines if "Table" in e}
    [total] = [e for e in lines if "Table" not in e]

    drifted = per_table["orders__orders"]
    assert drifted["Pipeline"] == "customers_orders"
    assert drifted["DriftRows"] == 4 and drifted["DriftRanges"] == len(report["orders.orders"]["drift_ranges"]) == 2
    directive = drifted["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "AuroraSnowflakeSync" and directive["Dimensions"] == [["Pipeline", "Table"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {"DriftRows": "Count", "DriftRanges": "Count"}

    # every other table was verified in sync and says so with a 0, not with silence
    assert set(per_table) == {"orders__orders", "orders__order_items", "customers__customers",
                              "customers__addresses"}
    for table, event in per_table.items():
        if table != "orders__orders":
            assert (event["DriftRows"], event["DriftRanges"]) == (0, 0), event

    # the pipeline's sums (the drift alarm) and the heartbeat (the "verify did not run" alarm)
    assert total["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Pipeline"]]
    assert (total["DriftRows"], total["DriftRanges"], total["VerifySucceeded"]) == (4, 2, 1)

    # `status`, from any machine: when verify last ran and what each table showed (the run history in the warehouse)
    status = subprocess.run([AURORA_SYNC, "status", "--json"], env=subprocess_env(dlt_env), cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert status.returncode == ExitCode.SUCCESS, status.stdout + status.stderr
    last = json.loads(status.stdout)["last_verify"]
    assert last["outcome"] == "drift" and last["checksum"] is True and last["at"], last
    assert last["tables"]["orders.orders"]["status"] == "drift"
    assert last["tables"]["orders.orders"]["drift_rows"] == 4
    assert last["tables"]["customers.customers"] == {**last["tables"]["customers.customers"], "status": "ok",
                                                     "drift_rows": 0}
    shown = subprocess.run([AURORA_SYNC, "status"], env=subprocess_env(dlt_env), cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert "Last verify:" in shown.stdout and "drift" in shown.stdout, shown.stdout + shown.stderr
