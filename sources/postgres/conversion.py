"""Parsed CSV strings → exact Arrow types, isolating the rows that cannot be represented.

Only values PostgreSQL can hold but Arrow/destinations cannot (a numeric wider than DECIMAL(38,s),
`infinity` timestamps, BC dates) fail to convert. Those columns are parsed as strings and cast here,
so one bad value sends its row to the dead-letter sink instead of failing the whole table; the rest
of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .type_mapping import ColumnPlan, decode_hex_column


@dataclass(frozen=True)
class RejectedRow:
    index: int
    column: str
    reason: str
    values: dict[str, Any]  # the row as PostgreSQL printed it


def needs_checked_cast(arrow_type: pa.DataType) -> bool:
    return pa.types.is_decimal(arrow_type) or pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type)


def csv_parse_type(plan: ColumnPlan) -> pa.DataType:
    """What Arrow's CSV reader produces for the column (strings for the checked casts)."""
    return pa.string() if needs_checked_cast(plan.arrow_type) else plan.arrow_type


def _failing_rows(column: pa.Array, target: pa.DataType) -> dict[int, str]:
    failures: dict[int, str] = {}
    for index, value in enumerate(column.to_pylist()):
        try:
            pc.cast(pa.array([value], pa.string()), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            failures[index] = f"cannot convert {value!r} to {target}: {exc}"
    return failures


def convert_batch(
    batch: pa.RecordBatch, plans: list[ColumnPlan], schema: pa.Schema
) -> tuple[pa.Table, list[RejectedRow]]:
    table = pa.Table.from_batches([batch])
    rejected: dict[int, tuple[str, str]] = {}
    checked = [p for p in plans if needs_checked_cast(p.arrow_type)]
    for plan in checked:
        try:
            pc.cast(table[plan.name], plan.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for index, reason in _failing_rows(table[plan.name].combine_chunks(), plan.arrow_type).items():
                rejected.setdefault(index, (plan.name, reason))
    rows: list[RejectedRow] = []
    if rejected:
        raw = table.take(pa.array(sorted(rejected))).to_pylist()
        rows = [RejectedRow(i, rejected[i][0], rejected[i][1], r) for i, r in zip(sorted(rejected), raw, strict=True)]
        keep = pa.array([i not in rejected for i in range(table.num_rows)])
        table = table.filter(keep)
    for plan in plans:
        index = table.column_names.index(plan.name)
        if plan.decode_hex:
            table = table.set_column(index, pa.field(plan.name, pa.binary()), decode_hex_column(table[plan.name]))
        elif plan in checked:
            table = table.set_column(index, plan.name, pc.cast(table[plan.name], plan.arrow_type))
    return table.cast(schema), rows
