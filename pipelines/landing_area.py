"""The landing area as `merge` reads it: an index of landed loads, their ops and their files, listed without growing.

Layout, under `<bucket>/_landing/<dataset>/` (dlt's filesystem destination writes everything but the index):

- `_index/<seq:020d>.<load_id>.json`: one small object per landing load that completed, written by the follower
  after the load (and again on restart if it died in between). `seq` is the landing's own counter (previous + 1,
  kept in the CDC state and committed with each load), so the names sort in landing order and a merge lists only
  what came after the last load it merged (`StartAfter`): an idle cycle is one LIST request however many loads the
  area holds, a busy one one per thousand new loads. Nothing depends on a clock: load ids are wall-clock times,
  `seq` is not.
- `_aurora_ops/<load_id>.*.parquet`: what each load does to each of its tables (`pipelines.ops.Op`).
- `<schema>/<table>/<load_id>.*.parquet`: the rows; `_dlt_loads/`, `_dlt_pipeline_state/`: dlt's bookkeeping.
- `_rereads/<table>.<id>.json`: keys the merge wrote as tombstones (a version whose unchanged TOAST value it found
  nowhere) for the follower to read again from the source (`Reread`); the follower deletes one once its keys landed.
- `_aurora_merged.json`: the last load a complete merge cycle applied (a hint for idle cycles; the merge's
  positions in the warehouse stay the truth).

A load listed in the index but missing, or a `seq` missing between two listed ones, is a gap: a load was deleted (or
expired) before it was merged. The merge stops with `LandingGap` instead of skipping it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.configuration import resolve_configuration
from dlt.common.schema import Schema
from dlt.common.storages.configuration import FilesystemConfiguration
from dlt.common.storages.fsspec_filesystem import fsspec_from_config

from pipelines.destinations import MANIFEST_DIR, archive_table_path
from pipelines.landing import OPS_TABLE, landing_bucket_url, landing_dataset
from sources.postgres.errors import SourceConfigError, SourceError
from sources.replication import SOURCE_NAME

INDEX_DIR = "_index"
REREADS_DIR = "_rereads"
MARKER_FILE = "_aurora_merged.json"
PAGE = 1000  # keys per S3 LIST request


class LandingGap(SourceError):
    """A landed load the merge has not applied is missing from the landing area: it cannot be skipped."""


@dataclass(frozen=True)
class IndexEntry:
    """One completed landing load."""

    seq: int
    prev: int  # the seq of the load landed before it (seq - 1)
    load_id: str
    tables: tuple[str, ...] = ()
    landed_at: str = ""

    @property
    def name(self) -> str:
        return f"{self.seq:020d}.{self.load_id}.json"

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "prev": self.prev, "load_id": self.load_id, "tables": list(self.tables),
                "landed_at": self.landed_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexEntry:
        return cls(int(data["seq"]), int(data.get("prev") or 0), str(data["load_id"]), tuple(data.get("tables") or ()),
                   str(data.get("landed_at") or ""))


def _normalized(op: LandedOp, naming: Any) -> LandedOp:
    """Landed files hold dlt-normalized column names (`Every Type` -> `every_type`): so must the op."""
    norm = naming.normalize_identifier
    op.primary_key = [norm(k) for k in op.primary_key]
    op.hints = {norm(name): {**hint, "name": norm(name)} for name, hint in op.hints.items()}
    return op


@dataclass
class LandedOp:
    seq: int
    position: int
    load_id: str
    table: str
    kind: str
    reload: bool
    lsn: int
    commit_time: datetime | None
    landed_at: datetime
    primary_key: list[str]
    hints: dict[str, Any]
    delete_mode: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes) of this op's rows
    ordinal: int = 0  # a TRUNCATE's place in its transaction (rows carry their own positions)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class Reread:
    """Keys of `table` (values as PostgreSQL prints them) the merge asks the follower to read again."""

    name: str
    table: str
    keys: list[list[str | None]]


def rereads_area(pipeline: dlt.Pipeline) -> LandingArea | None:
    """Where re-read requests go (`Reread`): the landing area, in direct mode too, whenever an archive bucket is
    configured (always in production: Snowflake loads through it); None without one (local DuckDB)."""
    try:
        landing_bucket_url()
    except SourceConfigError:
        return None
    return LandingArea(pipeline)


class LandingArea:
    """A pipeline's landing area in the archive bucket, through fsspec with dlt's filesystem configuration."""

    def __init__(self, pipeline: dlt.Pipeline) -> None:
        config = resolve_configuration(FilesystemConfiguration(), sections=("destination", "filesystem"))
        self.fs, _ = fsspec_from_config(config)
        bucket = config.bucket_url.rstrip("/")
        self.base = (bucket.split("://", 1)[1] if "://" in bucket else bucket) + "/" + landing_dataset(pipeline)
        self.naming = Schema(SOURCE_NAME).naming
        self.list_requests = 0  # LIST calls made (the cost of a cycle: `merge` reports it)

    # -- listing ---------------------------------------------------------------------------------------
    def _list(self, folder: str, prefix: str = "", start_after: str | None = None) -> list[tuple[str, int]]:
        """(path, size) of the objects in `folder` whose name starts with `prefix` (and sorts after `start_after`),
        in name order: on S3 from that key on (`StartAfter`), a page of a thousand per request."""
        path = f"{self.base}/{folder}"
        if hasattr(self.fs, "call_s3"):
            bucket, _, key = path.partition("/")
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{key}/{prefix}", "MaxKeys": PAGE}
            if start_after:
                kwargs["StartAfter"] = f"{key}/{start_after}"
            found: list[tuple[str, int]] = []
            while True:
                self.list_requests += 1
                page = self.fs.call_s3("list_objects_v2", **kwargs)
                found += [(f"{bucket}/{o['Key']}", int(o["Size"])) for o in page.get("Contents", [])]
                if not page.get("IsTruncated"):
                    return found
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
                kwargs.pop("StartAfter", None)
        self.list_requests += 1
        try:
            entries = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        found = [(e["name"], int(e["size"])) for e in entries if e.get("type") != "directory"]
        return sorted((p, s) for p, s in found if p.rsplit("/", 1)[-1].startswith(prefix) and (
            start_after is None or p.rsplit("/", 1)[-1] > start_after))

    # -- the index -------------------------------------------------------------------------------------
    def index(self, after: int | None = None) -> list[IndexEntry]:
        """Completed loads with a seq above `after` (all of them when None), in landing order."""
        start = f"{after:020d}/" if after is not None else None  # '/' sorts after '.': every `<after>.*` is skipped
        entries = []
        for path, _ in self._list(INDEX_DIR, start_after=start):
            with self.fs.open(path, "rb") as f:
                entries.append(IndexEntry.from_json(json.load(f)))
        return sorted(entries, key=lambda e: (e.seq, e.load_id))

    def write_index(self, entry: IndexEntry) -> None:
        self.fs.makedirs(f"{self.base}/{INDEX_DIR}", exist_ok=True)
        with self.fs.open(f"{self.base}/{INDEX_DIR}/{entry.name}", "wb") as f:
            f.write(json.dumps(entry.as_json()).encode())

    def has_index(self, entry: IndexEntry) -> bool:
        return bool(self.fs.exists(f"{self.base}/{INDEX_DIR}/{entry.name}"))

    @staticmethod
    def check_contiguous(entries: list[IndexEntry], after: int | None) -> None:
        """Raise `LandingGap` when a seq is missing after `after` (or between two listed loads)."""
        expected = after + 1 if after is not None else (entries[0].seq if entries else 0)
        for entry in entries:
            if entry.seq < expected:  # the same seq twice (a follower that lost its slot landed it too): fine
                continue
            if entry.seq > expected:
                raise LandingGap(
                    f"Landing loads {expected}..{entry.seq - 1} are missing from the landing area ({INDEX_DIR}/ "
                    f"lists {entry.seq} next): they were deleted or expired before `merge` applied them, so their "
                    "changes cannot reach the warehouse from here. Restore them from a bucket version, or copy every "
                    "table again (`aurora-sync setup --resnapshot`). The merge stops until then.")
            expected = entry.seq + 1

    # -- what a load holds -------------------------------------------------------------------------------
    def ops(self, entry: IndexEntry) -> list[LandedOp]:
        """The `_aurora_ops` rows of one load."""
        found = self._list(OPS_TABLE, prefix=f"{entry.load_id}.")
        if not found:
            raise LandingGap(f"Landing load {entry.seq} ({entry.load_id}) is in the index but its ops are gone "
                             "from the landing area: it was deleted before `merge` applied it.")
        ops = []
        for path, _ in found:
            if not path.endswith(".parquet"):
                continue
            with self.fs.open(path, "rb") as f:
                for row in pq.read_table(f).to_pylist():
                    ops.append(_normalized(LandedOp(
                        int(row["seq"]), int(row["position"]), str(row["load_id"]), row["table_name"], row["kind"],
                        bool(row["reload"]), int(row["lsn"] or 0), row["commit_time"], row["landed_at"],
                        json.loads(row["primary_key"]), json.loads(row["hints"]), row["delete_mode"],
                        ordinal=int(row.get("ordinal") or 0)), self.naming))
        return sorted(ops, key=lambda o: (o.seq, o.position))

    def attach_files(self, op: LandedOp) -> None:
        """The data files of one op: a listing of exactly that load's files of the table."""
        folder = archive_table_path(None, str(self.naming.normalize_tables_path(op.table)), None, None, None)
        op.files = [(p, s) for p, s in self._list(folder, prefix=f"{op.load_id}.") if p.endswith(".parquet")]

    def read(self, op: LandedOp) -> Iterator[pa.Table]:
        for path, _ in op.files:
            with self.fs.open(path, "rb") as f:
                yield pq.read_table(f)

    # -- re-reads: the merge asks, the follower reads ----------------------------------------------------
    def request_reread(self, table: str, keys: list[list[str | None]]) -> str:
        """Written before the merge commits the tombstones: a crash in between leaves a request for keys it merges
        again next cycle, and reading a key again is always harmless (the read is newer than anything merged)."""
        name = f"{table}.{uuid.uuid4().hex}.json"
        self.fs.makedirs(f"{self.base}/{REREADS_DIR}", exist_ok=True)
        with self.fs.open(f"{self.base}/{REREADS_DIR}/{name}", "wb") as f:
            f.write(json.dumps({"table": table, "keys": keys, "requested_at": datetime.now(UTC).isoformat()}).encode())
        return name

    def rereads(self) -> list[Reread]:
        found = []
        for path, _ in self._list(REREADS_DIR):
            try:
                with self.fs.open(path, "rb") as f:
                    data = json.load(f)
            except FileNotFoundError:  # done by another follower meanwhile
                continue
            found.append(Reread(path.rsplit("/", 1)[-1], str(data["table"]), [list(k) for k in data["keys"]]))
        return found

    def reread_done(self, reread: Reread) -> None:
        path = f"{self.base}/{REREADS_DIR}/{reread.name}"
        if self.fs.exists(path):
            self.fs.rm(path)

    def wait_for_rereads(self, names: set[str], timeout_s: float, every_s: float = 2.0) -> set[str]:
        """Wait until the follower has landed what these requests asked for (it deletes each then); the names
        still waiting when `timeout_s` ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = names & {r.name for r in self.rereads()}
            if not waiting or time.monotonic() >= deadline:
                return waiting
            time.sleep(every_s)

    # -- the idle marker -------------------------------------------------------------------------------
    def _marker(self) -> dict[str, Any]:
        try:
            with self.fs.open(f"{self.base}/{MARKER_FILE}", "rb") as f:
                return dict(json.load(f))
        except (FileNotFoundError, ValueError, TypeError):
            return {}

    def merged_marker(self) -> int | None:
        """The seq of the last load a complete cycle merged, or None."""
        seq = self._marker().get("seq")
        return int(seq) if seq is not None else None

    def mark_merged(self, seq: int, removed_through: int | None = None) -> None:
        marker = self._marker()
        marker.update(seq=seq, at=datetime.now(UTC).isoformat())
        if removed_through is not None:
            marker["removed_through"] = removed_through
        with self.fs.open(f"{self.base}/{MARKER_FILE}", "wb") as f:
            f.write(json.dumps(marker).encode())

    # -- retention ---------------------------------------------------------------------------------------
    def remove_merged(self, through: int, older_than_days: float, limit: int = 500) -> int:
        """Delete loads every table has merged (seq <= `through`) that landed more than `older_than_days` ago, at
        most `limit` per call, oldest first; returns how many. Only what a committed merge consumed is ever
        removed: the landing area has no lifecycle expiry of its own."""
        if older_than_days <= 0:
            return 0
        marker = self._marker()
        start = marker.get("removed_through")
        cutoff = datetime.now(UTC).timestamp() - older_than_days * 86400
        removed, last = 0, None
        for entry in self.index(after=int(start) if start is not None else None):
            landed = datetime.fromisoformat(entry.landed_at).timestamp() if entry.landed_at else cutoff
            if entry.seq > through or landed > cutoff or removed >= limit:
                break
            paths = [p for p, _ in self._list(OPS_TABLE, prefix=f"{entry.load_id}.")]
            for table in entry.tables:
                folder = archive_table_path(None, str(self.naming.normalize_tables_path(table)), None, None, None)
                paths += [p for p, _ in self._list(folder, prefix=f"{entry.load_id}.")]
                paths.append(f"{self.base}/{MANIFEST_DIR}/{folder}/{entry.load_id}.json")
            paths.append(f"{self.base}/_dlt_loads/{SOURCE_NAME}__{entry.load_id}.jsonl")
            for path in paths:
                if self.fs.exists(path):
                    self.fs.rm(path)
            self.fs.rm(f"{self.base}/{INDEX_DIR}/{entry.name}")
            removed, last = removed + 1, entry.seq
        if last is not None:
            self.mark_merged(int(marker.get("seq") or through), removed_through=last)
        return removed
