"""Every PostgreSQL type we promise arrives in DuckDB with its value intact, or mapped as documented
in docs/type-mapping.md. Values are compared one by one, not counted."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from pipelines import customers_orders
from tests.conftest import execute
from tests.helpers import DATASET

DDL = """
CREATE SCHEMA types;
CREATE TYPE types.mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE TABLE types.all_types (
    id            int PRIMARY KEY,
    c_smallint    smallint,
    c_int         int,
    c_bigint      bigint,
    c_numeric_s   numeric(20, 6),
    c_numeric     numeric,
    c_numeric_big numeric(38, 0),
    c_real        real,
    c_double      double precision,
    c_bool        boolean,
    c_text        text,
    c_varchar     varchar(20),
    c_char        char(5),
    c_uuid        uuid,
    c_date        date,
    c_time        time,
    c_timetz      time with time zone,
    c_timestamp   timestamp,
    c_timestamptz timestamptz,
    c_interval    interval,
    c_json        json,
    c_jsonb       jsonb,
    c_bytea       bytea,
    c_int_array   int[],
    c_text_array  text[],
    c_enum        types.mood,
    c_inet        inet,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO types.all_types VALUES
 (1, -32768, -2147483648, 9223372036854775807, 12345678901234.123456, 12345678901234567890.123456789,
  99999999999999999999999999999999999999, 3.25, 1.0000000000000002, true,
  'line1
line2, "quoted" \\ back', 'short', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '23:59:59.999999', '10:00:00+02', '2024-01-02 03:04:05.123456', '2024-06-30 23:30:00.5+05:30',
  '1 year 2 mons 3 days 04:05:06.5',
  '{"a": [1, 2, {"b": null}], "s": "x"}', '{"nested": {"deep": [true, false]}, "emoji": "🎉"}',
  '\\x00ff10', '{1, 2, NULL, 3}', '{"a", "b c", "d,\\"e", NULL}', 'happy 😀', '192.168.0.1/24'),
 (2, 0, 0, -9223372036854775808, -0.000001, 0.000000001, -1, 'NaN', 'Infinity', false,
  '', '', '', NULL, '0001-01-01', '00:00:00', '23:30:00-05:30', '1970-01-01 00:00:00',
  '1999-12-31 23:59:59-08', '-1 days',
  '[]', '{}', '\\x', '{}', '{}', 'sad', '::1'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, '-Infinity', 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 1, 1, 1, 1, 1, 1, 1, '-Infinity', true, 'Zoë 李 مرحبا 🚀👩‍💻', 'ünïcödé', 'ß', NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, '"just a string"', 'null', NULL, NULL, '{"🚀"}', 'ok', NULL);
"""


@pytest.fixture()
def loaded(database: str, dlt_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[int, dict]:
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["types"]')
    execute(database, DDL)
    customers_orders.run(pipelines_dir=str(tmp_path / "p")).raise_on_failures()
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    import duckdb
    con = duckdb.connect(duck, read_only=True)
    cursor = con.execute(f"SELECT * FROM {DATASET}.types__all_types ORDER BY id")
    names = [d[0] for d in cursor.description]
    rows = {r[0]: dict(zip(names, r, strict=True)) for r in cursor.fetchall()}
    rows["_types"] = dict(con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        f"WHERE table_schema = '{DATASET}' AND table_name = 'types__all_types'").fetchall())
    con.close()
    return rows


def test_integers_and_exact_numerics(loaded: dict) -> None:
    one, two = loaded[1], loaded[2]
    assert (one["c_smallint"], one["c_int"], one["c_bigint"]) == (-32768, -2147483648, 9223372036854775807)
    assert two["c_bigint"] == -9223372036854775808
    assert one["c_numeric_s"] == Decimal("12345678901234.123456")
    # unconstrained numeric has no bound on scale or digits: PostgreSQL's own text, every digit kept
    assert one["c_numeric"] == "12345678901234567890.123456789"
    assert one["c_numeric_big"] == Decimal("99999999999999999999999999999999999999")
    assert two["c_numeric_s"] == Decimal("-0.000001")
    assert two["c_numeric"] == "0.000000001"
    assert loaded["_types"]["c_numeric_s"] == "DECIMAL(20,6)"
    assert loaded["_types"]["c_numeric"] == "VARCHAR"


def test_floats_with_nan_and_infinity(loaded: dict) -> None:
    assert loaded[1]["c_real"] == 3.25
    assert loaded[1]["c_double"] == 1.0000000000000002
    assert math.isnan(loaded[2]["c_real"]) and loaded[2]["c_double"] == math.inf
    assert loaded[3]["c_real"] == -math.inf and math.isnan(loaded[3]["c_double"])
    assert loaded[4]["c_double"] == -math.inf


def test_text_boolean_uuid_enum_inet_and_unicode(loaded: dict) -> None:
    one, two, four = loaded[1], loaded[2], loaded[4]
    assert one["c_bool"] is True and two["c_bool"] is False
    assert one["c_text"] == 'line1\nline2, "quoted" \\ back'
    assert two["c_text"] == "" and two["c_varchar"] == ""  # empty strings stay empty, not NULL
    assert one["c_char"] == "ab   "  # char(n) keeps PostgreSQL's blank padding
    assert one["c_uuid"] == str(uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
    assert one["c_enum"] == "happy 😀" and four["c_enum"] == "ok"
    assert one["c_inet"] == "192.168.0.1/24" and two["c_inet"] == "::1"
    assert four["c_text"] == "Zoë 李 مرحبا 🚀👩‍💻" and four["c_varchar"] == "ünïcödé"


def test_dates_times_and_intervals(loaded: dict) -> None:
    one, two = loaded[1], loaded[2]
    assert one["c_date"] == date(2024, 2, 29) and two["c_date"] == date(1, 1, 1)
    assert one["c_time"] == time(23, 59, 59, 999999)
    # time with time zone has no destination type: PostgreSQL's text, offset included
    assert one["c_timetz"] == "10:00:00+02" and two["c_timetz"] == "23:30:00-05:30"
    assert one["c_timestamp"] == datetime(2024, 1, 2, 3, 4, 5, 123456)
    assert one["c_timestamptz"] == datetime(2024, 6, 30, 18, 0, 0, 500000, tzinfo=UTC)
    assert two["c_timestamptz"] == datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-8)))
    assert loaded["_types"]["c_timestamptz"] == "TIMESTAMP WITH TIME ZONE"
    assert loaded["_types"]["c_timestamp"] == "TIMESTAMP"
    # intervals travel as ISO 8601 text (no destination interval type is portable)
    assert one["c_interval"] == "P1Y2M3DT4H5M6.5S" and two["c_interval"] == "P-1D"


def test_json_bytea_and_arrays(loaded: dict) -> None:
    one, two, four = loaded[1], loaded[2], loaded[4]
    assert json.loads(one["c_json"]) == {"a": [1, 2, {"b": None}], "s": "x"}
    assert json.loads(one["c_jsonb"]) == {"nested": {"deep": [True, False]}, "emoji": "🎉"}
    assert json.loads(two["c_json"]) == [] and json.loads(two["c_jsonb"]) == {}
    assert json.loads(four["c_json"]) == "just a string"
    assert loaded["_types"]["c_jsonb"] == "JSON"
    assert one["c_bytea"] == b"\x00\xff\x10" and two["c_bytea"] == b""
    # arrays travel as JSON arrays
    assert json.loads(one["c_int_array"]) == [1, 2, None, 3]
    assert json.loads(one["c_text_array"]) == ["a", "b c", 'd,"e', None]
    assert json.loads(two["c_int_array"]) == [] and json.loads(four["c_text_array"]) == ["🚀"]


def test_nulls_everywhere(loaded: dict) -> None:
    three = loaded[3]
    nullable = [k for k in three if k.startswith("c_") and k not in ("c_real", "c_double")]
    assert nullable and all(three[k] is None for k in nullable), {k: three[k] for k in nullable if three[k] is not None}
    # JSON null stored in a jsonb column is a JSON value, not SQL NULL
    assert loaded[4]["c_jsonb"] == "null"
