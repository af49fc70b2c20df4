"""Several tasks share one table's chunked snapshot: the run (the coordinator) and `aurora-sync snapshot-helper`
processes, all loading fakesnow's HTTP server through the S3 stage, as ECS tasks would load Snowflake (through
`local.fakesnow_client`, which makes dlt send one statement per request, as fakesnow needs). Every chunk
is read once, each helper does its part, a helper killed with kill -9 costs nothing but its chunk, and the table
ends exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.fakesnow_adapter import FakeSnowflake, fake_snowflake_server
from local.moto_s3 import LocalS3
from runner.exit_codes import ExitCode
from tests.conftest import PROJECT_ROOT, execute, subprocess_env
from tests.helpers import pg_rows
from tests.snowflake.conftest import DATABASE, Bucket, KeyPair, bootstrap, snowflake_env

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")
ROWS = 120_000  # 15 chunks of 1 MiB


class Task:
    """One `aurora-sync` process, its JSON log lines collected as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "local.fakesnow_client", "--json-logs", *args],
                                        env=subprocess_env(env),
                                        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def wait(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def named(self, message: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("message") == message]

    def chunks_read(self) -> list[int]:
        return [e["chunk"] for e in self.named("chunk read") if e.get("table") == "big__orders"]

    def log(self) -> str:
        return "".join(self.lines)[-4000:]


@pytest.fixture()
def shared(s3: LocalS3, bucket: Bucket, key_pair: KeyPair, tmp_path: Path,
           database: str) -> Iterator[tuple[dict[str, str], FakeSnowflake]]:
    execute(database, "CREATE SCHEMA big",
            "CREATE TABLE big.orders (id bigint PRIMARY KEY, note text, total numeric(12, 2), "
            "updated_at timestamptz NOT NULL DEFAULT now())",
            f"INSERT INTO big.orders SELECT g, repeat('n', 60) || g, g * 0.25, now() - interval '1 day' "
            f"FROM generate_series(1, {ROWS}) g", "ANALYZE big.orders")
    with fake_snowflake_server(s3.s3fs()) as fake:
        endpoint = f"host={fake.host}&port={fake.port}&protocol={fake.protocol}"
        env = {**snowflake_env(s3, bucket, key_pair),
               "SOURCES__POSTGRES__CREDENTIALS": database, "SOURCES__POSTGRES__SCHEMAS": '["big"]',
               "SOURCES__POSTGRES__SNAPSHOT__CHUNK_BYTES": str(1 << 20),
               "SOURCES__POSTGRES__SNAPSHOT__WORKERS": "1",
               # about a second per chunk, so the coordinator alone would take 15 s and the helpers get work
               "SOURCES__POSTGRES__SNAPSHOT__MAX_ROWS_PER_SECOND": "8000",
               "SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE": "0",
               "SOURCES__POSTGRES__SNAPSHOT__HELPER_TASKS": "2",
               "DESTINATION__SNOWFLAKE__CREDENTIALS": (
                   f"snowflake://AURORA_SYNC_LOADER@fakeaccount/{DATABASE}?warehouse=AURORA_SYNC_LOAD_WH"
                   f"&role=AURORA_SYNC_LOADER&login_timeout=10&network_timeout=60&{endpoint}"),
               "SNOWFLAKE_BOOTSTRAP__CREDENTIALS": f"snowflake://admin:unused-by-the-fake@fakeaccount/?{endpoint}",
               "DATA_WRITER__FILE_MAX_BYTES": "100000000", "DATA_WRITER__BUFFER_MAX_ITEMS": "100000",
               "DLT_DATA_DIR": str(tmp_path / "dlt"), "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
               "RUNNER__MAX_ATTEMPTS": "1"}
        with pytest.MonkeyPatch.context() as mp:
            for key, value in subprocess_env(env).items():
                mp.setenv(key, value)
            assert bootstrap() == 0
        yield env, fake


def destination_rows(fake: FakeSnowflake) -> list[tuple[Any, ...]]:
    import snowflake.connector

    conn = snowflake.connector.connect(user="analyst", password="unused-by-the-fake", account="fakeaccount",
                                       database=DATABASE, network_timeout=60, **fake.connect_params())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, note, total FROM CUSTOMERS_ORDERS.BIG__ORDERS ORDER BY id")
            return [(int(i), n, float(t)) for i, n, t in cur.fetchall()]
    finally:
        conn.close()


def source_rows(dsn: str) -> list[tuple[Any, ...]]:
    return [(int(i), n, float(t)) for i, n, t in pg_rows(dsn, "SELECT id, note, total FROM big.orders ORDER BY id")]


def test_helpers_share_the_chunks_and_each_chunk_is_read_once(
        shared: tuple[dict[str, str], FakeSnowflake]) -> None:
    env, fake = shared
    coordinator = Task(env, "run", "--mode", "snapshot", "--tables", "big.orders")
    helpers = [Task(env, "snapshot-helper", "--idle-seconds", "60") for _ in range(2)]
    assert coordinator.wait() == ExitCode.SUCCESS, coordinator.log()
    for helper in helpers:
        assert helper.wait() == ExitCode.SUCCESS, helper.log()

    total = coordinator.named("snapshot finished")[0]["chunks"]
    assert total >= 10
    read = coordinator.chunks_read() + [c for h in helpers for c in h.chunks_read()]
    assert sorted(read) == list(range(total))  # every chunk once, whoever read it
    for helper in helpers:  # each helper did its part, and said so
        assert helper.chunks_read(), helper.log()
        assert helper.named("snapshot helper done")[0]["chunks"] == len(helper.chunks_read())
    assert len(coordinator.chunks_read()) < total
    assert destination_rows(fake) == source_rows(env["SOURCES__POSTGRES__CREDENTIALS"])


def test_a_helper_killed_mid_snapshot_costs_only_its_chunk(shared: tuple[dict[str, str], FakeSnowflake]) -> None:
    env, fake = shared
    coordinator = Task(env, "run", "--mode", "snapshot", "--tables", "big.orders")
    victim = Task(env, "snapshot-helper", "--idle-seconds", "60")
    survivor = Task(env, "snapshot-helper", "--idle-seconds", "60")
    # kill -9 the victim while it reads its second chunk: its claim goes with its session
    deadline = threading.Event()
    while not deadline.wait(0.05) and len(victim.chunks_read()) < 1 and victim.process.poll() is None:
        pass
    os.kill(victim.process.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert coordinator.wait() == ExitCode.SUCCESS, coordinator.log()
    assert survivor.wait() == ExitCode.SUCCESS, survivor.log()

    total = coordinator.named("snapshot finished")[0]["chunks"]
    loaded_by_victim = {c for e in victim.named("helper chunks loaded") for c in e["chunks"]}
    read_after = coordinator.chunks_read() + survivor.chunks_read()
    assert set(read_after) | loaded_by_victim == set(range(total))
    assert len(read_after) == len(set(read_after))  # no chunk read twice by those that lived
    assert destination_rows(fake) == source_rows(env["SOURCES__POSTGRES__CREDENTIALS"])
