"""`aurora-sync snowflake-bootstrap`: the SQL is idempotent (run twice against fakesnow; every statement is
IF NOT EXISTS, ALTER ... SET or GRANT) and says what it must (warehouse cost controls, key-pair service user,
integration-backed stage without keys, least-privilege grants)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from local.fakesnow_adapter import FakeSnowflake
from replica.snowflake_bootstrap import (
    BootstrapConfigError,
    BootstrapSettings,
    generate,
    normalize_public_key,
    render,
    terraform_outputs,
)
from tests.snowflake.conftest import ROLE_ARN, Bucket, KeyPair, bootstrap, sf_rows

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

IDEMPOTENT = re.compile(r"^(CREATE (DATABASE|SCHEMA|FILE FORMAT|STORAGE INTEGRATION|STAGE|WAREHOUSE|ROLE|USER) "
                        r"IF NOT EXISTS |ALTER (STORAGE INTEGRATION|WAREHOUSE|USER) \S+ SET |GRANT )")


def settings(key_pair: KeyPair, **overrides: object) -> BootstrapSettings:
    values: dict[str, object] = dict(
        database="AURORA_SYNC", raw_schema="RAW", stage="AURORA_SYNC.RAW.ARCHIVE_STAGE",
        file_format="AURORA_SYNC.RAW.PARQUET_FORMAT", warehouse="AURORA_SYNC_LOAD_WH", role="AURORA_SYNC_LOADER",
        user="AURORA_SYNC_LOADER", integration="AURORA_SYNC_S3", bucket_url="s3://prod-archive",
        storage_aws_role_arn=ROLE_ARN, public_key=key_pair.public_pem,
    )
    values.update(overrides)
    return BootstrapSettings(**values)  # type: ignore[arg-type]


def test_every_statement_is_safe_to_run_again(key_pair: KeyPair) -> None:
    statements = generate(settings(key_pair))
    assert {s.kind for s in statements} == {"database", "schema", "file_format", "stage", "warehouse",
                                            "integration", "role", "user", "grant"}
    for st in statements:
        assert IDEMPOTENT.match(st.sql), st.sql
        assert "OR REPLACE" not in st.sql and "DROP " not in st.sql, st.sql
    assert len({s.sql for s in statements}) == len(statements)


def test_content_cost_controls_key_pair_user_keyless_stage_least_privilege(key_pair: KeyPair) -> None:
    sql = {s.kind: [x.sql for x in generate(settings(key_pair)) if x.kind == s.kind]
           for s in generate(settings(key_pair))}
    warehouse = " ".join(sql["warehouse"])
    assert "AUTO_SUSPEND = 60" in warehouse and "AUTO_RESUME = TRUE" in warehouse
    assert "WAREHOUSE_SIZE = 'XSMALL'" in warehouse and "INITIALLY_SUSPENDED = TRUE" in warehouse

    user = sql["user"][0]
    assert "TYPE = SERVICE" in user and "PASSWORD" not in user
    assert f"RSA_PUBLIC_KEY = '{normalize_public_key(key_pair.public_pem)}'" in user
    assert "BEGIN" not in user  # the PEM armor is stripped

    integration = sql["integration"][0]
    assert f"STORAGE_AWS_ROLE_ARN = '{ROLE_ARN}'" in integration
    assert "STORAGE_ALLOWED_LOCATIONS = ('s3://prod-archive/')" in integration
    assert "STORAGE_BLOCKED_LOCATIONS = ('s3://prod-archive/dead_letter/')" in integration

    stage = sql["stage"][0]
    assert "URL = 's3://prod-archive' " in stage  # no trailing slash: dlt's FILES are relative to the bucket root
    assert "STORAGE_INTEGRATION = AURORA_SYNC_S3" in stage
    assert "CREDENTIALS" not in stage and "AWS_KEY_ID" not in stage
    assert "TYPE = PARQUET" in sql["file_format"][0]

    grants = sql["grant"]
    assert "GRANT USAGE ON WAREHOUSE AURORA_SYNC_LOAD_WH TO ROLE AURORA_SYNC_LOADER" in grants
    assert "GRANT USAGE, CREATE SCHEMA ON DATABASE AURORA_SYNC TO ROLE AURORA_SYNC_LOADER" in grants
    assert "GRANT USAGE ON STAGE AURORA_SYNC.RAW.ARCHIVE_STAGE TO ROLE AURORA_SYNC_LOADER" in grants
    assert "GRANT ROLE AURORA_SYNC_LOADER TO USER AURORA_SYNC_LOADER" in grants
    for grant in grants:
        assert not re.search(r"\b(ALL|OWNERSHIP|MANAGE GRANTS|PUBLIC|ACCOUNTADMIN)\b", grant), grant
        assert "INTEGRATION" not in grant or grant.endswith("TO ROLE SYSADMIN"), grant


def test_script_switches_admin_roles_and_ends_with_the_terraform_handshake(key_pair: KeyPair) -> None:
    script = render(generate(settings(key_pair)))
    integration_at = script.index("CREATE STORAGE INTEGRATION")
    assert script.rindex("USE ROLE ACCOUNTADMIN;", 0, integration_at) > script.rindex("USE ROLE SYSADMIN;", 0,
                                                                                        integration_at)
    assert script.index("CREATE STORAGE INTEGRATION") < script.index("CREATE STAGE")
    assert "USE ROLE USERADMIN;" in script and "USE ROLE SECURITYADMIN;" in script
    assert "DESC INTEGRATION" in script and "snowflake_external_id" in script


@pytest.mark.parametrize(("override", "message"), [
    ({"bucket_url": "s3://prod-archive/customers_orders"}, "bucket root"),
    ({"storage_aws_role_arn": "arn:aws:iam::123:user/x"}, "IAM role ARN"),
    ({"warehouse_size": "HUGE"}, "warehouse_size"),
    ({"auto_suspend_seconds": 0}, "auto_suspend_seconds"),
    ({"database": "DROP TABLE x; --"}, "plain Snowflake identifier"),
])
def test_bad_settings_are_refused_with_the_key_to_fix(key_pair: KeyPair, override: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(BootstrapConfigError, match=message):
        settings(key_pair, **override)


def test_without_a_public_key_the_user_is_still_created_for_the_grants(key_pair: KeyPair) -> None:
    statements = generate(settings(key_pair, public_key=None))
    user = [s.sql for s in statements if s.kind == "user"]
    assert user[0].startswith("CREATE USER IF NOT EXISTS AURORA_SYNC_LOADER TYPE = SERVICE")
    assert not any("RSA_PUBLIC_KEY" in s for s in user)


def test_a_private_key_is_never_accepted_as_the_public_key(key_pair: KeyPair) -> None:
    with pytest.raises(BootstrapConfigError, match="private key"):
        normalize_public_key(key_pair.private_pem)


def test_terraform_outputs_supply_role_and_bucket(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"snowflake_storage_integration_role_arn": {"value": ROLE_ARN, "sensitive": False},
                                   "bucket_name": {"value": "prod-archive"}}))
    assert terraform_outputs(str(outputs)) == {"storage_aws_role_arn": ROLE_ARN, "bucket_url": "s3://prod-archive"}


def test_cli_runs_twice_against_fakesnow_and_converges(
    sf_env: dict[str, str], fake_sf: FakeSnowflake, bucket: Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bootstrap() == 0
    assert bootstrap() == 0  # idempotent: the second run succeeds and creates nothing new
    stages = sf_rows("SHOW STAGES IN SCHEMA AURORA_SYNC.RAW")
    assert [(r[1], r[4]) for r in stages] == [("ARCHIVE_STAGE", bucket.url)]
    formats = sf_rows("SHOW FILE FORMATS IN SCHEMA AURORA_SYNC.RAW")
    assert [(r[1], r[4]) for r in formats] == [("PARQUET_FORMAT", "PARQUET")]
    # the role switches ran, in order, before the statements of each admin role
    ran = [s for s in fake_sf.executed if s.startswith(("USE ROLE", "CREATE"))]
    assert ran[:5] == ["USE ROLE SYSADMIN", *[s for s in ran[1:5] if s.startswith("CREATE")]]
    assert any(s.startswith("CREATE STAGE IF NOT EXISTS AURORA_SYNC.RAW.ARCHIVE_STAGE URL") for s in ran)

    capsys.readouterr()
    assert bootstrap("--print") == 0
    printed = capsys.readouterr().out
    assert f"URL = '{bucket.url}'" in printed and "CREATE DATABASE IF NOT EXISTS AURORA_SYNC" in printed
    assert "RSA_PUBLIC_KEY" not in printed  # --only limited the kinds


def test_the_fakesnow_adapter_refuses_another_fakesnow_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import fakesnow

    from local import fakesnow_adapter

    assert fakesnow_adapter.check_version() == fakesnow_adapter.FAKESNOW_VERSION
    monkeypatch.setattr(fakesnow, "__version__", "0.13.0", raising=False)
    with pytest.raises(fakesnow_adapter.FakesnowVersionMismatch, match="re-check each patch"):
        fakesnow_adapter.check_version()
