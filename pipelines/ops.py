"""What a CDC write does to one table (`Op`): the unit both sinks take, the direct one and the landing one.

The stream's batches, the copies of tables (whole, or a chunk of a chunked copy), a TRUNCATE and a new column are
all ops. The direct sink applies them to the warehouse at once (`pipelines.apply`); the landing sink writes them to
the archive bucket, one `_aurora_ops` row each, and `merge` applies them later through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

# changes: rows to merge by key (change format, `sources.replication.changes`); snapshot: the table's whole content
# from here (`reload`: its destination table is dropped first); chunk: reconciled rows of a chunked copy, merged like
# changes; truncate: rows older than it are deleted; columns: a new column (no rows)
KINDS = ("changes", "snapshot", "chunk", "truncate", "columns")


@dataclass
class Op:
    """What one write does to one table, with its rows."""

    kind: str
    table: str  # resource name, `<schema>__<table>`
    primary_key: list[str]
    hints: dict[str, Any]
    rows: Iterable[pa.Table] | Callable[[], Iterator[pa.Table]] = field(default_factory=list)
    lsn: int = 0
    commit_time: datetime | None = None
    reload: bool = False
    delete_mode: str = "hard"
    ordinal: int = 0  # a TRUNCATE's place in its transaction

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
