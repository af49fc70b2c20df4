"""The disaster-recovery drill: after a CDC workload with updates, deletes, edge values and a schema change, the
S3 archive alone rebuilds every table as of T, and a `pg_dump` of the rebuilt database equals a `pg_dump` of the
source taken at T, value for value. Runs as production does: CDC into Snowflake (fakesnow) through the S3 stage
(moto), with the demo's data (`make demo`: 5,000 customers, 30,000 orders). Prints the measured RTO."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from local.fakesnow_adapter import FakeSnowflake
from local.postgres import LocalPostgres, find_bindir
from local.seed import seed
from runner.exit_codes import ExitCode
from tests.conftest import execute, fresh_database

from .conftest import Bucket, bootstrap
from .test_restore import aurora_sync

pytestmark = [pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning"), pytest.mark.slow]
COPY_HEADER = re.compile(r"^COPY (?P<table>[\w.\"]+) \((?P<columns>.*)\) FROM stdin;$")


def pg_dump_rows(dsn: str) -> dict[str, Counter[tuple[tuple[str, str], ...]]]:
    """`pg_dump --data-only` of the replicated schemas, as rows of (column, text) pairs per table.

    The comparison is on the text PostgreSQL prints for every value, independent of row order (physical order
    differs after a rebuild) and of column order (a restored table lists added columns where the archive has them).
    """
    dump = subprocess.run([str(find_bindir() / "pg_dump"), "--data-only", "--schema=customers", "--schema=orders",
                           "--no-owner", dsn], capture_output=True, text=True, check=True).stdout
    tables: dict[str, Counter[tuple[tuple[str, str], ...]]] = {}
    current: tuple[str, list[str]] | None = None
    for line in dump.splitlines():
        if current is None:
            match = COPY_HEADER.match(line)
            if match:
                current = (match["table"], [c.strip().strip('"') for c in match["columns"].split(",")])
                tables[current[0]] = Counter()
        elif line == "\\.":
            current = None
        else:
            tables[current[0]][tuple(sorted(zip(current[1], line.split("\t"), strict=True)))] += 1
    return tables


def test_restore_all_as_of_t_equals_a_pg_dump_of_the_source_at_t(
    sf_env: dict[str, str], fake_sf: FakeSnowflake, bucket: Bucket, pg: LocalPostgres, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = sf_env["SOURCES__POSTGRES__CREDENTIALS"]
    seed(dsn)  # the demo's data
    assert bootstrap() == 0
    assert aurora_sync("setup") == ExitCode.SUCCESS  # publication, slot and the initial copy of every table

    # updates, deletes (children first: foreign keys) and edge values, streamed as CDC
    execute(dsn,
            "UPDATE orders.orders SET status = 'cancelled', total = 0 WHERE id % 97 = 0",
            "DELETE FROM orders.order_items WHERE order_id % 101 = 0",
            "DELETE FROM orders.orders WHERE id % 101 = 0",
            "INSERT INTO customers.customers (id, email, full_name, country, preferences, created_at) VALUES "
            "(900001, 'o''brien+tab\tand\\backslash@example.com', E'line\\nbreak Zoë 李 🚀', 'IE', "
            "'{\"n\": 1e-7, \"big\": 12345678901234567890, \"s\": \"\\\\u0000-free\", \"empty\": {}}', "
            "'0001-01-01 00:00:00+00'), "
            "(900002, 'future@example.com', '', NULL, 'null', '9999-12-31 23:59:59.999999+00')",
            "INSERT INTO orders.order_items (order_id, line_no, sku, quantity, unit_price) VALUES "
            "(1, 99, 'SKU-MAX', 2147483647, 99999999.99), (1, 98, 'SKU-NEG', -2147483648, -0.01)",
            "UPDATE customers.addresses SET postcode = NULL, city = 'Zürich' WHERE id % 7 = 0")
    assert aurora_sync("run", "--mode", "cdc") == ExitCode.SUCCESS

    # a schema change: a new column, filled for some rows; more deletes in the same stream
    execute(dsn,
            "ALTER TABLE customers.customers ADD COLUMN loyalty_tier text",
            "UPDATE customers.customers SET loyalty_tier = 'gold' WHERE id % 50 = 0",
            "DELETE FROM customers.addresses WHERE id % 13 = 0")
    assert aurora_sync("run", "--mode", "cdc") == ExitCode.SUCCESS

    time.sleep(1.1)
    as_of = time.time()
    at_t = pg_dump_rows(dsn)
    time.sleep(1.1)

    # after T: changes that the rebuild as of T must not contain
    execute(dsn, "UPDATE orders.orders SET total = total + 1 WHERE id <= 100",
            "DELETE FROM customers.addresses WHERE id <= 50",
            "UPDATE customers.customers SET loyalty_tier = 'platinum' WHERE id = 50")
    assert aurora_sync("run", "--mode", "cdc") == ExitCode.SUCCESS
    assert pg_dump_rows(dsn) != at_t

    # the drill: a new, empty database; Aurora and Snowflake are not needed for it
    with fresh_database(pg, "dr") as target:
        capsys.readouterr()
        started = time.monotonic()
        assert aurora_sync("restore", "--all", "--as-of", str(as_of), "--to", target) == ExitCode.SUCCESS
        rto = time.monotonic() - started
        restored = pg_dump_rows(target)

        assert sorted(restored) == sorted(at_t) == ["customers.addresses", "customers.customers",
                                                    "orders.order_items", "orders.orders"]
        for table, rows in at_t.items():
            missing, extra = rows - restored[table], restored[table] - rows
            assert not missing and not extra, (table, list(missing.items())[:3], list(extra.items())[:3])
        total = sum(sum(rows.values()) for rows in at_t.values())
        with capsys.disabled():
            print(f"\nDR drill: restore --all of {len(at_t)} tables, {total} rows, from the S3 archive into "
                  f"PostgreSQL in {rto:.1f} s (RTO)")
        assert total > 100_000

        # an existing target is never overwritten by accident; --if-exists replace re-runs the drill
        assert aurora_sync("restore", "--all", "--as-of", str(as_of), "--to", target) == ExitCode.CONFIG_ERROR
        assert "already exists in the target" in capsys.readouterr().err
        assert aurora_sync("restore", "--all", "--to", target, "--if-exists", "replace") == ExitCode.SUCCESS
        assert pg_dump_rows(target) == pg_dump_rows(dsn)  # without --as-of: the latest state

        # before the first load nothing existed in the replica: every table is skipped, and said so
        capsys.readouterr()
        assert aurora_sync("--json-logs", "restore", "--all", "--as-of", "2000-01-01T00:00:00", "--to", target,
                           "--if-exists", "replace") == ExitCode.SUCCESS
        done = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"restore succeeded"' in line]
        assert done[-1]["tables"] == 0 and len(done[-1]["skipped"]) == 4
