"""`aurora-sync doctor` on the production path: S3 probe through moto, the Snowflake stage in fakesnow."""

from __future__ import annotations

import json

import pytest

from local.seed import seed
from runner import cli
from runner.exit_codes import ExitCode
from tests.snowflake.conftest import bootstrap


def doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, str]]]:
    capsys.readouterr()
    code = cli.main(["--json-logs", "doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    return code, {c["name"]: c for c in report["checks"]}


def test_doctor_checks_s3_and_the_snowflake_stage(sf_env: dict[str, str], fake_sf: object,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seed(sf_env["SOURCES__POSTGRES__CREDENTIALS"], customers=10, orders=10)
    code, checks = doctor(capsys)
    assert checks["staging: S3 write/read"]["status"] == "ok"
    assert checks["snowflake: stage"]["status"] == "fail" and "snowflake-bootstrap" in checks["snowflake: stage"]["fix"]
    assert code == ExitCode.CONFIG_ERROR

    assert bootstrap() == 0
    code, checks = doctor(capsys)
    assert checks["snowflake: stage"]["status"] == "ok", checks["snowflake: stage"]
    assert checks["vault"]["status"] == "skip"
    assert code == ExitCode.SUCCESS, checks
