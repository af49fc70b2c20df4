"""The adversarial fixture: a schema this project was not written for, and a workload that does what real
applications do to it. Every step says which changes a timestamp cursor cannot see, so the incremental mode
can be held to its promise exactly (`verify` must report those, and nothing else).

Tables (schema `zoo`):
- `"Every Type"`: every PostgreSQL type we could think of, with its edge values (infinity and BC dates, 24:00,
  NaN and 1000-digit numerics, -0.0, subnormals, every Unicode code point, every byte, arrays of all shapes,
  domains, composites, ranges, geometric types, xml, ...), in a mixed-case name with a space;
- `order_lines`: a composite primary key; `by_unique`: keyed by a NOT NULL unique index only;
- `keyless_log`: no key at all, duplicate rows, REPLICA IDENTITY FULL;
- `documents`: TOASTed text, jsonb and bytea; `priced`: stored generated columns;
- `events`: a partitioned table; `"MixedCase"`: odd column names (quoted, reserved words, non-ASCII, spaces).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "zoo"

# every code point PostgreSQL's UTF8 can store: U+0001..U+10FFFF without the surrogates (about 4.3 MB of text)
ALL_CODE_POINTS = ("string_agg(chr(g), '' ORDER BY g) FROM generate_series(1, 1114111) g "
                   "WHERE g NOT BETWEEN 55296 AND 57343")

DDL = [
    "CREATE SCHEMA zoo",
    "CREATE TYPE zoo.mood AS ENUM ('sad', 'ok', 'happy 😀')",
    "CREATE TYPE zoo.pair AS (a int, b text)",
    "CREATE DOMAIN zoo.price AS numeric(10, 2)",
    """CREATE TABLE zoo."Every Type" (
        id int PRIMARY KEY,
        i2 smallint, i4 int, i8 bigint,
        n numeric, n10_2 numeric(10, 2), n_neg numeric(5, -2), n_small numeric(3, 5), n_wide numeric(50, 10),
        f4 real, f8 double precision,
        flag boolean, txt text, vc varchar(10), c5 char(5), ch "char", nm name, uid uuid,
        d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
        js json, jb jsonb, raw bytea,
        a_int int[], a_txt text[], a_2d int[][], a_num numeric[], a_ts timestamptz[],
        mood zoo.mood, ip inet, net cidr, mac macaddr, mac8 macaddr8, cash money, b4 bit(4), bv varbit,
        tsv tsvector, r4 int4range, rtz tstzrange, pt point, bx box, doc xml, o oid, lsn pg_lsn,
        dom zoo.price, comp zoo.pair,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE zoo.order_lines (order_id bigint, line_no int, sku text, qty int, price numeric(12, 2),
        updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (order_id, line_no))""",
    """CREATE TABLE zoo.by_unique (code text NOT NULL, region text NOT NULL, name text,
        updated_at timestamptz NOT NULL DEFAULT now(), CONSTRAINT by_unique_key UNIQUE (code, region))""",
    "ALTER TABLE zoo.by_unique REPLICA IDENTITY USING INDEX by_unique_key",
    "CREATE TABLE zoo.keyless_log (n int, msg text, noted_at timestamptz)",
    "ALTER TABLE zoo.keyless_log REPLICA IDENTITY FULL",
    """CREATE TABLE zoo.documents (id int PRIMARY KEY, title text, body text, meta jsonb, blob bytea,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    "ALTER TABLE zoo.documents ALTER COLUMN body SET STORAGE EXTERNAL",
    """CREATE TABLE zoo.priced (id int PRIMARY KEY, net numeric(10, 2), qty int,
        gross numeric(14, 2) GENERATED ALWAYS AS (net * qty * 1.2) STORED,
        label text GENERATED ALWAYS AS ('#' || id || ':' || coalesce(qty, 0)) STORED,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE zoo.events (id int, day date, what text, updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (id, day)) PARTITION BY RANGE (day)""",
    "CREATE TABLE zoo.events_2024 PARTITION OF zoo.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE zoo.events_2025 PARTITION OF zoo.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    """CREATE TABLE zoo."MixedCase" ("Id" int PRIMARY KEY, "Order" text, "a b" text, "ünïcode" text,
        "select" int, updated_at timestamptz NOT NULL DEFAULT now())""",
]

EVERY_TYPE_COLUMNS = (
    "id, i2, i4, i8, n, n10_2, n_neg, n_small, n_wide, f4, f8, flag, txt, vc, c5, ch, nm, uid, d, tm, ttz, ts, tstz, "
    "iv, js, jb, raw, a_int, a_txt, a_2d, a_num, a_ts, mood, ip, net, mac, mac8, cash, b4, bv, tsv, r4, rtz, pt, bx, "
    "doc, o, lsn, dom, comp")

# the edge values: each row pushes a different set of limits
EDGE_ROWS = [
    # extremes and infinities
    """(1, -32768, -2147483648, 9223372036854775807,
        'NaN', 'NaN', 1234500, 0.00123, 1234567890123456789012345678901234567890.0123456789,
        '-0', '-0', true, 'line1
line2, "quoted" \\ back', 'short', 'ab', 'x', 'a name', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        'infinity', '24:00:00', '24:00:00+14', '-infinity', 'infinity', '178000000 years',
        '{"a": 1, "a": 2, "z": "\\u0000", "big": 1e400}', '{"nested": {"deep": [true, false, null]}, "n": 1.000}',
        '\\x00ff10', '{1, 2, NULL, 3}', '{"a", "b c", "d,\\"e", NULL, ""}', '{{1,2},{3,4}}',
        '{NaN, Infinity, -Infinity, 1.50}', '{infinity, -infinity, "2024-01-01 00:00:00+00"}',
        'happy 😀', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', 1234.56,
        B'1010', B'101', 'a fat:2 cat:1', '[1,10)', '[2024-01-01 00:00+00,infinity)', '(1.5,-2)',
        '((0,0),(1,1))', '<a b="1">x &amp; y</a>', 4294967295, 'FFFFFFFF/FFFFFFFF', 99999999.99, ROW(1, 'x'))""",
    # BC, far future, smallest values
    """(2, 0, 0, -9223372036854775808,
        'Infinity', -99999999.99, -500, -0.00999, -0.0000000001,
        '1.17549435e-38', '4.9e-324', false, '', '', '', '', '', NULL,
        '0044-03-15 BC', '23:59:59.999999', '00:00:00-15:59', '4713-01-01 00:00:00 BC', '10000-01-01 00:00:00+00',
        '-178000000 years -1 sec', '[]', '{}', '\\x', '{}', '{}', '{}', '{}', '{}',
        'sad', '::1', '::/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', -92233720368547758.08,
        B'0000', B'', '', 'empty', '(,)', '(0,0)', '((0,0),(0,0))', '<empty/>', 0, '0/0', 0, ROW(NULL, NULL))""",
    # every NULL
    f"(3, {', '.join(['NULL'] * 49)})",
    # numbers no destination DECIMAL holds, and values only text keeps
    """(4, 1, 1, 1,
        (repeat('9', 500) || '.' || repeat('1', 500))::numeric, 0, 0, 0, 0, '3.40282347e+38',
        '1.7976931348623157e+308', true, 'Zoë 李 مرحبا 🚀👩‍💻', 'ünïcödé', 'ß', 'é', 'ñ', NULL,
        '9999-12-31', '00:00:00', '12:00:00+00', '294276-12-31 23:59:59', '-infinity', 'P1Y2M3DT4H5M6.5S',
        '"just a string"', 'null', decode('000000', 'hex'), '{{{1}}}', '{NULL}', '{{NULL,1},{2,NULL}}', '{-0}',
        '{NULL}', 'ok', '255.255.255.255', '255.255.255.255/32', 'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff', 0,
        B'1111', B'1111111111', 'x:1A', 'empty', '(-infinity,infinity)', '(-1e308,1e308)', '((-1,-1),(1,1))',
        '<![CDATA[<>]]>', 1, '1/1', -99999999.99, ROW(-1, '("x")'))""",
    # a value TOASTed out of line: every code point
    f"""(5, NULL, NULL, NULL, '1e-20', NULL, NULL, NULL, NULL, NULL, NULL, NULL, (SELECT {ALL_CODE_POINTS}),
        NULL, NULL, NULL, NULL, NULL, '0001-01-01', NULL, NULL, '0001-01-01 00:00:00', '0001-01-01 00:00:00+00',
        NULL, NULL, NULL, (SELECT string_agg(set_byte('\\x00'::bytea, 0, g), ''::bytea) FROM generate_series(0, 255) g),
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL)""",
    # ordinary values
    """(6, 7, 7, 7, 2::numeric / 7, 12.5, 100, 0.001, 3.14, 3.25, 1.0000000000000002, true, 'plain', 'v', 'c', 'c',
        'n', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '2024-02-29', '12:34:56.5', '10:00:00+02',
        '2024-01-02 03:04:05.123456', '2024-06-30 23:30:00.5+05:30', '1 day', '{"k": [1, 2.50]}', '{"k": 2.50}',
        '\\xdeadbeef', '{7}', '{seven}', '{{7}}', '{7.00}', '{"2024-06-30 23:30:00.5+05:30"}', 'ok', '10.1.2.3',
        '10.1.2.0/24', '01:02:03:04:05:06', '01:02:03:04:05:06:07:08', 7, B'0111', B'0111', 'seven', '[7,8)',
        '[2024-01-01 00:00+00,2024-02-01 00:00+00)', '(7,7)', '((7,7),(8,8))', '<seven/>', 7, '7/7', 7.00,
        ROW(7, 'seven'))""",
]

SEED = [
    f'INSERT INTO zoo."Every Type" ({EVERY_TYPE_COLUMNS}) VALUES {", ".join(EDGE_ROWS)}',
    """INSERT INTO zoo.order_lines (order_id, line_no, sku, qty, price)
       SELECT o, l, 'sku-' || o || '-' || l, l, o * 1.25 FROM generate_series(1, 30) o, generate_series(1, 4) l""",
    "INSERT INTO zoo.by_unique (code, region, name) SELECT 'c' || g, r, 'n' || g FROM generate_series(1, 10) g, "
    "unnest(ARRAY['eu', 'us']) r",
    "INSERT INTO zoo.keyless_log VALUES (1, 'dup', '2024-01-01'), (1, 'dup', '2024-01-01'), (1, 'dup', '2024-01-01'),"
    " (2, 'once', NULL), (NULL, NULL, NULL)",
    "INSERT INTO zoo.documents (id, title, body, meta, blob) SELECT g, 'doc ' || g, repeat(chr(64 + g), 30000), "
    "jsonb_build_object('pad', repeat('p', 5000), 'g', g), decode(repeat(lpad(to_hex(g), 2, '0'), 20000), 'hex') "
    "FROM generate_series(1, 8) g",
    "INSERT INTO zoo.priced (id, net, qty) SELECT g, g * 0.5, g FROM generate_series(1, 10) g",
    "INSERT INTO zoo.events (id, day, what) SELECT g, DATE '2024-03-01' + g * 30, 'e' || g "
    "FROM generate_series(1, 12) g",
    """INSERT INTO zoo."MixedCase" VALUES (1, 'first', 'a b', 'ü', 1), (2, 'second', NULL, 'ï', 2)""",
    # rows written a day ago: a change that does not move the cursor is then outside every re-read window
    *(f"UPDATE zoo.{t} SET updated_at = now() - interval '1 day'" for t in (
        '"Every Type"', "order_lines", "by_unique", "documents", "priced", "events", '"MixedCase"')),
]

Key = Any  # a key as `verify` reports it: an int, or a list for composite keys


@dataclass
class Step:
    """One thing an application does. `invisible` lists what a timestamp cursor cannot see, by destination
    table: kind ("changed" | "extra") → keys. `refreshes` are tables a step loads anew in incremental mode
    (a type change drops and reloads them), which clears what was invisible before."""

    name: str
    sql: list[str]
    invisible: dict[str, dict[str, list[Key]]] = field(default_factory=dict)
    refreshes: list[str] = field(default_factory=list)
    rereads: list[str] = field(default_factory=list)  # read again in full: clears their "changed" drift
    during_sync: Callable[[str], Any] | None = None  # opens a transaction that commits after the next sync


def late_commit(dsn: str) -> Any:
    """A transaction that started (and stamped its rows) before the sync and commits after it."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    cur.execute("INSERT INTO zoo.order_lines (order_id, line_no, sku, qty, price) VALUES (900, 1, 'late', 1, 9)")
    cur.execute("UPDATE zoo.\"MixedCase\" SET \"Order\" = 'late', updated_at = now() WHERE \"Id\" = 1")
    return conn


STEPS = [
    Step("inserts", [
        f'INSERT INTO zoo."Every Type" ({EVERY_TYPE_COLUMNS}) SELECT id + 100, i2, i4, i8, n, n10_2, n_neg, '
        "n_small, n_wide, f4, f8, flag, txt, vc, c5, ch, nm, uid, d, tm, ttz, ts, tstz, iv, js, jb, raw, a_int, "
        "a_txt, a_2d, a_num, a_ts, mood, ip, net, mac, mac8, cash, b4, bv, tsv, r4, rtz, pt, bx, doc, o, lsn, dom, "
        'comp FROM zoo."Every Type" WHERE id IN (1, 2, 4, 6)',
        "INSERT INTO zoo.order_lines (order_id, line_no, sku, qty, price) VALUES (31, 1, 'new', 1, 1.00)",
        "INSERT INTO zoo.keyless_log VALUES (1, 'dup', '2024-01-01'), (3, 'new', now())",
        "INSERT INTO zoo.priced (id, net, qty) VALUES (11, 99.99, 3)",
        "INSERT INTO zoo.events (id, day, what) VALUES (13, '2025-12-31', 'last')",
        """INSERT INTO zoo."MixedCase" VALUES (3, 'third', 'x y', 'ö', 3)""",
    ]),
    Step("updates with the cursor", [
        'UPDATE zoo."Every Type" SET d = \'-infinity\', tm = \'24:00:00\', f8 = \'-0\', n = \'NaN\', '
        "updated_at = now() WHERE id = 6",
        "UPDATE zoo.order_lines SET qty = qty * 10, updated_at = now() WHERE order_id = 2",
        "UPDATE zoo.priced SET qty = qty + 1, updated_at = now() WHERE id <= 3",
        "UPDATE zoo.events SET day = '2025-06-01', updated_at = now() WHERE id = 1",  # moves partitions
        "UPDATE zoo.by_unique SET name = 'renamed', updated_at = now() WHERE code = 'c1'",
        "UPDATE zoo.documents SET title = 'one', updated_at = now() WHERE id = 1",
        "UPDATE zoo.keyless_log SET msg = 'changed' WHERE ctid = (SELECT min(ctid) FROM zoo.keyless_log "
        "WHERE msg = 'dup')",
    ], invisible={"zoo__events": {"extra": [[1, "2024-03-31"]]}}),  # the day is part of the key: a key update
    Step("updates the cursor cannot see", [
        "UPDATE zoo.order_lines SET sku = 'silent' WHERE order_id = 3 AND line_no IN (1, 2)",
        "UPDATE zoo.documents SET title = 'silent' WHERE id = 8",
    ], invisible={"zoo__order_lines": {"changed": [[3, 1], [3, 2]]}, "zoo__documents": {"changed": [8]}}),
    Step("key updates", [
        "UPDATE zoo.order_lines SET line_no = line_no + 100, updated_at = now() WHERE order_id = 4",
        "UPDATE zoo.by_unique SET region = 'apac', updated_at = now() WHERE code = 'c2' AND region = 'eu'",
        """UPDATE zoo."MixedCase" SET "Id" = 20, updated_at = now() WHERE "Id" = 2""",
    ], invisible={"zoo__order_lines": {"extra": [[4, 1], [4, 2], [4, 3], [4, 4]]},
                  "zoo__by_unique": {"extra": [["c2", "eu"]]}, "zoo__mixed_case": {"extra": [2]}}),
    Step("deletes", [
        "DELETE FROM zoo.order_lines WHERE order_id = 5",
        'DELETE FROM zoo."Every Type" WHERE id = 104',
        "DELETE FROM zoo.keyless_log WHERE ctid = (SELECT max(ctid) FROM zoo.keyless_log WHERE msg = 'dup')",
        "DELETE FROM zoo.events WHERE id = 2",
        "DELETE FROM zoo.priced WHERE id = 10",
    ], invisible={"zoo__order_lines": {"extra": [[5, 1], [5, 2], [5, 3], [5, 4]]},
                  "zoo__every_type": {"extra": [104]}, "zoo__events": {"extra": [[2, "2024-04-30"]]},
                  "zoo__priced": {"extra": [10]}}),
    Step("delete and re-insert", [
        "DELETE FROM zoo.order_lines WHERE order_id = 6 AND line_no = 1",
        "INSERT INTO zoo.order_lines (order_id, line_no, sku, qty, price) VALUES (6, 1, 'again', 99, 0.01)",
        "DELETE FROM zoo.documents WHERE id = 7",
        "INSERT INTO zoo.documents (id, title, body) VALUES (7, 'again', repeat('Z', 40000))",
    ]),
    Step("updates leaving TOASTed values unchanged", [
        "UPDATE zoo.documents SET title = title || ' (edited)', updated_at = now() WHERE id IN (1, 2)",
        'UPDATE zoo."Every Type" SET i2 = 5, updated_at = now() WHERE id = 5',  # the 4.3 MB value is not resent
    ]),
    Step("a late commit", [], during_sync=late_commit),
    Step("migrations: new columns filled for existing rows, a rename", [
        "ALTER TABLE zoo.order_lines ADD COLUMN note text NOT NULL DEFAULT 'x'",
        "ALTER TABLE zoo.documents ADD COLUMN stamp timestamptz DEFAULT clock_timestamp()",  # volatile: rewrite
        "ALTER TABLE zoo.priced ADD COLUMN ref uuid DEFAULT gen_random_uuid()",
        "ALTER TABLE zoo.by_unique RENAME COLUMN name TO title",
        "ALTER TABLE zoo.events ADD COLUMN plain int",  # no default: old rows are NULL, nothing to re-read
        "UPDATE zoo.order_lines SET qty = 0, updated_at = now() WHERE order_id = 7",  # a change after it
    ], rereads=["zoo__order_lines", "zoo__documents", "zoo__priced", "zoo__by_unique"]),
    Step("migrations: type changes", [
        "ALTER TABLE zoo.order_lines ALTER COLUMN qty TYPE bigint",  # same destination type: nothing to do
        'ALTER TABLE zoo."Every Type" ALTER COLUMN vc TYPE text',  # same destination type: nothing to do
        'ALTER TABLE zoo."MixedCase" ALTER COLUMN "select" TYPE text',
        "ALTER TABLE zoo.order_lines ALTER COLUMN price TYPE numeric(14, 4)",
        """UPDATE zoo."MixedCase" SET "select" = 'three', updated_at = now() WHERE "Id" = 3""",
    ], refreshes=["zoo__mixed_case", "zoo__order_lines"]),
    Step("migrations: drop a column, add a table, drop a table", [
        "ALTER TABLE zoo.documents DROP COLUMN meta",
        "CREATE TABLE zoo.newcomer (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO zoo.newcomer (id, v) VALUES (1, 'a'), (2, 'b')",
        "DROP TABLE zoo.events",
        "UPDATE zoo.documents SET title = 'after drop', updated_at = now() WHERE id = 3",
    ]),
    Step("truncate", [
        "TRUNCATE zoo.keyless_log",
        "INSERT INTO zoo.keyless_log VALUES (9, 'after truncate', now()), (9, 'after truncate', now())",
        "TRUNCATE zoo.priced",
        "INSERT INTO zoo.priced (id, net, qty) VALUES (1, 1.00, 1)",
    ], invisible={"zoo__priced": {"extra": [2, 3, 4, 5, 6, 7, 8, 9, 11]}}),
]
