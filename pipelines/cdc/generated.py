"""Stored generated columns, which pgoutput before PostgreSQL 18 does not send: computed on the source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg2 import sql as pg_sql

from sources.replication.batch import LiveTable, RowChange
from sources.replication.columns import TypeResolver
from sources.replication.pgoutput import UNCHANGED, Value

Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


def generated_values(conn: Any, query: Query, resolver: TypeResolver, table: LiveTable, rows: list[RowChange],
                     values_rows: list[list[Value]]) -> list[list[Value]]:
    """Each row's generated values from its own values, in one read-only query that touches no table. A row missing
    an input (an unchanged TOAST value, a delete that carries only its key) is read back by key instead; if it is
    gone by then, its generated values stay markers (the destination's value) until its later change or delete."""
    width = len(table.relation.columns)
    relation = table.columns[:width]

    def quote_ident(name: str) -> str:
        return str(pg_sql.Identifier(name).as_string(conn))

    out: list[list[Value]] = [[UNCHANGED] * len(table.generated) for _ in rows]
    complete = [i for i, v in enumerate(values_rows) if all(x is not UNCHANGED for x in v[:width])
                and not (rows[i].op == "D" and not table.keyless)]
    if complete:
        types = [resolver.format_type(c.type_oid, c.typmod) for c in relation]
        columns = ", ".join(f"u.v{j}::{t} AS {quote_ident(c.name)}" for j, (c, t) in enumerate(zip(
            relation, types, strict=True)))
        inputs = ", ".join(f"v{j}" for j in range(width))
        exprs = ", ".join(f"(({g.expression})::{g.sql_type})::text" for g in table.generated)
        arrays = tuple([None if values_rows[i][j] is None else bytes(values_rows[i][j]).decode()  # type: ignore[arg-type]
                        for i in complete] for j in range(width))
        computed = query(
            f"SELECT {exprs} FROM (SELECT u._aurora_sync_ord, {columns} FROM unnest("
            f"{', '.join(['%s::text[]'] * width)}) WITH ORDINALITY AS u({inputs}, _aurora_sync_ord)) AS t "
            "ORDER BY t._aurora_sync_ord", arrays)
        for i, row in zip(complete, computed, strict=True):
            out[i] = [None if v is None else v.encode() for v in row]
    missing = [i for i in range(len(rows)) if i not in set(complete) and rows[i].lookup_key]
    if missing and table.key_positions:
        keys = [c for i, c in enumerate(relation) if i in table.key_positions]
        key_types = [resolver.format_type(c.type_oid, c.typmod) for c in keys]
        wanted = tuple([None if rows[i].lookup_key[n] is None else bytes(rows[i].lookup_key[n]).decode()  # type: ignore[arg-type]
                        for i in missing] for n in range(len(keys)))
        key_list = ", ".join(quote_ident(c.name) for c in keys)
        found = query(
            f"SELECT {', '.join(f'{quote_ident(c.name)}::text' for c in keys)}, "
            f"{', '.join(f'{quote_ident(g.name)}::text' for g in table.generated)} "
            f"FROM {quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)} WHERE ({key_list}) IN "
            f"(SELECT {', '.join(f'k{n}::{t}' for n, t in enumerate(key_types))} FROM unnest("
            f"{', '.join(['%s::text[]'] * len(keys))}) AS u({', '.join(f'k{n}' for n in range(len(keys)))}))",
            wanted)
        by_key = {tuple(r[:len(keys)]): r[len(keys):] for r in found}
        for i in missing:
            key = tuple(None if v is None else bytes(v).decode() for v in rows[i].lookup_key)  # type: ignore[arg-type]
            if key in by_key:
                out[i] = [None if v is None else v.encode() for v in by_key[key]]
    return out
