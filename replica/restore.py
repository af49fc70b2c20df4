"""Rebuild one table as of a point in time from the S3 archive (the staged parquet files), into PostgreSQL or DuckDB.

A backup that has never been restored is not a backup: this reads nothing but the bucket, so it works when
both Aurora and Snowflake are unavailable.

The archive (see `pipelines.destinations`) holds, per table, the files of every load at
`<dataset>/<schema>/<table>/<load_id>.<file_id>.parquet` and a manifest per load at
`<dataset>/_manifests/<schema>/<table>/<load_id>.json`. dlt load ids are the unix time the load package was
created, so "as of T" means: every load whose id is <= T. The rebuild starts at the latest full snapshot
(`replace` load) up to T, or at the first load, and applies every later load as a batch of changes: the
latest version of each primary key wins (by load, then by `_lsn` for CDC rows) and a version marked
`_deleted` removes the row. This is exactly what the MERGE in Snowflake did, replayed.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv

from pipelines.destinations import MANIFEST_DIR
from sources.postgres.type_mapping import TEXT_SUFFIX
from sources.replication.multiset import ROW_HASH_COLUMN, ROW_KEY_COLUMN

FILE_NAME = re.compile(r"^(?P<load_id>\d+(?:\.\d+)?)\.(?P<file_id>[A-Za-z0-9_-]+)\.(?P<ext>parquet|jsonl(?:\.gz)?)$")
LSN_COLUMN = "_lsn"
ORDINAL_COLUMN = "_lsn_ordinal"  # a change's place inside its transaction: versions with one `_lsn` differ by it
DELETED_COLUMN = "_deleted"
DLT_COLUMNS = ("_dlt_load_id", "_dlt_id")
_FILE_COL, _SEQ_COL, _RN_COL = "_restore_file", "_restore_seq", "_restore_rn"


class RestoreError(Exception):
    """The restore cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ArchiveFile:
    url: str  # what DuckDB reads: s3://bucket/key or a local path
    load_id: str
    ext: str

    @property
    def loaded_at(self) -> float:
        return float(self.load_id)


@dataclass
class RestorePlan:
    """Which loads rebuild the table, and how."""

    files: list[ArchiveFile]
    base_load_id: str
    load_ids: list[str]
    primary_key: list[str]
    deleted_column: str | None
    lsn_column: str | None
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RestoreResult:
    target: str
    rows: int
    base_load_id: str
    load_ids: list[str]


def parse_as_of(value: str | None) -> float | None:
    """A unix timestamp or an ISO-8601 time (naive means UTC) → unix seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"--as-of {value!r} is neither a unix timestamp nor an ISO-8601 time.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def split_table(qualified: str) -> tuple[str, str]:
    schema, dot, table = qualified.partition(".")
    if not dot or not schema or not table:
        raise RestoreError(f"--table {qualified!r} must be <schema>.<table>, as in the source database.")
    return schema, table


class Archive:
    """The bucket (s3:// through dlt's filesystem config and credentials, or a local folder) for one dataset."""

    def __init__(self, bucket_url: str, dataset: str, fs: Any = None) -> None:
        self.bucket_url = bucket_url.rstrip("/")
        self.dataset = dataset
        if fs is None:
            fs = _filesystem_from_dlt_config(self.bucket_url)
        self.fs = fs
        parsed = urlparse(self.bucket_url)
        self.is_local = parsed.scheme in ("", "file")
        self.root = (parsed.path if parsed.scheme == "file" else self.bucket_url) if self.is_local else \
            f"{parsed.netloc}{parsed.path}"
        self.scheme = "" if self.is_local else parsed.scheme

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, self.dataset, *parts)

    def url(self, path: str) -> str:
        return path if self.is_local else f"{self.scheme}://{path}"

    def table_files(self, schema: str, table: str) -> list[ArchiveFile]:
        folder = self.path(schema, table)
        if not self.fs.exists(folder):
            raise RestoreError(
                f"No archived files for {schema}.{table} under {self.url(folder)}: check --table, --bucket-url "
                "and --pipeline (the dataset is the first path element)."
            )
        files = []
        for path in self.fs.ls(folder, detail=False):
            match = FILE_NAME.match(posixpath.basename(path))
            if match:
                files.append(ArchiveFile(self.url(path), match["load_id"], match["ext"]))
        return sorted(files, key=lambda f: (f.loaded_at, f.url))

    def manifests(self, schema: str, table: str) -> dict[str, dict[str, Any]]:
        folder = self.path(MANIFEST_DIR, schema, table)
        if not self.fs.exists(folder):
            return {}
        found = {}
        for path in self.fs.ls(folder, detail=False):
            if path.endswith(".json"):
                manifest = json.loads(self.fs.cat_file(path))
                found[str(manifest["load_id"])] = manifest
        return found


def _filesystem_from_dlt_config(bucket_url: str) -> Any:
    """fsspec filesystem with the credentials and kwargs of `[destination.filesystem]` (as the pipeline uses)."""
    from dlt.common.configuration import resolve_configuration
    from dlt.common.storages import FilesystemConfiguration
    from dlt.common.storages.fsspec_filesystem import fsspec_from_config

    config = resolve_configuration(
        FilesystemConfiguration(bucket_url=bucket_url), sections=("destination", "filesystem")
    )
    fs, _ = fsspec_from_config(config)
    return fs


def plan(
    files: list[ArchiveFile],
    manifests: dict[str, dict[str, Any]],
    as_of: float | None,
    primary_key: list[str] | None = None,
) -> RestorePlan:
    """Pick the base snapshot and the change loads up to `as_of`."""
    if as_of is not None:
        files = [f for f in files if f.loaded_at <= as_of]
    if not files:
        when = datetime.fromtimestamp(as_of, UTC).isoformat() if as_of is not None else "now"
        raise RestoreError(f"The archive has no load of this table up to {when}.")
    load_ids = sorted({f.load_id for f in files}, key=float)
    snapshots = [lid for lid in load_ids if manifests.get(lid, {}).get("write_disposition") == "replace"]
    base = snapshots[-1] if snapshots else load_ids[0]
    used = [lid for lid in load_ids if float(lid) >= float(base)]
    latest = next((manifests[lid] for lid in reversed(used) if lid in manifests), {})
    key = list(primary_key or latest.get("primary_key") or [])
    if not key:
        raise RestoreError("No primary key in the archive's manifests for this table: pass --primary-key.")
    deleted = (latest.get("hard_delete") or [None])[0]
    lsn = (latest.get("dedup_sort") or [None])[0]
    return RestorePlan([f for f in files if f.load_id in used], base, used, key, deleted, lsn,
                       {lid: manifests[lid] for lid in used if lid in manifests})


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read_sql(files: Iterable[ArchiveFile]) -> str:
    """One relation over all files of the plan (columns matched by name: later loads may add columns)."""
    parquet = [f.url for f in files if f.ext == "parquet"]
    jsonl = [f.url for f in files if f.ext != "parquet"]
    parts = []
    if parquet:
        parts.append(f"SELECT * FROM read_parquet([{', '.join(map(_literal, parquet))}], union_by_name = true, "
                     f"filename = '{_FILE_COL}')")
    if jsonl:
        parts.append(f"SELECT * FROM read_json([{', '.join(map(_literal, jsonl))}], format = 'newline_delimited', "
                     f"union_by_name = true, filename = '{_FILE_COL}')")
    return " UNION ALL BY NAME ".join(parts)


def rebuild(con: duckdb.DuckDBPyConnection, restore_plan: RestorePlan) -> pa.Table:
    """The table as of the plan: latest version per key (load order, then LSN), deleted keys removed."""
    seq = ", ".join(f"({_literal(f.url)}, {i})" for i, f in enumerate(sorted(
        restore_plan.files, key=lambda f: (f.loaded_at, f.url))))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _restore_rows AS {_read_sql(restore_plan.files)}").fetchall()
    columns = [r[0] for r in con.execute("DESCRIBE _restore_rows").fetchall()]
    missing = [c for c in restore_plan.primary_key if c not in columns]
    if missing:
        raise RestoreError(f"Primary key column(s) {missing} are not in the archived files (columns: {columns}).")
    lsn = restore_plan.lsn_column or (LSN_COLUMN if LSN_COLUMN in columns else None)
    deleted = restore_plan.deleted_column or (DELETED_COLUMN if DELETED_COLUMN in columns else None)
    order = f"{_SEQ_COL} DESC" + (f", {_quote(lsn)} DESC NULLS LAST" if lsn and lsn in columns else "")
    if lsn == LSN_COLUMN and ORDINAL_COLUMN in columns:
        order += f", {_quote(ORDINAL_COLUMN)} DESC NULLS LAST"
    keep = "" if not deleted or deleted not in columns else f" AND coalesce({_quote(deleted)}, false) = false"
    # the version order comes from the manifest's `dedup_sort` (CDC's `_lsn`, or a snapshot-source cursor such as
    # updated_at); only the columns CDC adds are left out of the rebuilt table
    internal = {_FILE_COL, _SEQ_COL, _RN_COL, *DLT_COLUMNS, LSN_COLUMN, ORDINAL_COLUMN, *(c for c in (deleted,) if c)}
    output = ", ".join(_quote(c) for c in columns if c not in internal)
    key = ", ".join(_quote(c) for c in restore_plan.primary_key)
    sql = f"""
        WITH seq(url, {_SEQ_COL}) AS (VALUES {seq}),
        versions AS (
            SELECT r.*, s.{_SEQ_COL},
                   row_number() OVER (PARTITION BY {key} ORDER BY {order}) AS {_RN_COL}
            FROM _restore_rows r JOIN seq s ON s.url = r.{_FILE_COL}
        )
        SELECT {output} FROM versions WHERE {_RN_COL} = 1{keep} ORDER BY {key}
    """
    return con.sql(sql).to_arrow_table()


def _connect(archive: Archive) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if not archive.is_local:
        # DuckDB's httpfs would need a download and its own credentials: read through the same fsspec filesystem
        if archive.scheme in con.list_filesystems():
            con.unregister_filesystem(archive.scheme)
        con.register_filesystem(archive.fs)
    return con


# --- writing the result ------------------------------------------------------------------------------------
_PG_TYPES: list[tuple[Any, str]] = [
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_int16, "smallint"),
    (pa.types.is_int32, "integer"),
    (pa.types.is_integer, "bigint"),
    (pa.types.is_float32, "real"),
    (pa.types.is_floating, "double precision"),
    (pa.types.is_date, "date"),
    (pa.types.is_time, "time"),
    (pa.types.is_binary, "bytea"),
    (pa.types.is_large_binary, "bytea"),
]


def postgres_type(arrow_type: pa.DataType) -> str:
    """The PostgreSQL column type a restored Arrow column is created with (text when nothing closer exists)."""
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    for check, name in _PG_TYPES:
        if check(arrow_type):
            return name
    return "text"


def _csv_ready(table: pa.Table) -> pa.Table:
    """bytea travels as PostgreSQL hex text in CSV; everything else as Arrow writes it."""
    import pyarrow.compute as pc

    for i, column in enumerate(table.schema):
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            hexed = pa.array([None if v is None else "\\x" + v.hex() for v in table.column(i).to_pylist()], pa.string())
            table = table.set_column(i, pa.field(column.name, pa.string()), hexed)
        elif pa.types.is_time(column.type) or pa.types.is_duration(column.type):
            table = table.set_column(i, pa.field(column.name, pa.string()), pc.cast(table.column(i), pa.string()))
    return table


def fold_for_postgres(data: pa.Table) -> pa.Table:
    """Back to the source's shape: a value kept in `<column>__pg_text` (infinity, BC, 24:00:00, NaN) goes back into
    its column, which PostgreSQL can hold it in, and a keyless table's copy identities are dropped. A folded column
    travels as text and keeps its type (schema metadata `pg_type:<column>`); PostgreSQL parses it on COPY."""
    import pyarrow.compute as pc

    declared = dict(data.schema.metadata or {})
    for name in [n for n in data.column_names if n.endswith(TEXT_SUFFIX)]:
        typed = name[:-len(TEXT_SUFFIX)]
        if typed not in data.column_names:
            continue
        index = data.column_names.index(typed)
        field = data.schema.field(typed)
        folded = pc.if_else(pc.is_null(data[name]), pc.cast(data[typed], pa.string()), data[name])
        data = data.set_column(index, pa.field(typed, pa.string()), folded).drop_columns([name])
        declared[f"pg_type:{typed}".encode()] = postgres_type(field.type).encode()
    data = data.replace_schema_metadata(declared)
    return data.drop_columns([c for c in (ROW_KEY_COLUMN, ROW_HASH_COLUMN) if c in data.column_names])


def write_postgres(url: str, schema: str, table: str, data: pa.Table, if_exists: str) -> None:
    import psycopg2
    from psycopg2 import sql

    data = fold_for_postgres(data)
    declared = {k.decode()[len("pg_type:"):]: v.decode() for k, v in (data.schema.metadata or {}).items()
                if k.decode().startswith("pg_type:")}

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, table))
            exists = cur.fetchone() is not None
            target = sql.Identifier(schema, table)
            if exists and if_exists == "fail":
                raise RestoreError(f"{schema}.{table} already exists in the target: pass --if-exists replace|truncate.")
            if exists and if_exists == "replace":
                cur.execute(sql.SQL("DROP TABLE {}").format(target))
            if exists and if_exists == "truncate":
                cur.execute(sql.SQL("TRUNCATE {}").format(target))
            if not exists or if_exists == "replace":
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                columns = sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(declared.get(f.name) or
                                                                            postgres_type(f.type)))
                    for f in data.schema
                )
                cur.execute(sql.SQL("CREATE TABLE {} ({})").format(target, columns))
            buffer = io.BytesIO()
            pa_csv.write_csv(_csv_ready(data), buffer, pa_csv.WriteOptions(include_header=False))
            buffer.seek(0)
            names = sql.SQL(", ").join(sql.Identifier(n) for n in data.column_names)
            copy = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(target, names)
            cur.copy_expert(copy.as_string(cur), buffer)
    finally:
        conn.close()


def write_duckdb(url: str, schema: str, table: str, data: pa.Table, if_exists: str) -> None:
    path = url.split("://", 1)[1] if "://" in url else url
    path = path[1:] if path.startswith("/") and url.startswith("duckdb:////") else path
    con = duckdb.connect(path)
    try:
        # DuckDB 2 refuses new work while a result is unread: every statement is fetched to the end
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}").fetchall()
        target = f"{_quote(schema)}.{_quote(table)}"
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
        ).fetchall()[0][0]
        if exists and if_exists == "fail":
            raise RestoreError(f"{schema}.{table} already exists in the target: pass --if-exists replace|truncate.")
        con.register("_restored", data)
        if exists and if_exists == "truncate":
            con.execute(f"DELETE FROM {target}").fetchall()
            con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM _restored").fetchall()
        else:
            con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM _restored").fetchall()
    finally:
        con.close()


def describe_target(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.hostname or ''}{':' + str(parsed.port) if parsed.port else ''}{parsed.path}"


def restore(
    table: str,
    to: str,
    bucket_url: str,
    dataset: str,
    as_of: float | None = None,
    as_table: str | None = None,
    if_exists: str = "fail",
    primary_key: list[str] | None = None,
    fs: Any = None,
) -> RestoreResult:
    """Rebuild `schema.table` as of `as_of` (unix seconds; None = latest) into `to` (postgresql:// or duckdb://)."""
    schema, name = split_table(table)
    target_schema, target_table = split_table(as_table) if as_table else (schema, name)
    scheme = urlparse(to).scheme.split("+")[0]
    if scheme not in ("postgresql", "postgres", "duckdb"):
        raise RestoreError(f"--to must be a postgresql:// or duckdb:// URL, got {scheme or to!r}.")
    archive = Archive(bucket_url, dataset, fs)
    restore_plan = plan(archive.table_files(schema, name), archive.manifests(schema, name), as_of, primary_key)
    con = _connect(archive)
    try:
        data = rebuild(con, restore_plan)
    finally:
        con.close()
    if scheme == "duckdb":
        write_duckdb(to, target_schema, target_table, data, if_exists)
    else:
        write_postgres(to, target_schema, target_table, data, if_exists)
    return RestoreResult(f"{describe_target(to)} {target_schema}.{target_table}", data.num_rows,
                         restore_plan.base_load_id, restore_plan.load_ids)
