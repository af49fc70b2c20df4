"""The whole product against a real Snowflake account and S3 bucket (`make test-live`; docs/testing.md#live-tests).

Everything the offline suite cannot prove (docs/snowflake.md#what-only-a-real-account-can-check) is exercised here
through exactly the production code path: every step is an `aurora-sync` process with the environment an ECS task
gets, in a fresh working directory holding only `.dlt/config.toml` (as the image's WORKDIR), with a fresh
`DLT_DATA_DIR` per step (as each task gets a fresh volume). All it creates carries one name, `live_<8 hex>`, so it
never touches existing data, and the `finally` removes it: the Snowflake schemas `LIVE_<hex>` and
`LIVE_<hex>_STAGING`, the S3 prefixes `<dataset>/` and `_landing/<dataset>/` (every object version), the slot and
publication, and the source schema (or the throwaway source database).

`LIVE_USE_STAND_INS=1` fills the same variables with moto S3 and fakesnow's HTTP server, so this very code runs
offline; `aurora-sync` then runs as `python -m local.fakesnow_client` (the same CLI with dlt sending one statement
per request, which fakesnow needs). Run as `python -m tests.live.test_live --sql` it is the test's own Snowflake
client (counts and cleanup), resolving the loader's credentials as the product does (env, then Vault).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg2
import pytest

from tests.helpers import log_events

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.live, pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")]

SF = "DESTINATION__SNOWFLAKE__CREDENTIALS"
STAGING_TYPE = "pipelines.destinations.archive_filesystem"
LANDING_DIR = "_landing"  # pipelines.landing.LANDING_DIR: the landing area's folder in the bucket
DEAD_PROXY = "http://127.0.0.1:9"  # stand-in mode: anything not on 127.0.0.1 fails instead of leaving the machine
STEP_TIMEOUT_S = 900
# the variables a step never inherits from the caller's shell: the test sets them (source, dataset, local state)
NOT_INHERITED = ("SOURCES__", "CUSTOMERS_ORDERS__", "RUNNER__", "VAULT__SECRETS__SOURCES__", "DLT_DATA_DIR")
# source table -> columns compared between the source and the restore (JSON as jsonb: restore writes it as text)
COMPARED = {
    "accounts": "id, email, balance::text, active, prefs::jsonb::text, updated_at",
    "events": "account_id, seq, kind, at",
}


class StandInGap(UserWarning):
    """A step stand-in mode cannot run (fakesnow or moto lacks it); shown in pytest's warnings summary."""


# ---------------------------------------------------------------------------------------------------------
# What is needed, and the stand-ins that provide it offline
# ---------------------------------------------------------------------------------------------------------
def missing_variables() -> list[str]:
    """The variables (or groups) still unset; empty when the live test can run. Values are never read out."""
    env = os.environ
    missing = []
    if not (env.get(SF) or env.get(f"{SF}__HOST")):
        missing.append(f"{SF} (a snowflake:// connection string) or {SF}__HOST (+ __DATABASE/__USERNAME/"
                       "__WAREHOUSE/__ROLE, defaults as in docs/snowflake.md)")
    if not (env.get(f"{SF}__PRIVATE_KEY") or env.get("VAULT_ADDR")):
        missing.append(f"{SF}__PRIVATE_KEY (the loader's PEM key) or VAULT_ADDR (+ VAULT__SECRETS__ mapping it)")
    if not env.get("LIVE_S3_BUCKET_URL"):
        missing.append("LIVE_S3_BUCKET_URL (s3://<bucket>, the stage's bucket root)")
    else:
        import boto3

        if boto3.Session().get_credentials() is None:
            missing.append("AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO or a role)")
    return missing


@contextlib.contextmanager
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto S3 (with KMS) and fakesnow's HTTP server, described by the same variables a real account would be."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from local.fakesnow_adapter import fake_snowflake_server
    from local.moto_s3 import LocalS3, MotoNotAvailable

    for name in list(os.environ):  # nothing of a real account may leak into the stand-in run
        if name.startswith(("DESTINATION__", "SNOWFLAKE_BOOTSTRAP__", "VAULT", "AWS_", "LIVE_")) \
                and name != "LIVE_USE_STAND_INS":
            monkeypatch.delenv(name)
    try:
        s3 = LocalS3().start()
    except MotoNotAvailable as exc:
        pytest.skip(str(exc))
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # throwaway, never written
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        bucket = s3.create_bucket(f"aurora-sync-live-{uuid.uuid4().hex[:10]}")
        with fake_snowflake_server(s3.s3fs()) as fake:
            endpoint = {"host": fake.host, "port": fake.port, "protocol": fake.protocol}
            values = {
                "LIVE_S3_BUCKET_URL": bucket,
                "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "AWS_DEFAULT_REGION": s3.region, "AWS_REGION": s3.region, "AWS_ENDPOINT_URL": s3.endpoint_url,
                "DESTINATION__FILESYSTEM__KWARGS": json.dumps({"s3_additional_kwargs": {
                    "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": s3.create_kms_key()}}),
                f"{SF}__HOST": "fakeaccount", f"{SF}__DATABASE": "AURORA_SYNC",
                f"{SF}__USERNAME": "AURORA_SYNC_LOADER", f"{SF}__WAREHOUSE": "AURORA_SYNC_LOAD_WH",
                f"{SF}__ROLE": "AURORA_SYNC_LOADER", f"{SF}__PRIVATE_KEY": private,
                f"{SF}__QUERY": json.dumps({"login_timeout": 60, "network_timeout": 900, **endpoint}),
                "LIVE_SNOWFLAKE_BOOTSTRAP": "1",
                "SNOWFLAKE_BOOTSTRAP__CREDENTIALS": "snowflake://admin:unused-by-the-fake@fakeaccount/?"
                                                    + "&".join(f"{k}={v}" for k, v in endpoint.items()),
                "SNOWFLAKE_BOOTSTRAP__STORAGE_AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/aurora-sync-live",
                "SNOWFLAKE_BOOTSTRAP__PUBLIC_KEY": public,
                "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost",
            }
            for name, value in values.items():
                monkeypatch.setenv(name, value)
            yield
    finally:
        s3.stop()


# ---------------------------------------------------------------------------------------------------------
# One run: its names, its environment, its steps
# ---------------------------------------------------------------------------------------------------------
@dataclass
class LiveRun:
    """The unique names of one run and the deployment environment every step gets."""

    tmp: Path
    source_dsn: str
    stand_ins: bool
    run_id: str = field(default_factory=lambda: f"live_{uuid.uuid4().hex[:8]}")
    steps: int = 0

    @property
    def schema(self) -> str:
        """The source schema the run creates and syncs (its tables only: nothing existing is read)."""
        return f"{self.run_id}_src"

    @property
    def bucket_url(self) -> str:
        return os.environ["LIVE_S3_BUCKET_URL"].rstrip("/")

    def env(self, **overrides: str) -> dict[str, str]:
        """The caller's environment (credentials, endpoints, Vault) plus what Terraform's task definition sets."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
        env.update({
            "CUSTOMERS_ORDERS__DESTINATION_TYPE": "snowflake",
            "CUSTOMERS_ORDERS__STAGING_TYPE": STAGING_TYPE,
            "CUSTOMERS_ORDERS__DATASET_NAME": self.run_id,
            "DESTINATION__FILESYSTEM__BUCKET_URL": self.bucket_url,
            "SOURCES__POSTGRES__CREDENTIALS": self.source_dsn,
            "SOURCES__POSTGRES__SCHEMAS": json.dumps([self.schema]),
            "SOURCES__POSTGRES__REPLICATION__SLOT_NAME": self.run_id,
            "SOURCES__POSTGRES__REPLICATION__PUBLICATION_NAME": self.run_id,
            "SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS": "0",
            # rows that cannot be converted stay on this machine, not in the bucket's dead_letter/
            "RUNNER__DEAD_LETTER_URL": str(self.tmp / "dead_letter"),
            "RUNTIME__LOG_LEVEL": "WARNING",
        })
        if self.stand_ins:
            env["PYTHONPATH"] = str(PROJECT_ROOT)  # local.fakesnow_client
        env.update(overrides)
        return env

    def workdir(self, name: str) -> Path:
        """A fresh task directory: only `.dlt/config.toml` (never a developer's secrets.toml) and a fresh volume."""
        self.steps += 1
        workdir = self.tmp / f"{self.steps:02d}-{name}"
        (workdir / ".dlt").mkdir(parents=True)
        (workdir / ".dlt" / "config.toml").write_bytes((PROJECT_ROOT / ".dlt" / "config.toml").read_bytes())
        return workdir

    def entrypoint(self) -> list[str]:
        if self.stand_ins:
            return [sys.executable, "-m", "local.fakesnow_client"]
        return [str(Path(sys.executable).parent / "aurora-sync")]

    def cli(self, *args: str, expect: int | None = 0, **overrides: str) -> Step:
        """`aurora-sync ARGS` as one ECS task would run it; asserts the exit code unless `expect` is None."""
        workdir = self.workdir(args[0])
        env = self.env(DLT_DATA_DIR=str(workdir / "volume" / "dlt"), **overrides)
        started = time.monotonic()
        done = subprocess.run([*self.entrypoint(), "--json-logs", *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=STEP_TIMEOUT_S, check=False)
        step = Step(list(args), done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        (workdir / "task.log").write_text(done.stderr)  # kept in tmp_path for a failure's post-mortem
        print(f"aurora-sync {' '.join(args)}: exit {step.code} in {step.seconds:.1f} s")
        if expect is not None:
            assert step.code == expect, f"aurora-sync {' '.join(args)} exited {step.code}:\n{step.log}"
        return step

    def snowflake(self, statements: list[str]) -> list[list[list[Any]]]:
        """Statements run by `python -m tests.live.test_live --sql` in the deployment environment: rows each."""
        workdir = self.workdir("snowflake-sql")
        done = subprocess.run([sys.executable, "-m", "tests.live.test_live", "--sql", self.run_id],
                              input=json.dumps(statements), cwd=workdir, capture_output=True, text=True,
                              timeout=300, check=False,
                              env={**self.env(DLT_DATA_DIR=str(workdir / "dlt")), "PYTHONPATH": str(PROJECT_ROOT)})
        assert done.returncode == 0, f"Snowflake client failed:\n{done.stderr[-4000:]}"
        return list(json.loads(done.stdout))


@dataclass(frozen=True)
class Step:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def events(self, message: str) -> list[dict[str, Any]]:
        return log_events(self.stderr.splitlines(), message)

    @property
    def log(self) -> str:
        return self.stderr[-5000:]


# ---------------------------------------------------------------------------------------------------------
# The source: its own schema, the application's writes, reads for comparison
# ---------------------------------------------------------------------------------------------------------
def source_connect(dsn: str) -> Any:
    """A source session under the product's TLS policy (verify-full and the RDS CA for a real Aurora host)."""
    from sources.postgres.transport import secure_dsn

    conn = psycopg2.connect(secure_dsn(dsn))
    conn.autocommit = True
    return conn


def execute(dsn: str, *statements: str) -> None:
    conn = source_connect(dsn)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = source_connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def create_source(dsn: str, s: str) -> None:
    """Two tables with the types docs/snowflake.md lists as real-account checks: numeric, jsonb, timestamptz."""
    execute(dsn, f"CREATE SCHEMA {s}",
            f"CREATE TABLE {s}.accounts (id bigint PRIMARY KEY, email text NOT NULL, balance numeric(12, 2) NOT NULL, "
            "active boolean NOT NULL, prefs jsonb, updated_at timestamptz NOT NULL DEFAULT now())",
            f"CREATE TABLE {s}.events (account_id bigint NOT NULL, seq int NOT NULL, kind text NOT NULL, "
            "at timestamptz NOT NULL, PRIMARY KEY (account_id, seq))",
            f"INSERT INTO {s}.accounts SELECT g, 'user' || g || '@example.com', g * 1.25, g % 3 = 0, "
            "jsonb_build_object('tier', g % 4, 'tags', jsonb_build_array('a', g)), "
            "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, 200) g",
            f"INSERT INTO {s}.events SELECT g % 200 + 1, g, 'kind' || g % 5, "
            "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, 600) g")


def write_changes(dsn: str, s: str, start: int) -> None:
    """The application between two syncs: inserts, updates (a JSON value too) and deletes on both tables."""
    execute(dsn,
            f"INSERT INTO {s}.accounts SELECT g, 'new' || g || '@example.com', g, true, NULL, now() "
            f"FROM generate_series({start}, {start + 29}) g",
            f"UPDATE {s}.accounts SET balance = balance + 1, prefs = prefs || '{{\"moved\": true}}', "
            f"updated_at = now() WHERE id % 10 = {start % 10}",
            f"DELETE FROM {s}.accounts WHERE id % 17 = {start % 17}",
            f"INSERT INTO {s}.events SELECT g % 50 + 1, g, 'late', now() FROM generate_series({start * 10}, "
            f"{start * 10 + 49}) g",
            f"UPDATE {s}.events SET kind = kind || '!' WHERE seq % 7 = {start % 7}",
            f"DELETE FROM {s}.events WHERE seq % 13 = {start % 13}")


def counts(dsn: str, s: str) -> dict[str, int]:
    return {table: int(rows(dsn, f"SELECT count(*) FROM {s}.{table}")[0][0]) for table in COMPARED}


def compared_rows(dsn: str, s: str, table: str) -> list[tuple[Any, ...]]:
    return rows(dsn, f"SELECT {COMPARED[table]} FROM {s}.{table} ORDER BY 1, 2")


def gap(message: str) -> None:
    """Say (in pytest's warnings summary and the captured output) what stand-in mode could not check, and why."""
    print(f"stand-in mode skips: {message}")
    warnings.warn(StandInGap(message), stacklevel=2)


# ---------------------------------------------------------------------------------------------------------
# Cleanup: everything carrying the run's name
# ---------------------------------------------------------------------------------------------------------
def snowflake_cleanup(run: LiveRun) -> None:
    """Drop the run's schemas (dataset, staging, anything else dlt named after it); then none may be left."""
    found = run.snowflake([f"SELECT schema_name FROM information_schema.schemata "
                           f"WHERE UPPER(schema_name) LIKE '{run.run_id.upper()}%'"])[0]
    names = [n for (n,) in found if n.upper() == run.run_id.upper() or n.upper().startswith(run.run_id.upper() + "_")]
    left = run.snowflake([*(f'DROP SCHEMA IF EXISTS "{n}" CASCADE' for n in names),
                          f"SELECT schema_name FROM information_schema.schemata "
                          f"WHERE UPPER(schema_name) LIKE '{run.run_id.upper()}%'"])[-1]
    print(f"Snowflake: dropped schemas {names}")
    assert not [n for (n,) in left if n.upper().startswith(run.run_id.upper())], f"schemas left behind: {left}"


def s3_cleanup(run: LiveRun) -> None:
    """Delete every version of every object under the run's prefixes (the production bucket is versioned)."""
    import boto3

    parsed = urlparse(run.bucket_url)
    base = parsed.path.strip("/")
    prefixes = [f"{p}/" for p in (f"{base}/{run.run_id}" if base else run.run_id,
                                  f"{base}/{LANDING_DIR}/{run.run_id}" if base else f"{LANDING_DIR}/{run.run_id}")]
    s3 = boto3.client("s3")
    deleted = 0
    for prefix in prefixes:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=parsed.netloc, Prefix=prefix):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                      for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]
            for i in range(0, len(doomed), 1000):
                s3.delete_objects(Bucket=parsed.netloc, Delete={"Objects": doomed[i:i + 1000], "Quiet": True})
            deleted += len(doomed)
    print(f"S3: deleted {deleted} object versions under {prefixes}")
    for prefix in prefixes:
        left = s3.list_object_versions(Bucket=parsed.netloc, Prefix=prefix)
        assert not left.get("Versions") and not left.get("DeleteMarkers"), f"objects left under {prefix}"
    if run.stand_ins:  # a bucket of its own: nothing may have been written outside the run's prefixes
        assert s3.list_object_versions(Bucket=parsed.netloc).get("Versions") is None, "objects outside the prefixes"


def source_cleanup(run: LiveRun, ddl_capture_before: bool) -> None:
    """The slot and publication if teardown did not drop them, DDL capture if this run installed it, the schema."""
    from sources.replication.ddl import TRIGGERS, uninstall_sql

    execute(run.source_dsn,
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{run.run_id}'",
            f"DROP PUBLICATION IF EXISTS {run.run_id}")
    if not ddl_capture_before and ddl_capture_installed(run.source_dsn, TRIGGERS):
        execute(run.source_dsn, uninstall_sql())
    execute(run.source_dsn, f"DROP SCHEMA IF EXISTS {run.schema} CASCADE")


def ddl_capture_installed(dsn: str, triggers: Any) -> bool:
    """Whether the database has the product's DDL-capture event triggers (setup installs them when it may)."""
    names = ", ".join(f"'{t}'" for t in triggers)
    return bool(rows(dsn, f"SELECT count(*) FROM pg_event_trigger WHERE evtname IN ({names})")[0][0])


# ---------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------
def test_live_end_to_end(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bootstrap/doctor, snapshot, setup, CDC (direct, then land + merge), verify, restore, teardown; no trace left."""
    use_stand_ins = os.environ.get("LIVE_USE_STAND_INS") == "1"
    with contextlib.ExitStack() as stack:
        if use_stand_ins:
            stack.enter_context(stand_ins(monkeypatch))
        missing = missing_variables()
        if missing:
            pytest.skip("live test: set " + "; ".join(missing) + " (or LIVE_USE_STAND_INS=1 for the stand-ins)")
        from sources.replication.ddl import TRIGGERS
        from tests.conftest import fresh_database

        started = time.monotonic()
        pg = request.getfixturevalue("pg")  # restores go into it; it is the source too without LIVE_SOURCE_DSN
        source_dsn = os.environ.get("LIVE_SOURCE_DSN") or stack.enter_context(fresh_database(pg, "live"))
        run = LiveRun(tmp_path, source_dsn, use_stand_ins)
        print(f"live run {run.run_id}: bucket prefix {run.run_id}/, "
              f"{'stand-ins' if use_stand_ins else 'real Snowflake and S3'}")
        ddl_capture_before = ddl_capture_installed(source_dsn, TRIGGERS)
        cleanups = [("source", lambda: source_cleanup(run, ddl_capture_before)),
                    ("snowflake", lambda: snowflake_cleanup(run)), ("s3", lambda: s3_cleanup(run))]
        try:
            create_source(source_dsn, run.schema)
            steps(run, pg)
        finally:
            failures = []
            for name, cleanup in cleanups:
                try:
                    cleanup()
                except Exception as exc:  # every cleanup runs; a failed one is reported after the others
                    failures.append(f"{name}: {exc}")
            print(f"live run {run.run_id}: {time.monotonic() - started:.0f} s with cleanup")
        assert not failures, f"cleanup of {run.run_id} failed, remove by hand: {failures}"


def steps(run: LiveRun, pg: Any) -> None:
    """The deployment's commands in the checklist's order (docs/deployment.md), each checked against the source."""
    s, dsn = run.schema, run.source_dsn

    # --- the Snowflake objects: created (stand-ins, or LIVE_SNOWFLAKE_BOOTSTRAP=1), then checked by doctor
    if os.environ.get("LIVE_SNOWFLAKE_BOOTSTRAP") == "1":
        if run.stand_ins:
            gap("snowflake-bootstrap of warehouse, integration, role, user and grants: fakesnow has none of them")
            run.cli("snowflake-bootstrap", "--only", "database", "schema", "file_format", "stage")
        else:
            run.cli("snowflake-bootstrap")
    else:
        print("snowflake-bootstrap not run (LIVE_SNOWFLAKE_BOOTSTRAP unset): doctor checks the objects exist")
    doctor = run.cli("doctor", "--json", expect=None)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    destination = {n: c for n, c in checks.items() if n.startswith(("destination", "snowflake", "s3"))}
    print("doctor: " + ", ".join(f"{n}: {c['status']}" for n, c in destination.items()))
    assert destination and all(c["status"] != "fail" for c in destination.values()), destination

    # --- a snapshot sync (as a scheduled `run --mode snapshot`), then the CDC setup: slot, publication, copy
    run.cli("run", "--mode", "snapshot")
    assert warehouse_counts(run) == counts(dsn, s)
    run.cli("setup")
    slot = rows(dsn, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{run.run_id}'")
    assert slot == [(1,)], "setup created no slot"

    # --- CDC loaded directly (merge_interval_seconds = 0): inserts, updates, deletes
    write_changes(dsn, s, 1001)
    run.cli("run", "--mode", "cdc")
    assert warehouse_counts(run) == counts(dsn, s)

    # --- land + merge (merge_interval_seconds > 0): the batch lands in S3, then `merge` applies it
    write_changes(dsn, s, 2001)
    landed = run.cli("run", "--mode", "cdc", SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS="300")
    assert landed.events("cdc batch landed"), f"nothing landed:\n{landed.log}"
    assert warehouse_counts(run) != counts(dsn, s), "landing must not touch the warehouse"
    merged = run.cli("merge", SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS="300")
    assert sum(e.get("batches", 0) for e in merged.events("merge succeeded")) >= 1, merged.log
    assert warehouse_counts(run) == counts(dsn, s)

    # --- verify: counts and checksums per key range, source against Snowflake
    verified = run.cli("verify", "--checksum", SOURCES__POSTGRES__REPLICATION__MERGE_INTERVAL_SECONDS="300")
    assert [e["outcome"] for e in verified.events("verify finished")] == ["in_sync"], verified.log
    tables = {e["table"]: e["status"] for e in verified.events("table verified")}
    assert tables == {f"{s}.{t}": "ok" for t in COMPARED}, tables

    # --- restore every table from the S3 archive alone into a local PostgreSQL, equal to the source
    from tests.conftest import fresh_database

    with fresh_database(pg, "live_restore") as target:
        database = target.rsplit("/", 1)[1]
        run.cli("restore", "--all", "--to", f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{database}",
                PGPASSWORD=pg.password)
        for table in COMPARED:
            assert compared_rows(target, s, table) == compared_rows(dsn, s, table), f"restored {table} differs"

    # --- teardown: the slot and publication are gone
    run.cli("teardown", "--yes")
    assert rows(dsn, f"SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{run.run_id}') + "
                     f"(SELECT count(*) FROM pg_publication WHERE pubname = '{run.run_id}')") == [(0,)]


def warehouse_counts(run: LiveRun) -> dict[str, int]:
    """Rows per table in Snowflake, read with the loader's own credentials."""
    dataset = run.run_id.upper()
    result = run.snowflake([f"SELECT count(*) FROM {dataset}.{run.schema.upper()}__{t.upper()}" for t in COMPARED])
    return {table: int(r[0][0]) for table, r in zip(COMPARED, result, strict=True)}


# ---------------------------------------------------------------------------------------------------------
# `python -m tests.live.test_live --sql <dataset>`: the test's Snowflake client, in the deployment environment
# ---------------------------------------------------------------------------------------------------------
def _sql_main(dataset: str) -> int:
    """Run the JSON list of statements on stdin as the loader; print each one's rows as JSON."""
    import snowflake.connector
    from dlt.common.configuration.resolve import resolve_configuration
    from dlt.destinations.impl.snowflake.configuration import SnowflakeClientConfiguration

    from runner.vault import activate

    statements = json.loads(sys.stdin.read())
    with activate():  # the private key from Vault when VAULT_ADDR is set, as the runner reads it
        config = resolve_configuration(SnowflakeClientConfiguration()._bind_dataset_name(dataset_name=dataset),
                                       sections=("destination", "snowflake"))
        params = config.credentials.to_connector_params()
    conn = snowflake.connector.connect(**params, session_parameters={"QUERY_TAG": f"aurora-sync-{dataset}"})
    try:
        results = []
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                results.append([list(r) for r in cur.fetchall()])
    finally:
        conn.close()
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sql":
        sys.exit(_sql_main(sys.argv[2]))
    sys.exit("usage: python -m tests.live.test_live --sql <dataset> (statements as JSON on stdin)")
