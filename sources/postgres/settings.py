"""The source's table-deciding settings, resolved exactly as dlt resolves `postgres_replica`'s arguments.

Other parts that must see the same tables as the source (schema-change detection before a run, `verify`,
`doctor`) read them here, so every key and env var means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dlt
import sqlalchemy as sa
from dlt.common.configuration import with_config
from dlt.common.configuration.resolve import inject_section
from dlt.common.configuration.specs import ConnectionStringCredentials
from dlt.common.configuration.specs.config_section_context import ConfigSectionContext

from .catalog import TableSpec, discover_tables
from .errors import SourceConfigError, describe_url, explain_connection_error
from .session import make_engine

# the source function's config sections: `sources.postgres.<key>` (and `sources.postgres.postgres_replica.<key>`)
SOURCE_SECTIONS = ("sources", "postgres", "postgres_replica")


@dataclass(frozen=True)
class SourceSettings:
    credentials: ConnectionStringCredentials
    reader_credentials: ConnectionStringCredentials | None
    schemas: list[str]
    include: list[str]
    exclude: list[str]
    overrides: dict[str, dict[str, object]]
    cursor_column: str

    def discover(self, engine: sa.Engine) -> list[TableSpec]:
        try:
            return discover_tables(engine, self.schemas, self.include, self.exclude, self.cursor_column,
                                   self.overrides)
        except sa.exc.OperationalError as exc:
            raise (explain_connection_error(exc, describe_url(engine)) or exc) from None


@with_config(sections=SOURCE_SECTIONS)
def _source_settings(
    credentials: ConnectionStringCredentials = dlt.secrets.value,
    reader_credentials: ConnectionStringCredentials | None = dlt.secrets.value,
    schemas: list[str] = dlt.config.value,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    tables: dict[str, Any] | None = None,
    cursor_column: str = "updated_at",
) -> SourceSettings:
    """The subset of `postgres_replica`'s arguments that decides which tables exist, resolved like dlt does."""
    if isinstance(schemas, str):
        schemas = [s.strip() for s in schemas.split(",") if s.strip()]
    if not schemas:
        raise SourceConfigError("`sources.postgres.schemas` is empty: name at least one schema to replicate.")
    overrides = {str(k): dict(v) for k, v in (tables or {}).items()}
    return SourceSettings(credentials, reader_credentials, list(schemas), include or ["*"], exclude or [],
                          overrides, cursor_column)


def load_source_settings(pipeline_name: str) -> SourceSettings:
    """Resolve in the sections the source itself uses, so every key (and env var) means the same thing."""
    with inject_section(ConfigSectionContext(pipeline_name=pipeline_name, sections=SOURCE_SECTIONS)):
        return _source_settings()  # type: ignore[call-arg]


@dataclass(frozen=True)
class Discovery:
    """The replicated tables as one connection to the writer saw them (`discovered`)."""

    engine: sa.Engine
    specs: list[TableSpec]


@contextmanager
def discovered(pipeline_name: str, statement_timeout_ms: int = 60_000) -> Iterator[Discovery]:
    """The settings resolved, an engine on the writer and its tables discovered, once for the checks a run makes
    before its first read (schema changes, snapshot plans): each alone would do all three again."""
    settings = load_source_settings(pipeline_name)
    engine = make_engine(settings.credentials, statement_timeout_ms)
    try:
        yield Discovery(engine, settings.discover(engine))
    finally:
        engine.dispose()
