"""Parsed CSV strings → exact Arrow types, without ever failing a batch on a value.

Columns whose type has a narrower range in Arrow and the destinations than in PostgreSQL (decimals,
dates, timestamps, times) are parsed as strings and cast here, vectorised. A value the type cannot
hold (`infinity`, a BC date, year 10000, `24:00:00`, `NaN` in a `numeric(p,s)`) becomes NULL in the
typed column and keeps PostgreSQL's text in the sibling column `<column>__pg_text`, so nothing is lost
and nothing is rejected. Only a column with a configured `data_type` override rejects such a value:
its row goes to the dead-letter sink, the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .type_mapping import ColumnPlan, decode_hex_column

# PostgreSQL text forms no destination type of the column's kind can hold. Anything else that fails to
# cast is found by the per-value fallback, so these patterns are a fast path, not the definition.
_OUT_OF_RANGE = {
    "decimal": r"^(?:NaN|-?Infinity)$",
    "temporal": r"^-?infinity$|^\d{5,}-| BC$",  # date, timestamp, timestamptz
    "time": r"^24:",
}


@dataclass(frozen=True)
class RejectedRow:
    index: int
    column: str
    reason: str
    values: dict[str, Any]  # the row as PostgreSQL printed it


def _kind(plan: ColumnPlan) -> str | None:
    t = plan.arrow_type
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    if pa.types.is_time(t):
        return "time"
    return None


def is_checked(plan: ColumnPlan) -> bool:
    return _kind(plan) is not None or (plan.override is not None and not pa.types.is_string(plan.arrow_type))


def csv_parse_type(plan: ColumnPlan) -> pa.DataType:
    """What Arrow's CSV reader produces for the column (strings for the checked casts)."""
    return pa.string() if is_checked(plan) else plan.arrow_type


def _cast(strings: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_time(target):  # Arrow has no string → time cast; a timestamp on 1970-01-01 has one
        stamped = pc.binary_join_element_wise(pa.scalar("1970-01-01 "), strings, "")
        return pc.cast(pc.cast(stamped, pa.timestamp("us")), target)
    return pc.cast(strings, target)


def _cast_each(strings: pa.Array, target: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    """The slow path, only for a batch whose vectorised cast failed: which values do not fit, and why."""
    values: list[Any] = []
    failures: dict[int, str] = {}
    for index, text in enumerate(strings.to_pylist()):
        if text is None:
            values.append(None)
            continue
        try:
            values.append(_cast(pa.array([text], pa.string()), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            values.append(None)
            failures[index] = str(exc)
    return pa.array(values, target), failures


def convert_column(strings: pa.Array, plan: ColumnPlan) -> tuple[pa.Array, dict[int, str]]:
    """Typed values, and the rows (index → reason) whose value the type cannot hold (left NULL).

    The plain cast comes first: every value the patterns match fails it (tests/test_conversion.py), so a
    batch without one costs a cast and nothing else; the patterns then spare the per-value path the known forms.
    """
    try:
        return _cast(strings, plan.arrow_type), {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    kind = _kind(plan)
    failures: dict[int, str] = {}
    candidates = strings
    if kind is not None and strings.null_count < len(strings):
        outside = pc.fill_null(pc.match_substring_regex(strings, _OUT_OF_RANGE[kind]), False)
        if pc.any(outside).as_py():
            for index in pc.indices_nonzero(outside).to_pylist():
                failures[index] = f"outside the range of {plan.arrow_type}"
            candidates = pc.if_else(outside, pa.scalar(None, pa.string()), strings)
    try:
        values = _cast(candidates, plan.arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values, more = _cast_each(candidates, plan.arrow_type)
        failures.update(more)
    return values, failures


def convert_batch(
    batch: pa.RecordBatch, plans: list[ColumnPlan], not_null: frozenset[str] = frozenset()
) -> tuple[pa.Table, list[RejectedRow]]:
    table = pa.Table.from_batches([batch])
    rejected: dict[int, tuple[str, str]] = {}
    typed: dict[str, pa.Array] = {}
    texts: dict[str, pa.Array] = {}
    for plan in plans:
        if not is_checked(plan):
            continue
        strings = table[plan.name].combine_chunks()
        values, failures = convert_column(strings, plan)
        typed[plan.name] = values
        if not failures:
            continue
        if plan.override is not None:
            for index, reason in failures.items():
                rejected.setdefault(index, (plan.name, (
                    f"{strings[index].as_py()!r} does not fit the configured data_type {plan.override!r} of "
                    f"column {plan.name!r} ({reason}); widen the override or remove it (the default keeps it)")))
        else:
            mask = pa.array([i in failures for i in range(len(strings))], pa.bool_())
            texts[plan.name] = pc.if_else(mask, strings, pa.scalar(None, pa.string()))
    fields, columns = [], []
    for plan in plans:
        field = pa.field(plan.name, pa.binary() if plan.decode_hex else plan.arrow_type,
                         nullable=plan.name not in not_null)
        if plan.decode_hex:
            column: Any = decode_hex_column(table[plan.name])
        else:
            column = typed.get(plan.name, table[plan.name])
        fields.append(field)
        columns.append(column)
        if plan.name in texts:
            fields.append(pa.field(plan.text_column, pa.string(), nullable=True))
            columns.append(texts[plan.name])
    out = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, fields, strict=True)],
                               schema=pa.schema(fields))
    rows: list[RejectedRow] = []
    if rejected:
        order = sorted(rejected)
        raw = table.take(pa.array(order)).to_pylist()
        rows = [RejectedRow(i, rejected[i][0], rejected[i][1], r) for i, r in zip(order, raw, strict=True)]
        out = out.filter(pa.array([i not in rejected for i in range(table.num_rows)]))
    return out, rows
