"""The Snowflake objects the loader needs, as idempotent SQL: safe to run again after any change of config.

Every statement is `CREATE ... IF NOT EXISTS`, an `ALTER ... SET` of the same values, or a `GRANT`, so that a
second run changes nothing and a re-run after a config change converges. We never `CREATE OR REPLACE` here:
replacing the storage integration would issue a new STORAGE_AWS_EXTERNAL_ID and break the IAM trust policy,
replacing the user or role would drop its grants, and replacing the database or schema would drop data.

Names come from the same dlt config the loader uses (`destination.snowflake.stage_name`,
`destination.snowflake.credentials.{database,warehouse,role,username}`, `destination.filesystem.bucket_url`)
and from `[snowflake_bootstrap]` (integration, file format, warehouse size, the integration's IAM role ARN
from Terraform, the loader's RSA public key, and defaults for the loader's names).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]+$")
WAREHOUSE_SIZES = ("XSMALL", "SMALL", "MEDIUM", "LARGE", "XLARGE", "XXLARGE")

# kinds of statement, in the order they run; fakesnow can run the first four (see tests/snowflake)
KINDS = ("database", "schema", "file_format", "stage", "warehouse", "integration", "role", "user", "grant")


class BootstrapConfigError(ValueError):
    """A bootstrap setting is missing or malformed; the message names the config key."""


@dataclass(frozen=True)
class Statement:
    sql: str
    kind: str
    run_as: str  # the system role that owns this kind of object (least privilege for the admin, too)


@dataclass(frozen=True)
class BootstrapSettings:
    database: str
    raw_schema: str
    stage: str
    file_format: str
    warehouse: str
    role: str
    user: str
    integration: str
    bucket_url: str
    storage_aws_role_arn: str
    public_key: str | None = None
    warehouse_size: str = "XSMALL"
    auto_suspend_seconds: int = 60
    blocked_prefixes: Sequence[str] = field(default_factory=lambda: ("dead_letter/",))

    def __post_init__(self) -> None:
        for key in ("database", "raw_schema", "warehouse", "role", "user", "integration"):
            _check_identifier(key, getattr(self, key))
        for key in ("stage", "file_format"):
            parts = getattr(self, key).split(".")
            if len(parts) != 3:
                raise BootstrapConfigError(f"`{key}` must be DATABASE.SCHEMA.NAME, got {getattr(self, key)!r}.")
            for part in parts:
                _check_identifier(key, part)
        if urlparse(self.bucket_url).scheme != "s3" or not urlparse(self.bucket_url).netloc:
            raise BootstrapConfigError(
                f"`destination.filesystem.bucket_url` must be s3://<bucket>, got {self.bucket_url!r}."
            )
        if urlparse(self.bucket_url).path.strip("/"):
            raise BootstrapConfigError(
                "`destination.filesystem.bucket_url` must be the bucket root (s3://<bucket>): dlt names staged files "
                "relative to it, and the stage must point at the same place."
            )
        if not ROLE_ARN.match(self.storage_aws_role_arn):
            raise BootstrapConfigError(
                "`snowflake_bootstrap.storage_aws_role_arn` must be an IAM role ARN (Terraform output "
                f"snowflake_role_arn), got {self.storage_aws_role_arn!r}."
            )
        if self.warehouse_size.upper() not in WAREHOUSE_SIZES:
            raise BootstrapConfigError(f"`snowflake_bootstrap.warehouse_size` must be one of {WAREHOUSE_SIZES}.")
        if not 60 <= int(self.auto_suspend_seconds) <= 3600:
            raise BootstrapConfigError("`snowflake_bootstrap.auto_suspend_seconds` must be 60..3600.")

    @property
    def bucket(self) -> str:
        return urlparse(self.bucket_url).netloc


def _check_identifier(key: str, value: str) -> None:
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        raise BootstrapConfigError(f"`{key}` must be a plain Snowflake identifier (letters, digits, _), got {value!r}.")


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def normalize_public_key(text: str) -> str:
    """PEM or bare base64 → the bare base64 body Snowflake's RSA_PUBLIC_KEY expects."""
    body = "".join(line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("-----"))
    if "PRIVATE" in text.upper():
        raise BootstrapConfigError("That is a private key: pass the public key (openssl rsa -pubout).")
    if not re.fullmatch(r"[A-Za-z0-9+/=]{200,}", body):
        raise BootstrapConfigError("The public key must be an RSA public key in PEM or base64 (2048 bits or more).")
    return body


def generate(s: BootstrapSettings) -> list[Statement]:
    """All statements, in dependency order."""
    loader, wh, db = s.role, s.warehouse, s.database
    schema = f"{db}.{s.raw_schema}"
    allowed = f"('s3://{s.bucket}/')"
    blocked = ", ".join(_literal(f"s3://{s.bucket}/{p.strip('/')}/") for p in s.blocked_prefixes)
    locations = f"STORAGE_ALLOWED_LOCATIONS = {allowed}"
    if blocked:
        locations += f" STORAGE_BLOCKED_LOCATIONS = ({blocked})"
    size = s.warehouse_size.upper()
    warehouse_settings = f"WAREHOUSE_SIZE = '{size}' AUTO_SUSPEND = {int(s.auto_suspend_seconds)} AUTO_RESUME = TRUE"
    statements = [
        Statement(f"CREATE DATABASE IF NOT EXISTS {db} COMMENT = 'aurora-sync replica of Aurora PostgreSQL'",
                  "database", "SYSADMIN"),
        Statement(f"CREATE SCHEMA IF NOT EXISTS {schema} COMMENT = 'aurora-sync: stage and file format'",
                  "schema", "SYSADMIN"),
        Statement(f"CREATE FILE FORMAT IF NOT EXISTS {s.file_format} TYPE = PARQUET USE_LOGICAL_TYPE = TRUE "
                  "BINARY_AS_TEXT = FALSE USE_VECTORIZED_SCANNER = TRUE", "file_format", "SYSADMIN"),
        # the integration comes before the stage that uses it; see kinds order in KINDS for fakesnow
        Statement(f"CREATE STORAGE INTEGRATION IF NOT EXISTS {s.integration} TYPE = EXTERNAL_STAGE "
                  f"STORAGE_PROVIDER = 'S3' ENABLED = TRUE STORAGE_AWS_ROLE_ARN = {_literal(s.storage_aws_role_arn)} "
                  f"{locations} COMMENT = 'aurora-sync archive bucket; read through the role from Terraform'",
                  "integration", "ACCOUNTADMIN"),
        # keeps the external ID (unlike OR REPLACE) while converging the locations on the config
        Statement(f"ALTER STORAGE INTEGRATION {s.integration} SET ENABLED = TRUE {locations}",
                  "integration", "ACCOUNTADMIN"),
        Statement(f"GRANT USAGE ON INTEGRATION {s.integration} TO ROLE SYSADMIN", "grant", "ACCOUNTADMIN"),
        # no trailing slash: dlt's COPY names files relative to the bucket root (and fakesnow needs it)
        Statement(f"CREATE STAGE IF NOT EXISTS {s.stage} URL = 's3://{s.bucket}' STORAGE_INTEGRATION = "
                  f"{s.integration} FILE_FORMAT = (FORMAT_NAME = {_literal(s.file_format)}) "
                  "COMMENT = 'aurora-sync staged files (the archive)'", "stage", "SYSADMIN"),
        Statement(f"CREATE WAREHOUSE IF NOT EXISTS {wh} WITH {warehouse_settings} INITIALLY_SUSPENDED = TRUE "
                  "COMMENT = 'aurora-sync loads'", "warehouse", "SYSADMIN"),
        Statement(f"ALTER WAREHOUSE {wh} SET {warehouse_settings}", "warehouse", "SYSADMIN"),
        Statement(f"CREATE ROLE IF NOT EXISTS {loader} COMMENT = 'aurora-sync loader'", "role", "USERADMIN"),
    ]
    # without a public key the service user exists but cannot log in until bootstrap runs again with one
    user_settings = f"DEFAULT_ROLE = {loader} DEFAULT_WAREHOUSE = {wh}"
    if s.public_key:
        user_settings += f" RSA_PUBLIC_KEY = {_literal(normalize_public_key(s.public_key))}"
    statements += [
        Statement(f"CREATE USER IF NOT EXISTS {s.user} TYPE = SERVICE {user_settings} "
                  "COMMENT = 'aurora-sync loader (key-pair authentication only)'", "user", "USERADMIN"),
        # rotating the key: put the new one in config and run again (RSA_PUBLIC_KEY_2 for a zero-downtime swap)
        Statement(f"ALTER USER {s.user} SET TYPE = SERVICE {user_settings}", "user", "USERADMIN"),
    ]
    statements += [
        Statement(f"GRANT ROLE {loader} TO USER {s.user}", "grant", "SECURITYADMIN"),
        Statement(f"GRANT ROLE {loader} TO ROLE SYSADMIN", "grant", "SECURITYADMIN"),
        Statement(f"GRANT USAGE ON WAREHOUSE {wh} TO ROLE {loader}", "grant", "SECURITYADMIN"),
        # dlt creates its dataset schema and <dataset>_STAGING itself, and owns them
        Statement(f"GRANT USAGE, CREATE SCHEMA ON DATABASE {db} TO ROLE {loader}", "grant", "SECURITYADMIN"),
        Statement(f"GRANT USAGE ON SCHEMA {schema} TO ROLE {loader}", "grant", "SECURITYADMIN"),
        Statement(f"GRANT USAGE ON STAGE {s.stage} TO ROLE {loader}", "grant", "SECURITYADMIN"),
        Statement(f"GRANT USAGE ON FILE FORMAT {s.file_format} TO ROLE {loader}", "grant", "SECURITYADMIN"),
    ]
    return statements


def select(statements: Iterable[Statement], kinds: Iterable[str] | None) -> list[Statement]:
    wanted = set(kinds or KINDS)
    return [st for st in statements if st.kind in wanted]


def render(statements: Iterable[Statement]) -> str:
    """A script for a human to review or paste into a worksheet: `USE ROLE` before each change of admin role."""
    lines = ["-- aurora-sync snowflake-bootstrap: idempotent, safe to run again", ""]
    current = None
    for st in statements:
        if st.run_as != current:
            lines += ["", f"USE ROLE {st.run_as};"]
            current = st.run_as
        lines.append(st.sql + ";")
    lines += ["", "-- then: DESC INTEGRATION <integration>; copy STORAGE_AWS_IAM_USER_ARN and STORAGE_AWS_EXTERNAL_ID",
              "-- into the Terraform variables snowflake_iam_user_arn and snowflake_external_id (docs/snowflake.md)."]
    return "\n".join(lines) + "\n"


def execute(connection: Any, statements: Iterable[Statement]) -> int:
    """Run the statements on an open connection, switching admin roles as `render` does; returns how many ran."""
    count = 0
    current = None
    with connection.cursor() as cur:
        for st in statements:
            if st.run_as != current:
                cur.execute(f"USE ROLE {st.run_as}")
                current = st.run_as
            cur.execute(st.sql)
            count += 1
    return count


def settings_from_config(overrides: dict[str, Any] | None = None) -> BootstrapSettings:
    """Read names from the dlt config the loader uses; `overrides` (CLI flags) win."""
    import dlt

    def get(key: str, default: Any = None) -> Any:
        value = dlt.config.get(key)
        return default if value is None else value

    values: dict[str, Any] = {
        "database": get("destination.snowflake.credentials.database", get("snowflake_bootstrap.database")),
        "warehouse": get("destination.snowflake.credentials.warehouse", get("snowflake_bootstrap.warehouse")),
        "role": get("destination.snowflake.credentials.role", get("snowflake_bootstrap.role")),
        "user": get("destination.snowflake.credentials.username", get("snowflake_bootstrap.user")),
        "stage": get("destination.snowflake.stage_name"),
        "bucket_url": get("destination.filesystem.bucket_url"),
        "integration": get("snowflake_bootstrap.integration", "AURORA_SYNC_S3"),
        "file_format": get("snowflake_bootstrap.file_format"),
        "storage_aws_role_arn": get("snowflake_bootstrap.storage_aws_role_arn"),
        "public_key": get("snowflake_bootstrap.public_key"),
        "warehouse_size": get("snowflake_bootstrap.warehouse_size", "XSMALL"),
        "auto_suspend_seconds": int(get("snowflake_bootstrap.auto_suspend_seconds", 60)),
        "blocked_prefixes": tuple(get("snowflake_bootstrap.blocked_prefixes", ["dead_letter/"])),
    }
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    stage = values["stage"]
    if isinstance(stage, str) and stage.count(".") == 2:
        values.setdefault("raw_schema", stage.split(".")[1])
        if not values["file_format"]:
            values["file_format"] = f"{stage.rsplit('.', 1)[0]}.PARQUET_FORMAT"
    keys = {
        "database": "destination.snowflake.credentials.database",
        "warehouse": "destination.snowflake.credentials.warehouse",
        "role": "destination.snowflake.credentials.role",
        "user": "destination.snowflake.credentials.username",
        "stage": "destination.snowflake.stage_name",
        "bucket_url": "destination.filesystem.bucket_url",
        "storage_aws_role_arn": "snowflake_bootstrap.storage_aws_role_arn (or --terraform-outputs)",
    }
    missing = [keys[k] for k in keys if not values.get(k)]
    if missing:
        raise BootstrapConfigError(f"Missing configuration: {', '.join(missing)}.")
    return BootstrapSettings(**values)


def terraform_outputs(path: str) -> dict[str, Any]:
    """`terraform output -json` → the values the bootstrap can use (role ARN, bucket)."""
    import json

    with open(path, encoding="utf-8") as fh:
        outputs = json.load(fh)
    plain = {k: (v.get("value") if isinstance(v, dict) and "value" in v else v) for k, v in outputs.items()}
    found: dict[str, Any] = {}
    role_arn = plain.get("snowflake_storage_integration_role_arn") or plain.get("snowflake_role_arn")
    if role_arn:
        found["storage_aws_role_arn"] = role_arn
    bucket = plain.get("bucket_name")
    if bucket:
        found["bucket_url"] = f"s3://{bucket}"
    return found
