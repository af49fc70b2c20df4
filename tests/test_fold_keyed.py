"""`fold_keyed` folds in Arrow when no version carries markers: the same rows and replay count as the per-row fold.

The per-row fold is the reference (it handles every case, markers included); the Arrow path must agree with it on
any ordered ops: replays, keys repeated across ops, equal positions, composite and string keys, deletes."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from sources.replication import changes
from sources.replication.changes import DELETED_COLUMN, LSN_COLUMN, ORDINAL_COLUMN, fold_keyed


def random_ops(rng: random.Random, composite: bool) -> list[pa.Table]:
    """Ordered ops, keys unique within each: positions drawn from a small range so replays and ties are common."""
    ops = []
    for _ in range(rng.randint(1, 6)):
        keys = rng.sample(range(40), rng.randint(0, 25))
        table = {
            "id": pa.array(keys, pa.int64()),
            "value": pa.array([rng.choice([None, "a", "b", "ü"]) for _ in keys], pa.string()),
            LSN_COLUMN: pa.array([rng.randint(1, 8) for _ in keys], pa.int64()),
            ORDINAL_COLUMN: pa.array([rng.choice([None, 0, 1, 2]) for _ in keys], pa.int64()),
            DELETED_COLUMN: pa.array([rng.random() < 0.2 for _ in keys], pa.bool_()),
        }
        if composite:
            table["region"] = pa.array([f"r{k % 3}" for k in keys], pa.string())
        ops.append(pa.table(table))
    return ops


@pytest.mark.parametrize("composite", [False, True], ids=["int key", "composite key"])
def test_arrow_fold_agrees_with_the_per_row_fold(composite: bool) -> None:
    key = ["region", "id"] if composite else ["id"]
    rng = random.Random(17)
    folded_in_arrow = 0
    for _ in range(400):
        ops = random_ops(rng, composite)
        combined = changes.concat(ops)
        sizes = [t.num_rows for t in ops]
        expected = changes._fold_per_row(combined, sizes, key, str, False)
        got = fold_keyed(ops, key)
        assert got.rows.to_pylist() == expected.rows.to_pylist()
        assert (got.changes, got.replayed) == (expected.changes, expected.replayed)
        folded_in_arrow += changes._fold_newest(combined, sizes, key) is not None if combined.num_rows else 0
    assert folded_in_arrow > 300  # the cases were the Arrow path's, not the fallback's


def test_a_key_twice_in_one_op_or_a_null_key_folds_per_row() -> None:
    twice = pa.table({"id": [1, 1], LSN_COLUMN: [5, 6], ORDINAL_COLUMN: [0, 0], "v": ["x", "y"]})
    assert changes._fold_newest(twice, [2], ["id"]) is None
    assert fold_keyed([twice], ["id"]).rows.to_pylist() == changes._fold_per_row(
        twice, [2], ["id"], str, False).rows.to_pylist()
    null_key = pa.table({"id": pa.array([1, None], pa.int64()), LSN_COLUMN: [5, 6], ORDINAL_COLUMN: [0, 0]})
    assert changes._fold_newest(null_key, [1, 1], ["id"]) is None


def test_a_replayed_op_changes_nothing() -> None:
    op = pa.table({"id": [1, 2, 3], LSN_COLUMN: [10, 10, 10], ORDINAL_COLUMN: [1, 2, 3], "v": ["a", "b", "c"]})
    newer = pa.table({"id": [2], LSN_COLUMN: [11], ORDINAL_COLUMN: [1], "v": ["B"]})
    folded = fold_keyed([op, newer, op], ["id"])
    assert folded.rows.to_pylist() == [
        {"id": 1, LSN_COLUMN: 10, ORDINAL_COLUMN: 1, "v": "a"},
        {"id": 3, LSN_COLUMN: 10, ORDINAL_COLUMN: 3, "v": "c"},
        {"id": 2, LSN_COLUMN: 11, ORDINAL_COLUMN: 1, "v": "B"},
    ]
    assert (folded.changes, folded.replayed) == (7, 3)
