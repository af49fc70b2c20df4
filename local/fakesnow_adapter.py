"""Bridges the gaps between dlt's Snowflake destination and fakesnow 0.12.1, for tests and the local demo only.

Production never imports this module: `sources/`, `pipelines/` and `runner/` talk to Snowflake through dlt and
the real `snowflake-connector-python`. Every patch below is undone when the context manager exits, and each
one names the fakesnow (or dlt) behaviour it works around, so that it can be dropped when fakesnow catches up:

1. dlt joins several statements into one call; fakesnow parses one statement per call.
   → dlt's Snowflake capabilities get `supports_multiple_statements = False`.
2. dlt writes `FILE_FORMAT = (TYPE = 'PARQUET', BINARY_AS_TEXT = FALSE, ...)` with commas and
   `MATCH_BY_COLUMN_NAME='CASE_INSENSITIVE'` quoted; fakesnow accepts neither (Snowflake accepts both).
   → the COPY text is rewritten to the equivalent comma-free, unquoted form before fakesnow parses it.
3. fakesnow loads a JSON COPY only into one VARIANT column, but dlt always writes its state table as jsonl
   and loads it with MATCH_BY_COLUMN_NAME.
   → a JSON COPY with MATCH_BY_COLUMN_NAME is run as `INSERT ... BY NAME SELECT ... FROM read_json(...)`.
4. fakesnow's DuckDB would read `s3://` through the `httpfs` extension, which it cannot download offline.
   → an fsspec S3 filesystem pointing at the moto endpoint is registered on fakesnow's DuckDB connections.
5. fakesnow creates the connection's schema on connect, but dlt passes it quoted and creates it itself.
   → `create_schema_on_connect=False`, for `fakesnow.patch` and for the HTTP server's shared instance.
6. Snowflake makes a second transaction that updates a row wait until the first commits (the fencing check,
   `pipelines.fence`, updates its fence row first for exactly that); fakesnow's DuckDB instead fails one of them
   with "Conflict on update" (over HTTP: a 500 the connector retries for minutes), so parallel merges failed or
   hung at random.
   → explicit transactions (autocommit off) take turns, one at a time, as they would on the fence row. A session
   that dies inside its transaction (kill -9; fakesnow never ends it, and its session delete does not close it)
   would hold the turn for ever: on the HTTP server a holder idle for `DEAD_AFTER_S` is rolled back and its next
   statement fails, as Snowflake aborts a detached transaction once it has blocked another for 5 idle minutes
   (docs/operations.md; 20 s here).

7. Snowflake answers a statement that runs long (one waiting for a lock, say) with "query in progress" (code
   333333) and a result URL the connector polls; fakesnow's HTTP server holds the request until the statement
   ends, so past the connector's 60 s read timeout the connector gave up and re-sent it. The re-sent statement
   ran a second time beside the first (a second `ALTER SESSION SET autocommit=False` fails fakesnow's assert).
   → `fake_snowflake_server` answers a statement still running after `IN_PROGRESS_AFTER_S` "in progress" and
   serves its result at `/queries/<id>/result`, as Snowflake does.

Not bridged: fakesnow's handling of dlt's quoted PUT target (`'@"SCHEMA"."%TABLE"/...'`). Every load here goes
through the S3 stage, so dlt never PUTs; a test that did would fail loudly rather than pass on a patch.

Patch 1 is the only one on the client's side: `python -m local.fakesnow_client <aurora-sync arguments>` applies it
(`client_capabilities`) and runs the CLI, for tests whose `aurora-sync` processes load the HTTP server.

`fake_snowflake_server` runs fakesnow's own HTTP app (`fakesnow.server.app`) under uvicorn like
`fakesnow.server()` does, but with WARNING logs instead of one INFO line per request.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

FAKESNOW_VERSION = "0.12.1"
"""The fakesnow release these patches were written against; another one must be re-checked first."""
DEAD_AFTER_S = 20.0
"""Patch 6 on the HTTP server: a transaction idle this long belongs to a dead client (a live one sends its next
statement within seconds, even on a loaded 2-core machine)."""
IN_PROGRESS_AFTER_S = 20.0
"""Patch 7: a statement still running after this long is answered "in progress", as Snowflake answers, well
inside the connector's 60 s read timeout."""


class FakesnowVersionMismatch(RuntimeError):
    """fakesnow is not the version this adapter was written for."""


def check_version() -> str:
    """Refuse to patch another fakesnow: the gaps (and their internals) change between releases."""
    import fakesnow

    version = getattr(fakesnow, "__version__", None) or importlib.metadata.version("fakesnow")
    if version != FAKESNOW_VERSION:
        raise FakesnowVersionMismatch(
            f"local/fakesnow_adapter.py was written for fakesnow {FAKESNOW_VERSION}, found {version}: re-check "
            "each patch against the new release (or drop it when fakesnow fixed the gap) and update FAKESNOW_VERSION."
        )
    return version


# --- 2. COPY text ----------------------------------------------------------------------------------------------
_FILE_FORMAT = re.compile(r"FILE_FORMAT\s*=\s*\(([^()]*)\)", re.IGNORECASE)
_QUOTED_MATCH = re.compile(r"MATCH_BY_COLUMN_NAME\s*=\s*'(\w+)'", re.IGNORECASE)


def rewrite_copy_sql(sql: str) -> str:
    """dlt's COPY INTO, in the spelling fakesnow parses (same meaning for Snowflake)."""
    if not sql.lstrip().upper().startswith("COPY"):
        return sql
    sql = _FILE_FORMAT.sub(lambda m: "FILE_FORMAT = (" + " ".join(o.strip() for o in m.group(1).split(",")) + ")", sql)
    return _QUOTED_MATCH.sub(r"MATCH_BY_COLUMN_NAME=\1", sql)


# --- 3. JSON COPY by column name ------------------------------------------------------------------------------
def _copy_json_by_name(
    duck_conn: Any, current_database: str | None, current_schema: str | None, expr: Any, table_stages: Any,
    cparams: Any,
) -> str:
    """Snowflake's JSON COPY with MATCH_BY_COLUMN_NAME: each top-level key loads into the column of that name."""
    from fakesnow import copy_into as fs_copy
    from sqlglot import exp

    table = fs_copy._extract_table(expr.this)
    from_source = fs_copy._from_source(expr)
    source = (
        fs_copy.stage_url_from_var(from_source[1:], duck_conn, current_database, current_schema, table_stages, table)
        if from_source.startswith("@") else from_source
    )
    urls = fs_copy._source_urls(source, cparams.files) if cparams.files else fs_copy._source_glob(source, duck_conn)
    target_columns = fs_copy._get_table_columns(table, duck_conn, current_database, table.db or current_schema)
    results = []
    for url in urls:
        read = exp.func("read_json", exp.Literal.string(url), exp.EQ(
            this=exp.column("format"), expression=exp.Literal.string("newline_delimited")))
        described = duck_conn.execute(f"DESCRIBE SELECT * FROM {read.sql(dialect='duckdb')}").fetchall()
        by_upper = {str(row[0]).upper(): str(row[0]) for row in described}
        insensitive = cparams.match_by_column_name == fs_copy.MatchByColumnName.CASE_INSENSITIVE
        columns = [
            exp.alias_(exp.column(exp.to_identifier(by_upper[c] if insensitive else c, quoted=True)),
                       exp.to_identifier(c, quoted=True))
            for c in target_columns if (c in by_upper if insensitive else c in by_upper.values())
        ]
        insert = exp.Insert(this=expr.this, expression=exp.select(*columns).from_(exp.Table(this=read)), by_name=True)
        (count,) = duck_conn.execute(insert.sql(dialect="duckdb")).fetchall()[0]
        results.append((url, int(count)))
    values = ", ".join(f"('{url}', 'LOADED', {n}, {n}, 1, 0, NULL, NULL, NULL, NULL)" for url, n in results)
    sql = (
        "SELECT * FROM (VALUES " + values + ") AS t(file, status, rows_parsed, rows_loaded, error_limit, "
        "errors_seen, first_error, first_error_line, first_error_character, first_error_column_name)"
    )
    duck_conn.execute(sql)
    return sql


def register_s3(duck_conn: Any, s3_filesystem: Any) -> None:
    """(Re-)register the fsspec S3 filesystem on a DuckDB connection; DuckDB refuses a second `s3`."""
    if "s3" in duck_conn.list_filesystems():
        duck_conn.unregister_filesystem("s3")
    duck_conn.register_filesystem(s3_filesystem)


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


@dataclass
class FakeSnowflake:
    """What a test gets: every SQL text fakesnow received (to check what dlt sent), and the server's address."""

    executed: list[str] = field(default_factory=list)
    host: str | None = None
    port: int | None = None
    protocol: str | None = None
    turns: Any = None
    answered_in_progress: int = 0

    def connect_params(self) -> dict[str, Any]:
        """Extra `snowflake.connector.connect` arguments for the HTTP server (empty in-process)."""
        return {"host": self.host, "port": self.port, "protocol": self.protocol} if self.port else {}


def _one_statement_capabilities() -> tuple[Any, Any]:
    from dlt.destinations.impl.snowflake.factory import snowflake as snowflake_factory

    raw_capabilities = snowflake_factory._raw_capabilities

    def capabilities(self: Any) -> Any:
        caps = raw_capabilities(self)
        caps.supports_multiple_statements = False
        return caps

    return snowflake_factory, capabilities


@contextlib.contextmanager
def client_capabilities() -> Iterator[None]:
    """Patch 1 alone: what a process that talks to `fake_snowflake_server` over HTTP needs."""
    snowflake_factory, capabilities = _one_statement_capabilities()
    with _patched(snowflake_factory, "_raw_capabilities", capabilities):
        yield


class _TransactionTurns:
    """Patch 6: one explicit transaction at a time across fakesnow connections, as Snowflake's row lock makes the
    fenced ones. A plain `Lock`, since the HTTP server may begin and end a session's transaction on two threads."""

    WAIT_S = 300

    def __init__(self, dead_after_s: float | None) -> None:
        self._lock = threading.Lock()
        self._guard = threading.Lock()  # holder, busy and idle bookkeeping
        self._holder: Any = None
        self._busy: dict[int, int] = {}
        self._idle_since = 0.0
        self._dead_after_s = dead_after_s

    def begin(self, conn: Any) -> None:
        if self._holder is conn:
            return
        deadline = time.monotonic() + self.WAIT_S
        while not self._lock.acquire(timeout=1):
            self._abort_dead_holder()
            if time.monotonic() > deadline:
                raise RuntimeError(f"fakesnow: waited {self.WAIT_S} s for another connection's transaction to end")
        with self._guard:
            self._holder, self._idle_since = conn, time.monotonic()

    def end(self, conn: Any) -> None:
        with self._guard:
            if self._holder is conn:
                self._holder = None
                self._lock.release()

    def statement(self, conn: Any) -> contextlib.AbstractContextManager[None]:
        """Around each statement: refuse it in a transaction that was aborted, and keep the holder's idle clock."""
        @contextlib.contextmanager
        def running() -> Iterator[None]:
            with self._guard:
                if getattr(conn, "_turn_aborted", False):
                    conn._turn_aborted = False
                    import snowflake.connector

                    raise snowflake.connector.errors.ProgrammingError(
                        msg="Transaction aborted: its session was idle for too long while it held a lock",
                        errno=625, sqlstate="57014")
                self._busy[id(conn)] = self._busy.get(id(conn), 0) + 1
            try:
                yield
            finally:
                with self._guard:
                    self._busy[id(conn)] -= 1
                    if self._holder is conn:
                        self._idle_since = time.monotonic()
        return running()

    def _abort_dead_holder(self) -> None:
        if self._dead_after_s is None:
            return
        with self._guard:
            holder = self._holder
            if holder is None or self._busy.get(id(holder), 0) or \
                    time.monotonic() - self._idle_since < self._dead_after_s:
                return
            with contextlib.suppress(Exception):
                holder._duck_conn.rollback()
            holder._autocommit, holder._in_transaction, holder._turn_aborted = True, False, True
            self._holder = None
            self._lock.release()


class _ClosingSessions(dict):  # type: ignore[type-arg]
    """fakesnow's HTTP sessions; a deleted session (the client closed) ends its transaction and its turn."""

    def __init__(self, turns: _TransactionTurns) -> None:
        super().__init__()
        self._turns = turns

    def __delitem__(self, token: str) -> None:
        conn = self[token]
        super().__delitem__(token)
        with contextlib.suppress(Exception):
            conn._duck_conn.rollback()
        self._turns.end(conn)


@contextlib.contextmanager
def adapter(s3_filesystem: Any | None = None, *, dead_after_s: float | None = None) -> Iterator[FakeSnowflake]:
    """Apply patches 1-4 and 6 process-wide while the block runs; `s3_filesystem`: S3 (moto)."""
    check_version()
    import fakesnow.cursor as fs_cursor
    from fakesnow import copy_into as fs_copy
    from fakesnow.conn import FakeSnowflakeConnection
    from fakesnow.instance import FakeSnow

    snowflake_factory, capabilities = _one_statement_capabilities()
    original_execute = fs_cursor.FakeSnowflakeCursor.execute
    original_copy_into = fs_cursor.copy_into
    original_init = FakeSnow.__init__
    original_autocommit = FakeSnowflakeConnection.autocommit
    original_close = FakeSnowflakeConnection.close
    fake = FakeSnowflake()
    turns = _TransactionTurns(dead_after_s)
    fake.turns = turns

    def autocommit(self: Any, mode: bool) -> None:
        if not mode:
            turns.begin(self)
        try:
            original_autocommit(self, mode)
        finally:
            if mode:
                turns.end(self)

    def close(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            original_close(self, *args, **kwargs)
        finally:
            turns.end(self)

    def execute(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        fake.executed.append(command)
        with turns.statement(self._conn):
            return original_execute(self, rewrite_copy_sql(command), *args, **kwargs)

    def copy_into(duck_conn: Any, current_database: str | None, current_schema: str | None, expr: Any,
                  table_stages: Any, params: Any = None) -> str:
        cparams = fs_copy._params(expr, params, duck_conn=duck_conn, current_database=current_database,
                                  current_schema=current_schema)
        if isinstance(cparams.file_format, fs_copy.ReadJSON) and \
                cparams.match_by_column_name != fs_copy.MatchByColumnName.NONE:
            return _copy_json_by_name(duck_conn, current_database, current_schema, expr, table_stages, cparams)
        return original_copy_into(duck_conn, current_database, current_schema, expr, table_stages, params)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if s3_filesystem is not None:
            register_s3(self.duck_conn, s3_filesystem)

    sqlglot_logger = logging.getLogger("sqlglot")
    with contextlib.ExitStack() as stack:
        # sqlglot warns once per dlt column COMMENT it cannot transpile to DuckDB: noise, not a failure
        stack.enter_context(_patched(sqlglot_logger, "level", max(sqlglot_logger.level, logging.ERROR)))
        stack.enter_context(_patched(snowflake_factory, "_raw_capabilities", capabilities))
        stack.enter_context(_patched(fs_cursor.FakeSnowflakeCursor, "execute", execute))
        stack.enter_context(_patched(fs_cursor, "copy_into", copy_into))
        stack.enter_context(_patched(FakeSnow, "__init__", init))
        stack.enter_context(_patched(FakeSnowflakeConnection, "autocommit", autocommit))
        stack.enter_context(_patched(FakeSnowflakeConnection, "close", close))
        yield fake


@contextlib.contextmanager
def fake_snowflake(s3_filesystem: Any | None = None) -> Iterator[FakeSnowflake]:
    """In-process fakesnow (`fakesnow.patch`): `snowflake.connector.connect` returns a DuckDB-backed fake."""
    import fakesnow

    with adapter(s3_filesystem) as fake, fakesnow.patch(create_schema_on_connect=False):
        yield fake


@contextlib.contextmanager
def fake_snowflake_server(s3_filesystem: Any | None = None, port: int | None = None,
                          dead_after_s: float = DEAD_AFTER_S,
                          in_progress_after_s: float = IN_PROGRESS_AFTER_S) -> Iterator[FakeSnowflake]:
    """fakesnow's HTTP server on 127.0.0.1, for the real connector (`fake.connect_params()`: host, port, http).

    Each server gets an empty warehouse of its own: fakesnow keeps one module-wide instance for all sessions,
    which would carry one test's tables and dlt state into the next.
    """
    import uvicorn
    from fakesnow.instance import FakeSnow

    from local.postgres import free_port

    with adapter(s3_filesystem, dead_after_s=dead_after_s) as fake, contextlib.ExitStack() as stack:
        import fakesnow.server as fs_server

        shared = FakeSnow()
        stack.enter_context(_patched(fs_server, "shared_fs", shared))
        stack.enter_context(_patched(fs_server, "sessions", _ClosingSessions(fake.turns)))
        if s3_filesystem is not None:
            register_s3(shared.duck_conn, s3_filesystem)
        port = port or free_port()
        app = _answering_in_progress(fs_server, fake, in_progress_after_s)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="fakesnow-server", daemon=True)
        previous_level = fs_server.logger.level
        fs_server.logger.setLevel(logging.WARNING)
        with _patched(shared, "create_schema_on_connect", False):
            thread.start()
            try:
                deadline = time.monotonic() + 30
                while not server.started:
                    if not thread.is_alive() or time.monotonic() > deadline:
                        raise RuntimeError("fakesnow server did not start")
                    time.sleep(0.05)
                fake.host, fake.port, fake.protocol = "127.0.0.1", port, "http"
                yield fake
            finally:
                server.should_exit = True
                thread.join(timeout=30)
                fs_server.logger.setLevel(previous_level)
                if s3_filesystem is not None:
                    with contextlib.suppress(Exception):
                        shared.duck_conn.unregister_filesystem("s3")


def _answering_in_progress(fs_server: Any, fake: FakeSnowflake, after_s: float) -> Any:
    """Patch 7: fakesnow's app, with a long statement answered "in progress" and its result polled for."""
    import asyncio
    import uuid

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    running: dict[str, asyncio.Task[Response]] = {}

    async def answer(query_id: str, task: asyncio.Task[Response]) -> Response:
        done, _ = await asyncio.wait({task}, timeout=after_s)
        if not done:
            running[query_id] = task
            fake.answered_in_progress += 1
            return JSONResponse({"code": "333333", "message": "query in progress", "success": True,
                                 "data": {"queryId": query_id, "getResultUrl": f"/queries/{query_id}/result"}})
        running.pop(query_id, None)
        return task.result()

    async def query_request(request: Request) -> Response:
        await request.body()  # read now: the statement may outlive this request
        return await answer(str(uuid.uuid4()), asyncio.ensure_future(fs_server.query_request(request)))

    async def query_result(request: Request) -> Response:
        query_id = request.path_params["query_id"]
        task = running.get(query_id)
        if task is None:
            return JSONResponse({"code": "000709", "message": f"Statement {query_id} not found",
                                 "success": False, "data": {"queryId": query_id}})
        return await answer(query_id, task)

    routes = [Route("/queries/v1/query-request", query_request, methods=["POST"]),
              Route("/queries/{query_id}/result", query_result, methods=["GET"])]
    routes += [route for route in fs_server.routes if route.path != "/queries/v1/query-request"]
    return Starlette(routes=routes)
