"""The stand-ins a race scenario starts besides PostgreSQL, and the outages it inflicts on them.

- `S3Landing`: moto's S3 server (`local.moto_s3.LocalS3`) behind a TCP proxy that can be paused
  (`local.tcp_proxy.TcpProxy`), the bucket of `land-merge`'s S3 variant. An S3 outage pauses the proxy (new
  connections refused, open ones cut) and resumes it: moto keeps its data in memory and would lose every landed
  batch if the server itself were restarted, so the outage is a network partition, as in
  tests/cdc/test_land_merge_follow.py::test_s3_outage_stops_landing_cleanly_then_it_catches_up.
- `FakeSnowflakeWarehouse`: the Snowflake path of tests/snowflake/test_snapshot_helpers.py, set up the same way:
  fakesnow's HTTP server in this process (`local.fakesnow_adapter.fake_snowflake_server`, DuckDB in memory behind
  it), the S3 archive stage on moto, `snowflake_env` and `bootstrap()` of tests/snowflake/conftest.py. Several
  `aurora-sync` processes can load it at once (snapshot helper tasks need that); they run through
  `python -m local.fakesnow_client` (one statement per request, as fakesnow needs). The comparator reads it through
  the real Snowflake connector, as those tests do (`SnowflakeReader`).
- `DuckDBLockHolder`: a warehouse outage for the DuckDB destination: another process opens the replica read-write
  and sleeps, so DuckDB's file lock keeps every `aurora-sync` process out until it lets go.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# --- S3 (land-merge) --------------------------------------------------------------------------------------------


class S3Landing:
    """A moto bucket reached through a pausable proxy; `env()` is what the sync's tasks get."""

    def __init__(self) -> None:
        from local.moto_s3 import LocalS3
        from local.tcp_proxy import TcpProxy

        self.s3 = LocalS3().start()
        try:
            self.bucket_url = self.s3.create_bucket(f"race-landing-{uuid.uuid4().hex[:10]}")
            self.proxy = TcpProxy(self.s3.port).resume()
        except Exception:
            self.s3.stop()
            raise
        self.paused = False

    def env(self) -> dict[str, str]:
        return {"DESTINATION__FILESYSTEM__BUCKET_URL": self.bucket_url, **self.s3.dlt_env(),
                "DESTINATION__FILESYSTEM__CREDENTIALS__ENDPOINT_URL": self.proxy.url}

    def pause(self) -> None:
        self.proxy.pause()
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.proxy.resume()
            self.paused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proxy.pause()
        self.s3.stop()


# --- DuckDB warehouse outage ------------------------------------------------------------------------------------

_HOLDER = """
import sys, time, duckdb
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except Exception as exc:  # another process has it open right now: try again
        if time.monotonic() > deadline:
            print("gave up: " + str(exc)[:300], flush=True)
            sys.exit(3)
        time.sleep(0.05)
con.execute("SELECT 1").fetchall()
print("locked", flush=True)
time.sleep(3600)
"""


class DuckDBLockHolder:
    """Opens the DuckDB file read-write in another process (DuckDB takes an exclusive file lock), holds it until
    `release()`. `acquired` says whether (and after how long) it got the lock: the sync may hold the file itself
    for a moment, so the holder keeps trying for `acquire_timeout` seconds."""

    def __init__(self, path: str, log: Path, acquire_timeout: float = 20.0) -> None:
        python = Path(sys.executable)
        self.log_path = log
        self.started = time.monotonic()
        self.acquired_after: float | None = None
        self._log = log.open("w")
        self.process = subprocess.Popen([str(python), "-c", _HOLDER, path, str(acquire_timeout)],
                                        stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
                                        text=True, start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()  # "locked", or "gave up: ..." (or EOF if it crashed)
        self.answer = line or f"exited {self.process.poll()}"
        if line == "locked":
            self.acquired_after = round(time.monotonic() - self.started, 2)

    @property
    def acquired(self) -> bool:
        return self.acquired_after is not None

    def release(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        self._log.close()


# --- fakesnow (snapshot helpers) ---------------------------------------------------------------------------------


class FakeSnowflakeWarehouse:
    """fakesnow's HTTP server (in this process), S3 on moto, the objects `snowflake-bootstrap` creates.

    `env()` is the destination part of every task's environment (tests/snowflake/test_snapshot_helpers.py's
    `shared` fixture); `command()` the argv prefix of an `aurora-sync` process that loads it."""

    def __init__(self) -> None:
        from local.fakesnow_adapter import fake_snowflake_server
        from local.moto_s3 import LocalS3
        from tests.snowflake.conftest import Bucket, make_key_pair

        self._stack = contextlib.ExitStack()
        try:
            self.s3 = LocalS3().start()
            self._stack.callback(self.s3.stop)
            name = f"race-{uuid.uuid4().hex[:12]}"
            self.bucket = Bucket(name, self.s3.create_bucket(name), self.s3.create_kms_key())
            self.key_pair = make_key_pair()
            self.fake = self._stack.enter_context(fake_snowflake_server(self.s3.s3fs()))
        except Exception:
            self._stack.close()
            raise

    @property
    def endpoint(self) -> str:
        return f"host={self.fake.host}&port={self.fake.port}&protocol={self.fake.protocol}"

    def env(self) -> dict[str, str]:
        from tests.snowflake.conftest import DATABASE, snowflake_env

        return {
            **snowflake_env(self.s3, self.bucket, self.key_pair),
            "DESTINATION__SNOWFLAKE__CREDENTIALS": (
                f"snowflake://AURORA_SYNC_LOADER@fakeaccount/{DATABASE}?warehouse=AURORA_SYNC_LOAD_WH"
                f"&role=AURORA_SYNC_LOADER&login_timeout=10&network_timeout=60&{self.endpoint}"),
            "SNOWFLAKE_BOOTSTRAP__CREDENTIALS": f"snowflake://admin:unused-by-the-fake@fakeaccount/?{self.endpoint}",
            "DATA_WRITER__FILE_MAX_BYTES": "100000000", "DATA_WRITER__BUFFER_MAX_ITEMS": "100000",
            # `python -m local.fakesnow_client` from the scenario's work directory
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
        }

    @staticmethod
    def command(python: str) -> list[str]:
        return [python, "-m", "local.fakesnow_client"]

    def connect(self) -> Any:
        """A Snowflake connection for reading, as tests/snowflake/test_snapshot_helpers.py's `destination_rows`."""
        import snowflake.connector

        from tests.snowflake.conftest import DATABASE

        return snowflake.connector.connect(user="analyst", password="unused-by-the-fake", account="fakeaccount",
                                           database=DATABASE, network_timeout=60, **self.fake.connect_params())

    def reader(self) -> SnowflakeReader:
        return SnowflakeReader(self.connect())

    def close(self) -> None:
        self._stack.close()


class SnowflakeReader:
    """The comparator's view of a (fake) Snowflake: `execute(sql, params).fetchall()` as on a DuckDB connection
    (`?` placeholders), identifiers spelled as dlt's Snowflake destination spells them (upper case)."""

    case_fold = staticmethod(str.upper)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql.replace("?", "%s"), tuple(params) or None)
        return cur

    def close(self) -> None:
        self.conn.close()


def bootstrap_main() -> int:
    """`python -m tests.race.stand_ins bootstrap`: tests/snowflake/conftest.py's `bootstrap()` (database, schema,
    file format, stage) in a process of its own, talking to the server as every task does."""
    from local.fakesnow_adapter import client_capabilities
    from tests.snowflake.conftest import bootstrap

    with client_capabilities():
        return bootstrap()


if __name__ == "__main__":
    if sys.argv[1:] == ["bootstrap"]:
        sys.exit(bootstrap_main())
    print(json.dumps({"usage": "python -m tests.race.stand_ins bootstrap"}))
    sys.exit(2)
