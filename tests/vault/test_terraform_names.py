"""One set of Vault names: what Terraform gives the ECS tasks is what vault/setup.sh creates.

Terraform (`local.vault_names` in terraform/main.tf) sets the tasks' VAULT_ROLE, VAULT_AUTH_MOUNT, VAULT_KV_MOUNT
and secret paths, and outputs every name as `vault_*`; setup.sh reads each from the environment variable of the
same name in capitals and defaults to Terraform's defaults (docs/secrets.md#vault-names). Both sides are read from
the code: the real configuration through `terraform console`, setup.sh by running it against OpenBao. So a role,
mount, path or policy renamed on one side only fails here:

- setup.sh's own defaults create what Terraform's defaults give the tasks;
- with a non-default `vault_role`, setup.sh run with Terraform's outputs creates that;
- in both cases a login as the tasks' role reads every secret the tasks map, under the policy Terraform names;
- docs/secrets.md's configuration lines name the same things.

OpenBao has no AWS auth method: a VAULT_BIN wrapper records what setup.sh asks of it (mount, role, policy, bound
task roles), and the tasks' login goes through the AppRole role that setup.sh writes with the same name and policy.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.openbao import LocalOpenBao, find_bao
from runner.vault import VaultSettings, activate
from runner.vault.settings import SecretRef, parse_mapping
from tests.conftest import PROJECT_ROOT
from tests.infra.conftest import Terraform, copy_config
from tests.infra.conftest import terraform as infra_terraform  # noqa: F401 (a fixture: terraform and its plugins)

from .conftest import VaultDb, create_vault_admin, pg_role_exists, run_setup, setup_env

OUTPUTS_TF = PROJECT_ROOT / "terraform" / "outputs.tf"
SETUP_SH = PROJECT_ROOT / "vault" / "setup.sh"
SECRETS_MD = PROJECT_ROOT / "docs" / "secrets.md"
# Computed from resources, so unknown to `terraform console`: the test passes its own value to setup.sh.
RESOURCE_OUTPUTS = {"vault_task_role_arns"}
TASK_ROLE_ARNS = "arn:aws:iam::111122223333:role/sync-prod-customers_orders-task,arn:aws:iam::111122223333:role/x"
# The root module's required variables that have nothing to do with Vault.
REQUIRED_VARIABLES = {
    "aws_region": "eu-west-1", "environment": "prod", "vpc_id": "vpc-0123456789abcdef0",
    "private_subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    "private_route_table_ids": ["rtb-0123456789abcdef0"], "aurora_cluster_identifier": "orders-db",
    "aurora_security_group_id": "sg-0123456789abcdef0", "image_tag": "3f2c1ab",
    "vault_addr": "https://vault.example.com:8200",
    "snowflake_iam_user_arn": "arn:aws:iam::999988887777:user/abcd-s-v2st1234",
    "snowflake_external_id": "AB12345_SFCRole=2_abcdefghijklmnopqrstuvwxyz0=",
}
# Stands in for `vault`: OpenBao has no AWS auth method, so what setup.sh asks of one is recorded instead.
AWS_AUTH_RECORDER = """#!/usr/bin/env bash
if [[ "$1 $2" == "auth enable" && "${!#}" == aws ]] || [[ "$1" == write && "$2" == auth/* && "$2" != auth/approle/* ]]
then printf '%s\\n' "$*" >> "${AWS_AUTH_LOG}"; exit 0; fi
exec "${REAL_BAO}" "$@"
"""


def vault_outputs() -> dict[str, str]:
    """`vault_*` outputs of terraform/outputs.tf: name -> value expression."""
    blocks = re.findall(r'^output "(vault_\w+)" \{\n(.*?)^\}', OUTPUTS_TF.read_text(), re.M | re.S)
    return {name: re.search(r"^\s*value\s*=\s*(.+)$", body, re.M).group(1).strip()  # type: ignore[union-attr]
            for name, body in blocks}


@dataclass(frozen=True)
class TerraformSide:
    outputs: dict[str, str]  # the vault_* outputs console can evaluate (all but RESOURCE_OUTPUTS)
    task_env: dict[str, str]  # every VAULT* variable of the tasks' environment

    def setup_env(self) -> dict[str, str]:
        """What an operator exports from `terraform output` for setup.sh: each output under its name in capitals."""
        return {name.upper(): value for name, value in self.outputs.items()} | {"VAULT_TASK_ROLE_ARNS": TASK_ROLE_ARNS}


@pytest.fixture(scope="module")
def terraform_side(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   ) -> Callable[..., TerraformSide]:
    """`terraform_side(**variables)`: the names as the real configuration computes them, without AWS."""
    terraform: Terraform = request.getfixturevalue("infra_terraform")  # skips without terraform or its plugins
    workdir = copy_config(tmp_path_factory.mktemp("tf-names") / "terraform", include_tests=False)
    # console needs an initialised backend: a local one instead of the cloud block (as the moto apply does)
    (workdir / "names_override.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    (workdir / "required.tfvars.json").write_text(json.dumps(REQUIRED_VARIABLES))
    terraform.init(workdir)
    expressions = {name: value for name, value in vault_outputs().items() if name not in RESOURCE_OUTPUTS}
    outputs = ", ".join(f"{name} = {value}" for name, value in expressions.items())
    expression = (f"jsonencode({{outputs = {{{outputs}}}, "
                  'task = {for k, v in local.base_environment : k => v if startswith(k, "VAULT")}})')
    cache: dict[tuple[tuple[str, str], ...], TerraformSide] = {}

    def evaluate(**variables: str) -> TerraformSide:
        key = tuple(sorted(variables.items()))
        if key not in cache:
            result = subprocess.run(
                [str(terraform.binary), "console", "-no-color", "-var-file=required.tfvars.json",
                 *(f"-var={name}={value}" for name, value in variables.items())],
                input=expression + "\n", cwd=workdir, env=terraform.env, capture_output=True, text=True,
                timeout=120, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            value = json.loads(json.loads(result.stdout.strip()))  # console prints the JSON as an HCL string
            cache[key] = TerraformSide(value["outputs"], value["task"])
        return cache[key]

    return evaluate


def test_setup_sh_reads_every_name_terraform_outputs_and_nothing_else() -> None:
    outputs = vault_outputs()
    assert {n for n, v in outputs.items() if "module." in v} == RESOURCE_OUTPUTS, "update RESOURCE_OUTPUTS"
    script = SETUP_SH.read_text()
    read = set(re.findall(r'^(VAULT_\w+)="\$\{\1:-', script, re.M)) - {"VAULT_BIN"}
    assert read == {name.upper() for name in outputs}, (
        "vault/setup.sh must read exactly the names Terraform outputs (terraform/outputs.tf vault_*), each from the "
        "variable named like the output in capitals")


@pytest.fixture()
def fresh_vault(vault_db: VaultDb, tmp_path: Path) -> Iterator[tuple[LocalOpenBao, VaultDb, str]]:
    """A new OpenBao (names differ between tests) with a Vault admin of its own in the seeded source database."""
    (tmp_path / "bao").mkdir()
    server = LocalOpenBao(audit_log=tmp_path / "bao" / "audit.log", base_dir=tmp_path / "bao").start()
    admin, password = f"vault_admin_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    create_vault_admin(vault_db.dsn, admin, password)
    try:
        yield server, VaultDb(vault_db.name, vault_db.dsn, vault_db.port, admin), password
    finally:
        client = server.client()
        for mount, engine in client.sys.list_mounted_secrets_engines()["data"].items():
            if engine["type"] == "database":  # any user a failed test left behind
                client.adapter.put(f"/v1/sys/leases/revoke-prefix/{mount}creds")
        server.cleanup()


def recorded_aws_auth(log: Path) -> dict[str, dict[str, str]]:
    """What setup.sh asked of the AWS auth method: `auth enable -path=<mount>` and each write's fields."""
    calls: dict[str, dict[str, str]] = {}
    for line in log.read_text().splitlines():
        words = line.split()
        if words[:2] == ["auth", "enable"]:
            calls["enable"] = dict(w.split("=", 1) for w in words[2:-1])
        else:
            calls[words[1]] = dict(w.split("=", 1) for w in words[2:])
    return calls


@pytest.mark.parametrize("how", ["setup.sh defaults, Terraform defaults", "Terraform outputs, another vault_role"])
def test_the_tasks_log_in_and_read_what_setup_sh_created(
    how: str, terraform_side: Callable[..., TerraformSide], fresh_vault: tuple[LocalOpenBao, VaultDb, str],
    tmp_path: Path,
) -> None:
    bao, db, admin_password = fresh_vault
    if how.startswith("setup.sh defaults"):
        side = terraform_side()
        names = {"VAULT_TASK_ROLE_ARNS": TASK_ROLE_ARNS}  # every name from setup.sh's own defaults
    else:
        side = terraform_side(vault_role="orders-sync")
        assert side.task_env["VAULT_ROLE"] == side.outputs["vault_role"] == "orders-sync"
        names = side.setup_env()
    task = side.task_env
    recorder = tmp_path / "vault-with-aws-auth"
    recorder.write_text(AWS_AUTH_RECORDER)
    recorder.chmod(0o755)
    log = tmp_path / "aws-auth.log"
    result = run_setup(setup_env(bao, db, PG_ADMIN_PASSWORD=admin_password, ENABLE_AWS_AUTH="1",
                                 VAULT_BIN=str(recorder), REAL_BAO=find_bao(), AWS_AUTH_LOG=str(log), **names))
    assert result.returncode == 0, result.stdout + result.stderr

    # The AWS auth role the tasks log in with: the mount and role of their environment, Terraform's policy.
    aws = recorded_aws_auth(log)
    settings = VaultSettings.from_config(task, use_dlt=False)
    assert settings.method == "aws" and aws["enable"] == {"-path": settings.mount}, aws
    role = aws.get(f"auth/{settings.mount}/role/{settings.role}")
    assert role is not None, f"setup.sh wrote no AWS auth role auth/{settings.mount}/role/{settings.role}: {aws}"
    assert role["token_policies"] == side.outputs["vault_policy"]
    assert role["bound_iam_principal_arn"] == TASK_ROLE_ARNS and role["auth_type"] == "iam"

    # The tasks' secrets exist where their mapping points (written by the operator in real life) ...
    root = bao.client()
    mapping = parse_mapping({}, task, settings.kv_mount)
    assert set(mapping) == {"sources.postgres.credentials", "destination.snowflake.credentials.private_key",
                            "destination.snowflake.credentials.private_key_passphrase"}
    for ref in mapping.values():
        if "/data/" in ref.path:
            root.adapter.post(f"/v1/{ref.path}", json={"data": {"private_key": "pem", "private_key_passphrase": "pw"}})
    # ... and a login as the tasks' role (AppRole of the same name and policy: OpenBao has no AWS auth) reads them all
    approle = root.read(f"auth/approle/role/{settings.role}/role-id")
    assert approle is not None, f"setup.sh created no role {settings.role}, the tasks' VAULT_ROLE"
    secret_id = root.adapter.post(f"/v1/auth/approle/role/{settings.role}/secret-id")["data"]["secret_id"]
    login = VaultSettings.from_config({**task, "VAULT_ADDR": bao.addr, "VAULT_AUTH_METHOD": "approle",
                                       "VAULT_AUTH_MOUNT": "approle", "VAULT_ROLE_ID": approle["data"]["role_id"],
                                       "VAULT_SECRET_ID": secret_id}, use_dlt=False)
    with activate(login) as session:  # prefetch: every mapped path is read now, or this fails
        assert session is not None and session.auth.policies == [side.outputs["vault_policy"]]
        assert session.value("destination.snowflake.credentials.private_key_passphrase") == "pw"
        username = session.value("sources.postgres.credentials.username")
        assert pg_role_exists(db.dsn, username)
    assert not pg_role_exists(db.dsn, username)  # revoked at exit


def test_secrets_md_configures_what_terraform_gives_the_tasks(terraform_side: Callable[..., TerraformSide]) -> None:
    task = terraform_side().task_env
    block = next(b for b in re.findall(r"```toml\n(.*?)```", SECRETS_MD.read_text(), re.S) if "[vault]" in b)
    vault = tomllib.loads(block)["vault"]
    assert (vault["auth_method"], vault["role"], vault["kv_mount"]) == (
        task["VAULT_AUTH_METHOD"], task["VAULT_ROLE"], task["VAULT_KV_MOUNT"])
    documented = {key: SecretRef.parse(ref, vault["kv_mount"]) for key, ref in vault["secrets"].items()}
    assert documented == parse_mapping({}, task, task["VAULT_KV_MOUNT"])
