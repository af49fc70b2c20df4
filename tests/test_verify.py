"""`aurora-sync verify` against a real PostgreSQL and the DuckDB file the pipeline loaded.

Drift is made by tampering with the DuckDB file only, so the source stays the truth.
"""

from __future__ import annotations

import faulthandler
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from local.postgres import free_port
from local.seed import seed
from pipelines import customers_orders
from replica.verify import canonical, canonical_json, row_hash
from runner import cli
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import DATASET
from tests.snowflake.conftest import (  # noqa: F401  (fixtures of the Snowflake stand-ins)
    DATABASE,
    bootstrap,
    bucket,
    fake_sf,
    key_pair,
    s3,
    sf_env,
)
from tests.snowflake.conftest import DATASET as SF_DATASET

AURORA_SYNC = str(Path(sys.executable).parent / "aurora-sync")


def load(tmp_path: Path) -> None:
    customers_orders.run(pipelines_dir=str(tmp_path / "pipelines")).raise_on_failures()


def tamper(duck_file: str, *statements: str) -> None:
    con = duckdb.connect(duck_file)
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["--json-logs", "verify", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def by_table(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["table"]: t for t in report["tables"]}


def drift_keys(table: dict[str, Any], kind: str) -> list[Any]:
    return [k for r in table["drift_ranges"] for k in r[f"{kind}_keys"]]


@pytest.fixture(autouse=True)
def dead_letters_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOURCES__POSTGRES__DEAD_LETTER_URL", str(tmp_path / "dead_letter"))


@pytest.fixture()
def seeded(dlt_env: dict[str, str], tmp_path: Path) -> str:
    dsn = dlt_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=300, orders=1_200)
    load(tmp_path)
    return dsn


def test_in_sync_replica_exits_zero(seeded: str, dlt_env: dict[str, str], capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    result = subprocess.run([AURORA_SYNC, "--json-logs", "verify", "--checksum", "--json"], env=subprocess_env(dlt_env),
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == ExitCode.SUCCESS, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["summary"] == {"tables": 4, "in_sync": 4, "drift": 0, "errors": 0}
    tables = by_table(report)
    assert tables["orders.orders"]["source_rows"] == tables["orders.orders"]["destination_rows"] == 1_200
    for t in tables.values():
        assert t["status"] == "ok" and t["checksum"] == "ok", t
        assert t["source_checksum"] == t["destination_checksum"] and t["drift_ranges"] == []
    assert seeded.split("@")[0] not in result.stdout + result.stderr  # no credentials in the output

    # CDC bookkeeping in the destination is not drift: extra columns, and soft-deleted rows
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    tamper(duck, f"ALTER TABLE {DATASET}.customers__customers ADD COLUMN _lsn BIGINT",
           f"ALTER TABLE {DATASET}.customers__customers ADD COLUMN _deleted_at TIMESTAMPTZ",
           f"INSERT INTO {DATASET}.customers__customers (id, email, full_name, created_at, updated_at, _deleted_at) "
           "VALUES (900001, 'gone@example.com', 'Gone', now(), now(), now())")
    code, report = verify(capsys, "--checksum", "--tables", "customers.*")
    assert code == ExitCode.SUCCESS, report
    assert [t["status"] for t in report["tables"]] == ["ok", "ok"]

    # the reader DSN, when configured, serves every source query
    monkeypatch.setenv("SOURCES__POSTGRES__READER_CREDENTIALS", seeded)
    monkeypatch.setenv("SOURCES__POSTGRES__CREDENTIALS", f"postgresql://nobody:pw@127.0.0.1:{free_port()}/none")
    code, report = verify(capsys, "--tables", "orders.orders")
    assert code == ExitCode.SUCCESS and report["tables"][0]["source_rows"] == 1_200

    code = cli.main(["verify", "--tables", "nothing.here"])
    assert code == ExitCode.CONFIG_ERROR
    assert "matched no replicated table" in capsys.readouterr().err


def test_drift_is_found_and_narrowed_to_the_keys(seeded: str, dlt_env: dict[str, str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    tamper(duck,
           f"DELETE FROM {DATASET}.orders__orders WHERE id = 500",  # lost row
           f"UPDATE {DATASET}.customers__customers SET full_name = 'Tampered' WHERE id = 123",  # same count
           f"INSERT INTO {DATASET}.customers__addresses SELECT * REPLACE (777777 AS id) "  # phantom row
           f"FROM {DATASET}.customers__addresses WHERE id = 1")

    code, report = verify(capsys, "--checksum", "--chunk-rows", "100", "--narrow-rows", "10")
    assert code == ExitCode.DRIFT_FOUND
    tables = by_table(report)
    assert tables["orders.order_items"]["status"] == "ok"

    orders = tables["orders.orders"]
    assert (orders["status"], orders["source_rows"], orders["destination_rows"]) == ("drift", 1_200, 1_199)
    assert orders["chunks"] == 12 and orders["drifting_chunks"] == 1 and orders["checksum"] == "mismatch"
    [drift] = orders["drift_ranges"]
    assert drift["missing_keys"] == [500] and drift["missing_count"] == 1 and drift["source_rows"] <= 10
    assert drift["range"]["from"] <= 500 < drift["range"]["to"]

    customers = tables["customers.customers"]
    assert customers["source_rows"] == customers["destination_rows"] == 300 and customers["checksum"] == "mismatch"
    assert drift_keys(customers, "changed") == [123] and drift_keys(customers, "missing") == []

    addresses = tables["customers.addresses"]
    assert addresses["destination_rows"] == addresses["source_rows"] + 1
    assert drift_keys(addresses, "extra") == [777777]

    # counts alone catch lost and phantom rows, not a changed value
    code, report = verify(capsys, "--chunk-rows", "100")
    assert code == ExitCode.DRIFT_FOUND
    statuses = {t: r["status"] for t, r in by_table(report).items()}
    assert statuses == {"customers.addresses": "drift", "customers.customers": "ok",
                        "orders.order_items": "ok", "orders.orders": "drift"}
    assert by_table(report)["customers.customers"]["checksum"] == "skipped"

    cli.main(["verify", "--tables", "orders.orders"])  # the table people read
    out = capsys.readouterr().out
    assert "orders.orders" in out and "drift" in out and "500" in out


TYPES_DDL = """
CREATE SCHEMA types;
CREATE TYPE types.mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE TABLE types.all_types (
    id bigint PRIMARY KEY, c_numeric_s numeric(20, 6), c_numeric numeric, c_numeric_wide numeric(50, 4),
    c_real real, c_double double precision, c_bool boolean, c_text text, c_char char(5), c_uuid uuid,
    c_date date, c_time time, c_timestamp timestamp, c_timestamptz timestamptz,
    c_interval interval, c_json json, c_jsonb jsonb, c_bytea bytea, c_int_array int[], c_text_array text[],
    c_enum types.mood, c_inet inet
);
INSERT INTO types.all_types VALUES
 (1, 12345678901234.123456, 12345678901234567890.123456789, 123456789012345678901234567890123456.7890,
  3.25, 1.0000000000000002, true, 'Zoë "q" \\ 李 🚀', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-02-29', '23:59:59.999999', '2024-01-02 03:04:05.123456', '2024-06-30 23:30:00.5+05:30',
  '1 year 2 mons 3 days 04:05:06.5', '{"b": [1, 2.50, {"c": null}],   "a": "x"}', '{"z": 1e2, "a": 0.10}',
  '\\x00ff10', '{1, 2, NULL, 3}', '{"a", "b c", "d,\\"e", NULL}', 'happy 😀', '192.168.0.1/24'),
 (2, -0.000001, 0.000000001, 0, 'NaN', 'Infinity', false, '', '', NULL, '0001-01-01', '00:00:00',
  '1970-01-01 00:00:00', '1999-12-31 23:59:59-08', '-1 days', '[]', '{}', '\\x', '{}', '{}', 'sad', '::1'),
 (3, NULL, NULL, NULL, '-Infinity', 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  '"just a string"', 'null', NULL, NULL, '{"🚀"}', NULL, NULL);
INSERT INTO types.all_types (id, c_numeric, c_double, c_text, c_timestamptz, c_jsonb)
SELECT g, round(g / 7.0, 9), g * 0.1, 'row ' || g, '2024-01-01'::timestamptz + g * interval '1 minute',
       jsonb_build_object('g', g, 'tags', jsonb_build_array('t' || g % 3))
FROM generate_series(4, 400) g;
INSERT INTO types.all_types (id, c_text) VALUES (1000000000000, 'far away: equal-width chunks would be skewed');

CREATE TABLE types.by_uuid (id uuid PRIMARY KEY, note text);
INSERT INTO types.by_uuid SELECT md5(g::text)::uuid, 'n' || g FROM generate_series(1, 250) g;
CREATE TABLE types.by_text (code text, region text, qty int, PRIMARY KEY (code, region));
INSERT INTO types.by_text SELECT 'k-' || g || CASE WHEN g % 5 = 0 THEN 'Zoë' ELSE 'a' END, r, g
FROM generate_series(1, 150) g, unnest(ARRAY['eu', 'us', 'ÄP']) r;
"""


def test_canonical_values_agree_across_drivers() -> None:
    assert canonical(Decimal("12.50")) == canonical(Decimal("12.5")) == "12.5"
    assert canonical(Decimal("0E-9")) == canonical(0) == "0" and canonical(Decimal("1E+2")) == "100"
    assert canonical(Decimal("12345678901234567890.123456789000")) == "12345678901234567890.123456789"
    assert canonical(-0.0) == "-0.0" != canonical(0.0)  # a lost sign is drift
    assert canonical(float("nan")) == "nan" and canonical(True) == "true"
    plus_two = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert canonical(plus_two) == canonical(datetime(2024, 1, 1, 10, tzinfo=UTC)) == "2024-01-01T10:00:00+00:00"
    assert canonical(b"\x00\xff") == canonical(memoryview(b"\x00\xff")) == "00ff"
    assert canonical_json('{"b": [1.0, 2.50], "a": null}') == canonical_json('{"a":null,"b":[1,2.5]}')
    assert canonical_json('"x"') != canonical_json('["x"]') and canonical_json(None) is None
    assert row_hash(["a", None]) != row_hash(["a", "None"]) != row_hash(["a,", None])


def test_every_type_verifies_without_false_positives(database: str, dlt_env: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOURCES__POSTGRES__SCHEMAS", '["types"]')
    execute(database, TYPES_DDL)
    load(tmp_path)

    code, report = verify(capsys, "--checksum", "--chunk-rows", "40")
    assert code == ExitCode.SUCCESS, json.dumps(report, indent=1)
    tables = by_table(report)
    assert {t: r["chunking"] for t, r in tables.items()} == {
        "types.all_types": "integer", "types.by_text": "ordered", "types.by_uuid": "ordered"}
    assert all(r["chunks"] > 5 and r["largest_chunk_rows"] <= 80 and r["checksum"] == "ok"
               for r in tables.values()), tables

    # text and uuid keys are chunked by quantiles and narrowed by medians
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    (lost_uuid,) = duckdb.connect(duck, read_only=True).execute(
        f"SELECT id FROM {DATASET}.types__by_uuid ORDER BY id LIMIT 1 OFFSET 123").fetchone()
    tamper(duck, f"DELETE FROM {DATASET}.types__by_uuid WHERE id = '{lost_uuid}'",
           f"UPDATE {DATASET}.types__by_text SET qty = -1 WHERE code = 'k-75Zoë' AND region = 'ÄP'",
           f"UPDATE {DATASET}.types__all_types SET c_jsonb = '{{\"z\": 100, \"a\": 0.1}}' WHERE id = 1")
    execute(database, "CREATE TABLE types.created_later (id int PRIMARY KEY)",
            "INSERT INTO types.created_later VALUES (1)")

    code, report = verify(capsys, "--checksum", "--chunk-rows", "40", "--narrow-rows", "5")
    assert code == ExitCode.DRIFT_FOUND
    tables = by_table(report)
    assert tables["types.all_types"]["status"] == "ok"  # same JSON document, spelled differently
    assert drift_keys(tables["types.by_uuid"], "missing") == [lost_uuid]
    assert drift_keys(tables["types.by_text"], "changed") == [["k-75Zoë", "ÄP"]]
    assert tables["types.created_later"]["problems"] == ["destination table types__created_later does not exist"]


@pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")
def test_snowflake_destination(sf_env: dict[str, str], fake_sf: Any, tmp_path: Path,  # noqa: F811
                               capsys: pytest.CaptureFixture[str]) -> None:
    """The Snowflake SQL client path (upper-case identifiers, pyformat parameters) through fakesnow."""
    import snowflake.connector

    seed(sf_env["SOURCES__POSTGRES__CREDENTIALS"], customers=120, orders=500)
    assert bootstrap() == 0
    load(tmp_path)
    capsys.readouterr()
    code, report = verify(capsys, "--checksum", "--chunk-rows", "50")
    assert code == ExitCode.SUCCESS, report
    assert all(t["checksum"] == "ok" and t["chunks"] > 1 for t in report["tables"])

    conn = snowflake.connector.connect(database=DATABASE)
    try:
        conn.cursor().execute(f"UPDATE {SF_DATASET}.CUSTOMERS__CUSTOMERS SET full_name = 'x' WHERE id = 7")
    finally:
        conn.close()
    code, report = verify(capsys, "--checksum", "--chunk-rows", "50", "--tables", "customers.customers")
    assert code == ExitCode.DRIFT_FOUND and drift_keys(report["tables"][0], "changed") == [7]


def test_rows_in_flight_are_never_reported_as_drift(dlt_env: dict[str, str], tmp_path: Path) -> None:
    """Under live writes a verify sees rows the source changed and the sync has not applied yet. With
    `--settle-seconds`, a drifting range is checked again after the wait: caught up (or still being written) is in
    flight, not drift; a row the sync never touches stays drift."""
    dsn = dlt_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=100, orders=400)
    load(tmp_path)
    tamper(dlt_env["DESTINATION__DUCKDB__CREDENTIALS"],
           f"UPDATE {DATASET}.orders__orders SET status = 'tampered' WHERE id = 350")  # drift the sync never fixes

    def in_flight(new_id: int) -> None:  # the application writes; the sync has not run since
        execute(dsn, "UPDATE orders.orders SET total = total + 1, updated_at = now() WHERE id BETWEEN 10 AND 20",
                "INSERT INTO orders.orders (id, customer_id, status, total, placed_at) "
                f"VALUES ({new_id}, 1, 'new', 1.00, now())")

    def run_verify(settle: str, sync_while_settling: bool) -> tuple[int, dict[str, Any], str]:
        process = subprocess.Popen(
            [AURORA_SYNC, "--json-logs", "verify", "--checksum", "--json", "--chunk-rows", "100",
             "--settle-seconds", settle], env=subprocess_env(dlt_env), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if '"verify settling"' in line:
                if sync_while_settling:
                    load(tmp_path)
                break
        out, rest = process.communicate(timeout=300)
        return process.returncode, json.loads(out), "".join(lines) + rest

    in_flight(5001)
    code, report, log = run_verify("1", sync_while_settling=False)  # nothing applies them: drift, honestly
    orders = by_table(report)["orders.orders"]
    assert code == ExitCode.DRIFT_FOUND and orders["drift_rows"] >= 12, log[-2000:]

    load(tmp_path)
    in_flight(5002)  # again, and this time the sync runs during the wait
    code, report, log = run_verify("8", sync_while_settling=True)
    assert code == ExitCode.DRIFT_FOUND, log[-2000:]
    orders = by_table(report)["orders.orders"]
    assert orders["in_flight_ranges"], orders
    changed = [k for r in orders["drift_ranges"] for k in r["changed_keys"] + r["missing_keys"] + r["extra_keys"]]
    assert changed == [350] and orders["drift_rows"] == 1, orders
    assert all(t["status"] == "ok" for name, t in by_table(report).items() if name != "orders.orders")


def test_a_rotating_checksum_covers_every_chunk_once_in_n_runs(seeded: str, dlt_env: dict[str, str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--rotation 3`: each run compares the checksums of a third of the chunks (counts: all of them); the three
    phases together compare every chunk exactly once, so a changed value (same counts) is found by one of them."""
    tamper(dlt_env["DESTINATION__DUCKDB__CREDENTIALS"],
           f"UPDATE {DATASET}.orders__orders SET status = status || '!' WHERE id = 777")
    found, checked = [], 0
    for phase in range(3):
        code, report = verify(capsys, "--checksum", "--chunk-rows", "100", "--tables", "orders.orders",
                              "--rotation", "3", "--rotation-phase", str(phase))
        orders = by_table(report)["orders.orders"]
        checked += orders["checksummed_chunks"]
        assert orders["source_checksum"] is None  # a slice's totals are not the table's
        if code == ExitCode.DRIFT_FOUND:
            found.append((phase, drift_keys(orders, "changed")))
        else:
            assert code == ExitCode.SUCCESS and orders["status"] == "ok"
    assert checked == orders["chunks"] == 12
    assert len(found) == 1 and found[0][1] == [777], found


def test_repair_makes_the_destination_exact_while_the_application_writes(
        dlt_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Drift of every kind (a changed value, a NULLed text column, a lost row, a phantom row, a duplicate copy in a
    keyless table) while the application keeps writing: `verify --checksum --repair` reads back only the drifting
    ranges (the keyless table whole, and says why), and after the next scheduled sync the replica is exact."""
    import threading

    dsn = dlt_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn, customers=300, orders=1_200)
    execute(dsn, "CREATE TABLE orders.audit (note text, n int)",
            "INSERT INTO orders.audit SELECT 'note ' || (g % 7), g % 3 FROM generate_series(1, 60) g")
    load(tmp_path)
    duck = dlt_env["DESTINATION__DUCKDB__CREDENTIALS"]
    tamper(duck,
           f"UPDATE {DATASET}.orders__orders SET total = total + 1000 WHERE id = 640",  # changed value
           f"UPDATE {DATASET}.customers__customers SET full_name = NULL WHERE id BETWEEN 50 AND 52",  # NULLed
           f"DELETE FROM {DATASET}.orders__orders WHERE id = 900",  # lost row
           f"INSERT INTO {DATASET}.orders__orders SELECT * REPLACE (90000 AS id) FROM {DATASET}.orders__orders "
           "WHERE id = 1",  # phantom row
           f"INSERT INTO {DATASET}.orders__audit SELECT * FROM {DATASET}.orders__audit LIMIT 1")  # keyless copy

    stop = threading.Event()

    def application() -> None:  # writes all along, to rows the drift is not in
        n = 0
        while not stop.is_set():
            n += 1
            execute(dsn, f"UPDATE orders.orders SET total = total + 1, updated_at = now() WHERE id = {100 + n % 50}",
                    "INSERT INTO orders.audit VALUES ('live', 1)")
            stop.wait(0.05)

    writer = threading.Thread(target=application)
    writer.start()
    # it hung for 300 s in make test twice (the repair starved its own pool: see the test after this one); if it ever
    # hangs again, every thread's stack says where
    stacks = (tmp_path / "stacks.txt").open("w+")
    faulthandler.dump_traceback_later(120, file=stacks)
    try:
        code = cli.main(["--json-logs", "verify", "--json", "--checksum", "--chunk-rows", "100", "--narrow-rows", "10",
                         "--max-ranges", "50", "--repair"])
    finally:
        faulthandler.cancel_dump_traceback_later()
        stop.set()
        writer.join()
    captured = capsys.readouterr()
    stacks.seek(0)
    assert captured.out, f"verify printed no report (exit {code}):\n{captured.err[-4000:]}\n{stacks.read()[-6000:]}"
    report = json.loads(captured.out)
    emitted = [json.loads(line) for line in captured.err.splitlines() if '"CloudWatchMetrics"' in line]
    [found] = [e for e in emitted if "Table" not in e and "DriftRows" in e]  # what the scheduled run reports
    assert found["DriftRows"] >= 7 and found["DriftRanges"] >= 4, found
    repairs = {r["table"]: r for r in report["repairs"]}
    assert set(repairs) >= {"orders.orders", "customers.customers", "orders.audit"}, repairs
    orders = repairs["orders.orders"]
    assert orders["action"] == "ranges" and orders["rows_deleted"] == 1, orders  # the phantom
    assert orders["rows_read"] < 100, orders  # the ranges, not the table
    assert repairs["customers.customers"]["action"] == "ranges"
    assert repairs["orders.audit"]["action"] == "table" and "keyless" in repairs["orders.audit"]["reason"]

    load(tmp_path)  # the next scheduled sync takes what the application wrote meanwhile
    code, report = verify(capsys, "--checksum", "--chunk-rows", "100")
    assert code == ExitCode.SUCCESS, [t for t in report["tables"] if t["status"] != "ok"]


def test_a_repair_of_more_ranges_than_the_pool_has_connections_does_not_hang(
        seeded: str, dlt_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Twenty drifting ranges of one table and one worker (a pool of two connections): each range's COPY keeps a
    connection until dlt resumes it. With every range in one package, dlt's extract threads all waited for a
    connection while the holders waited for a thread, until the pool's timeout (300 s; 10 s here) failed the repair.
    The repair now loads `workers` ranges per package, as a chunked snapshot does."""
    import sources.postgres.limits

    monkeypatch.setattr(sources.postgres.limits, "POOL_TIMEOUT_SECONDS", 10)
    ids = [50 * k + 7 for k in range(20)]
    tamper(dlt_env["DESTINATION__DUCKDB__CREDENTIALS"],
           f"UPDATE {DATASET}.orders__orders SET total = total + 1000 WHERE id IN ({', '.join(map(str, ids))})")
    code, report = verify(capsys, "--checksum", "--chunk-rows", "100", "--narrow-rows", "10", "--max-ranges", "50",
                          "--repair")
    assert code == ExitCode.SUCCESS, report  # the repaired tables verified again
    [orders] = [r for r in report["repairs"] if r["table"] == "orders.orders"]
    assert orders["action"] == "ranges" and len(orders["ranges"]) >= 12, orders  # more ranges than connections
    code, report = verify(capsys, "--checksum", "--chunk-rows", "100")
    assert code == ExitCode.SUCCESS, [t for t in report["tables"] if t["status"] != "ok"]


def test_a_source_of_more_chunks_than_its_pool_serves_is_refused_before_it_reads(dlt_env: dict[str, str]) -> None:
    """The hang above, for any caller: `postgres_replica(chunks=...)` refuses more chunks than `workers` at once,
    naming the setting, instead of starving its own pool for five minutes."""
    from sources.postgres import postgres_replica
    from sources.postgres.chunking import Chunk

    two = [Chunk("orders.orders", index, "key", "id", 100 * index, 100 * index + 100) for index in range(2)]
    with pytest.raises(Exception, match=r"2 chunks in one source.*serve 1 readers.*snapshot\.workers") as raised:
        postgres_replica(schemas=["orders"], only_tables=["orders.orders"], chunks={"orders__orders": two})
    assert "2 chunks in one source" in str(raised.value)


def test_verify_paces_its_source_reads_like_a_snapshot(seeded: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The chunked snapshot's guard holds the checksums back too: with other sessions busy on the source, each chunk
    waits (here at most 1 s) and says why, and the answer is the same."""
    import contextlib
    import threading

    import psycopg2
    import psycopg2.errors

    monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_ACTIVE_SESSIONS_ABOVE", "1")
    monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__MAX_PAUSE_SECONDS", "1")
    # the sessions guard is under test: on a busy test machine the CPU probe's reason would come first
    monkeypatch.setenv("SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE", "0")
    busy = [psycopg2.connect(seeded) for _ in range(3)]

    def sleep(conn: Any) -> None:
        with contextlib.suppress(psycopg2.errors.QueryCanceled):  # the test cancels it when done
            conn.cursor().execute("SELECT pg_sleep(8)")

    sleepers = [threading.Thread(target=sleep, args=(c,)) for c in busy]
    for thread in sleepers:
        thread.start()
    try:
        code = cli.main(["--json-logs", "verify", "--json", "--checksum", "--chunk-rows", "400",
                         "--tables", "orders.orders"])
    finally:
        for conn in busy:
            conn.cancel()
        for thread in sleepers:
            thread.join()
        for conn in busy:
            conn.close()
    captured = capsys.readouterr()
    assert code == ExitCode.SUCCESS, captured.out[-2000:]
    assert "source still busy" in captured.err and "active sessions" in captured.err, captured.err[-2000:]
