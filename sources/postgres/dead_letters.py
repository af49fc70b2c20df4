"""Rows that cannot be converted go to a dead-letter location instead of failing the whole table.

Layout: `<url>/<pipeline>/<table>/<utc timestamp>-<id>.jsonl`, one JSON object per row with the
source key, the reason and the row as PostgreSQL printed it. `url` is `s3://bucket/dead_letter` in
production and a local folder for DuckDB. fsspec (which dlt already uses) writes both.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from .conversion import RejectedRow

DEFAULT_URL = "dead_letter"

# rows dead-lettered by this process, per table: the runner applies the dead-letter policy from it
DEAD_LETTERS_THIS_RUN: Counter[str] = Counter()


@dataclass
class DeadLetterFile:
    path: str
    table: str
    rows: int


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def write(url: str, pipeline: str, table: str, primary_key: Sequence[str], rows: list[RejectedRow]) -> str:
    fs, root = _fs(url)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = f"{root}/{pipeline}/{table}/{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as fh:
        for row in rows:
            record = {
                "table": table,
                "source_key": {k: row.values.get(k) for k in primary_key},
                "column": row.column,
                "reason": row.reason,
                "row": row.values,
                "dead_lettered_at": stamp,
            }
            fh.write(json.dumps(record, default=str) + "\n")
    DEAD_LETTERS_THIS_RUN[table] += len(rows)
    return path


def list_files(url: str, pipeline: str, table: str | None = None) -> list[DeadLetterFile]:
    fs, root = _fs(url)
    base = f"{root}/{pipeline}"
    if not fs.exists(base):
        return []
    files = []
    for path in sorted(fs.find(base)):
        relative = path[len(base) + 1:]
        if not path.endswith(".jsonl") or relative.startswith("_replayed/"):
            continue
        file_table = relative.split("/", 1)[0]
        if table and file_table != table:
            continue
        with fs.open(path) as fh:
            files.append(DeadLetterFile(path, file_table, sum(1 for _ in fh)))
    return files


def read_records(url: str, path: str) -> Iterator[dict[str, Any]]:
    fs, _ = _fs(url)
    with fs.open(path) as fh:
        for line in fh:
            yield json.loads(line)


def mark_replayed(url: str, pipeline: str, path: str) -> None:
    fs, root = _fs(url)
    base = f"{root}/{pipeline}"
    target = f"{base}/_replayed/{path[len(base) + 1:]}"
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(path, target)
