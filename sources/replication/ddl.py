"""DDL capture: event triggers that put a table's DDL into the change stream at its exact position.

Some DDL changes every existing row without a single row event in the WAL: `DROP COLUMN c; ADD COLUMN c` (every
`c` becomes NULL), `ALTER COLUMN v TYPE int USING v * 100` (same type, every value rewritten), an enum value
renamed. Comparing the catalog with a recorded shape (`sources.postgres.shapes`) finds most of them, but only
later and without knowing where in the stream they happened. Event triggers on the source close that gap: each
emits a *transactional* logical message (`pg_logical_emit_message(true, 'aurora-sync-ddl', <json>)`) per affected
table, which logical decoding delivers inside the DDL's own transaction, in order with its row changes, between
what committed before and after it. Nothing is written to any table.

Three event triggers, each calling a plpgsql function in the dedicated schema `aurora_sync`:

- `aurora_sync_ddl` (`ddl_command_end`) -> `aurora_sync.emit_ddl()`, kinds `alter` and `create`, for the tags in
  `DDL_TAGS`: ALTER TABLE (columns added, dropped, renamed, retyped; defaults; replica identity; ATTACH/DETACH
  PARTITION; RENAME; SET SCHEMA), CREATE TABLE / CREATE TABLE AS / SELECT INTO (a new table in a replicated
  schema, the last two with rows the publication never sent) and ALTER TYPE (a renamed enum value or a changed
  composite attribute changes stored values: one message per table with a column of that type, a domain over it
  or an array of either, and per typed table). Index, view, sequence, grant and comment DDL change no value a
  destination holds, so they are left out (replica identity changes arrive as ALTER TABLE).
- `aurora_sync_rewrite` (`table_rewrite`) -> `aurora_sync.emit_rewrite()`, kind `rewrite`, with PostgreSQL's
  rewrite reason (a bitmask, `REWRITE_REASONS`). It fires for ALTER TABLE / ALTER TYPE rewrites (once per
  rewritten partition), never for VACUUM FULL or CLUSTER, which keep every value.
- `aurora_sync_drop` (`sql_drop`) -> `aurora_sync.emit_drop()`, kind `drop`: `ddl_command_end` cannot see
  dropped tables, and DROP SCHEMA ... CASCADE or DROP OWNED drop tables under other tags.

Order: a message is decoded where it was emitted inside its transaction, after the statement's own effects and
before the next statement's changes; a rewriting ALTER TABLE sends `rewrite` (per rewritten table, before the
rewrite) and then `alter` (at its end). A rolled-back transaction or savepoint sends nothing. Each trigger's last
message is followed by an empty `aurora-sync-ddl-pad` message that only keeps that order (see `_PAD`).

Temporary tables, views, indexes, sequences and foreign tables emit nothing. Messages name every other table,
replicated or not: the consumer keeps those of its tables (`DdlEvent.replicated_as`).

The functions run with the privileges of whoever runs the DDL (SECURITY INVOKER; they read only pg_catalog and
call `pg_logical_emit_message`, which PUBLIC may execute), with a pinned `search_path` and every name qualified.
They must never make user DDL fail: the whole body runs under an EXCEPTION handler that turns any error into a
WARNING (the DDL then goes unannounced and the catalog comparison is the fallback). The triggers are `ENABLE
ALWAYS`, so migrations run under `session_replication_role = replica` are captured too. As every DDL, a
superuser's included, runs these functions, the install refuses a schema `aurora_sync` or function in it that a
non-administrator owns (its owner could change the code), and `ddl_capture_status` does not count such an install.

Creating event triggers needs a superuser; on Amazon RDS and Aurora a member of `rds_superuser` may create them.
The sync role normally is neither: `ddl_capture_status` says so and returns the SQL an administrator runs once per
database (`install_sql()`). pgoutput sends logical messages from PostgreSQL 14 on (option `messages`).
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import psycopg2
import psycopg2.errors

from .errors import PrerequisiteMissing
from .pgoutput import Message
from .slot import query

DDL_MESSAGE_PREFIX: Final = "aurora-sync-ddl"
DDL_PAD_PREFIX: Final = "aurora-sync-ddl-pad"  # an empty message after each trigger's last one (see `_PAD`)
DDL_MESSAGE_VERSION: Final = 1
SCHEMA: Final = "aurora_sync"
DDL_TRIGGER: Final = "aurora_sync_ddl"
REWRITE_TRIGGER: Final = "aurora_sync_rewrite"
DROP_TRIGGER: Final = "aurora_sync_drop"
TRIGGERS: Final = (DDL_TRIGGER, REWRITE_TRIGGER, DROP_TRIGGER)
DDL_TAGS: Final = ("ALTER TABLE", "CREATE TABLE", "CREATE TABLE AS", "SELECT INTO", "ALTER TYPE")
REWRITE_TAGS: Final = ("ALTER TABLE", "ALTER TYPE")
MIN_SERVER_VERSION: Final = 140000  # pgoutput's `messages` option
# pg_event_trigger_table_rewrite_reason() bits (AT_REWRITE_* in PostgreSQL's event_trigger.h)
REWRITE_REASONS: Final = {1: "persistence changed (SET LOGGED/UNLOGGED)", 2: "column default filled into every row",
                          4: "column rewritten (ALTER TYPE)", 8: "access method changed"}

DdlKind = Literal["alter", "rewrite", "create", "drop"]
KINDS: Final = frozenset(("alter", "rewrite", "create", "drop"))


def _message_json(kind: str, reason: str) -> str:
    """The message for table `c` (namespace `n`), with its columns and partition root as the DDL left them."""
    return f"""pg_catalog.json_build_object(
            'v', {DDL_MESSAGE_VERSION}, 'kind', {kind}, 'schema', n.nspname, 'table', c.relname,
            'relid', c.oid::pg_catalog.int8,
            'tag', TG_TAG, 'reason', {reason}, 'identity', pg_catalog.format('%I.%I', n.nspname, c.relname),
            'root', (SELECT pg_catalog.json_build_object('schema', rn.nspname, 'table', rc.relname)
                     FROM pg_catalog.pg_class rc JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
                     WHERE c.relispartition AND rc.oid = pg_catalog.pg_partition_root(c.oid)),
            'columns', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
                            a.attnum, a.attname, a.atttypid::pg_catalog.int8, a.atttypmod) ORDER BY a.attnum)
                        FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))::text"""


# A message is ordered by the LSN where its WAL record ends, which is where the next record starts: a change of
# another (sub)transaction starting right there (ours run in the EXCEPTION block's subtransaction) could be decoded
# before it. An empty message after the last one moves that tie onto itself; consumers ignore it.
_PAD = f"""
    IF FOUND THEN
        PERFORM pg_catalog.pg_logical_emit_message(true, '{DDL_PAD_PREFIX}', '');
    END IF;"""

_SWALLOW = """
EXCEPTION WHEN OTHERS THEN
    -- never fail the user's DDL: CDC falls back to comparing the catalog
    RAISE WARNING 'aurora-sync: % not announced to change data capture: %', TG_TAG, SQLERRM;
END
"""

EMIT_DDL_BODY: Final = f"""
DECLARE
    message text;
BEGIN
    FOR message IN
        SELECT {_message_json("CASE WHEN TG_TAG IN ('ALTER TABLE', 'ALTER TYPE') THEN 'alter' ELSE 'create' END",
                              "NULL")}
        FROM (
            -- tables (and their columns: RENAME COLUMN reports the column) named by the command
            SELECT d.objid AS relid
            FROM pg_catalog.pg_event_trigger_ddl_commands() d
            WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
            UNION
            -- ALTER TYPE: tables with a column of that type, a domain over it or an array of either; typed tables
            SELECT a.attrelid
            FROM pg_catalog.pg_event_trigger_ddl_commands() d
            JOIN pg_catalog.pg_type t ON t.oid = d.objid
            JOIN pg_catalog.pg_attribute a ON a.attnum > 0 AND NOT a.attisdropped AND a.atttypid IN (
                SELECT x.oid
                FROM pg_catalog.pg_type dt, LATERAL (VALUES (dt.oid), (dt.typarray)) AS x(oid)
                WHERE dt.oid = t.oid OR dt.typbasetype = t.oid)
            WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
            UNION
            SELECT tc.oid
            FROM pg_catalog.pg_event_trigger_ddl_commands() d
            JOIN pg_catalog.pg_class tc ON tc.reloftype = d.objid
            WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
        ) affected
        JOIN pg_catalog.pg_class c ON c.oid = affected.relid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
        ORDER BY c.oid
    LOOP
        PERFORM pg_catalog.pg_logical_emit_message(true, '{DDL_MESSAGE_PREFIX}', message);
    END LOOP;{_PAD}
{_SWALLOW}"""

EMIT_REWRITE_BODY: Final = f"""
BEGIN
    PERFORM pg_catalog.pg_logical_emit_message(true, '{DDL_MESSAGE_PREFIX}',
        {_message_json("'rewrite'", "pg_catalog.pg_event_trigger_table_rewrite_reason()")})
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = pg_catalog.pg_event_trigger_table_rewrite_oid()
      AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't';{_PAD}
{_SWALLOW}"""

EMIT_DROP_BODY: Final = f"""
DECLARE
    message text;
BEGIN
    -- the tables are gone from the catalog by now: what pg_event_trigger_dropped_objects() remembers is all
    FOR message IN
        SELECT pg_catalog.json_build_object(
            'v', {DDL_MESSAGE_VERSION}, 'kind', 'drop', 'schema', o.schema_name, 'table', o.object_name,
            'relid', o.objid::pg_catalog.int8, 'tag', TG_TAG, 'reason', NULL, 'identity', o.object_identity,
            'root', NULL, 'columns', NULL)::text
        FROM pg_catalog.pg_event_trigger_dropped_objects() o
        WHERE o.object_type = 'table' AND NOT o.is_temporary
    LOOP
        PERFORM pg_catalog.pg_logical_emit_message(true, '{DDL_MESSAGE_PREFIX}', message);
    END LOOP;{_PAD}
{_SWALLOW}"""

# function name -> (body, event, trigger, tags)
_FUNCTIONS: Final = {
    "emit_ddl": (EMIT_DDL_BODY, "ddl_command_end", DDL_TRIGGER, DDL_TAGS),
    "emit_rewrite": (EMIT_REWRITE_BODY, "table_rewrite", REWRITE_TRIGGER, REWRITE_TAGS),
    "emit_drop": (EMIT_DROP_BODY, "sql_drop", DROP_TRIGGER, ()),
}


# The functions run as whoever runs DDL, superusers included: whoever owns them or their schema could make every
# DDL run their code. An existing schema or function owned by anyone but a superuser, an rds_superuser or the
# installing role (CREATE OR REPLACE keeps a function's owner) stops the install.
_ADMIN = """(r.rolsuper OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_superuser'
                               AND pg_catalog.pg_has_role(r.oid, g.oid, 'member')))"""
_OWNERSHIP_GUARD = f"""DO $guard$
DECLARE
    owner text;
BEGIN
    SELECT r.rolname INTO owner
    FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
    WHERE n.nspname = '{SCHEMA}' AND NOT {_ADMIN} AND r.rolname <> current_user
    UNION ALL
    SELECT r.rolname
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
    WHERE n.nspname = '{SCHEMA}' AND NOT {_ADMIN} AND r.rolname <> current_user
    LIMIT 1;
    IF owner IS NOT NULL THEN
        RAISE EXCEPTION 'schema {SCHEMA} or a function in it belongs to role %, not to an administrator: its code '
            'would run in every DDL. Check it, drop it (DROP SCHEMA {SCHEMA} CASCADE) and install again', owner
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$guard$;"""


def _install_statements() -> list[str]:
    statements = [
        _OWNERSHIP_GUARD,
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA};",
        f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC;",
        f"COMMENT ON SCHEMA {SCHEMA} IS 'aurora-snowflake-sync: DDL capture for change data capture "
        "(sources/replication/ddl.py)';",
    ]
    for function, (body, _, _, _) in _FUNCTIONS.items():
        statements.append(f"CREATE OR REPLACE FUNCTION {SCHEMA}.{function}() RETURNS event_trigger "
                          "LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp "
                          f"AS $aurora_sync${body}$aurora_sync$;")
    for function, (_, event, trigger, tags) in _FUNCTIONS.items():
        when = " WHEN TAG IN ({})".format(", ".join(f"'{t}'" for t in tags)) if tags else ""
        statements += [f"DROP EVENT TRIGGER IF EXISTS {trigger};",
                       f"CREATE EVENT TRIGGER {trigger} ON {event}{when} EXECUTE FUNCTION {SCHEMA}.{function}();",
                       f"ALTER EVENT TRIGGER {trigger} ENABLE ALWAYS;"]
    return statements


def _uninstall_statements() -> list[str]:
    return [*(f"DROP EVENT TRIGGER IF EXISTS {t};" for t in TRIGGERS),
            *(f"DROP FUNCTION IF EXISTS {SCHEMA}.{f}();" for f in _FUNCTIONS)]


def install_sql() -> str:
    """The idempotent install script in one transaction: what an administrator runs (psql) when the sync role
    may not create event triggers, and what `install_ddl_capture` runs."""
    return "\n".join(["BEGIN;", *_install_statements(), "COMMIT;"]) + "\n"


def uninstall_sql() -> str:
    """Removes the triggers and functions, then the schema (which fails, harmlessly, if anything else is in it)."""
    return "\n".join(["BEGIN;", *_uninstall_statements(), "COMMIT;", f"DROP SCHEMA IF EXISTS {SCHEMA};"]) + "\n"


# -- status --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DdlCaptureStatus:
    """What is installed, whether it works, and what an administrator must run otherwise (`sql`)."""

    installed: bool  # every trigger exists and calls its aurora_sync function
    enabled: bool  # every trigger fires in ordinary sessions (pg_event_trigger.evtenabled 'O' or 'A')
    current: bool  # the functions are this version's (an older install is replaced by installing again)
    can_install: bool  # superuser, or on RDS/Aurora a member of rds_superuser
    supported: bool  # PostgreSQL 14+: pgoutput delivers logical messages
    role: str
    message: str  # one human sentence or two
    sql: str = ""  # what must be run (by an administrator when `can_install` is false); "" when nothing
    triggers: dict[str, str] = field(default_factory=dict)  # trigger name -> evtenabled

    @property
    def active(self) -> bool:
        """DDL reaches the stream: CDC can rely on the messages instead of guessing from the catalog."""
        return self.installed and self.enabled and self.current and self.supported


def ddl_capture_status(conn: Any) -> DdlCaptureStatus:
    """Read-only look at the event triggers and the connected role (`conn`: a DB-API connection)."""
    version = int(query(conn, "SHOW server_version_num")[0][0])
    role, superuser, rds_superuser = query(conn, """
        SELECT r.rolname, r.rolsuper,
               EXISTS (SELECT 1 FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_superuser'
                       AND pg_catalog.pg_has_role(r.oid, g.oid, 'member'))
        FROM pg_catalog.pg_roles r WHERE r.rolname = current_user""")[0]
    # a function is trusted when an administrator (who alone could create the triggers) owns it and its schema
    rows = query(conn, f"""
        SELECT e.evtname, e.evtenabled, e.evtevent, n.nspname, p.proname, p.prosrc,
               (SELECT {_ADMIN} FROM pg_catalog.pg_roles r WHERE r.oid = p.proowner),
               (SELECT {_ADMIN} FROM pg_catalog.pg_roles r WHERE r.oid = n.nspowner)
        FROM pg_catalog.pg_event_trigger e
        JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE e.evtname = ANY(%s)""", (list(TRIGGERS),))
    found = {r[0]: r for r in rows}
    expected = {trigger: (event, function, body) for function, (body, event, trigger, _) in _FUNCTIONS.items()}
    ours = {name: r for name, r in found.items()
            if (r[2], r[3], r[4]) == (expected[name][0], SCHEMA, expected[name][1])}
    triggers = {name: str(r[1]) for name, r in found.items()}
    installed = len(ours) == len(TRIGGERS)
    enabled = installed and all(triggers[t] in ("O", "A") for t in TRIGGERS)
    current = installed and all(ours[t][5] == expected[t][2] and ours[t][6] and ours[t][7] for t in TRIGGERS)
    can_install = bool(superuser or rds_superuser)
    supported = version >= MIN_SERVER_VERSION
    who = ("PostgreSQL lets only superusers create event triggers; on Amazon RDS and Aurora a member of "
           "rds_superuser may")
    if not supported:
        message = (f"PostgreSQL {version // 10000} does not send logical messages through pgoutput (14+ does): "
                   "CDC finds schema changes by comparing the catalog")
        return DdlCaptureStatus(installed, enabled, current, can_install, supported, role, message, "", triggers)
    if installed and enabled and current:
        message = f"installed: event triggers {', '.join(TRIGGERS)} are enabled"
        return DdlCaptureStatus(True, True, True, can_install, True, role, message, "", triggers)
    if installed and not enabled:
        off = [t for t in TRIGGERS if triggers[t] not in ("O", "A")]
        sql = "".join(f"ALTER EVENT TRIGGER {t} ENABLE ALWAYS;\n" for t in off)
        message = (f"installed but disabled: {', '.join(f'{t} (evtenabled={triggers[t]})' for t in off)}; "
                   "CDC compares the catalog instead")
    elif installed:
        sql = install_sql()
        message = ("installed, but its functions are not this version's or not owned by an administrator: install "
                   "it again")
    else:
        sql = install_sql()
        missing = [t for t in TRIGGERS if t not in ours]
        message = f"not installed (missing: {', '.join(missing)}); CDC compares the catalog instead"
    if can_install:
        message += f"; role {role} can install it"
    else:
        message += (f"; role {role} cannot install it: {who}. An administrator must run the SQL once in this "
                    "database")
    return DdlCaptureStatus(installed, enabled, current, can_install, supported, role, message, sql, triggers)


# -- install / uninstall -------------------------------------------------------------------------------------
def install_ddl_capture(conn: Any) -> DdlCaptureStatus:
    """Install (or update) the schema, functions and event triggers in one transaction; idempotent.

    `conn`: an autocommit psycopg2 connection that may write the catalog. A role without the privilege gets the
    status back (nothing is created) instead of an error: CDC works without DDL capture, only less exactly.
    Does nothing before PostgreSQL 14, whose pgoutput would not deliver the messages. Raises PrerequisiteMissing
    when schema `aurora_sync` or a function in it belongs to a role that is not a superuser (see the guard).
    """
    status = ddl_capture_status(conn)
    if not status.supported or status.active:
        return status
    try:
        # one query string without BEGIN/COMMIT: PostgreSQL runs it as one implicit transaction, all or nothing
        query(conn, "\n".join(_install_statements()))
    except psycopg2.errors.ObjectNotInPrerequisiteState as exc:  # the ownership guard
        raise PrerequisiteMissing(f"Cannot install DDL capture: {(exc.pgerror or str(exc)).strip()}") from None
    except psycopg2.errors.InsufficientPrivilege as exc:
        failed = ddl_capture_status(conn)
        detail = (exc.pgerror or str(exc)).strip().splitlines()[0]
        return DdlCaptureStatus(failed.installed, failed.enabled, failed.current, False, True, failed.role,
                                f"{failed.message} ({detail})", install_sql(), failed.triggers)
    return ddl_capture_status(conn)


def uninstall_ddl_capture(conn: Any) -> DdlCaptureStatus:
    """Drop the event triggers and functions (teardown); the schema only when nothing else lives in it.

    A role that may not drop them gets the status back, with `uninstall_sql()` as what an administrator runs.
    Left behind, the triggers only write small WAL records no slot keeps.
    """
    try:
        query(conn, "\n".join(_uninstall_statements()))
    except psycopg2.errors.InsufficientPrivilege as exc:
        status = ddl_capture_status(conn)
        detail = (exc.pgerror or str(exc)).strip().splitlines()[0]
        return DdlCaptureStatus(status.installed, status.enabled, status.current, status.can_install,
                                status.supported, status.role,
                                f"cannot remove DDL capture as {status.role} ({detail}): an administrator must run "
                                "the SQL", uninstall_sql(), status.triggers)
    # someone else's objects living in the schema (or a schema not ours to drop) keep it
    with suppress(psycopg2.errors.DependentObjectsStillExist, psycopg2.errors.InsufficientPrivilege):
        query(conn, f"DROP SCHEMA IF EXISTS {SCHEMA}")
    return ddl_capture_status(conn)


# -- messages --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DdlEvent:
    """One decoded `aurora-sync-ddl` message: a table's DDL at its position in the stream."""

    kind: DdlKind
    schema: str
    table: str
    relid: int
    tag: str  # the command tag (ALTER TABLE, DROP SCHEMA, ...)
    reason: int | None = None  # rewrite only: REWRITE_REASONS bits
    identity: str = ""  # quoted schema.table
    root: tuple[str, str] | None = None  # (schema, table) of the partitioned root, for a partition
    # (attnum, name, type oid, typmod) after the DDL; None for `drop`
    columns: tuple[tuple[int, str, int, int], ...] | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def replicated_as(self) -> str:
        """The table CDC knows it by: its partitioned root (publish_via_partition_root), else itself."""
        return f"{self.root[0]}.{self.root[1]}" if self.root else self.qualified

    @property
    def reasons(self) -> list[str]:
        return [text for bit, text in REWRITE_REASONS.items() if (self.reason or 0) & bit]


def parse_ddl_message(content: bytes | str) -> DdlEvent | None:
    """The event in a message's content, or None when it is not a well-formed DDL message."""
    try:
        data = json.loads(content)
        kind, schema, table, relid, tag = (data[k] for k in ("kind", "schema", "table", "relid", "tag"))
        if kind not in KINDS or not all(isinstance(v, str) for v in (schema, table, tag)):
            return None
        if isinstance(relid, str) and relid.isdigit():
            relid = int(relid)  # an oid json_build_object was given uncast
        if isinstance(relid, bool) or not isinstance(relid, int):
            return None
        reason = data.get("reason")
        root = data.get("root")
        columns = data.get("columns")
        return DdlEvent(
            kind, schema, table, relid, tag,
            reason=int(reason) if reason is not None else None,
            identity=str(data.get("identity") or ""),
            root=(str(root["schema"]), str(root["table"])) if root else None,
            columns=tuple((int(c[0]), str(c[1]), int(c[2]), int(c[3])) for c in columns)
            if columns is not None else None)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def ddl_event(message: Message) -> DdlEvent | None:
    """The DDL event a decoded pgoutput message carries, if it is one of ours (transactional, our prefix)."""
    if not message.transactional or message.prefix != DDL_MESSAGE_PREFIX:
        return None
    return parse_ddl_message(message.content)
