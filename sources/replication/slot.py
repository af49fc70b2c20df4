"""Source-side objects of CDC: prerequisites, the publication, the slot and its health.

Everything here that writes to the source catalog (CREATE/ALTER PUBLICATION, creating and dropping
the slot) happens in `aurora-sync setup`/`teardown` or when a newly configured table is added; the
data path never writes. Markers and heartbeats are `pg_logical_emit_message` WAL records: no table,
no row, and they work on Aurora without extra grants.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from sources.postgres.catalog import TableSpec
from sources.postgres.errors import explain_connection_error
from sources.postgres.session import APPLICATION_NAME, session_options
from sources.postgres.transport import secure_dsn

from .errors import (
    PrerequisiteMissing,
    PublicationError,
    ReplicationError,
    SlotCreationRaced,
    SlotCreationTimeout,
    SlotInUse,
    SlotMissing,
)
from .lsn import format_lsn, parse_lsn
from .walstream import replication_connection

log = logging.getLogger("aurora_sync.cdc")
NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MARKER_PREFIX = "aurora-sync"


def object_name(pipeline_name: str) -> str:
    """Default slot and publication name for a pipeline: `aurora_sync_<pipeline>`, a safe identifier."""
    name = "aurora_sync_" + re.sub(r"[^a-z0-9_]", "_", pipeline_name.lower())
    return name[:63]


def check_name(kind: str, name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise PrerequisiteMissing(f"{kind} name {name!r} must be a lowercase identifier of at most 63 characters "
                                  "([a-z0-9_], not starting with a digit).")
    return name


def connect(dsn: str, *, read_only: bool = True, statement_timeout_ms: int = 600_000, where: str = "") -> Any:
    """An autocommit psycopg2 session with the same pinned settings as the snapshot source's sessions."""
    try:
        conn = psycopg2.connect(secure_dsn(dsn), application_name=APPLICATION_NAME, connect_timeout=10,
                                options=session_options(statement_timeout_ms, read_only=read_only))
    except psycopg2.OperationalError as exc:
        raise (explain_connection_error(exc, where or "the source database") or exc) from None
    conn.autocommit = True
    return conn


def query(conn: Any, statement: str | sql.Composable, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else []


def qualified_identifier(spec: TableSpec) -> sql.Composable:
    return sql.Identifier(spec.schema, spec.name)


# -- health -------------------------------------------------------------------------------------
@dataclass
class SlotHealth:
    slot_name: str
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost
    safe_wal_size: int | None
    current_lsn: int

    @property
    def retained_wal_bytes(self) -> int:
        """WAL written since the last confirmed position: how far behind the consumer is."""
        return max(0, self.current_lsn - (self.confirmed_flush_lsn or self.current_lsn))

    @property
    def pinned_wal_bytes(self) -> int:
        """WAL the server keeps for this slot (from restart_lsn): what fills the disk."""
        return max(0, self.current_lsn - (self.restart_lsn or self.current_lsn))

    def as_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        for key in ("restart_lsn", "confirmed_flush_lsn", "current_lsn"):
            fields[key] = format_lsn(fields[key])
        fields["retained_wal_bytes"] = self.retained_wal_bytes
        fields["pinned_wal_bytes"] = self.pinned_wal_bytes
        return fields


def slot_health(conn: Any, slot: str) -> SlotHealth | None:
    version = int(query(conn, "SHOW server_version_num")[0][0])
    columns = "wal_status, safe_wal_size" if version >= 130000 else "NULL, NULL"
    rows = query(conn, f"""
        SELECT slot_name, active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, {columns},
               pg_current_wal_lsn()::text, plugin, database = current_database()
        FROM pg_replication_slots WHERE slot_name = %s""", (slot,))
    if not rows:
        return None
    r = rows[0]
    if r[8] != "pgoutput" or not r[9]:
        raise PrerequisiteMissing(f"Replication slot {slot!r} exists but is not a pgoutput slot of this database: "
                                  "choose another `slot_name` or drop it.")
    return SlotHealth(r[0], bool(r[1]), r[2], parse_lsn(r[3]), parse_lsn(r[4]), r[5], r[6], parse_lsn(r[7]) or 0)


def current_wal_lsn(conn: Any) -> int:
    return parse_lsn(query(conn, "SELECT pg_current_wal_lsn()::text")[0][0]) or 0


def emit_marker(conn: Any, content: str) -> int:
    """A non-transactional logical message: the stream delivers it after every transaction committed
    before it, so receiving it proves we are caught up to its LSN (and it advances an idle slot)."""
    return parse_lsn(query(conn, "SELECT pg_logical_emit_message(false, %s, %s)::text",
                           (MARKER_PREFIX, content))[0][0]) or 0


def wal_sender_timeout_seconds(conn: Any) -> float:
    value = query(conn, "SELECT setting::float / 1000 FROM pg_settings WHERE name = 'wal_sender_timeout'")
    return float(value[0][0]) if value else 60.0


def server_version(conn: Any) -> int:
    return int(query(conn, "SHOW server_version_num")[0][0])


# -- prerequisites --------------------------------------------------------------------------------
def check_prerequisites(conn: Any, tables: Iterable[TableSpec], slot: str, slot_needed: bool,
                        with_tables: bool = True) -> list[str]:
    """Every missing prerequisite, named with its fix (an empty list means ready). `with_tables=False` leaves out
    the per-table ones (`table_refusals`), which stop only their own table."""
    problems: list[str] = []
    settings = dict(query(conn, """SELECT name, setting FROM pg_settings
        WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders', 'rds.logical_replication',
                       'server_version_num')"""))
    aurora = "rds.logical_replication" in settings
    if settings.get("wal_level") != "logical":
        problems.append(
            "wal_level is {!r}, logical replication needs 'logical': {}".format(
                settings.get("wal_level"),
                "set rds.logical_replication = 1 in the cluster parameter group and reboot the writer"
                if aurora else "set wal_level = logical and restart PostgreSQL"))
    if int(settings.get("server_version_num", "0")) < 100000:
        problems.append("PostgreSQL 10 or later is needed for the pgoutput plugin.")
    role = query(conn, """
        SELECT r.rolsuper, r.rolreplication,
               EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication'
                       AND pg_has_role(current_user, g.oid, 'member')), current_user
        FROM pg_roles r WHERE r.rolname = current_user""")[0]
    if not (role[0] or role[1] or (aurora and role[2])):  # off RDS, a role named rds_replication confers nothing
        problems.append(f"Role {role[3]!r} may not use replication: "
                        + (f"GRANT rds_replication TO {role[3]}" if aurora else f"ALTER ROLE {role[3]} REPLICATION"))
    if slot_needed:
        used = int(query(conn, "SELECT count(*) FROM pg_replication_slots")[0][0])
        if used >= int(settings.get("max_replication_slots", "0")):
            problems.append(f"All {settings.get('max_replication_slots')} replication slots are used "
                            "(max_replication_slots): raise it or drop an unused slot.")
    if with_tables:
        problems += table_refusals(conn, tables).values()
    return problems


def table_refusals(conn: Any, tables: Iterable[TableSpec]) -> dict[str, str]:
    """Tables CDC cannot replicate as they are, each with its fix; one catalog query for all of them.

    A table in a publication that publishes updates and deletes must have a replica identity, or PostgreSQL
    refuses its UPDATE and DELETE statements on the source: such a table is never added to the publication.
    """
    specs = list(tables)
    if not specs:
        return {}
    found = {(r[0], r[1]): r[2:] for r in query(conn, """
        SELECT n.nspname, c.relname, c.relreplident, has_table_privilege(c.oid, 'SELECT'),
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), current_user
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
        ([s.schema for s in specs], [s.name for s in specs]))}
    refusals: dict[str, str] = {}
    for spec in specs:
        row = found.get((spec.schema, spec.name))
        if row is None:
            refusals[spec.qualified] = f"Table {spec.qualified} does not exist."
            continue
        identity, can_select, has_pk, role = row
        problems = []
        if not can_select:
            problems.append(f"GRANT SELECT ON {spec.qualified} TO {role} (needed for the snapshot).")
        if identity == "n" or (identity == "d" and not has_pk):
            if spec.has_key:
                fix = (f"ALTER TABLE {spec.qualified} REPLICA IDENTITY USING INDEX <its unique index on "
                       f"{', '.join(spec.primary_key)}> (or add a primary key)")
            else:
                fix = (f"add a primary key, or ALTER TABLE {spec.qualified} REPLICA IDENTITY FULL (it is then "
                       "replicated as an exact multiset of rows, and every update and delete logs the whole old row)")
            problems.append(
                f"Table {spec.qualified} has no primary key or replica identity PostgreSQL can log its updates and "
                f"deletes with: {fix}. Until then it is not added to the publication (its UPDATEs and DELETEs "
                "would fail).")
        if problems:
            refusals[spec.qualified] = " ".join(problems)
    return refusals


# -- publication -----------------------------------------------------------------------------------
def publication_exists(conn: Any, name: str) -> bool:
    return bool(query(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)))


def publication_tables(conn: Any, name: str) -> set[str]:
    return {f"{s}.{t}" for s, t in query(
        conn, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))}


def _publication_failure(exc: psycopg2.Error, statement: str) -> PublicationError:
    return PublicationError(
        f"Cannot change the publication ({exc.pgerror.strip() if exc.pgerror else exc}); a table owner or "
        f"administrator must run: {statement}")


def ensure_publication(conn: Any, name: str, tables: list[TableSpec], drop_extra: bool = False) -> tuple[
        list[str], list[str]]:
    """Create the publication for `tables`, or add the missing ones (and drop the others if asked).

    This writes to the source's catalog, once per setup or new table, which is unavoidable for logical
    replication. Adding a table needs ownership of it (PostgreSQL's rule).
    """
    check_name("Publication", name)
    # partitioned tables are replicated under their root's name (PostgreSQL 13+), as the snapshot reads them
    via_root = server_version(conn) >= 130000
    if not publication_exists(conn, name):
        statement = sql.SQL("CREATE PUBLICATION {}{}{}").format(
            sql.Identifier(name),
            sql.SQL(" FOR TABLE ") + sql.SQL(", ").join(qualified_identifier(t) for t in tables) if tables
            else sql.SQL(""),
            sql.SQL(" WITH (publish_via_partition_root = true)") if via_root else sql.SQL(""))
        try:
            query(conn, statement)
            return [t.qualified for t in tables], []
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject):
            # created meanwhile by another session: typically the backend of a task killed a moment ago, which
            # finished its CREATE after our check (race soak, land-merge seed 633); carry on as with an existing one
            if not publication_exists(conn, name):
                raise
        except psycopg2.Error as exc:
            raise _publication_failure(exc, statement.as_string(conn)) from None
    partitioned = via_root and tables and query(conn, """
        SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'p' AND n.nspname || '.' || c.relname = ANY(%s)""", ([t.qualified for t in tables],))[0][0]
    if partitioned and not query(conn, "SELECT pubviaroot FROM pg_publication WHERE pubname = %s", (name,))[0][0]:
        statement = sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(
            sql.Identifier(name))
        try:
            query(conn, statement)
        except psycopg2.Error as exc:
            raise _publication_failure(exc, statement.as_string(conn)) from None
    present = publication_tables(conn, name)
    wanted = {t.qualified: t for t in tables}
    added = [q for q in wanted if q not in present]
    removed = sorted(present - set(wanted)) if drop_extra else []
    if added:
        statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(name), sql.SQL(", ").join(qualified_identifier(wanted[q]) for q in added))
        try:
            query(conn, statement)
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject):
            if any(q not in publication_tables(conn, name) for q in added):  # some added meanwhile, as above
                return ensure_publication(conn, name, tables, drop_extra)
        except psycopg2.Error as exc:
            raise _publication_failure(exc, statement.as_string(conn)) from None
    if removed:
        statement = sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
            sql.Identifier(name),
            sql.SQL(", ").join(sql.Identifier(*q.split(".", 1)) for q in removed))
        try:
            query(conn, statement)
        except psycopg2.Error as exc:
            raise _publication_failure(exc, statement.as_string(conn)) from None
    return added, removed


def drop_publication(conn: Any, name: str) -> bool:
    if not publication_exists(conn, name):
        return False
    query(conn, sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(check_name("Publication", name))))
    return True


# -- slots ------------------------------------------------------------------------------------------
@dataclass
class ExportedSnapshot:
    slot: str
    consistent_lsn: int  # the snapshot sees exactly the transactions that committed before this LSN
    snapshot_name: str


# Relations whose files logical decoding maps back to tables (temporary ones are never decoded), each with what a
# catalog change alters: the file (TRUNCATE, a rewrite), the row's version (any ALTER), the columns' versions.
CATALOG_FINGERPRINT = """
    SELECT c.oid::regclass::text, c.relfilenode, c.xmin::text,
           (SELECT md5(string_agg(a.attnum || ':' || a.xmin::text, ',' ORDER BY a.attnum))
            FROM pg_attribute a WHERE a.attrelid = c.oid)
    FROM pg_class c WHERE c.relpersistence = 'p' AND c.relkind IN ('r', 'p', 't', 'm')"""
CREATE_ATTEMPTS = 5


def catalog_fingerprint(dsn: str) -> dict[str, tuple[Any, ...]]:
    conn = connect(dsn, statement_timeout_ms=120_000, where="to read the catalog around creating the slot")
    try:
        return {row[0]: tuple(row[1:]) for row in query(conn, CATALOG_FINGERPRINT)}
    finally:
        conn.close()


def changed_relations(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


@contextmanager
def create_slot(dsn: str, slot: str, *, temporary: bool = False, timeout: float = 300.0,
                report_every: float = 5.0) -> Iterator[ExportedSnapshot]:
    """Create a pgoutput slot on a replication connection and export its snapshot.

    The snapshot stays importable (SET TRANSACTION SNAPSHOT) while this context is open; a temporary slot disappears
    when it closes. Creation waits for every transaction that is writing when it starts (a long report, a session
    idle in transaction): every `report_every` seconds the sessions it waits for are logged (pid, application, age),
    and after `timeout` seconds the wait is cancelled on the server and `SlotCreationTimeout` names them.

    A slot whose creation overlapped a committed catalog change (TRUNCATE, ALTER TABLE, CREATE or DROP of a table:
    anywhere in the database) is dropped and created again. PostgreSQL (15.18 and master, reproduced here) can
    decode such a slot with a stale catalog snapshot: a TRUNCATE, or a rewrite, whose catalog changes were logged
    before the slot's snapshot builder reached its second phase and whose commit came after is not seen by the
    first decoding, so changes to the new file fail with "could not map filenode" on every start
    (`SlotUndecodable`), and an ADD COLUMN decodes silently with the old columns. The exported snapshot itself is
    right; the check compares the catalog read before creation with the catalog read after it.
    """
    check_name("Slot", slot)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        before = catalog_fingerprint(dsn)
        conn = replication_connection(dsn, APPLICATION_NAME)
        try:
            row = _create(conn, dsn, slot, temporary, timeout, report_every)
            changed = changed_relations(before, catalog_fingerprint(dsn))
        except BaseException:
            conn.close()
            raise
        if not changed:
            break
        conn.close()  # a temporary slot goes with it
        if not temporary:
            _drop_when_released(dsn, slot)
        log.warning(f"replication slot {slot!r} was created while the catalog changed ({len(changed)} relation(s), "
                    f"e.g. {', '.join(changed[:5])}): PostgreSQL may decode it with a stale catalog, so it was "
                    f"dropped to be created again (attempt {attempt} of {CREATE_ATTEMPTS})",
                    extra={"fields": {"phase": "setup", "slot": slot, "changed": changed[:20]}})
    else:
        raise SlotCreationRaced(
            f"Creating replication slot {slot!r} overlapped a catalog change (TRUNCATE, ALTER TABLE, CREATE or DROP "
            f"TABLE) {CREATE_ATTEMPTS} times in a row, last on {', '.join(changed[:5])}. PostgreSQL can decode such "
            "a slot with a stale catalog, so none was kept. Run setup again when schema changes and TRUNCATEs are "
            "quiet for a few seconds; nothing was created.")
    try:
        name, consistent_point, snapshot_name, _ = row
        yield ExportedSnapshot(name, parse_lsn(consistent_point) or 0, snapshot_name)
    finally:
        conn.close()


def _drop_when_released(dsn: str, slot: str, wait: float = 30.0) -> None:
    """Drop `slot` once the walsender of the connection just closed has let go of it."""
    conn = connect(dsn, read_only=False, statement_timeout_ms=30_000, where="to drop a slot created in a race")
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                drop_slot(conn, slot)
                return
            except SlotInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        conn.close()


def _create(conn: Any, dsn: str, slot: str, temporary: bool, timeout: float, report_every: float) -> tuple[Any, ...]:
    """CREATE_REPLICATION_SLOT on `conn`, reporting (and after `timeout` cancelling) the wait for open writers."""
    version = conn.server_version
    kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
    export = "(SNAPSHOT 'export')" if version >= 150000 else "EXPORT_SNAPSHOT"
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = int(cur.fetchone()[0])
    outcome: dict[str, Any] = {}

    def create() -> None:
        try:
            cur.execute(f"CREATE_REPLICATION_SLOT {slot} {kind} pgoutput {export}")
            outcome["row"] = cur.fetchone()
        except psycopg2.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=create, name="create-slot", daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(report_every)
    blockers: list[dict[str, Any]] = []
    if worker.is_alive():
        watcher = connect(dsn, statement_timeout_ms=30_000)
        try:
            while worker.is_alive():
                blockers = waiting_for(watcher, pid)
                waited = time.monotonic() - started
                log.warning(f"creating replication slot {slot!r} waits for {len(blockers)} open transaction(s) "
                            f"to end ({waited:.0f} s so far)",
                            extra={"fields": {"phase": "setup", "slot": slot, "waiting_for": blockers}})
                if waited >= timeout:
                    query(watcher, "SELECT pg_cancel_backend(%s)", (pid,))
                    worker.join(30)
                    listed = "; ".join(f"pid {b['pid']} ({b['application_name'] or 'no application'}, "
                                       f"{b['state']}, transaction open {b['age_s']:.0f} s)" for b in blockers)
                    raise SlotCreationTimeout(
                        f"Creating replication slot {slot!r} waited {waited:.0f} s for transactions that were "
                        f"writing when it started, and was cancelled (slot_create_timeout_seconds = "
                        f"{timeout:.0f}): {listed or 'they ended as it was cancelled'}. Let them finish (or end "
                        "them: pg_terminate_backend(pid)) and run setup again; nothing was created.")
                worker.join(report_every)
        finally:
            watcher.close()
    error = outcome.get("error")
    if error is not None:
        text = str(error)
        if "already exists" in text:
            raise ReplicationError(f"Replication slot {slot!r} already exists.") from None
        if "permission denied" in text.lower() or "must be superuser or replication" in text.lower():
            raise PrerequisiteMissing(f"Cannot create replication slot {slot!r}: {text.strip()} "
                                      "(grant rds_replication on Aurora, REPLICATION elsewhere).") from None
        raise ReplicationError(f"Cannot create replication slot {slot!r}: {text.strip()}") from None
    return tuple(outcome["row"])


def waiting_for(conn: Any, walsender_pid: int) -> list[dict[str, Any]]:
    """The sessions whose open writing transactions a slot being created waits for (they started before it)."""
    rows = query(conn, """
        SELECT a.pid, a.application_name, a.state, coalesce(extract(epoch FROM now() - a.xact_start), 0)
        FROM pg_stat_activity a, pg_stat_activity w
        WHERE w.pid = %s AND a.pid <> w.pid AND a.backend_xid IS NOT NULL AND a.xact_start <= w.query_start
        ORDER BY a.xact_start""", (walsender_pid,))
    return [{"pid": r[0], "application_name": r[1], "state": r[2], "age_s": round(float(r[3]), 1)} for r in rows]


def drop_slot(conn: Any, slot: str) -> bool:
    health = slot_health(conn, check_name("Slot", slot))
    if health is None:
        return False
    if health.active:
        raise SlotInUse(f"Replication slot {slot!r} is in use by PID {health.active_pid}: stop that sync first.")
    try:
        query(conn, "SELECT pg_drop_replication_slot(%s)", (slot,))
    except psycopg2.errors.UndefinedObject:
        return False
    return True


def require_slot(conn: Any, slot: str) -> SlotHealth:
    health = slot_health(conn, slot)
    if health is None:
        raise SlotMissing(f"Replication slot {slot!r} does not exist: run `aurora-sync setup` first (after a "
                          "failover the new writer has no slot: resnapshot with `aurora-sync setup --resnapshot`).")
    return health
