"""The S3 archive layout `<bucket>/<pipeline>/<schema>/<table>/<load_id>.<file_id>.parquet` for dlt's filesystem.

Tables of all replicated PostgreSQL schemas share one dataset as `<schema>__<table>` (see
`sources.postgres.catalog.TableSpec.resource_name`). In the bucket we want them apart again, so that the
archive reads like the source and a restore or lifecycle rule can address one schema or table by prefix.

dlt's filesystem layout must contain `{table_name}` with nothing but `{schema_name}` before it, so we do
not add placeholders in front of it: we render `{table_name}` itself as `<schema>/<table>` through an
`extra_placeholders` callback. dlt uses the same callback for a table's prefix, so truncation, listing
and the staging COPY paths all agree with the files written.

Next to the data, the archive keeps one small manifest per load and table
(`<pipeline>/_manifests/<schema>/<table>/<load_id>.json`: write disposition, primary key, delete and LSN
columns, column types), so that `aurora-sync restore` can tell a full snapshot (`replace`) from a batch of
changes (`merge`) and needs nothing but the bucket.

Callbacks cannot be written in TOML, hence this factory: select it by config alone, e.g.
`[customers_orders] staging_type = "pipelines.destinations.archive_filesystem"` (or `destination_type`
for a bucket-only replica). Everything else (bucket, layout, credentials, SSE-KMS) stays in
`[destination.filesystem]`, which this factory reads because its destination name is `filesystem`.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from dlt.common.destination.client import LoadJob, PreparedTableSchema, StateInfo
from dlt.common.schema.utils import get_merge_strategy, get_write_disposition
from dlt.destinations import filesystem
from dlt.destinations.impl.filesystem.filesystem import FilesystemClient

from pipelines.progress import crash_at

# failpoint (pipelines.progress): a landing load's state file is written, its `_dlt_loads` entry not yet
LANDING_STATE_WRITTEN = "landing_state_written"

SCHEMA_SEPARATOR = "__"
ARCHIVE_LAYOUT = "{table_name}/{load_id}.{file_id}.{ext}"
MANIFEST_DIR = "_manifests"


def split_table_name(table_name: str) -> tuple[str | None, str]:
    """`customers__addresses` → (`customers`, `addresses`); dlt's own tables (`_dlt_loads`) have no schema."""
    if table_name.startswith("_dlt") or SCHEMA_SEPARATOR not in table_name.strip("_"):
        return None, table_name
    schema, _, table = table_name.partition(SCHEMA_SEPARATOR)
    return schema, table


def archive_table_path(
    schema_name: str | None, table_name: str, load_id: str | None, file_id: str | None, ext: str | None
) -> str:
    """dlt placeholder callback for `{table_name}`: `customers__addresses` → `customers/addresses`."""
    schema, table = split_table_name(table_name)
    return f"{schema}/{table}" if schema else table


ARCHIVE_PLACEHOLDERS: dict[str, Any] = {"table_name": archive_table_path}


def table_manifest(table: PreparedTableSchema, load_id: str, schema_tables: dict[str, Any]) -> dict[str, Any]:
    """What a restore needs to know about one table in one load, besides the rows.

    The write disposition comes from the dlt schema: as a staging destination, dlt hands the filesystem
    every table as `append`, whereas the restore must know a full `replace` from a `merge` of changes.
    """
    columns = table.get("columns", {})

    def with_hint(hint: str) -> list[str]:
        return [name for name, column in columns.items() if column.get(hint)]

    return {
        "load_id": load_id,
        "table": table["name"],
        "write_disposition": get_write_disposition(schema_tables, table["name"]),
        "merge_strategy": get_merge_strategy(schema_tables, table["name"]),
        "primary_key": with_hint("primary_key"),
        "hard_delete": with_hint("hard_delete"),
        "dedup_sort": with_hint("dedup_sort"),
        "columns": {name: column.get("data_type") for name, column in columns.items()},
    }


class ArchiveFilesystemClient(FilesystemClient):
    """dlt's filesystem client that also writes the per-load table manifest (see the module docstring), and whose
    pipeline state is only ever restored from a load that completed.

    dlt writes a load's state file before its `_dlt_loads` entry, and restores the newest state file it finds. A
    process that dies between the two (or an S3 failure there) leaves a state ahead of the loads that completed: the
    CDC follower restarted on an empty disk would resume after a batch that `merge` never reads (it reads completed
    loads only), and the batch would be lost. So the state restored is the newest one whose load completed, and old
    state files are cleaned up only among complete ones.
    """

    def manifest_path(self, table_name: str, load_id: str) -> str:
        table_path = archive_table_path(None, table_name, None, None, None)
        return str(self.pathlib.join(self.dataset_path, MANIFEST_DIR, table_path, f"{load_id}.json"))

    def create_load_job(
        self, table: PreparedTableSchema, file_path: str, load_id: str, restore: bool = False
    ) -> LoadJob:
        job = super().create_load_job(table, file_path, load_id, restore)
        if not self.is_dlt_table(table["name"]):
            path = self.manifest_path(table["name"], load_id)
            if self.is_local_filesystem:
                self.fs_client.makedirs(posixpath.dirname(path), exist_ok=True)
            # several files of one table may write it concurrently: the content is identical
            manifest = table_manifest(table, load_id, self.schema.tables)
            self.fs_client.write_text(path, json.dumps(manifest, indent=1), encoding="utf-8")
        return job

    def _load_completed(self, load_id: str) -> bool:
        loads = self.get_table_dir(self.schema.loads_table_name)
        if self.fs_client.exists(self.pathlib.join(loads, f"{self.schema.name}__{load_id}.jsonl")):
            return True
        return bool(self.fs_client.glob(self.pathlib.join(loads, f"*__{load_id}.jsonl")))

    def _states(self, pipeline_name: str) -> list[tuple[str, str]]:
        """(load id, path) of the pipeline's state files, newest first."""
        found = [(parts[1], path) for path, parts in self._list_dlt_table_files(self.schema.state_table_name)
                 if parts[0] == pipeline_name]
        return sorted(found, key=lambda item: float(item[0]), reverse=True)

    def get_stored_state(self, pipeline_name: str) -> StateInfo | None:
        """The newest state by its own version counter among the loads that completed. dlt takes the highest load
        id, a wall-clock time: a replacement task whose clock is behind would restore an older state forever."""
        newest: StateInfo | None = None
        for load_id, path in self._states(pipeline_name):
            if not self._load_completed(load_id):
                continue
            state = json.loads(self.fs_client.read_text(path, encoding="utf-8"))
            if legacy := state.pop("dlt_load_id", None):
                state["_dlt_load_id"] = legacy
            info = StateInfo(**state)
            if newest is None or info.version > newest.version:
                newest = info
        return newest

    _cleanup_now = False

    def _cleanup_pipeline_states(self, pipeline_name: str) -> None:
        """dlt cleans up right after writing the state, before the load completes; here only after it did, so the
        newest complete state always survives (`complete_load`)."""
        if self._cleanup_now:
            super()._cleanup_pipeline_states(pipeline_name)

    def complete_load(self, load_id: str) -> None:
        self._store_current_state(load_id)
        crash_at(LANDING_STATE_WRITTEN)
        self._store_load(load_id)
        document = self._pipeline_state_document()
        if document and self.config.max_state_files >= 1:
            self._cleanup_now = True
            try:
                self._cleanup_pipeline_states(document["pipeline_name"])
            finally:
                self._cleanup_now = False

    @staticmethod
    def _pipeline_state_document() -> dict[str, Any] | None:
        from dlt.common.storages.load_package import CurrentLoadPackageStateNotAvailable, load_package_state

        try:
            return load_package_state()["state"].get("pipeline_state")  # type: ignore[return-value]
        except CurrentLoadPackageStateNotAvailable:
            return None


class archive_filesystem(filesystem):  # lower case like dlt's own factories: config names it
    """dlt's `filesystem` destination with the archive's `{table_name}` → `<schema>/<table>` placeholder.

    Its configuration section stays `[destination.filesystem]`.
    """

    # dlt drops arguments equal to the defaults of this signature, so the config's `layout` etc. still apply
    __orig_base__ = filesystem

    def __init__(self, destination_name: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("extra_placeholders", ARCHIVE_PLACEHOLDERS)
        super().__init__(destination_name=destination_name or "filesystem", **kwargs)

    @property
    def client_class(self) -> type[FilesystemClient]:
        return ArchiveFilesystemClient


archive_filesystem.register()
