"""Which identities a run used, logged once per run (the `identity` line) so audit trails can be joined up.

Vault (the auth method, role, token display name and entity id), AWS (the principal ARN that writes to the
archive bucket, from STS GetCallerIdentity with the same credentials and endpoint as dlt's filesystem
destination) and PostgreSQL (the session's role and whether the session is encrypted and verified). Only
names and ids: never a token, accessor, password or key. Each part that is not in use says so, and a part
that cannot be looked up logs why instead of failing the run.
"""

from __future__ import annotations

from typing import Any

import dlt

from . import logs


def database_identity(conn: Any) -> dict[str, Any]:
    """`conn`: an open psycopg2 connection to the source (the run's lock session)."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, coalesce(s.ssl, false), s.version FROM pg_stat_ssl s "
                    "WHERE s.pid = pg_backend_pid()")
        role, ssl, version = cur.fetchone()
    params = conn.get_dsn_parameters()
    return {"db_role": role, "db_host": params.get("host"), "db_ssl": bool(ssl), "db_tls_version": version,
            "db_sslmode": params.get("sslmode")}


def vault_identity() -> dict[str, Any]:
    from . import vault

    session = vault.current_session()
    if session is None:
        return {"vault": "not used"}
    fields: dict[str, Any] = {"vault_auth": session.auth.method, "vault_role": session.settings.role,
                              "vault_policies": ",".join(session.auth.policies)}
    try:
        data = session.client.auth.token.lookup_self()["data"]
        fields.update(vault_display_name=data.get("display_name"), vault_entity_id=data.get("entity_id") or None,
                      vault_role=fields["vault_role"] or (data.get("meta") or {}).get("role_name"))
    except Exception as exc:  # the policy grants lookup-self; a token minted elsewhere may not have it
        fields["vault_lookup"] = f"unavailable ({type(exc).__name__})"
    return fields


def aws_identity() -> dict[str, Any]:
    """The principal that writes the archive: only looked up when the bucket is on S3."""
    bucket = dlt.config.get("destination.filesystem.bucket_url")
    if not bucket or not str(bucket).startswith("s3://"):
        return {"aws_principal": "not used"}
    try:
        import boto3
        from botocore.config import Config
        from dlt.common.configuration import resolve_configuration
        from dlt.common.configuration.specs import AwsCredentials

        creds = resolve_configuration(AwsCredentials(), sections=("destination", "filesystem", "credentials"))
        client = boto3.Session(**creds.to_session_credentials(), region_name=creds.region_name).client(
            "sts", endpoint_url=creds.endpoint_url,
            config=Config(connect_timeout=5, read_timeout=5, retries={"max_attempts": 2}))
        answer = client.get_caller_identity()
        return {"aws_principal": answer["Arn"], "aws_account": answer["Account"]}
    except Exception as exc:
        return {"aws_principal": f"unknown ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"}


def log_identity(conn: Any) -> dict[str, Any]:
    fields = {**vault_identity(), **aws_identity(), **database_identity(conn)}
    logs.event("identity", phase="identity", **fields)
    return fields
