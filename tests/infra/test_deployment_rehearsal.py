"""Deployment rehearsal: deploy the way docs/deployment.md does, with stand-ins only where the cloud is.

`terraform apply` of the root module against moto (the checklist's end state: the follower on with its merge
schedule, no run schedule for the followed pipeline), `vault/setup.sh` against OpenBao with **only** the `vault_*`
outputs, then the runner started as ECS would start it from the task definitions moto stored: the image's
entrypoint (Dockerfile) with the container's command (or the schedule's or `sync_task`'s override) and its
environment. The test changes only *where* things are:

- the Aurora writer endpoint and port: a PostgreSQL 15 cluster on 127.0.0.1 (`hostaddr`), TLS `verify-full`
  against a local CA for the same host name (the image ships the RDS CA bundle instead);
- S3 and every AWS API: the moto server Terraform applied to (`AWS_ENDPOINT_URL`); its dummy keys stand in for
  the task role;
- the Snowflake account: fakesnow's HTTP server (`host`/`port`/`protocol` added to the connector's query);
- `VAULT_ADDR`: an OpenBao dev server. OpenBao has no AWS auth method, so the task logs in through the AppRole
  role setup.sh writes under the same `VAULT_ROLE` and policy; the AWS auth role setup.sh writes is recorded and
  checked against the task definitions (mount, role, task role ARN);
- `/tmp`, the task's volume: a fresh directory per task, as each ECS task gets a fresh volume;
- the entrypoint `aurora-sync`: `python -m local.fakesnow_client`, the same CLI plus the one client-side setting
  fakesnow's server needs (one statement per request).

Vault's role, mounts and paths reach setup.sh only as Terraform outputs and reach the runner only as the task
definitions' environment, so a name changed on one side only fails here.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import s3fs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from local.fakesnow_adapter import FakeSnowflake, fake_snowflake_server
from local.openbao import LocalOpenBao, OpenBaoNotAvailable, find_bao
from local.postgres import LocalPostgres, PostgresNotAvailable, execute, find_bindir
from local.seed import seed
from local.tls import enable_tls
from runner.exit_codes import ExitCode
from tests.conftest import QUIET_SOURCE
from tests.helpers import log_events, pg_rows
from tests.vault.conftest import VaultDb, create_vault_admin, run_setup, setup_env
from tests.vault.test_terraform_names import AWS_AUTH_RECORDER, recorded_aws_auth

from .conftest import REPO, TERRAFORM_DIR, Terraform, copy_config
from .test_terraform import MOTO_ACCOUNT, REGION, _clients, _existing_infrastructure, _tf_ok
from .test_terraform import moto_endpoint as moto_endpoint  # a fixture: moto_server on 127.0.0.1

# test_terraform.py's worker: never two Terraform applies (two providers polling moto) at once on 2 cores
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("terraform"),
              pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")]

PIPELINE = "customers_orders"
DATABASE = "app"  # the Aurora database named in pipeline_environment
# The image's entrypoint binary -> what runs it here (module docstring).
ENTRYPOINT_STAND_INS = {"aurora-sync": [sys.executable, "-m", "local.fakesnow_client"]}
DEAD_PROXY = "http://127.0.0.1:9"  # anything not mapped to 127.0.0.1 fails instead of leaving the machine
FOLLOW_SECONDS = 8.0
COMPARED = {  # table -> columns compared between the source, Snowflake's verify and the restore
    "customers.customers": "id, email, full_name",
    "customers.addresses": "id, customer_id, city",
    "orders.orders": "id, customer_id, status::text, total::text",
    "orders.order_items": "order_id, line_no, sku, quantity",
}


# ---------------------------------------------------------------------------------------------------------
# Inputs of the two sides
# ---------------------------------------------------------------------------------------------------------
def example_pipeline_environment() -> dict[str, str]:
    """`pipeline_environment` of terraform/example.tfvars: the rehearsal deploys the example's names."""
    text = (TERRAFORM_DIR / "example.tfvars").read_text()
    block = re.search(r"^pipeline_environment\s*=\s*\{\n(.*?)^\}", text, re.M | re.S)
    assert block, "terraform/example.tfvars has no pipeline_environment block"
    return dict(re.findall(r'^\s*(\w+)\s*=\s*"([^"]*)"', block.group(1), re.M))


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's runtime stage gives every task: entrypoint, working directory, environment."""

    entrypoint: list[str]
    workdir: str
    env: dict[str, str]

    @classmethod
    def from_dockerfile(cls) -> Image:
        text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
        runtime = text[text.rindex("\nFROM "):]
        entrypoint = json.loads(re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", runtime, re.M)[-1])
        workdir = re.findall(r"^WORKDIR\s+(\S+)", runtime, re.M)[-1]
        env: dict[str, str] = {}
        for line in re.findall(r"^ENV\s+(.*)$", runtime, re.M):
            env.update(word.split("=", 1) for word in shlex.split(line))
        return cls(entrypoint, workdir, env)


def keypair(passphrase: str) -> tuple[str, str]:
    """The Snowflake loader's key pair (docs/secrets.md#the-snowflake-key-pair), encrypted with a passphrase."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase.encode())).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


# ---------------------------------------------------------------------------------------------------------
# Running a task as ECS would
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """One container of a task definition, and the overrides RunTask (a schedule, `sync_task`) sends with it."""

    definition: dict[str, Any]  # describe_task_definition()["taskDefinition"]
    command: list[str]
    override_env: tuple[tuple[str, str], ...] = ()

    @property
    def container(self) -> dict[str, Any]:
        return self.definition["containerDefinitions"][0]

    def environment(self) -> dict[str, str]:
        env = {e["name"]: e["value"] for e in self.container.get("environment", [])}
        return {**env, **dict(self.override_env)}


@dataclass
class Place:
    """Where the cloud's addresses are here (filled in as the stand-ins come up)."""

    tmp: Path
    moto: str
    source: LocalPostgres
    source_ca: Path
    bao: LocalOpenBao
    snowflake: FakeSnowflake

    def task_env(self, spec: TaskSpec, image: Image, volume: Path) -> dict[str, str]:
        """The image's ENV, then the task definition's and the override's environment, then the address map."""
        def on_volume(value: str) -> str:
            return str(volume) + value[len("/tmp"):] if value == "/tmp" or value.startswith("/tmp/") else value

        env = {k: on_volume(v) for k, v in {**image.env, **spec.environment()}.items()}
        env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
        for directory in (env.get("HOME"), env.get("XDG_CACHE_HOME"), env.get("DLT_DATA_DIR")):
            if directory:
                Path(directory).mkdir(parents=True, exist_ok=True)
        # Aurora -> the local cluster: same host name (TLS checks it), loopback address, local port, local CA
        assert env["SOURCES__POSTGRES__CREDENTIALS__HOST"], "the task has no source host"
        env["SOURCES__POSTGRES__CREDENTIALS__PORT"] = str(self.source.port)
        env["SOURCES__POSTGRES__CREDENTIALS__QUERY"] = json.dumps({"hostaddr": "127.0.0.1"})
        env["SOURCES__POSTGRES__SSL_ROOT_CERT"] = str(self.source_ca)
        # AWS -> moto; its dummy keys stand in for the task role's credentials (ECS hands them to the task)
        env.update(AWS_ENDPOINT_URL=self.moto, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        # Snowflake -> fakesnow's HTTP server
        query = json.loads(env.get("DESTINATION__SNOWFLAKE__CREDENTIALS__QUERY") or "{}")
        query.update(host=self.snowflake.host, port=self.snowflake.port, protocol=self.snowflake.protocol)
        env["DESTINATION__SNOWFLAKE__CREDENTIALS__QUERY"] = json.dumps(query)
        # Vault -> OpenBao; AWS IAM auth -> the AppRole role of the same name (OpenBao has no AWS auth method)
        assert env.get("VAULT_AUTH_METHOD") == "aws", "the tasks should log in to Vault with their task role"
        root = self.bao.client()
        role = env["VAULT_ROLE"]
        role_id = root.read(f"auth/approle/role/{role}/role-id")
        assert role_id is not None, f"Vault has no role {role!r}, the task definition's VAULT_ROLE"
        secret_id = root.adapter.post(f"/v1/auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        env.update(VAULT_ADDR=self.bao.addr, VAULT_AUTH_METHOD="approle", VAULT_AUTH_MOUNT="approle",
                   VAULT_ROLE_ID=role_id["data"]["role_id"], VAULT_SECRET_ID=secret_id)
        env.update(HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, NO_PROXY="127.0.0.1,localhost",
                   PYTHONPATH=str(REPO))  # PYTHONPATH: local.fakesnow_client, the entrypoint's stand-in
        return env


class Task:
    """One ECS task: the image's entrypoint + the command, in a working directory laid out like the image's."""

    def __init__(self, place: Place, image: Image, spec: TaskSpec, name: str) -> None:
        self.name = name
        volume = place.tmp / "tasks" / f"{name}-{uuid.uuid4().hex[:6]}"
        workdir = volume.parent / f"{volume.name}-app"  # stands in for the image's WORKDIR (image.workdir)
        (workdir / ".dlt").mkdir(parents=True)  # the image's WORKDIR holds only .dlt/config.toml
        (workdir / ".dlt" / "config.toml").write_bytes((REPO / ".dlt" / "config.toml").read_bytes())
        entrypoint = spec.container.get("entryPoint") or image.entrypoint
        assert entrypoint[0] in ENTRYPOINT_STAND_INS, f"no stand-in for the entrypoint {entrypoint}"
        argv = [*ENTRYPOINT_STAND_INS[entrypoint[0]], *entrypoint[1:], *spec.command]
        self.workdir = workdir
        self.argv = argv
        with (workdir / "stdout.txt").open("w") as stdout:
            self.process = subprocess.Popen(argv, cwd=workdir, env=place.task_env(spec, image, volume),
                                            stdout=stdout, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait(self, timeout: float = 240) -> int:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not finish in {timeout} s:\n{self.log}") from None
        self._reader.join(10)
        (self.workdir / "task.log").write_text("".join(self.lines))  # kept in tmp_path for a failure's post-mortem
        return self.process.returncode

    def stop(self) -> int:
        """What ECS does to a service's task: SIGTERM, then wait (the task definition's stopTimeout)."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout=120)

    def events(self, message: str) -> list[dict[str, Any]]:
        return log_events(list(self.lines), message)

    @property
    def log(self) -> str:
        return "".join(self.lines)[-5000:]


# ---------------------------------------------------------------------------------------------------------
# The rehearsal
# ---------------------------------------------------------------------------------------------------------
def _apply(terraform: Terraform, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """`terraform apply`, then `terraform output -json > outputs.json` (deployment.md step 4)."""
    var_files = ("-var-file=example.tfvars", "-var-file=moto.tfvars.json")
    terraform.init(workdir)
    _tf_ok(terraform.run("apply", "-auto-approve", "-input=false", "-no-color", *var_files, cwd=workdir, env=env,
                         timeout=900), "terraform apply")
    raw = _tf_ok(terraform.run("output", "-json", cwd=workdir, env=env), "terraform output")
    (workdir / "outputs.json").write_text(raw)
    return {name: value["value"] for name, value in json.loads(raw).items()}


def _source_cluster(stack: contextlib.ExitStack, endpoint: str) -> tuple[LocalPostgres, Path]:
    """The writer: TLS for the endpoint's name, a seeded database, the owner's publication (step 6)."""
    try:
        server = LocalPostgres().start()
    except PostgresNotAvailable as exc:
        pytest.skip(str(exc))
    stack.callback(server.cleanup)
    ca = enable_tls(server, [endpoint, "127.0.0.1"])
    execute(server.url(), f'CREATE DATABASE "{DATABASE}"')
    seed(server.url(database=DATABASE), customers=60, orders=150)
    # step 6: the publication, created by the tables' owner with the grants of sources/postgres/grants.sql
    psql = subprocess.run(
        [str(find_bindir() / "psql"), server.url(database=DATABASE), "-q", "-v", "sync_role=aurora_sync",
         "-v", "schemas=customers,orders", "-v", f"publication=aurora_sync_{PIPELINE}", "-v", "connection_limit=10",
         "-f", str(REPO / "sources" / "postgres" / "grants.sql")],
        capture_output=True, text=True, timeout=60, check=False)
    assert psql.returncode == 0, psql.stderr
    return server, ca


def _vault(stack: contextlib.ExitStack, tmp: Path, source: LocalPostgres, outputs: dict[str, Any],
           ) -> tuple[LocalOpenBao, dict[str, dict[str, str]]]:
    """Step 7: vault/setup.sh with the names Terraform output (docs/secrets.md#vault-names), nothing else."""
    try:
        find_bao()
    except OpenBaoNotAvailable as exc:
        pytest.skip(str(exc))
    (tmp / "bao").mkdir()
    bao = LocalOpenBao(audit_log=tmp / "bao" / "audit.log", base_dir=tmp / "bao").start()
    stack.callback(bao.cleanup)
    # any database user still leased when the test ends (the tasks revoke their own at exit)
    stack.callback(lambda: bao.client().adapter.put(
        f"/v1/sys/leases/revoke-prefix/{outputs['vault_database_mount']}/creds"))
    # The role Vault manages users with (docs/secrets.md). Aurora's rds_replication lets its members replicate;
    # PostgreSQL 15 has only the REPLICATION attribute, which only a superuser can give: so here the Vault admin
    # is a superuser and the dynamic users get REPLICATION besides setup.sh's own statements.
    admin, password = f"vault_admin_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    create_vault_admin(source.url(database=DATABASE), admin, password)
    execute(source.url(), f"ALTER ROLE {admin} SUPERUSER")
    db = VaultDb(DATABASE, source.url(database=DATABASE), source.port, admin)
    names = {name.upper(): str(value) for name, value in outputs.items() if name.startswith("vault_")}
    recorder, log = tmp / "vault-with-aws-auth", tmp / "aws-auth.log"
    recorder.write_text(AWS_AUTH_RECORDER)
    recorder.chmod(0o755)
    aws_auth = {"ENABLE_AWS_AUTH": "1", "VAULT_BIN": str(recorder), "REAL_BAO": find_bao(), "AWS_AUTH_LOG": str(log)}
    first = run_setup(setup_env(bao, db, PG_ADMIN_PASSWORD=password, **aws_auth, **names))
    assert first.returncode == 0, first.stdout + first.stderr
    assert password not in first.stdout + first.stderr
    role_path = f"{outputs['vault_database_mount']}/roles/{outputs['vault_database_role']}"
    statements = bao.client().read(role_path)["data"]["creation_statements"]
    statements = [*statements, 'ALTER ROLE "{{name}}" WITH REPLICATION']
    again = run_setup(setup_env(bao, db, PG_CREATION_STATEMENTS=";\n".join(statements), **aws_auth, **names))
    assert again.returncode == 0, again.stdout + again.stderr
    return bao, recorded_aws_auth(log)


def _snowflake_key(bao: LocalOpenBao, outputs: dict[str, Any], tmp: Path) -> Path:
    """Step 8: the loader's key pair; the private key and passphrase go to Vault where the outputs say."""
    passphrase = secrets.token_urlsafe(18)
    private, public = keypair(passphrase)
    bao.client().secrets.kv.v2.create_or_update_secret(
        path=f"{outputs['vault_kv_prefix']}/snowflake", mount_point=outputs["vault_kv_mount"],
        secret={"private_key": private, "private_key_passphrase": passphrase})
    (tmp / "rsa_key.pub").write_text(public)
    return tmp / "rsa_key.pub"


def _bootstrap(tmp: Path, fake: FakeSnowflake, outputs_file: Path, public_key: Path) -> None:
    """Step 8: `snowflake-bootstrap --terraform-outputs outputs.json` from a checkout, as an admin.

    fakesnow has no users, roles, warehouses or integrations: only the objects it can create are bootstrapped.
    """
    checkout = tmp / "checkout"
    (checkout / ".dlt").mkdir(parents=True)
    (checkout / ".dlt" / "config.toml").write_bytes((REPO / ".dlt" / "config.toml").read_bytes())
    admin = f"snowflake://admin:unused-by-the-fake@fakeaccount/?host={fake.host}&port={fake.port}" \
            f"&protocol={fake.protocol}"
    result = subprocess.run(
        [*ENTRYPOINT_STAND_INS["aurora-sync"], "snowflake-bootstrap", "--terraform-outputs", str(outputs_file),
         "--public-key-file", str(public_key), "--only", "database", "schema", "file_format", "stage"],
        cwd=checkout, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(checkout), "PYTHONPATH": str(REPO),
             "SNOWFLAKE_BOOTSTRAP__CREDENTIALS": admin, "DLT_DATA_DIR": str(checkout / "dlt"),
             "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost"})
    assert result.returncode == 0, result.stderr[-4000:]


def _sf_rows(fake: FakeSnowflake, database: str, sql: str) -> list[tuple[Any, ...]]:
    import snowflake.connector

    conn = snowflake.connector.connect(user="analyst", password="unused-by-the-fake", account="fakeaccount",
                                       database=database, network_timeout=60, **fake.connect_params())
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _write_changes(dsn: str) -> None:
    """The application writing while the follower runs: inserts, updates, deletes on both schemas."""
    execute(dsn,
            "INSERT INTO customers.customers (id, email, full_name, country) VALUES "
            "(1001, 'new1@example.com', 'New One', 'FR'), (1002, 'new2@example.com', 'New Two', 'DE')",
            "UPDATE customers.customers SET full_name = full_name || ' (moved)' WHERE id % 7 = 0",
            "INSERT INTO orders.orders (id, customer_id, status, total, placed_at) "
            "VALUES (5001, 1001, 'new', 12.50, now())",
            "UPDATE orders.orders SET status = 'paid', total = total + 1 WHERE id % 5 = 0",
            "DELETE FROM orders.order_items WHERE order_id % 11 = 0")


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in pg_rows(dsn, f"SELECT {COMPARED[table]} FROM {table} ORDER BY 1, 2")]


def test_deployment_rehearsal(terraform: Terraform, moto_endpoint: str, tmp_path: Path) -> None:
    """Terraform -> task definitions -> setup.sh -> setup, follow, merge, verify, restore: each exits 0, in sync."""
    image = Image.from_dockerfile()
    client = _clients(moto_endpoint)
    existing = _existing_infrastructure(client)
    writer = client("rds").describe_db_clusters(DBClusterIdentifier=existing["aurora_cluster_identifier"])
    endpoint = writer["DBClusters"][0]["Endpoint"]
    workdir = copy_config(tmp_path / "terraform", include_tests=False)
    for override in sorted((TERRAFORM_DIR / "tests" / "moto").glob("*.tf")):
        (workdir / override.name).write_bytes(override.read_bytes())
    (workdir / "moto.tfvars.json").write_text(json.dumps({
        **existing, "moto_endpoint": moto_endpoint, "allowed_account_ids": [MOTO_ACCOUNT],
        # step 12's end state: the pipeline follows (and is merged every 5 min), no schedule runs it
        "schedules": {}, "cdc_follow": {"enabled": True, "pipeline": PIPELINE, "merge_interval_minutes": 5},
        # the example's settings plus the writer endpoint (deployment.md step 2)
        "pipeline_environment": {**example_pipeline_environment(),
                                 "SOURCES__POSTGRES__CREDENTIALS__DRIVERNAME": "postgresql",
                                 "SOURCES__POSTGRES__CREDENTIALS__HOST": endpoint,
                                 "SOURCES__POSTGRES__CREDENTIALS__PORT": "5432",
                                 "SOURCES__POSTGRES__CREDENTIALS__DATABASE": DATABASE,
                                 # the suite keeps both cores busy: the source guard's CPU probe would pause every
                                 # chunk (tests/conftest.py QUIET_SOURCE); an operator sets it the same way
                                 **QUIET_SOURCE},
    }, indent=2))
    tf_env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
              "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost"}

    with contextlib.ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        applying = pool.submit(_apply, terraform, workdir, tf_env)  # ~2 min of provider polling: overlap it
        source, source_ca = _source_cluster(stack, endpoint)
        dsn = source.url(database=DATABASE)
        s3 = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_endpoint,
                               client_kwargs={"region_name": REGION}, use_listings_cache=False,
                               skip_instance_cache=True)
        fake = stack.enter_context(fake_snowflake_server(s3))
        outputs = applying.result(timeout=900)
        print(f"terraform apply and outputs: {time.monotonic() - started:.0f} s")

        # --- what Terraform created: the task definitions ECS would run
        ecs = client("ecs")

        def definition(arn: str) -> dict[str, Any]:
            return dict(ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"])

        service = ecs.describe_services(cluster=outputs["ecs_cluster_arn"], services=[outputs["cdc_service_name"]])
        follower_definition = definition(service["services"][0]["taskDefinition"])
        follower = TaskSpec(follower_definition, follower_definition["containerDefinitions"][0]["command"])
        assert follower.command[:3] == ["run", "--pipeline", PIPELINE] and "--follow" in follower.command
        schedule_name = outputs["merge_schedule_name"]
        group = outputs["schedule_arns"][schedule_name].split(":schedule/", 1)[1].split("/")[0]
        target = client("scheduler").get_schedule(Name=schedule_name, GroupName=group)["Target"]
        override = json.loads(target["Input"])["containerOverrides"][0]
        merge = TaskSpec(definition(target["EcsParameters"]["TaskDefinitionArn"]), override["command"],
                         tuple((e["name"], e["value"]) for e in override.get("environment", [])))
        one_off = definition(outputs["task_definition_arns"][f"{PIPELINE}/incremental"])  # deployment.md sync_task
        for spec in (follower, merge, TaskSpec(one_off, [])):
            assert not spec.container.get("secrets"), "secrets come from Vault, not from the task definition"

        # --- Vault, with the outputs only; the AWS auth role it wrote is the one the task definitions log in to
        bao, aws_auth = _vault(stack, tmp_path, source, outputs)
        for spec in (follower, merge, TaskSpec(one_off, [])):
            env = spec.environment()
            assert aws_auth["enable"] == {"-path": env["VAULT_AUTH_MOUNT"]}, aws_auth
            role = aws_auth.get(f"auth/{env['VAULT_AUTH_MOUNT']}/role/{env['VAULT_ROLE']}")
            assert role is not None, f"setup.sh wrote no AWS auth role for {env['VAULT_ROLE']}: {aws_auth}"
            assert spec.definition["taskRoleArn"] in role["bound_iam_principal_arn"].split(","), role
        public_key = _snowflake_key(bao, outputs, tmp_path)
        _bootstrap(tmp_path, fake, workdir / "outputs.json", public_key)

        # --- moto cannot evaluate bucket policy conditions: it would apply each conditional Deny to every request
        policy = json.loads(client("s3").get_bucket_policy(Bucket=outputs["bucket_name"])["Policy"])
        assert all(s["Effect"] == "Deny" and s.get("Condition") for s in policy["Statement"]), policy
        client("s3").delete_bucket_policy(Bucket=outputs["bucket_name"])

        place = Place(tmp_path, moto_endpoint, source, source_ca, bao, fake)

        def run(spec: TaskSpec, name: str, *command: str, env: tuple[tuple[str, str], ...] = ()) -> Task:
            task = Task(place, image, TaskSpec(spec.definition, list(command) or spec.command,
                                               spec.override_env + env), name)
            code = task.wait()
            assert code == ExitCode.SUCCESS, f"{name} ({task.argv[3:]}) exited {code}:\n{task.log}"
            return task

        # --- step 11: setup (slot and initial copy), as a one-off task
        setup = run(TaskSpec(one_off, []), "setup", "setup")
        identity = setup.events("identity")[0]  # who the task was: Terraform's names, TLS to the writer's name
        assert (identity["vault_role"], identity["vault_policies"]) == (outputs["vault_role"], outputs["vault_policy"])
        assert (identity["db_host"], identity["db_sslmode"], identity["db_ssl"]) == (endpoint, "verify-full", True)
        assert identity["aws_account"] == MOTO_ACCOUNT, identity
        # --- step 12: the follower (the service's task), while the application writes; then ECS stops it
        following = Task(place, image, follower, "follower")
        time.sleep(FOLLOW_SECONDS / 2)
        assert following.process.poll() is None, following.log
        _write_changes(dsn)
        time.sleep(FOLLOW_SECONDS / 2)
        code = following.stop()
        assert code == ExitCode.SUCCESS, f"the follower exited {code} on SIGTERM:\n{following.log}"
        assert following.events("cdc batch landed"), f"the follower landed nothing:\n{following.log}"
        assert not following.events("cdc batch loaded"), "the follower must land, the merge loads"
        # setup's copy (loaded directly) carries over to the landing follower: no table is copied a second time
        assert not following.events("table snapshotted"), f"the follower copied tables again:\n{following.log}"
        # --- the merge schedule's task
        merged = run(merge, "merge")
        assert sum(e.get("batches", 0) for e in merged.events("merge succeeded")) >= 1, merged.log
        # --- step 13: verify
        verified = run(TaskSpec(one_off, []), "verify", "verify", "--checksum")
        tables = {e["table"]: e["status"] for e in verified.events("table verified")}
        assert tables == dict.fromkeys(COMPARED, "ok"), f"{tables}\n{verified.log}"
        assert [e["outcome"] for e in verified.events("verify finished")] == ["in_sync"], verified.log
        database = one_off_env_database(one_off)
        assert _sf_rows(fake, database, f"SELECT count(*) FROM {PIPELINE.upper()}.ORDERS__ORDERS") == \
            pg_rows(dsn, "SELECT count(*) FROM orders.orders")
        # --- the disaster-recovery drill: every table from the S3 archive alone, into a recovery database
        execute(source.url(), 'CREATE DATABASE "recovery"')
        target = source.url(database="recovery")
        run(TaskSpec(one_off, []), "restore", "restore", "--all", "--to",
            f"postgresql://{source.user}@127.0.0.1:{source.port}/recovery", env=(("PGPASSWORD", source.password),))
        for table in COMPARED:
            assert _rows(target, table) == _rows(dsn, table), f"{table} restored differs from the source"
        print(f"rehearsal: {time.monotonic() - started:.0f} s")


def one_off_env_database(definition: dict[str, Any]) -> str:
    """The Snowflake database the task definition loads."""
    env = {e["name"]: e["value"] for e in definition["containerDefinitions"][0]["environment"]}
    return env["DESTINATION__SNOWFLAKE__CREDENTIALS__DATABASE"]
