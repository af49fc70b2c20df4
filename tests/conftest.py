"""Shared fixtures: one real PostgreSQL cluster per test session, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from local.postgres import LocalPostgres, PostgresNotAvailable, execute  # noqa: F401 - re-exported for tests
from runner.fork_server import ENV as FORK_SERVER_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The source guard's CPU probe (`sources.postgres.chunking`, on by default) pauses every chunk while the source has no
# idle core, up to 300 s each. Every test cluster shares this machine with the whole suite, which keeps both cores
# busy: a 13 s test took 115 s under load, waiting on the guard. Tests read as on a quiet source; the guard's own
# tests (tests/test_chunked_snapshot.py, alone on the machine) turn it on. Set for this process and its children.
QUIET_SOURCE = {"SOURCES__POSTGRES__SNAPSHOT__PAUSE_WHEN_CPU_PROBE_SLOWDOWN_ABOVE": "0"}


# Each test process (each xdist worker) forks its `aurora-sync` subprocesses from one server that has imported
# everything (runner.fork_server): the imports cost ~1 s of CPU per process, and the suite starts hundreds of them
# on a CPU-bound machine. AURORA_SYNC_TEST_FORK_SERVER=0 starts every one cold.
_FORK_SERVER: dict[str, Any] = {}
# imported before the server forks, beside the commands: the Snowflake tests' `python -m local.fakesnow_client`, the
# Snowflake destination (seconds of imports each) and s3fs (dlt imports it for every S3 bucket: landing, chunk claims)
FORK_SERVER_PRELOAD = ("local.fakesnow_client", "snowflake.connector", "dlt.destinations.impl.snowflake.snowflake",
                       "s3fs")


def pytest_configure(config: pytest.Config) -> None:
    for key, value in QUIET_SOURCE.items():
        os.environ.setdefault(key, value)
    xdist_controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if os.environ.get("AURORA_SYNC_TEST_FORK_SERVER", "1") != "0" and not xdist_controller:
        directory = tempfile.mkdtemp(prefix="afs-")
        path = os.path.join(directory, "socket")
        # stdin is how it knows this process ended: it stops when the pipe closes
        _FORK_SERVER.update(directory=directory, process=subprocess.Popen(
            [sys.executable, "-m", "runner.fork_server", path, *FORK_SERVER_PRELOAD], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, cwd=PROJECT_ROOT))
        os.environ[FORK_SERVER_ENV] = path  # until it listens, the script runs the command itself


def pytest_unconfigure(config: pytest.Config) -> None:
    process = _FORK_SERVER.pop("process", None)
    if process is not None:
        os.environ.pop(FORK_SERVER_ENV, None)
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(_FORK_SERVER.pop("directory"), ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    try:
        server = LocalPostgres().start()
    except PostgresNotAvailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.cleanup()


@contextmanager
def fresh_database(pg: LocalPostgres, prefix: str = "t") -> Iterator[str]:
    """A new, empty database on the session cluster, dropped afterwards; yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(pg.url())
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg.url(database=name)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture()
def database(pg: LocalPostgres) -> Iterator[str]:
    """A fresh, empty database for the test; yields its DSN."""
    with fresh_database(pg) as dsn:
        yield dsn


@pytest.fixture()
def dlt_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database: str) -> dict[str, str]:
    """Point dlt at the test database and a DuckDB file in tmp_path, via env vars as users would."""
    env = {
        "SOURCES__POSTGRES__CREDENTIALS": database,
        "DESTINATION__DUCKDB__CREDENTIALS": str(tmp_path / "replica.duckdb"),
        "DLT_DATA_DIR": str(tmp_path / "dlt"),
        "RUNTIME__LOG_LEVEL": os.environ.get("TEST_DLT_LOG_LEVEL", "WARNING"),
        # rows that fail conversion must not land in the repository's ./dead_letter
        "SOURCES__POSTGRES__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
        "RUNNER__DEAD_LETTER_URL": str(tmp_path / "dead_letter"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(PROJECT_ROOT)
    return env


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    prefixes = ("SOURCES__", "DESTINATION__", "CUSTOMERS_ORDERS__")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(QUIET_SOURCE)
    env.update(extra)
    return env


# Long tests first, so that the two xdist workers of `make test` finish together instead of one running a 2-minute
# scenario alone at the end (longest-processing-time-first). Whole modules move, in their own order, so that
# module-scoped fixtures stay set up once per worker. The weights are rough seconds; `--durations` shows the real ones.
LONG_MARKS = {"race": 90.0, "slow": 45.0}
DEFAULT_SECONDS = 8.0


def _estimated_seconds(item: pytest.Item) -> float:
    return max((s for mark, s in LONG_MARKS.items() if item.get_closest_marker(mark)), default=DEFAULT_SECONDS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    weights: dict[str, float] = {}
    for item in items:
        weights[item.module.__name__] = weights.get(item.module.__name__, 0.0) + _estimated_seconds(item)
    items.sort(key=lambda item: -weights[item.module.__name__])  # stable: a module's tests keep their order
