"""The cast of parsed CSV strings: values a destination type cannot hold become NULL plus their text, whether
they fail the fast vectorised cast or only the per-value path; clean batches keep every value."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sources.postgres.conversion import convert_batch, convert_column
from sources.postgres.type_mapping import ColumnPlan

OUT_OF_RANGE = [
    ("infinity", pa.timestamp("us")),
    ("-infinity", pa.timestamp("us", tz="UTC")),
    ("2024-01-01 BC", pa.date32()),
    ("2024-01-01 00:00:00 BC", pa.timestamp("us")),
    ("10000-01-01", pa.date32()),
    ("12345-01-01 00:00:00+00", pa.timestamp("us", tz="UTC")),
    ("NaN", pa.decimal128(12, 2)),
    ("Infinity", pa.decimal128(12, 2)),
    ("-Infinity", pa.decimal128(38, 9)),
    ("24:00:00", pa.time64("us")),
]
IN_RANGE = {
    pa.timestamp("us"): "2026-12-01 05:38:02.123456",
    pa.timestamp("us", tz="UTC"): "2026-12-01 05:38:02.123456+00",
    pa.date32(): "0099-01-01",
    pa.decimal128(12, 2): "-0.01",
    pa.decimal128(38, 9): "12345678901234567890.123456789",
    pa.time64("us"): "23:59:59.999999",
}


@pytest.mark.parametrize(("text", "target"), OUT_OF_RANGE, ids=[t for t, _ in OUT_OF_RANGE])
def test_a_value_the_type_cannot_hold_is_null_with_its_index(text: str, target: pa.DataType) -> None:
    good = IN_RANGE[target]
    values, failures = convert_column(pa.array([good, text, None, good], pa.string()),
                                      ColumnPlan("c", '"c"', target))
    assert list(failures) == [1]
    assert values[1].as_py() is None and values[2].as_py() is None
    assert values[0].as_py() == values[3].as_py() is not None
    assert values.type == target


def test_clean_batch_keeps_every_value_and_reports_nothing() -> None:
    plans = [ColumnPlan(f"c{i}", f'"c{i}"', t) for i, t in enumerate(IN_RANGE)]
    batch = pa.RecordBatch.from_arrays([pa.array([v, None], pa.string()) for v in IN_RANGE.values()],
                                       names=[p.name for p in plans])
    table, rejected = convert_batch(batch, plans)
    assert rejected == []
    assert table.column_names == [p.name for p in plans]  # no __pg_text sibling when nothing failed
    assert all(table[p.name][0].as_py() is not None and table[p.name][1].as_py() is None for p in plans)


def test_failed_value_keeps_its_text_in_the_sibling_column() -> None:
    plan = ColumnPlan("placed", '"placed"', pa.timestamp("us", tz="UTC"))
    batch = pa.RecordBatch.from_arrays([pa.array(["2026-12-01 00:00:00+00", "infinity"], pa.string())],
                                       names=["placed"])
    table, rejected = convert_batch(batch, [plan])
    assert rejected == []  # lossless by default: no dead letter
    assert table["placed"].to_pylist()[1] is None
    assert table[plan.text_column].to_pylist() == [None, "infinity"]
