"""`aurora-sync doctor`: check every prerequisite and say how to fix each failing one."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict

import dlt
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from sources.postgres.catalog import TableSpec, discover_tables
from sources.postgres.errors import describe_url, explain_connection_error
from sources.postgres.session import make_engine
from sources.postgres.settings import load_source_settings
from sources.replication.ddl import ddl_capture_status
from sources.replication.slot import table_refusals

from ..exit_codes import ExitCode
from .checks import Check
from .doctor_security import role_checks, tls_check, write_privilege_check
from .run import PIPELINES, load_pipeline_module, source_dsn
from .status import pipeline_state, slot


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=main)


def _setting(conn: sa.Connection, name: str) -> str | None:
    return conn.execute(sa.text("SELECT current_setting(:n, true)"), {"n": name}).scalar()


def source_checks(dsn: str, pipeline_name: str) -> list[Check]:
    checks: list[Check] = []
    engine = make_engine(dsn, statement_timeout_ms=30_000)
    try:
        with engine.connect() as conn:
            version = int(_setting(conn, "server_version_num") or 0)
            checks.append(Check("source: connection", "ok", f"connected to {describe_url(engine)}"))
            checks.append(tls_check(conn))
            checks += role_checks(conn)
            checks.append(Check("source: PostgreSQL version", "ok" if version >= 130000 else "warn",
                                f"{version // 10000}.{version % 10000}", "" if version >= 130000 else
                                "PostgreSQL 13+ (Aurora PostgreSQL v2 is 13+) is what this tool is tested on"))
            wal_level = _setting(conn, "wal_level")
            rds_logical = _setting(conn, "rds.logical_replication")
            ok = wal_level == "logical"
            checks.append(Check("source: wal_level", "ok" if ok else "warn",
                                f"wal_level={wal_level}" + (f", rds.logical_replication={rds_logical}"
                                                            if rds_logical is not None else ""),
                                "" if ok else "CDC needs logical decoding: on Aurora set rds.logical_replication=1 "
                                "in the cluster parameter group and reboot; elsewhere wal_level=logical"))
            keep = _setting(conn, "max_slot_wal_keep_size")
            checks.append(Check("source: max_slot_wal_keep_size", "ok" if keep not in (None, "-1") else "warn",
                                f"max_slot_wal_keep_size={keep}", "" if keep not in (None, "-1") else
                                "unlimited: a stalled consumer can fill the disk; set a cap (see docs/aurora.md)"))
            # membership of rds_replication counts on RDS only: a role of that name elsewhere confers nothing
            rds = rds_logical is not None and _role_exists(conn, "rds_replication")
            replication = conn.execute(sa.text(
                "SELECT rolreplication OR rolsuper OR pg_has_role(current_user, 'rds_replication', 'member') "
                "FROM pg_roles WHERE rolname = current_user") if rds else sa.text(
                "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
            checks.append(Check("source: replication privilege", "ok" if replication else "warn",
                                "granted" if replication else "missing",
                                "" if replication else "CDC needs it: GRANT rds_replication TO <user> (Aurora) "
                                "or ALTER ROLE <user> REPLICATION"))
            checks.append(ddl_capture_check(conn))
            stats = conn.execute(sa.text(
                "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'member') "
                "FROM pg_roles WHERE rolname = current_user")).scalar()
            checks.append(Check("source: pg_read_all_stats", "ok" if stats else "warn",
                                "granted" if stats else "missing",
                                "" if stats else "the late-commit guard cannot see other sessions' open "
                                "transactions: GRANT pg_monitor TO <user> (only the lookback window protects now)"))
        # resolved exactly as the source resolves them (pipeline-prefixed keys, env vars, Vault)
        settings = load_source_settings(pipeline_name)
        schemas = settings.schemas
        specs = discover_tables(engine, schemas, settings.include, settings.exclude, settings.cursor_column,
                                settings.overrides)
        checks += key_checks(specs, schemas)
        with engine.connect() as conn:
            # by catalog row, never by a name that would need quoting (mixed-case table names)
            readable = {(r[0], r[1]): r[2] for r in conn.execute(sa.text(
                "SELECT n.nspname, c.relname, has_table_privilege(c.oid, 'SELECT') FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(:s)"), {"s": schemas})}
            denied = [s.qualified for s in specs if not readable.get((s.schema, s.name), False)]
            raw = conn.connection.dbapi_connection
            refusals = table_refusals(raw, specs)
        if refusals:
            checks.append(Check("source: CDC replica identity", "warn", f"{len(refusals)} table(s) cannot be "
                                "replicated by CDC as they are (snapshot and incremental are not affected)",
                                " ".join(refusals.values())))
        checks.append(Check("source: SELECT privilege", "fail" if denied else "ok",
                            f"missing on {', '.join(denied)}" if denied else "granted on every table",
                            "GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO <user>" if denied else ""))
        with engine.connect() as conn:
            checks.append(write_privilege_check(conn, specs))
        no_cursor = [s.qualified for s in specs if not s.cursor_column]
        if no_cursor:
            checks.append(Check("source: cursor columns", "warn", f"no cursor column on {', '.join(no_cursor)}",
                                "these tables are re-read in full each incremental run; add updated_at or use CDC"))
    except Exception as exc:
        explained = explain_connection_error(exc, describe_url(engine))
        checks.append(Check("source", "fail", str(explained or exc).splitlines()[0],
                            "see the message; `aurora-sync --debug doctor` shows details"))
    finally:
        engine.dispose()
    return checks


def key_checks(specs: list[TableSpec], schemas: list[str]) -> list[Check]:
    """How each table is keyed, and what a table without a primary key costs."""
    by_source: dict[str, list[str]] = {}
    for spec in specs:
        by_source.setdefault(spec.key_source, []).append(spec.qualified)
    checks = [Check("source: tables and keys", "ok", f"{len(specs)} table(s) in {', '.join(schemas)}; "
                    + ", ".join(f"{len(v)} keyed by {k.replace('_', ' ')}" for k, v in sorted(by_source.items())
                                if k != "none"))]
    if by_source.get("unique_index"):
        checks.append(Check("source: tables keyed by a unique index", "ok", ", ".join(by_source["unique_index"]),
                            "merged on their NOT NULL unique index; CDC needs REPLICA IDENTITY USING INDEX on it"))
    if by_source.get("none"):
        checks.append(Check("source: tables without any key", "warn", ", ".join(by_source["none"]),
                            "snapshot and incremental re-copy each of them in full on every run; CDC replicates them "
                            "as an exact multiset only with REPLICA IDENTITY FULL (every update and delete then logs "
                            "the whole old row). Cheapest fix: add a primary key."))
    return checks


def ddl_capture_check(conn: sa.Connection) -> Check:
    """The event triggers that put DDL into the change stream (`sources.replication.ddl`). Missing is a warning:
    CDC then finds schema changes by comparing the catalog, which costs a read of a table after VACUUM FULL or
    CLUSTER and sees a rewrite only at its next check, not at its place in the stream."""
    try:
        status = ddl_capture_status(conn.connection.dbapi_connection)
    except Exception as exc:  # a catalog read refused: report it, and keep the session usable for the other checks
        conn.rollback()
        return Check("source: DDL capture", "warn", f"cannot read the event triggers: {str(exc).splitlines()[0]}")
    if not status.supported:
        return Check("source: DDL capture", "skip", status.message)
    if status.active:
        return Check("source: DDL capture", "ok", status.message)
    return Check("source: DDL capture", "warn", status.message, status.sql)


def _role_exists(conn: sa.Connection, role: str) -> bool:
    return bool(conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar())


def destination_checks(pipeline: dlt.Pipeline) -> list[Check]:
    checks: list[Check] = []
    name = pipeline.destination.destination_name if pipeline.destination else "none"
    try:
        with pipeline.sql_client() as client:
            client.execute_sql("SELECT 1")
        checks.append(Check(f"destination: {name}", "ok", f"connected; dataset {pipeline.dataset_name}"))
    except Exception as exc:
        checks.append(Check(f"destination: {name}", "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                            f"check destination.{name}.credentials"))
    bucket = dlt.config.get("destination.filesystem.bucket_url")
    if bucket and str(bucket).startswith("s3://"):
        checks.append(_s3_check(str(bucket)))
    return checks


def _s3_check(bucket_url: str) -> Check:
    """Write, read back and delete a probe object under the staging prefix, with dlt's own S3 settings."""
    from dlt.common.configuration import resolve_configuration
    from dlt.common.storages import FilesystemConfiguration
    from dlt.common.storages.fsspec_filesystem import fsspec_from_config

    path = f"{bucket_url.rstrip('/')}/_doctor/{uuid.uuid4().hex}.txt"
    try:
        config = resolve_configuration(FilesystemConfiguration(bucket_url=bucket_url),
                                       sections=("destination", "filesystem"))
        fs, _ = fsspec_from_config(config)
        with fs.open(path, "w") as fh:
            fh.write("aurora-sync doctor probe")
        with fs.open(path) as fh:
            assert fh.read() == b"aurora-sync doctor probe"
        fs.rm(path)
        return Check("staging: S3 write/read", "ok", f"wrote, read and deleted a probe under {bucket_url}")
    except Exception as exc:
        return Check("staging: S3 write/read", "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                     "the task role needs s3:PutObject/GetObject/DeleteObject on the prefix and kms:GenerateDataKey")


def vault_checks() -> list[Check]:
    """The CLI logged in before this command ran (runner.cli); report how, or that Vault is off."""
    from .. import vault

    session = vault.current_session()
    if session is None:
        return [Check("vault", "skip", "VAULT_ADDR not set: secrets come from env vars or .dlt/secrets.toml")]
    return [Check("vault: login", "ok", f"logged in with {session.auth.method} at {session.settings.addr}; "
                  f"policies {', '.join(session.auth.policies) or '-'}; {len(session.settings.secrets)} mapped key(s) "
                  "read")]


def snowflake_stage_check(pipeline: dlt.Pipeline) -> list[Check]:
    if pipeline.destination is None or pipeline.destination.destination_name != "snowflake":
        return []
    stage = dlt.config.get("destination.snowflake.stage_name", str)
    if not stage:
        return [Check("snowflake: stage", "warn", "no stage_name: dlt would PUT files through the user stage",
                      "set destination.snowflake.stage_name to the external stage (aurora-sync snowflake-bootstrap)")]
    database, schema, name = ([None, None, *stage.split(".")])[-3:]
    scope = f" IN SCHEMA {database}.{schema}" if database else ""
    try:
        with pipeline.sql_client() as client:
            found = client.execute_sql(f"SHOW STAGES LIKE '{name}'{scope}")
        if not found:
            raise LookupError("stage does not exist or is not visible to the loader role")
        return [Check("snowflake: stage", "ok", f"{stage} is visible to the loader role")]
    except Exception as exc:
        return [Check("snowflake: stage", "fail", f"{stage}: {str(exc).splitlines()[0]}",
                      "run `aurora-sync snowflake-bootstrap`, and check the grants on the stage and integration")]


def slot_check(pipeline: dlt.Pipeline) -> list[Check]:
    """A replication slot that a killed or failed `setup` left behind holds WAL on the writer: say so."""
    try:
        health = slot(pipeline.pipeline_name, pipeline_state(pipeline))
    except Exception as exc:
        return [Check("source: replication slot", "warn", f"cannot read the slot: {str(exc).splitlines()[0]}")]
    if health is None:
        return [Check("source: replication slot", "skip", "no slot: CDC is not set up for this pipeline")]
    if health.get("error"):
        return [Check("source: replication slot", "warn", f"cannot read the slot: {health['error'].splitlines()[0]}")]
    if health.get("attention"):
        return [Check("source: replication slot", "warn", health["attention"],
                      "`aurora-sync setup` finishes it; `aurora-sync teardown` drops the slot")]
    return [Check("source: replication slot", "ok", f"{health['slot_name']} retains "
                  f"{health['retained_wal_bytes'] / 2**20:.1f} MiB of WAL, wal_status={health.get('wal_status')}")]


def run_checks(pipeline_name: str, extra: list[Callable[[], list[Check]]] | None = None) -> list[Check]:
    checks: list[Check] = []
    try:
        checks += source_checks(source_dsn(), pipeline_name)
    except Exception as exc:
        checks.append(Check("source: configuration", "fail", str(exc), "set sources.postgres.credentials"))
    pipeline = load_pipeline_module(pipeline_name).make_pipeline()
    checks += destination_checks(pipeline)
    checks += slot_check(pipeline)
    checks += snowflake_stage_check(pipeline)
    checks += vault_checks()
    for producer in extra or []:
        checks += producer()
    return checks


def main(args: argparse.Namespace) -> ExitCode:
    checks = run_checks(args.pipeline)
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        table = Table(title=f"aurora-sync doctor: {args.pipeline}")
        for column in ("check", "status", "detail", "how to fix"):
            table.add_column(column)
        colours = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
        for c in checks:
            table.add_row(c.name, f"[{colours[c.status]}]{c.status}[/]", c.detail, c.fix)
        Console().print(table)
    return ExitCode.CONFIG_ERROR if failed else ExitCode.SUCCESS
