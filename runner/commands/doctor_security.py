"""The security half of `aurora-sync doctor`: encryption in transit and the sync role's privileges.

Kept apart from `doctor.py` so each check names the exact fix: the TLS state comes from `pg_stat_ssl` (what the
server sees) and libpq's effective `sslmode` (whether the certificate and host name were verified); the role
checks compare the connected role with the least privilege in `sources/postgres/grants.sql`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from sources.postgres.catalog import TableSpec
from sources.postgres.transport import VERIFIED_MODE, remote_hosts

from .checks import Check

GRANTS_FILE = "sources/postgres/grants.sql"


def tls_check(conn: sa.Connection) -> Check:
    """Is this session encrypted (pg_stat_ssl) and was the server verified (libpq's effective sslmode)?"""
    ssl, version, cipher = conn.execute(sa.text(
        "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).one()
    params: dict[str, Any] = conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
    mode = params.get("sslmode", "prefer")
    remote = remote_hosts(params)
    verified = bool(ssl) and mode == VERIFIED_MODE
    state = f"encrypted ({version}, {cipher})" if ssl else "not encrypted"
    detail = f"{state}; {'verified' if verified else 'not verified'} (sslmode={mode}" + (
        f", CA {params.get('sslrootcert')})" if verified else ")")
    if verified:
        return Check("source: TLS", "ok", detail)
    if not remote:
        return Check("source: TLS", "ok", f"{detail}; loopback connection, TLS not required")
    return Check("source: TLS", "warn", detail, "remote host without verification "
                 "(sources.postgres.allow_insecure_transport = true): remove it and use sslmode=verify-full")


def role_checks(conn: sa.Connection) -> list[Check]:
    """Superuser or rds_superuser, and no connection limit, are more than the sync needs."""
    name, superuser, conn_limit = conn.execute(sa.text(
        "SELECT rolname, rolsuper, rolconnlimit FROM pg_roles WHERE rolname = current_user")).one()
    rds_superuser = bool(conn.execute(sa.text(
        "SELECT pg_has_role(current_user, oid, 'member') FROM pg_roles WHERE rolname = 'rds_superuser'")).scalar())
    checks = []
    if superuser or rds_superuser:
        checks.append(Check("source: role privileges", "warn",
                            f"{name} is {'a superuser' if superuser else 'a member of rds_superuser'}",
                            f"use a role with only the grants in {GRANTS_FILE} (rds_replication, SELECT)"))
    else:
        checks.append(Check("source: role privileges", "ok", f"{name} is not a superuser nor rds_superuser"))
    if conn_limit < 0:
        checks.append(Check("source: connection limit", "warn", f"{name} has no CONNECTION LIMIT",
                            f"ALTER ROLE {name} CONNECTION LIMIT 10 (the budget in docs/security.md)"))
    else:
        checks.append(Check("source: connection limit", "ok", f"{name} CONNECTION LIMIT {conn_limit}"))
    return checks


def write_privilege_check(conn: sa.Connection, specs: list[TableSpec]) -> Check:
    """The sync only reads replicated tables: any write privilege on one is a risk it does not need.

    Tables are looked up by catalog row and checked by oid, never by a name that would need quoting (capitals,
    spaces, quotes); the fix names them quoted."""
    if not specs:
        return Check("source: write privilege", "ok", "read-only on every replicated table")
    writable = {(r[0], r[1]): r[2] for r in conn.execute(sa.text(
        "SELECT n.nspname, c.relname, format('%I.%I', n.nspname, c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(CAST(:schemas AS text[]), CAST(:names AS text[]))) "
        "AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')"),
        {"schemas": [s.schema for s in specs], "names": [s.name for s in specs]})}
    found = [s for s in specs if (s.schema, s.name) in writable]
    if found:
        shown = ", ".join(s.qualified for s in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        quoted = ", ".join(writable[(s.schema, s.name)] for s in found[:5]) + (", ..." if len(found) > 5 else "")
        return Check("source: write privilege", "warn", f"can write to {shown}",
                     f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {quoted} FROM <sync role> (or do not sync as the "
                     "table owner)")
    return Check("source: write privilege", "ok", "read-only on every replicated table")
