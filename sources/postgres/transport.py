"""Encryption in transit to the source: TLS with full verification for every host that is not loopback.

Every connection the sync opens to PostgreSQL (snapshot and verify engines, the replication stream, the
CDC snapshot sessions, the pipeline lock) passes its DSN through `secure_dsn` / `secure_url` first:

* loopback (`localhost`, 127.0.0.0/8, ::1, a Unix socket): left as given;
* anything else: `sslmode` must be `verify-full`, i.e. encrypted *and* the server certificate checked against
  a CA and the host name. A DSN without `sslmode` gets `verify-full` and the shipped Amazon RDS CA bundle
  (`sources.postgres.ca_bundle`), so production is TLS by default; a DSN that asks for less (`disable`,
  `allow`, `prefer`, `require`, `verify-ca`) is a configuration error (exit 2), unless
  `sources.postgres.allow_insecure_transport = true`, and then every run logs a warning.

A host name with a loopback `hostaddr` (an SSH or SSM port-forward to Aurora) counts as remote: the tunnel's
far end is the network we protect against, and `verify-full` still checks the certificate against the name.
No name is resolved to decide: only the literal text of `host`/`hostaddr` (and PGHOST/PGHOSTADDR) counts.

The decision is made before any connection is attempted, so a refused DSN sends nothing on the network.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2.extensions
import sqlalchemy as sa
from dlt.common.configuration import with_config

from .ca_bundle import BUNDLE_PATH
from .errors import SourceConfigError

SECTIONS = ("sources", "postgres")
VERIFIED_MODE = "verify-full"
WEAK_MODES = ("disable", "allow", "prefer", "require", "verify-ca")
logger = logging.getLogger("aurora_sync.transport")
_warned: set[str] = set()


class InsecureTransport(SourceConfigError):
    """A DSN to a remote host does not ask for TLS with certificate and host-name verification."""


class CABundleMissing(SourceConfigError):
    """The CA bundle that `sslmode=verify-full` needs is not where the configuration says."""


@dataclass(frozen=True)
class TransportSettings:
    allow_insecure_transport: bool
    ssl_root_cert: Path


@with_config(sections=SECTIONS)
def transport_settings(
    allow_insecure_transport: bool = False,
    ssl_root_cert: str | None = None,
) -> TransportSettings:
    """Resolve the TLS policy from dlt config (`sources.postgres.*`).

    Args:
        allow_insecure_transport: accept a DSN to a remote host without `sslmode=verify-full` (a warning is
            logged on every run). For a migration window only.
        ssl_root_cert: CA bundle for `verify-full` when the DSN names no `sslrootcert`; default the Amazon RDS
            global bundle shipped in `sources/postgres/certs/rds-global-bundle.pem`.
    """
    if not isinstance(allow_insecure_transport, bool):
        raise SourceConfigError("`sources.postgres.allow_insecure_transport` must be true or false, "
                                f"got {allow_insecure_transport!r}.")
    return TransportSettings(allow_insecure_transport, Path(ssl_root_cert) if ssl_root_cert else BUNDLE_PATH)


def _is_loopback(host: str) -> bool:
    if not host or host.startswith(("/", "@")):  # empty: libpq's default Unix socket; "@": abstract socket
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: never resolved here, so it is remote


def remote_hosts(params: dict[str, str]) -> list[str]:
    """The hosts of a parsed DSN that are not loopback (empty: a local connection)."""
    hosts = (params.get("host") or os.environ.get("PGHOST") or "").split(",")
    addrs = (params.get("hostaddr") or os.environ.get("PGHOSTADDR") or "").split(",")
    remote = [h for h in hosts if not _is_loopback(h.strip())]
    remote += [a for a in addrs if a.strip() and not _is_loopback(a.strip())]
    return remote


def _parse(dsn: str) -> dict[str, str]:
    try:
        return dict(psycopg2.extensions.parse_dsn(dsn))
    except psycopg2.ProgrammingError as exc:
        raise SourceConfigError(f"The source DSN cannot be parsed: {str(exc).strip()}.") from None


def required_params(params: dict[str, str], settings: TransportSettings | None = None) -> dict[str, str]:
    """The libpq parameters to add to a DSN so that it meets the policy; raises when it cannot."""
    remote = remote_hosts(params)
    if not remote:
        return {}
    settings = settings or transport_settings()  # type: ignore[call-arg]
    where = ",".join(remote)
    mode = params.get("sslmode")  # an inherited PGSSLMODE cannot weaken the default: we set sslmode explicitly
    if mode is not None and mode != VERIFIED_MODE:
        if settings.allow_insecure_transport:
            if where not in _warned:
                _warned.add(where)
                logger.warning(
                    f"TLS is not verified for the source host {where} (sslmode={mode}): "
                    "sources.postgres.allow_insecure_transport = true. Credentials and rows can be read or changed "
                    "on the network; use sslmode=verify-full.", extra={"fields": {"phase": "connect"}})
            return {}
        raise InsecureTransport(
            f"The source DSN for {where} has sslmode={mode}: a host that is not loopback needs sslmode=verify-full "
            "(TLS with the server certificate and host name checked). Remove sslmode to use verify-full with the "
            "shipped Amazon RDS CA bundle, or set sslmode=verify-full (and sslrootcert). Only for a migration "
            "window: sources.postgres.allow_insecure_transport = true.")
    added = {"sslmode": VERIFIED_MODE}
    if not params.get("sslrootcert") and not os.environ.get("PGSSLROOTCERT"):
        if not settings.ssl_root_cert.is_file():
            raise CABundleMissing(
                f"The CA bundle {settings.ssl_root_cert} for verifying {where} does not exist: set "
                "`sources.postgres.ssl_root_cert` to the Amazon RDS global bundle (global-bundle.pem), or name one "
                "with sslrootcert in the DSN.")
        added["sslrootcert"] = str(settings.ssl_root_cert)
    return added


def secure_dsn(dsn: str) -> str:
    """A libpq DSN (URL or key=value) that meets the transport policy, for `psycopg2.connect`."""
    added = required_params(_parse(dsn))
    return psycopg2.extensions.make_dsn(dsn, **added) if added else dsn


def secure_url(url: sa.URL) -> sa.URL:
    """The same for a SQLAlchemy URL (its query parameters are passed to libpq)."""
    params: dict[str, Any] = {k: v for k, v in url.query.items() if isinstance(v, str)}
    if url.host:
        params["host"] = url.host
    added = required_params(params)
    return url.update_query_dict(added) if added else url
