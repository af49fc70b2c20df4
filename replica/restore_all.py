"""Disaster recovery: rebuild every archived table as of a point in time, from the S3 archive alone.

`aurora-sync restore --all --as-of T --to <postgresql:// or duckdb://>` composes `replica.restore.restore` over
every `<schema>/<table>` folder of the pipeline's dataset in the bucket (folders starting with `_`, such as
`_manifests` and dlt's own `_dlt_*` tables, are not source tables). A table whose first load came after T did not
exist yet at T in the replica: it is skipped and reported, not failed. Aurora and Snowflake are not touched, so
this is what runs when both are gone; `docs/operations.md` has the drill and its measured RTO.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.destinations import MANIFEST_DIR

from .restore import Archive, RestoreError, restore

NO_LOAD_YET = "The archive has no load of this table up to"


@dataclass
class TableOutcome:
    table: str
    rows: int | None  # None: skipped
    seconds: float
    note: str = ""


def archived_tables(archive: Archive) -> list[str]:
    """`schema.table` for every table folder under `<bucket>/<dataset>/`, sorted."""
    root = archive.path()
    if not archive.fs.exists(root):
        raise RestoreError(f"No archive for dataset {archive.dataset!r} under {archive.url(root)}: check --bucket-url "
                           "and --pipeline (the dataset is the first path element).")
    found = []
    for schema_path in archive.fs.ls(root, detail=False):
        schema = posixpath.basename(schema_path.rstrip("/"))
        if schema.startswith("_") or schema == MANIFEST_DIR or not archive.fs.isdir(schema_path):
            continue
        for table_path in archive.fs.ls(schema_path, detail=False):
            table = posixpath.basename(table_path.rstrip("/"))
            if archive.fs.isdir(table_path) and not table.startswith("_"):
                found.append(f"{schema}.{table}")
    if not found:
        raise RestoreError(f"The archive {archive.url(root)} holds no table folders.")
    return sorted(found)


def restore_all(
    to: str,
    bucket_url: str,
    dataset: str,
    as_of: float | None = None,
    if_exists: str = "fail",
    fs: Any = None,
    on_table: Callable[[TableOutcome], None] | None = None,
) -> list[TableOutcome]:
    """Restore each archived table into `to`; tables created after `as_of` are skipped and reported."""
    archive = Archive(bucket_url, dataset, fs)
    outcomes = []
    for table in archived_tables(archive):
        started = time.monotonic()
        try:
            result = restore(table, to, bucket_url, dataset, as_of=as_of, if_exists=if_exists, fs=archive.fs)
            outcome = TableOutcome(table, result.rows, time.monotonic() - started,
                                   f"{len(result.load_ids)} load(s) from {result.base_load_id}")
        except RestoreError as exc:
            if not str(exc).startswith(NO_LOAD_YET):
                raise RestoreError(f"{table}: {exc}") from exc
            outcome = TableOutcome(table, None, time.monotonic() - started, "no load up to --as-of: skipped")
        outcomes.append(outcome)
        if on_table:
            on_table(outcome)
    return outcomes
