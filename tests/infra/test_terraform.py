"""Offline checks of terraform/: fmt, validate, `terraform test`, checkov, and an apply against moto.

`terraform test` (67 runs under the mock provider) is started in the background as soon as this module
runs, so that it overlaps with the moto apply, which spends most of its time in the provider's polling.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.moto_s3 import moto_server_command

from .conftest import REPO, TERRAFORM_DIR, Terraform, copy_config, wait_for

# one worker runs them all: they share one initialised copy of terraform/ and a background `terraform test`
pytestmark = pytest.mark.xdist_group("terraform")

REGION = "eu-west-1"
MOTO_ACCOUNT = "123456789012"
SECRET_PATTERNS = (
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key ID
    re.compile(r"(?i)(password|secret_key|secret_access_key|private_key|token)\s*=\s*\"[^\"]+\""),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bhvs\.[A-Za-z0-9_-]{20,}"),  # Vault service token
)


# ---------------------------------------------------------------------------------------------------------
# `terraform test`, started early in the background
# ---------------------------------------------------------------------------------------------------------
class BackgroundRun:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log

    def result(self, timeout: float) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        return code, self.log.read_text()


@pytest.fixture(scope="module")
def terraform_test_run(
    request: pytest.FixtureRequest, terraform: Terraform, tf_workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundRun]:
    log = tmp_path_factory.mktemp("tftest") / "terraform-test.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(terraform.binary), "test", "-no-color"],
            cwd=tf_workdir,
            env=terraform.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    run = BackgroundRun(process, log)
    yield run
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_terraform_test_early(request: pytest.FixtureRequest) -> None:
    """Kick off `terraform test` at the start of the module if it is among the selected tests."""
    if any(item.name == "test_terraform_test" for item in request.session.items):
        request.getfixturevalue("terraform_test_run")


# ---------------------------------------------------------------------------------------------------------
# Static checks
# ---------------------------------------------------------------------------------------------------------
def test_fmt() -> None:
    binary = shutil.which("terraform")  # fmt needs no provider, so no plugin directory either
    if binary is None:
        pytest.skip("terraform is not installed (needs Terraform >= 1.11 on PATH)")
    result = subprocess.run(
        [binary, "fmt", "-check", "-recursive", "-diff", "-no-color"],
        cwd=TERRAFORM_DIR,
        env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": "/dev/null"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"terraform fmt found unformatted files:\n{result.stdout}{result.stderr}"


def test_validate(terraform: Terraform, tf_workdir: Path) -> None:
    result = terraform.run("validate", "-json", "-no-color", cwd=tf_workdir)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["valid"], json.dumps(report["diagnostics"], indent=2)
    assert report["error_count"] == 0
    assert report["warning_count"] == 0, json.dumps(report["diagnostics"], indent=2)


def test_cloud_block_and_provider_pin() -> None:
    versions = (TERRAFORM_DIR / "versions.tf").read_text()
    assert re.search(r"\bcloud\s*\{\s*(#.*\n\s*)*workspaces\s*\{\s*tags\s*=", versions), (
        "missing cloud { workspaces { tags } }"
    )
    assert re.search(r'source\s*=\s*"hashicorp/aws"\s*\n\s*version\s*=\s*"~> 5\.100"', versions)
    providers = (TERRAFORM_DIR / "providers.tf").read_text()
    assert "default_tags" in providers


def test_no_secrets_in_terraform() -> None:
    offenders = []
    for path in sorted(TERRAFORM_DIR.rglob("*")):
        if path.is_dir() or ".terraform" in path.parts or path.suffix not in {".tf", ".tfvars", ".hcl", ".json"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if any(p.search(line) for p in SECRET_PATTERNS):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "secret-looking values in terraform/:\n" + "\n".join(offenders)


def _validation_rules(path: Path) -> dict[str, int]:
    """Number of validation blocks per variable in a variables.tf."""
    counts: dict[str, int] = {}
    current = None
    for line in path.read_text().splitlines():
        match = re.match(r'^variable "(\w+)"', line)
        if match:
            current = match.group(1)
            counts[current] = 0
        elif current and re.match(r"^\s+validation\s*\{", line):
            counts[current] += 1
    return {name: n for name, n in counts.items() if n}


def test_every_validation_has_an_expect_failures_run() -> None:
    """Each validation rule of the root module has at least one run that expects it to fail."""
    root_tests = (TERRAFORM_DIR / "tests" / "root.tftest.hcl").read_text()
    expected = re.findall(r"expect_failures\s*=\s*\[([^\]]*)\]", root_tests)
    runs_per_variable: dict[str, int] = {}
    for group in expected:
        for name in re.findall(r"var\.(\w+)", group):
            runs_per_variable[name] = runs_per_variable.get(name, 0) + 1
    missing = {
        name: f"{runs_per_variable.get(name, 0)} run(s) for {rules} rule(s)"
        for name, rules in _validation_rules(TERRAFORM_DIR / "variables.tf").items()
        if runs_per_variable.get(name, 0) < rules
    }
    assert not missing, f"validation rules without an expect_failures run: {missing}"


def test_checkov(checkov: Path) -> None:
    result = subprocess.run(
        [str(checkov), "-d", "terraform", "--framework", "terraform", "--skip-download", "-o", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    report = next(r for r in reports if r.get("check_type") == "terraform")
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, "checkov failures:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 100, summary
    # Every skip carries its reason inline (#checkov:skip=ID:reason).
    for check in report["results"]["skipped_checks"]:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) >= 30, f"{check['check_id']} on {check['resource']} is skipped without a real reason"
    assert result.returncode == 0, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------
# Apply against moto
# ---------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def moto_endpoint(moto_server_binary: Path, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto.log").open("w")
    process = subprocess.Popen(
        [*moto_server_command(str(moto_server_binary)), "-H", "127.0.0.1", "-p", str(port)],
        env={"PATH": "/usr/bin:/bin", "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: _is_up(url) or process.poll() is not None, timeout=60), "moto did not start"
        assert process.poll() is None, (tmp_path / "moto.log").read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _clients(endpoint: str) -> Any:
    import boto3

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint)

    return client


def _existing_infrastructure(client: Any) -> dict[str, Any]:
    """What the configuration expects to exist already: a VPC with private subnets, Aurora and its SG."""
    ec2 = client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in enumerate("ab", start=1)
    ]
    route_table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    aurora_sg = ec2.create_security_group(GroupName="orders-db", Description="Aurora", VpcId=vpc)["GroupId"]
    client("rds").create_db_cluster(
        DBClusterIdentifier="orders-db",
        Engine="aurora-postgresql",
        EngineVersion="16.4",
        MasterUsername="postgres",
        ManageMasterUserPassword=True,
        VpcSecurityGroupIds=[aurora_sg],
    )
    oidc = client("iam").create_open_id_connect_provider(
        Url="https://token.actions.githubusercontent.com",
        ClientIDList=["sts.amazonaws.com"],
        ThumbprintList=["6938fd4d98bab03faadb97b34396831e3780aea1"],
    )["OpenIDConnectProviderArn"]
    return {
        "vpc_id": vpc,
        "private_subnet_ids": subnets,
        "private_route_table_ids": [route_table],
        "aurora_security_group_id": aurora_sg,
        "aurora_cluster_identifier": "orders-db",
        "github_oidc_provider_arn": oidc,
    }


def _tf_ok(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, f"{what} failed:\n{result.stdout[-15000:]}\n{result.stderr[-15000:]}"
    return result.stdout


@pytest.mark.slow
def test_apply_against_moto(terraform: Terraform, moto_endpoint: str, tmp_path: Path) -> None:
    """The whole root configuration (every module) applied to moto, then a clean plan, then destroy.

    Not covered by moto: real IAM evaluation (policies are stored, not enforced), KMS key policies, VPC
    endpoint DNS, that ECS actually starts tasks and that Scheduler actually fires (both only store the
    configuration), alarms changing state, and CloudWatch dashboards rendering.
    """
    workdir = copy_config(tmp_path / "terraform", include_tests=False)
    for override in sorted((TERRAFORM_DIR / "tests" / "moto").glob("*.tf")):
        shutil.copy(override, workdir / override.name)

    client = _clients(moto_endpoint)
    existing = _existing_infrastructure(client)
    overrides = {
        **existing,
        "moto_endpoint": moto_endpoint,
        "allowed_account_ids": [MOTO_ACCOUNT],
        # A second pipeline that follows (the example's pipeline is scheduled; a follower holds its lock).
        "pipelines": ["customers_orders", "orders_cdc"],
        "cdc_follow": {"enabled": True, "pipeline": "orders_cdc"},
        # the optional trail of the archive's data events (off by default: organisation trails record them)
        "enable_cloudtrail_data_events": True,
    }
    (workdir / "moto.tfvars.json").write_text(json.dumps(overrides, indent=2))
    var_files = ("-var-file=example.tfvars", "-var-file=moto.tfvars.json")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        # Anything not sent to moto would go through this dead proxy and fail, instead of leaving the machine.
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }

    terraform.init(workdir)
    apply = _tf_ok(
        terraform.run(
            "apply", "-auto-approve", "-input=false", "-no-color", *var_files, cwd=workdir, env=env, timeout=900
        ),
        "terraform apply",
    )
    # The cluster still runs its default parameter group: the check block warns (and does not block).
    assert "does not use parameter group" in apply, apply[-5000:]

    outputs = {
        k: v["value"]
        for k, v in json.loads(_tf_ok(terraform.run("output", "-json", cwd=workdir, env=env), "output")).items()
    }
    bucket = outputs["bucket_name"]
    assert bucket == f"aurora-snowflake-sync-prod-{MOTO_ACCOUNT}-{REGION}"

    # --- the bucket: encryption with the customer-managed key, versioning, public access block, TLS only
    s3 = client("s3")
    sse = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert sse["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert sse["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == outputs["data_kms_key_arn"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    assert '"aws:SecureTransport":"false"' in s3.get_bucket_policy(Bucket=bucket)["Policy"].replace(" ", "")
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert set(rules) == {"archive-customers_orders", "archive-orders_cdc", "dead-letter", "landing"}
    assert rules["dead-letter"]["Filter"]["Prefix"] == "dead_letter/"
    # the CDC landing area: an unmerged load never transitions or expires (`merge` deletes what it applied)
    landing = rules["landing"]
    assert landing["Filter"]["Prefix"] == "_landing/" and landing["Status"] == "Enabled"
    assert "Transitions" not in landing and "NoncurrentVersionTransitions" not in landing
    assert landing["Expiration"] == {"ExpiredObjectDeleteMarker": True}, landing
    assert landing["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert landing["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    assert not any(r["Filter"]["Prefix"].startswith("_") for i, r in rules.items() if i != "landing")
    # --- audit: server access logs always on (into the created <bucket>-logs), the archive's data-event trail
    assert outputs["access_log_bucket"] == f"{bucket}-logs"
    logging_target = s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]
    assert logging_target["TargetBucket"] == f"{bucket}-logs" and logging_target["TargetPrefix"] == f"s3/{bucket}/"
    trail = client("cloudtrail").get_trail(Name=outputs["archive_cloudtrail_arn"])["Trail"]
    assert trail["S3BucketName"] == f"{bucket}-logs" and trail["LogFileValidationEnabled"]
    selectors = client("cloudtrail").get_event_selectors(TrailName=outputs["archive_cloudtrail_arn"])
    fields = {f["Field"]: f for f in selectors["AdvancedEventSelectors"][0]["FieldSelectors"]}
    assert fields["resources.ARN"]["StartsWith"] == [f"arn:aws:s3:::{bucket}/"]
    key_id = outputs["data_kms_key_arn"].rsplit("/", 1)[-1]
    assert client("kms").get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"]

    # --- the schedules: each targets the task definition of its mode, with retries, DLQ, no window
    scheduler = client("scheduler")
    for name, mode in {
        "customers_orders-incremental": "incremental",
        "customers_orders-weekly-snapshot": "snapshot",
    }.items():
        schedule = scheduler.get_schedule(Name=name, GroupName="aurora-snowflake-sync-prod")
        target = schedule["Target"]
        assert (
            target["EcsParameters"]["TaskDefinitionArn"] == outputs["task_definition_arns"][f"customers_orders/{mode}"]
        )
        assert target["Arn"] == outputs["ecs_cluster_arn"]
        assert target["DeadLetterConfig"]["Arn"].endswith(":aurora-snowflake-sync-prod-schedules-dlq")
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == 3
        assert schedule["FlexibleTimeWindow"]["Mode"] == "OFF"
        assert json.loads(target["Input"])["containerOverrides"][0]["command"][:5] == [
            "run",
            "--pipeline",
            "customers_orders",
            "--mode",
            mode,
        ]
    assert (
        scheduler.get_schedule(Name="customers_orders-incremental", GroupName="aurora-snowflake-sync-prod")[
            "ScheduleExpression"
        ]
        == "rate(15 minutes)"
    )

    # --- ECS: read-only root filesystem, non-root, the follow service
    ecs = client("ecs")
    for arn in outputs["task_definition_arns"].values():
        container = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["containerDefinitions"][0]
        assert container["readonlyRootFilesystem"] is True
        assert container["user"] == "10001:10001"
    assert len(outputs["task_definition_arns"]) == 6
    service = ecs.describe_services(cluster=outputs["ecs_cluster_arn"], services=[outputs["cdc_service_name"]])
    assert service["services"][0]["desiredCount"] == 1
    assert service["services"][0]["taskDefinition"] == outputs["task_definition_arns"]["orders_cdc/cdc"]
    # the follower lands; the merge schedule applies its batches every merge_interval_minutes (example: 5)
    follower = ecs.describe_task_definition(taskDefinition=outputs["task_definition_arns"]["orders_cdc/cdc"])
    follower_env = {e["name"]: e["value"] for e in follower["taskDefinition"]["containerDefinitions"][0]["environment"]}
    assert follower_env["SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS"] == "300"
    merge = scheduler.get_schedule(Name="orders_cdc-merge", GroupName="aurora-snowflake-sync-prod")
    assert merge["ScheduleExpression"] == "rate(5 minutes)"
    assert json.loads(merge["Target"]["Input"])["containerOverrides"][0]["command"] == [
        "merge", "--pipeline", "orders_cdc"]

    # --- ECR, Snowflake trust, alarms wired to SNS
    repo = client("ecr").describe_repositories(repositoryNames=["aurora-snowflake-sync-prod"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"]
    trust = client("iam").get_role(RoleName="aurora-snowflake-sync-prod-snowflake")["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert (
        trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"]
        == "AB12345_SFCRole=2_eXaMpLeExTeRnAlId0000="
    )
    # the follower's task role reaches its landing area (land, merge, delete); the Snowflake role does not
    iam = client("iam")

    def policy(role: str, name: str) -> str:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        return document if isinstance(document, str) else json.dumps(document)

    task_policy = json.loads(policy("aurora-snowflake-sync-prod-orders_cdc-task", "pipeline-orders_cdc"))
    read_write = next(s for s in task_policy["Statement"] if s["Sid"] == "ReadWriteOwnPrefixes")
    assert f"arn:aws:s3:::{bucket}/_landing/orders_cdc/*" in read_write["Resource"]
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(read_write["Action"])
    listing = next(s for s in task_policy["Statement"] if s["Sid"] == "ListOwnPrefixes")
    assert "_landing/orders_cdc/*" in listing["Condition"]["StringLike"]["s3:prefix"]
    assert "_landing" not in policy("aurora-snowflake-sync-prod-snowflake", "read-staged-files")
    alarms = client("cloudwatch").describe_alarms(AlarmNamePrefix="aurora-snowflake-sync-prod-")["MetricAlarms"]
    # five per pipeline and its verify's drift and verify-stale, plus error logs, DLQ depth and failed tasks, plus
    # the follower's landing and merge lag
    assert len(alarms) == (5 + 2) * 2 + 3 + 2
    assert all(a["AlarmActions"] == [outputs["alerts_topic_arn"]] for a in alarms)

    # --- the runbook step of docs/deployment.md, then a plan with no change and no warning
    client("rds").modify_db_cluster(
        DBClusterIdentifier="orders-db",
        DBClusterParameterGroupName=outputs["aurora_parameter_group_name"],
        ApplyImmediately=True,
    )
    plan = terraform.run("plan", "-detailed-exitcode", "-input=false", "-no-color", *var_files, cwd=workdir, env=env)
    assert plan.returncode == 0, (
        f"second plan is not clean (exit {plan.returncode}):\n{plan.stdout[-15000:]}{plan.stderr}"
    )
    assert "Warning" not in plan.stdout + plan.stderr, plan.stdout[-5000:] + plan.stderr

    # moto delivers the archive's server access logs like S3 does; audit logs are never force-destroyed, so
    # emptying the log bucket is the deliberate step a real teardown takes too
    logs_bucket = outputs["access_log_bucket"]
    delivered = s3.list_objects_v2(Bucket=logs_bucket, Prefix=f"s3/{bucket}/").get("KeyCount", 0)
    assert delivered > 0, "no server access log of the archive bucket was delivered"
    s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})  # or destroy's own calls log into it again
    s3.delete_bucket_policy(Bucket=logs_bucket)  # its TLS-only rule refuses the test's plain-HTTP client
    listing = s3.list_object_versions(Bucket=logs_bucket)
    for version in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        s3.delete_object(Bucket=logs_bucket, Key=version["Key"], VersionId=version["VersionId"])

    _tf_ok(
        terraform.run(
            "destroy", "-auto-approve", "-input=false", "-no-color", *var_files, cwd=workdir, env=env, timeout=900
        ),
        "terraform destroy",
    )
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert scheduler.list_schedules()["Schedules"] == []


# Last, so that the background run overlaps checkov and the moto apply above.
def test_terraform_test(terraform_test_run: BackgroundRun) -> None:
    code, output = terraform_test_run.result(timeout=900)
    summary = re.search(r"(\d+) passed, (\d+) failed", output)
    assert code == 0 and summary, output[-20000:]
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert failed == 0, output[-20000:]
    test_files = sorted(p.name for p in (TERRAFORM_DIR / "tests").glob("*.tftest.hcl"))
    ran_files = sorted(set(re.findall(r"tests/([\w.-]+\.tftest\.hcl)\.\.\. pass", output)))
    assert ran_files == test_files, f"not every test file passed: {ran_files} != {test_files}"
    # Every run block must have run (and none skipped): count them in the files.
    runs = sum(len(re.findall(r'^run "', (TERRAFORM_DIR / "tests" / f).read_text(), re.M)) for f in test_files)
    assert passed == runs, f"{passed} runs passed, {runs} run blocks exist\n{output[-5000:]}"
