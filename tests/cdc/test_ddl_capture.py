"""DDL capture (`sources.replication.ddl`): event triggers put each table DDL into the change stream, inside the
DDL's own transaction, exactly between what committed before and after it, and never make user DDL fail.

The stream is read the way CDC reads it (a pgoutput slot, `messages` on, the project's decoder), through
`pg_logical_slot_get_binary_changes` so each test sees exactly what was decoded since the last read.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest

from local.postgres import LocalPostgres, find_bindir
from sources.replication.ddl import (
    DDL_MESSAGE_PREFIX,
    DDL_PAD_PREFIX,
    SCHEMA,
    TRIGGERS,
    DdlEvent,
    ddl_capture_status,
    ddl_event,
    install_ddl_capture,
    install_sql,
    parse_ddl_message,
    uninstall_ddl_capture,
)
from sources.replication.errors import PrerequisiteMissing
from sources.replication.pgoutput import Begin, Commit, Decoded, Insert, Message, Relation, decode
from tests.conftest import execute


def connect(dsn: str) -> Any:
    """Autocommit, and every commit flushed: the test cluster commits asynchronously, and decoding stops at the
    flushed WAL."""
    conn = psycopg2.connect(dsn, options="-c synchronous_commit=on")
    conn.autocommit = True
    return conn


@dataclass
class Source:
    """A fresh database with DDL capture installed, table app.t in a publication, and a pgoutput slot."""

    dsn: str
    slot: str
    publication: str

    def sql(self, *statements: str) -> None:
        conn = connect(self.dsn)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def decoded(self) -> list[Decoded]:
        """Everything decoded since the last call (the slot advances)."""
        conn = connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', "
                            "'1', 'publication_names', %s, 'messages', 'true')", (self.slot, self.publication))
                return [decode(bytes(row[0])) for row in cur.fetchall()]
        finally:
            conn.close()

    def stream(self) -> list[str]:
        """The decoded stream, one readable line per message."""
        return lines(self.decoded())


def lines(decoded: list[Decoded]) -> list[str]:
    """One readable line per message, without the pads (empty messages that only fix the order, see ddl.py)."""
    return [line for line in map(describe, decoded) if line != "PAD"]


def describe(message: Decoded) -> str:
    if isinstance(message, Begin):
        return "BEGIN"
    if isinstance(message, Commit):
        return "COMMIT"
    if isinstance(message, Relation):
        return f"RELATION {message.qualified} {','.join(c.name for c in message.columns)}"
    if isinstance(message, Insert):
        return "INSERT " + ",".join(v.decode() if isinstance(v, bytes) else repr(v) for v in message.new)
    if isinstance(message, Message) and message.prefix == DDL_PAD_PREFIX:
        assert message.transactional and message.content == b""
        return "PAD"
    if isinstance(message, Message):
        event = ddl_event(message)
        assert event is not None, message
        extra = f" reason={event.reason}" if event.kind == "rewrite" else ""
        return f"DDL {event.kind} {event.qualified} {event.tag}{extra}"
    return type(message).__name__.upper()


@pytest.fixture()
def source(database: str) -> Iterator[Source]:
    conn = connect(database)
    try:
        status = install_ddl_capture(conn)
        assert status.active, status
        execute(database, "CREATE SCHEMA app", "CREATE TABLE app.t (id int PRIMARY KEY, c text, v numeric)",
                "CREATE PUBLICATION pub FOR TABLE app.t")
        slot = f"ddl_{uuid.uuid4().hex[:8]}"
        execute(database, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        try:
            yield Source(database, slot, "pub")
        finally:
            execute(database, f"SELECT pg_drop_replication_slot('{slot}')")
    finally:
        conn.close()


@pytest.fixture()
def role(pg: LocalPostgres, database: str) -> Iterator[tuple[str, str]]:
    """A plain login role (no superuser, no rds_superuser) that may create tables in schema app; yields its
    name and DSN."""
    name = f"plain_{uuid.uuid4().hex[:8]}"
    execute(database, f"CREATE ROLE {name} LOGIN PASSWORD 'pw-{name}'", "CREATE SCHEMA IF NOT EXISTS app",
            f"GRANT USAGE, CREATE ON SCHEMA app TO {name}")
    try:
        yield name, database.replace(f"{pg.user}:{pg.password}@", f"{name}:pw-{name}@")
    finally:
        execute(database, f"DROP OWNED BY {name}")
        execute(pg.url(), f"DROP ROLE {name}")


def test_drop_and_add_column_arrives_inside_its_transaction_between_the_changes_around_it(source: Source) -> None:
    source.sql("INSERT INTO app.t VALUES (1, 'a', 1.5)")
    # one transaction (one query string): every existing row's c becomes NULL, and the WAL has no row for it
    source.sql("ALTER TABLE app.t DROP COLUMN c; ALTER TABLE app.t ADD COLUMN c text")
    source.sql("INSERT INTO app.t VALUES (2, 3, 'b')")
    decoded = source.decoded()
    assert lines(decoded) == [
        "BEGIN", "RELATION app.t id,c,v", "INSERT 1,a,1.5", "COMMIT",
        "BEGIN", "DDL alter app.t ALTER TABLE", "DDL alter app.t ALTER TABLE", "COMMIT",
        "BEGIN", "RELATION app.t id,v,c", "INSERT 2,3,b", "COMMIT",
    ]
    events = [e for e in (ddl_event(m) for m in decoded if isinstance(m, Message)) if e is not None]
    # each message carries the columns as that statement left them: c's new attnum shows it is a new column
    assert [[(a, n) for a, n, _, _ in e.columns or ()] for e in events] == [
        [(1, "id"), (3, "v")], [(1, "id"), (3, "v"), (4, "c")]]
    assert {e.relid for e in events} == {int(source_oid(source, "app.t"))}
    assert events[0].identity == "app.t" and events[0].root is None and events[0].replicated_as == "app.t"
    # messages commit with their transaction: on an aborted DDL nothing arrives
    conn = connect(source.dsn)
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE app.t ADD COLUMN gone int")
    conn.rollback()
    conn.close()
    assert source.stream() == []


def test_a_same_type_rewrite_arrives_exactly_between_the_changes_of_its_own_transaction(source: Source) -> None:
    source.sql("INSERT INTO app.t VALUES (1, 'a', 1.5)")
    source.decoded()
    # BEGIN; INSERT; ALTER ... USING; INSERT; COMMIT: the rewrite changes v in every row, row 2 included
    source.sql("INSERT INTO app.t VALUES (2, 'b', 2.25); ALTER TABLE app.t ALTER COLUMN v TYPE int USING v * 100; "
               "INSERT INTO app.t VALUES (3, 'c', 7)")
    source.sql("INSERT INTO app.t VALUES (4, 'd', 8)")
    # a DDL in a savepoint (migration tools use them): still in place, before the next change
    source.sql("BEGIN; INSERT INTO app.t VALUES (5, 'e', 9); SAVEPOINT s; ALTER TABLE app.t ADD COLUMN z int; "
               "RELEASE s; INSERT INTO app.t VALUES (6, 'f', 10, 1); COMMIT")
    assert source.stream() == [
        "BEGIN", "RELATION app.t id,c,v", "INSERT 2,b,2.25",
        "DDL rewrite app.t ALTER TABLE reason=4", "DDL alter app.t ALTER TABLE",
        "RELATION app.t id,c,v", "INSERT 3,c,7", "COMMIT",
        "BEGIN", "RELATION app.t id,c,v", "INSERT 4,d,8", "COMMIT",  # the ALTER's commit made pgoutput resend it
        "BEGIN", "INSERT 5,e,9", "DDL alter app.t ALTER TABLE", "RELATION app.t id,c,v,z", "INSERT 6,f,10,1", "COMMIT",
    ]
    assert execute_rows(source.dsn, "SELECT id, v FROM app.t ORDER BY id") == [
        (1, 150), (2, 225), (3, 7), (4, 8), (5, 9), (6, 10)]


def test_vacuum_full_and_cluster_emit_no_rewrite(source: Source) -> None:
    source.sql("INSERT INTO app.t SELECT g, 'x', g FROM generate_series(1, 100) g")
    before = source_relfilenode(source, "app.t")
    source.sql("VACUUM FULL app.t")
    vacuumed = source_relfilenode(source, "app.t")
    source.sql("CLUSTER app.t USING t_pkey")
    assert len({before, vacuumed, source_relfilenode(source, "app.t")}) == 3  # both really rewrote the table
    source.sql("INSERT INTO app.t VALUES (101, 'y', 1)")
    stream = source.stream()
    assert not [line for line in stream if line.startswith("DDL")], stream
    assert stream[-4:] == ["BEGIN", "RELATION app.t id,c,v", "INSERT 101,y,1", "COMMIT"]


def test_partitions_types_drops_and_temporary_tables(source: Source) -> None:
    source.sql("CREATE TABLE app.p (id int, v int) PARTITION BY RANGE (id)",
               "CREATE TABLE app.p1 PARTITION OF app.p FOR VALUES FROM (0) TO (10)",
               "CREATE TYPE app.mood AS ENUM ('sad', 'ok')",
               "CREATE DOMAIN app.feeling AS app.mood",
               "CREATE TABLE app.m (id int PRIMARY KEY, m app.mood)",
               "CREATE TABLE app.f (id int PRIMARY KEY, f app.feeling, fs app.feeling[])",
               "CREATE TABLE app.other (id int PRIMARY KEY)")
    assert [line for line in source.stream() if line.startswith("DDL")] == [
        "DDL create app.p CREATE TABLE", "DDL create app.p1 CREATE TABLE", "DDL create app.m CREATE TABLE",
        "DDL create app.f CREATE TABLE", "DDL create app.other CREATE TABLE"]
    source.sql("ALTER TABLE app.p ALTER COLUMN v TYPE bigint USING v * 2")
    decoded = source.decoded()
    events = [ddl_event(m) for m in decoded if isinstance(m, Message)]
    assert [(e.kind, e.qualified, e.replicated_as) for e in events if e] == [
        ("rewrite", "app.p1", "app.p"), ("alter", "app.p", "app.p")]
    # renaming an enum value changes stored values of every table using it, through a domain and an array too
    source.sql("ALTER TYPE app.mood RENAME VALUE 'sad' TO 'unhappy'")
    assert [line for line in source.stream() if line.startswith("DDL")] == [
        "DDL alter app.m ALTER TYPE", "DDL alter app.f ALTER TYPE"]
    source.sql("DROP TABLE app.p", "DROP SCHEMA app CASCADE")
    drops = [line for line in source.stream() if line.startswith("DDL")]
    assert drops[:2] == ["DDL drop app.p DROP TABLE", "DDL drop app.p1 DROP TABLE"]
    assert sorted(drops[2:]) == ["DDL drop app.f DROP SCHEMA", "DDL drop app.m DROP SCHEMA",
                                 "DDL drop app.other DROP SCHEMA", "DDL drop app.t DROP SCHEMA"]
    # neither temporary tables nor views, sequences or other DDL
    source.sql("CREATE TEMP TABLE scratch (a int); ALTER TABLE scratch ADD COLUMN b int; DROP TABLE scratch",
               "CREATE VIEW public.v AS SELECT 1 AS one", "ALTER TABLE public.v RENAME TO v2",
               "CREATE SEQUENCE public.s", "DROP VIEW public.v2")
    assert source.stream() == []


def test_a_user_ddl_succeeds_when_its_message_cannot_be_emitted(source: Source, role: tuple[str, str]) -> None:
    user = connect(role[1])
    notices = user.notices
    with user.cursor() as cur:
        cur.execute("CREATE TABLE app.owned (id int PRIMARY KEY)")
        cur.execute("ALTER TABLE app.owned ADD COLUMN a int")  # an ordinary role's DDL is announced too
    assert [line for line in source.stream() if line.startswith("DDL")] == [
        "DDL create app.owned CREATE TABLE", "DDL alter app.owned ALTER TABLE"]
    # break the function body for this role: it may no longer emit logical messages
    source.sql("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) FROM PUBLIC")
    with user.cursor() as cur:
        cur.execute("ALTER TABLE app.owned ADD COLUMN b int")
        cur.execute("ALTER TABLE app.owned ALTER COLUMN a TYPE bigint USING a * 2")
        cur.execute("DROP TABLE app.owned")
        cur.execute("SELECT count(*) FROM pg_class WHERE relname = 'owned'")
        assert cur.fetchone() == (0,)
    user.close()
    assert [line for line in source.stream() if line.startswith("DDL")] == []
    warnings = [n for n in notices if "not announced to change data capture" in n]
    assert len(warnings) == 4, notices  # ALTER, rewrite + ALTER, DROP: each one a WARNING, none an error
    assert "permission denied for function pg_logical_emit_message" in warnings[0]
    source.sql("GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message(boolean, text, text) TO PUBLIC")


def test_an_error_inside_the_function_body_is_swallowed(source: Source) -> None:
    # the installed body, made to fail before it emits anything: the DDL must still succeed, with a WARNING
    conn = connect(source.dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT prosrc FROM pg_proc WHERE oid = 'aurora_sync.emit_ddl()'::regprocedure")
        body = cur.fetchone()[0]
        broken = body.replace("FOR message IN", "PERFORM 1 / 0;\n    FOR message IN", 1)
        cur.execute(f"CREATE OR REPLACE FUNCTION aurora_sync.emit_ddl() RETURNS event_trigger LANGUAGE plpgsql "
                    f"AS $b${broken}$b$")
        cur.execute("ALTER TABLE app.t ADD COLUMN x int")
        assert any("division by zero" in n for n in conn.notices), conn.notices
    assert ddl_capture_status(conn).current is False
    assert install_ddl_capture(conn).active  # installing again repairs it
    conn.close()
    assert [line for line in source.stream() if line.startswith("DDL")] == []


def test_status_and_install_for_a_superuser_and_a_plain_role(database: str, role: tuple[str, str]) -> None:
    admin = connect(database)
    status = ddl_capture_status(admin)
    assert (status.installed, status.can_install, status.supported, status.active) == (False, True, True, False)
    assert "not installed" in status.message and status.sql == install_sql()

    name, dsn = role
    plain = connect(dsn)
    status = ddl_capture_status(plain)
    assert (status.installed, status.can_install) == (False, False)
    assert f"role {name} cannot install it" in status.message and "rds_superuser" in status.message
    assert "CREATE EVENT TRIGGER aurora_sync_ddl ON ddl_command_end" in status.sql
    refused = install_ddl_capture(plain)  # no error, nothing created: the status says what to run
    assert not refused.installed and refused.sql == install_sql() and "permission denied" in refused.message
    assert execute_rows(database, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{SCHEMA}'") == [(0,)]

    # the administrator runs the SQL as printed, twice (idempotent)
    for _ in range(2):
        psql = subprocess.run([str(find_bindir() / "psql"), database, "-q", "-v", "ON_ERROR_STOP=1"],
                              input=status.sql, capture_output=True, text=True, check=False)
        assert psql.returncode == 0, psql.stderr
    for conn in (plain, admin):
        status = ddl_capture_status(conn)
        assert status.active and status.sql == "" and status.triggers == dict.fromkeys(TRIGGERS, "A"), status
    assert install_ddl_capture(plain).active  # nothing to do: no privilege needed

    execute(database, "ALTER EVENT TRIGGER aurora_sync_rewrite DISABLE")
    status = ddl_capture_status(plain)
    assert (status.installed, status.enabled, status.active) == (True, False, False)
    assert status.sql == "ALTER EVENT TRIGGER aurora_sync_rewrite ENABLE ALWAYS;\n"
    assert install_ddl_capture(admin).active
    plain.close()
    admin.close()


def test_install_refuses_a_schema_or_function_another_role_owns(database: str, role: tuple[str, str]) -> None:
    # the functions run as whoever runs DDL: their owner must be an administrator, or DDL would run its code
    name, dsn = role
    admin = connect(database)
    assert install_ddl_capture(admin).active
    execute(database, f"ALTER FUNCTION {SCHEMA}.emit_drop() OWNER TO {name}")
    status = ddl_capture_status(admin)
    assert status.installed and not status.current and not status.active and "not owned by an administrator" in \
        status.message
    with pytest.raises(PrerequisiteMissing, match=f"belongs to role {name}, not to an administrator"):
        install_ddl_capture(admin)
    assert uninstall_ddl_capture(admin).triggers == {}

    execute(database, f'GRANT CREATE ON DATABASE "{database.rsplit("/", 1)[1]}" TO {name}')
    execute(dsn, f"CREATE SCHEMA {SCHEMA}")
    with pytest.raises(PrerequisiteMissing, match=f"DROP SCHEMA {SCHEMA} CASCADE"):
        install_ddl_capture(admin)
    assert not ddl_capture_status(admin).installed
    execute(database, f"DROP SCHEMA {SCHEMA} CASCADE")
    assert install_ddl_capture(admin).active
    admin.close()


def test_uninstall_removes_everything(database: str, role: tuple[str, str]) -> None:
    admin = connect(database)
    assert install_ddl_capture(admin).active
    assert install_ddl_capture(admin).active  # again: idempotent

    plain = connect(role[1])
    refused = uninstall_ddl_capture(plain)
    plain.close()
    assert refused.installed and "DROP EVENT TRIGGER IF EXISTS aurora_sync_ddl;" in refused.sql
    assert "cannot remove DDL capture" in refused.message

    status = uninstall_ddl_capture(admin)
    assert not status.installed and status.triggers == {}
    assert execute_rows(database, f"""
        SELECT (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'aurora_sync%'),
               (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = '{SCHEMA}'),
               (SELECT count(*) FROM pg_namespace WHERE nspname = '{SCHEMA}')""") == [(0, 0, 0)]
    assert not uninstall_ddl_capture(admin).installed  # nothing left to remove: no error
    execute(database, "CREATE TABLE after_uninstall (a int)")  # DDL works without the functions

    # something else living in the schema keeps it; the triggers and functions still go
    assert install_ddl_capture(admin).active
    execute(database, f"CREATE TABLE {SCHEMA}.keep (a int)")
    assert not uninstall_ddl_capture(admin).installed
    assert execute_rows(database, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{SCHEMA}'") == [(1,)]
    admin.close()


@pytest.mark.parametrize("content", [
    b"", b"not json", b"\xff\xfe", "[]", "{}", '{"kind": "alter"}',
    '{"kind": "nope", "schema": "a", "table": "t", "relid": 1, "tag": "ALTER TABLE"}',
    '{"kind": "alter", "schema": "a", "table": "t", "relid": true, "tag": "ALTER TABLE"}',
    '{"kind": "alter", "schema": 1, "table": "t", "relid": 1, "tag": "ALTER TABLE"}',
    '{"kind": "alter", "schema": "a", "table": "t", "relid": 1, "tag": "ALTER TABLE", "columns": [[1]]}',
])
def test_malformed_messages_parse_to_none(content: bytes | str) -> None:
    assert parse_ddl_message(content) is None


def test_message_format() -> None:
    content = ('{"v" : 1, "kind" : "rewrite", "schema" : "App", "table" : "with space", "relid" : 16467, '
               '"tag" : "ALTER TABLE", "reason" : 6, "identity" : "\\"App\\".\\"with space\\"", '
               '"root" : {"schema" : "App", "table" : "root"}, "columns" : [[1, "id", 23, -1]]}')
    event = parse_ddl_message(content.encode())
    assert event == DdlEvent("rewrite", "App", "with space", 16467, "ALTER TABLE", 6, '"App"."with space"',
                             ("App", "root"), ((1, "id", 23, -1),))
    assert event.reasons == ["column default filled into every row", "column rewritten (ALTER TYPE)"]
    assert event.replicated_as == "App.root"
    assert ddl_event(Message(False, 1, DDL_MESSAGE_PREFIX, content.encode())) is None  # ours are transactional
    assert ddl_event(Message(True, 1, "aurora-sync", content.encode())) is None
    assert ddl_event(Message(True, 1, DDL_MESSAGE_PREFIX, content.encode())) == event


def execute_rows(dsn: str, statement: str) -> list[tuple[Any, ...]]:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def source_oid(source: Source, table: str) -> int:
    return int(execute_rows(source.dsn, f"SELECT '{table}'::regclass::oid")[0][0])


def source_relfilenode(source: Source, table: str) -> int:
    return int(execute_rows(source.dsn, f"SELECT relfilenode FROM pg_class WHERE oid = '{table}'::regclass")[0][0])
