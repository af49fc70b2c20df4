"""Tables with no key at all, replicated as an exact multiset of rows (they need `REPLICA IDENTITY FULL`).

Without a key, an UPDATE or DELETE names its row only by its old values, and identical rows are
indistinguishable. The destination therefore gives every copy of a row an identity of its own:

- `_row_key`: unique per copy and the merge key: `s<lsn>:<n>` for rows copied by a snapshot at `<lsn>`,
  `<commit lsn>:<position in its transaction>` for rows inserted through the WAL. Both are the same however
  often a change is read again, so a replayed insert lands on the same key.
- `_row_hash`: a hash of the row's converted values (the same on both paths, since both go through the same
  conversion), so a DELETE finds a copy with exactly those values.

A delete (or the old half of an update) removes exactly one copy: one inserted earlier in the same batch if
there is one (and that copy's key from the destination, where a package loaded in part may have written it), else
one from the destination (the smallest key, read once per batch for the hashes deleted).
Replaying a delete would remove a second copy, so CDC never replays one: a crash inside a large transaction
resumes after the changes already loaded (`partial_txn` in the CDC state), not at the transaction's start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sources.postgres.type_mapping import TEXT_SUFFIX

ROW_KEY_COLUMN = "_row_key"
ROW_HASH_COLUMN = "_row_hash"


def multiset_hints() -> dict[str, dict[str, Any]]:
    return {
        ROW_KEY_COLUMN: {"name": ROW_KEY_COLUMN, "data_type": "text", "nullable": False, "primary_key": True},
        ROW_HASH_COLUMN: {"name": ROW_HASH_COLUMN, "data_type": "text", "nullable": True},
    }


def _encode(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bytes | bytearray):
        return "x" + bytes(value).hex()
    if isinstance(value, float):
        return "f" + repr(value)
    if isinstance(value, tuple):  # ("pg", text): a value only PostgreSQL's text holds
        return "p" + value[1]
    if hasattr(value, "isoformat"):
        return "t" + value.isoformat()
    return type(value).__name__[0] + str(value)


def row_hashes(table: pa.Table, columns: Iterable[str]) -> list[str]:
    """A stable 16-hex-digit hash per row over the source `columns`' converted values. A value kept in the
    column's `__pg_text` sibling counts as that text, whether or not the batch has the sibling at all."""
    values = []
    for name in columns:
        typed = table[name].to_pylist()
        sibling = name + TEXT_SUFFIX
        if sibling in table.column_names:
            typed = [t if s is None else ("pg", s) for t, s in zip(typed, table[sibling].to_pylist(), strict=True)]
        values.append(typed)
    out = []
    for row in zip(*values, strict=True) if values else ([()] * table.num_rows):
        text = "\x1f".join(_encode(v) for v in row)
        out.append(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest())
    return out


def snapshot_keys(lsn: int, start: int, count: int) -> list[str]:
    return [f"s{lsn:x}:{n}" for n in range(start, start + count)]


def change_key(lsn: int, ordinal: int) -> str:
    return f"{lsn:x}:{ordinal}"


@dataclass
class MultisetPlan:
    """What a batch does to a keyless table: copies to insert, destination copies to delete."""

    inserts: list[tuple[int, str]] = field(default_factory=list)  # (row index in the batch table, new key)
    deletes: list[tuple[int, str]] = field(default_factory=list)  # (row index holding its values, key to delete)
    unmatched: int = 0  # deletes with no copy left to delete (the destination was already without it)


Copy = tuple[str, int, int]  # a destination copy: (`_row_key`, `_lsn`, `_lsn_ordinal`)


def plan(ops: list[tuple[str, int, str, str]], existing: Callable[[set[str]], dict[str, list[Copy]]],
         positions: Sequence[tuple[int, int]] | None = None) -> MultisetPlan:
    """`ops`: in change order, (`I` or `D`, row index, row hash, key for an insert). `existing(hashes)` returns
    the destination's live copies per hash; `positions[row index]`: each change's stream position.

    A delete takes a copy inserted before it in the batch, else the destination's oldest copy with those values
    that is older than the delete: a copy written at or after the delete's position cannot be the one the source
    deleted. It can be there already when a package was loaded in part before a crash and the replay cuts its
    batches elsewhere; deleting it would leave the older copy for ever (race soak, setup-chunked-1 seed 503)."""
    deleted_hashes = {h for op, _, h, _ in ops if op == "D"}
    live = {h: sorted(copies, key=lambda c: (c[1], c[2]))
            for h, copies in existing(deleted_hashes).items()} if deleted_hashes else {}
    pending: dict[str, list[tuple[int, str]]] = {}
    result = MultisetPlan()
    dropped: set[str] = set()
    for op, index, row_hash, key in ops:
        if op == "I":
            pending.setdefault(row_hash, []).append((index, key))
            continue
        copies = live.get(row_hash)
        if pending.get(row_hash):  # inserted and deleted within the batch: neither is written, but ...
            inserted = pending[row_hash].pop()[1]
            dropped.add(inserted)
            # ... a package loaded in part before a crash may have written the copy already, and this replay reads
            # the insert and the delete in one batch: delete its key too (nothing to do when it is not there)
            result.deletes.append((index, inserted))
        elif copies and (positions is None or (copies[0][1], copies[0][2]) < tuple(positions[index])):
            result.deletes.append((index, copies.pop(0)[0]))
        else:
            result.unmatched += 1
    result.inserts = [(i, k) for rows in pending.values() for i, k in rows if k not in dropped]
    result.inserts.sort()
    return result
