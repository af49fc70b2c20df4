"""An independent source-versus-destination comparison: psycopg2 on one side, the `duckdb` package (or, for the
Snowflake path, the Snowflake connector talking to fakesnow: `tests.race.stand_ins.SnowflakeReader`) on the other,
and none of the product's code in between (its own `aurora-sync verify` is run beside this, not instead of it).

Every table of the source schema is compared with `<dataset>.<schema>__<table>` as a multiset of rows over the
source's *current* columns: destination-only columns (`_lsn`, `_deleted`, `_row_key`, `_dlt_*`, ... anything
starting with `_`, and columns the source dropped) are ignored; rows with `_deleted_at` set (soft deletes) count
as absent. Values are normalized here (numbers to one canonical decimal text, timestamps to naive UTC, long text
to its length and md5) so that equal values compare equal whatever type each side returns.

`compare()` returns a structured diff per table: missing rows, extra rows, and (tables with a key) rows whose
values differ, with counts, per-column statistics and a few examples; `summarize()` turns it into one line.
`duplicate_keys()` only looks for keys stored more than once (what a snapshot must never leave, even one taken
while the source changes).

The destination is a DuckDB file path, or any object with `execute(sql, params)` returning a cursor (`?`
placeholders) and `case_fold` (how the destination spells a name: `str.upper` for Snowflake); `close()` is called.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from decimal import Decimal
from typing import Any

import duckdb
import psycopg2

LONG_TEXT = 64  # longer values are compared (and shown) as their length and md5


def normalize(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal | float):
        return "N:" + _number(value)
    if isinstance(value, str):
        if len(value) > LONG_TEXT:
            return f"<{len(value)} chars md5 {hashlib.md5(value.encode()).hexdigest()[:12]}>"
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return "T:" + value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return "T:" + value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"<{len(data)} bytes md5 {hashlib.md5(data).hexdigest()[:12]}>"
    if isinstance(value, dict | list):
        return "J:" + json.dumps(value, sort_keys=True, default=str)
    return f"{type(value).__name__}:{value}"


def _number(value: int | Decimal | float) -> str:
    if isinstance(value, int):
        return str(value)
    d = Decimal(repr(value)) if isinstance(value, float) else value
    if not d.is_finite():
        return str(d)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def source_tables(conn: Any, schema: str) -> dict[str, tuple[list[str], list[str]]]:
    """table -> (columns in order, primary key columns) of the source schema's ordinary and partitioned tables."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, a.attname, a.attnum FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid WHERE n.nspname = %s AND c.relkind IN ('r', 'p') "
            "AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
            (schema,))
        columns: dict[str, list[str]] = {}
        for table, column, _ in cur.fetchall():
            columns.setdefault(table, []).append(column)
        cur.execute(
            "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            "WHERE n.nspname = %s AND i.indisprimary ORDER BY c.relname, k.ord", (schema,))
        keys: dict[str, list[str]] = {}
        for table, column in cur.fetchall():
            keys.setdefault(table, []).append(column)
    return {t: (cols, keys.get(t, [])) for t, cols in columns.items()}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBReader:
    """A DuckDB file, read only (names as dlt spells them for DuckDB: as they are)."""

    case_fold = staticmethod(str)

    def __init__(self, path: str) -> None:
        self.conn = duckdb.connect(path, read_only=True)

    def execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql, list(params))

    def close(self) -> None:
        self.conn.close()


def _reader(destination: Any) -> Any:
    return DuckDBReader(str(destination)) if isinstance(destination, str | bytes) or hasattr(
        destination, "__fspath__") else destination


def _destination_columns(duck: Any, dataset: str, dest_table: str) -> dict[str, str]:
    """lower-case name -> the destination's own spelling, in column order (empty: no such table)."""
    fold = duck.case_fold
    found = duck.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
                         "AND table_name = ? ORDER BY ordinal_position", [fold(dataset), fold(dest_table)]).fetchall()
    return {str(r[0]).lower(): str(r[0]) for r in found}


def compare(dsn: str, destination: Any, dataset: str, schema: str = "app", tables: list[str] | None = None,
            examples: int = 5) -> dict[str, Any]:
    """Compare every table of `schema` (or `tables`, source names) with the destination (a DuckDB file path, or a
    reader: see the module docstring)."""
    src = psycopg2.connect(dsn)
    src.set_session(isolation_level="REPEATABLE READ", readonly=True)  # one snapshot for every table
    duck = _reader(destination)
    report: dict[str, Any] = {"dataset": dataset, "tables": {}}
    try:
        shapes = source_tables(src, schema)
        for table in sorted(tables or shapes):
            if table not in shapes:
                report["tables"][f"{schema}__{table}"] = {"ok": False, "error": f"{schema}.{table} not in the source"}
                continue
            columns, key = shapes[table]
            report["tables"][f"{schema}__{table}"] = _compare_table(src, duck, schema, table, dataset, columns, key,
                                                                   examples)
        src.rollback()
    finally:
        src.close()
        duck.close()
    report["ok"] = all(t.get("ok") for t in report["tables"].values())
    report["summary"] = summarize(report)
    return report


def _compare_table(src: Any, duck: Any, schema: str, table: str, dataset: str, columns: list[str], key: list[str],
                   examples: int) -> dict[str, Any]:
    dest_table = f"{schema}__{table}"
    result: dict[str, Any] = {"ok": False, "key": key, "columns": columns}
    spelled = _destination_columns(duck, dataset, dest_table)
    dest_columns = list(spelled)
    with src.cursor() as cur:
        cur.execute(f"SELECT {', '.join(_quote(c) for c in columns)} FROM {_quote(schema)}.{_quote(table)}")
        source_rows = [tuple(normalize(v) for v in row) for row in cur.fetchall()]
    result["source_rows"] = len(source_rows)
    if not dest_columns:
        result.update(error=f"destination table {dataset}.{dest_table} does not exist", destination_rows=0,
                      missing={"count": len(source_rows), "examples": source_rows[:examples]})
        return result
    compared = [c for c in columns if c in dest_columns]
    result["missing_columns"] = [c for c in columns if c not in dest_columns]
    deleted_at = _quote(spelled.get("_deleted_at", "_deleted_at"))
    where = f"{deleted_at} IS NULL" if "_deleted_at" in dest_columns else "true"
    qualified = f"{_quote(duck.case_fold(dataset))}.{_quote(duck.case_fold(dest_table))}"
    if "_deleted_at" in dest_columns:
        result["soft_deleted_rows"] = duck.execute(f"SELECT count(*) FROM {qualified} "
                                                   f"WHERE {deleted_at} IS NOT NULL").fetchone()[0]
    if "_deleted" in dest_columns:  # hard deletes: tombstones must never be stored
        result["stored_tombstones"] = duck.execute(f"SELECT count(*) FROM {qualified} "
                                                   f"WHERE {_quote(spelled['_deleted'])}").fetchone()[0]
    select = ", ".join(_quote(spelled[c]) for c in compared) or "1"
    dest_rows = [tuple(normalize(v) for v in row)
                 for row in duck.execute(f"SELECT {select} FROM {qualified} WHERE {where}").fetchall()]
    result["destination_rows"] = len(dest_rows)
    positions = [columns.index(c) for c in compared]
    source_rows = [tuple(row[i] for i in positions) for row in source_rows]
    if key and all(k in compared for k in key):
        result.update(_compare_keyed(compared, [compared.index(k) for k in key], source_rows, dest_rows, examples))
    else:
        result.update(_compare_multiset(compared, source_rows, dest_rows, examples))
    result["ok"] = (not result["missing_columns"] and not result.get("stored_tombstones")
                    and all(result[k]["count"] == 0 for k in ("missing", "extra", "different", "duplicate_keys")))
    return result


def duplicate_keys(dsn: str, destination: Any, dataset: str, schema: str = "app",
                   examples: int = 5) -> dict[str, Any]:
    """Keys stored more than once in the destination, per keyed table of `schema` (tables not there yet are
    skipped). Independent of the source's current rows: a snapshot taken while the source changes may miss or
    keep rows that moved, but a key range is read once, so a finished snapshot never holds a key twice."""
    src = psycopg2.connect(dsn)
    duck = _reader(destination)
    report: dict[str, Any] = {"tables": {}}
    try:
        shapes = source_tables(src, schema)
        src.rollback()
        for table, (_, key) in sorted(shapes.items()):
            spelled = _destination_columns(duck, dataset, f"{schema}__{table}")
            if not key or not spelled or not all(k in spelled for k in key):
                continue
            keys = ", ".join(_quote(spelled[k]) for k in key)
            where = f"WHERE {_quote(spelled['_deleted_at'])} IS NULL" if "_deleted_at" in spelled else ""
            qualified = f"{_quote(duck.case_fold(dataset))}.{_quote(duck.case_fold(f'{schema}__{table}'))}"
            found = duck.execute(f"SELECT {keys}, count(*) FROM {qualified} {where} GROUP BY {keys} "
                                 f"HAVING count(*) > 1 ORDER BY count(*) DESC").fetchall()
            report["tables"][f"{schema}__{table}"] = {
                "count": len(found), "rows": sum(int(r[-1]) - 1 for r in found),
                "examples": [_show(tuple(normalize(v) for v in r[:-1])) for r in found[:examples]]}
    finally:
        src.close()
        duck.close()
    report["ok"] = all(t["count"] == 0 for t in report["tables"].values())
    report["summary"] = "; ".join(f"{name}: {t['count']} duplicated key(s) ({t['rows']} extra copies), e.g. "
                                  f"{t['examples'][:3]}" for name, t in report["tables"].items() if t["count"])
    return report


def _compare_keyed(columns: list[str], key_pos: list[int], source_rows: list[tuple[Any, ...]],
                   dest_rows: list[tuple[Any, ...]], examples: int) -> dict[str, Any]:
    def key_of(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(row[i] for i in key_pos)

    source = {key_of(r): r for r in source_rows}
    dest: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for row in dest_rows:
        dest.setdefault(key_of(row), []).append(row)
    missing = sorted((k for k in source if k not in dest), key=repr)
    extra = sorted((k for k in dest if k not in source), key=repr)
    duplicates = sorted((k for k, rows in dest.items() if len(rows) > 1), key=repr)
    different: list[tuple[Any, ...]] = []
    by_column: dict[str, Counter[str]] = {}
    diff_examples: list[dict[str, Any]] = []
    for k, row in source.items():
        if k not in dest:
            continue
        if any(other == row for other in dest[k]):
            continue
        other = dest[k][0]
        different.append(k)
        diff = {}
        for name, a, b in zip(columns, row, other, strict=True):
            if a != b:
                stats = by_column.setdefault(name, Counter())
                stats["count"] += 1
                if b is None:
                    stats["destination_null"] += 1
                elif a is None:
                    stats["source_null"] += 1
                diff[name] = {"source": _display(a), "destination": _display(b)}
        if len(diff_examples) < examples:
            diff_examples.append({"key": _show(k), "columns": diff})
    return {
        "missing": {"count": len(missing), "examples": [_show(source[k]) for k in missing[:examples]]},
        "extra": {"count": len(extra), "examples": [_show(dest[k][0]) for k in extra[:examples]]},
        "different": {"count": len(different), "by_column": {c: dict(s) for c, s in sorted(by_column.items())},
                      "examples": diff_examples},
        "duplicate_keys": {"count": len(duplicates), "rows": sum(len(dest[k]) - 1 for k in duplicates),
                           "examples": [_show(k) for k in duplicates[:examples]]},
    }


def _compare_multiset(columns: list[str], source_rows: list[tuple[Any, ...]], dest_rows: list[tuple[Any, ...]],
                      examples: int) -> dict[str, Any]:
    source, dest = Counter(source_rows), Counter(dest_rows)
    missing, extra = source - dest, dest - source

    def listing(counter: Counter[tuple[Any, ...]]) -> dict[str, Any]:
        top = sorted(counter.items(), key=lambda item: (-item[1], repr(item[0])))[:examples]
        return {"count": sum(counter.values()), "distinct": len(counter),
                "examples": [{"row": _show(row), "copies": n} for row, n in top]}

    return {"missing": listing(missing), "extra": listing(extra),
            "different": {"count": 0, "by_column": {}, "examples": []},
            "duplicate_keys": {"count": 0, "rows": 0, "examples": []}}


def _show(row: tuple[Any, ...]) -> Any:
    values = [_display(v) for v in row]
    return values if len(values) != 1 else values[0]


def _display(value: Any) -> Any:
    """A normalized value as shown in examples: numbers and timestamps without their type tag."""
    if isinstance(value, str) and value[:2] in ("N:", "T:"):
        return value[2:]
    return value


def summarize(report: dict[str, Any]) -> str:
    """One line per table with a difference, e.g. `app__docs: 312 different (big: 312, 312 NULL in destination)`."""
    lines = []
    for name, t in report["tables"].items():
        if t.get("ok"):
            continue
        parts = []
        if t.get("error"):
            parts.append(t["error"])
        if t.get("missing_columns"):
            parts.append(f"columns missing in destination: {', '.join(t['missing_columns'])}")
        for kind in ("missing", "extra"):
            count = t.get(kind, {}).get("count", 0)
            if count:
                parts.append(f"{count} {kind} row(s)")
        different = t.get("different", {})
        if different.get("count"):
            columns = ", ".join(
                f"{c}: {s['count']}" + (f", {s['destination_null']} NULL in destination" if s.get("destination_null")
                                        else "")
                for c, s in different["by_column"].items())
            parts.append(f"{different['count']} row(s) with different values ({columns})")
        dup = t.get("duplicate_keys", {})
        if dup.get("count"):
            parts.append(f"{dup['count']} duplicated key(s) ({dup['rows']} extra copies)")
        if t.get("stored_tombstones"):
            parts.append(f"{t['stored_tombstones']} stored tombstone row(s)")
        lines.append(f"{name}: " + "; ".join(parts) + f" [source {t.get('source_rows')} rows, destination "
                     f"{t.get('destination_rows')}]")
    return "\n".join(lines) if lines else "all tables equal"
