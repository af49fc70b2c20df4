"""Pipelines from configuration: a `[pipelines.<name>]` section defines a pipeline, no code and no new image.

    [pipelines.billing]                  # .dlt/config.toml (or PIPELINES__BILLING__SCHEMAS=... env vars)
    schemas = ["billing"]
    include = ["*"]
    exclude = ["billing.audit_*"]
    dataset_name = "billing"
    destination = "snowflake"            # dlt's `destination_type`
    mode = "incremental"                 # what `aurora-sync run --pipeline billing` does without --mode
    schedule = "rate(15 minutes)"        # for people and Terraform's `schedules`; the runner does not read it

    [pipelines.billing.credentials]      # .dlt/secrets.toml, env, or Vault: never config.toml
    ...

Every other key of the section is a source key (`[sources.postgres]`, and its `snapshot` and `replication`
subsections as `[pipelines.billing.snapshot]`, ...). dlt already scopes configuration by pipeline
(`[billing.sources.postgres] schemas = ...` wins over `[sources.postgres]` while the pipeline `billing` runs); the
provider below only lets one section say it all: it answers dlt's pipeline-scoped lookups from `[pipelines.<name>]`.
Anything a pipeline does not set falls back to the shared `[sources.postgres]` and `[destination.*]` sections.

`customers_orders` is one such entry, with its own module (`pipelines.customers_orders`, for `python -m`); any other
name is served by `ConfiguredPipeline`, which is that module's code with another name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dlt.common.configuration.container import Container
from dlt.common.configuration.providers import ConfigProvider
from dlt.common.configuration.providers.provider import get_key_name
from dlt.common.configuration.resolve import inject_section
from dlt.common.configuration.specs.base_configuration import is_secret_hint
from dlt.common.configuration.specs.config_section_context import ConfigSectionContext
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext
from dlt.common.typing import AnyType

SECTION = "pipelines"
BUILT_IN = "customers_orders"
MODES = ("incremental", "snapshot", "cdc")
# dlt's own pipeline keys (`[<name>] dataset_name = ...`) an entry may set; `destination` is the friendlier alias
_PIPELINE_KEYS = {"dataset_name": ("dataset_name",), "destination_type": ("destination_type", "destination"),
                  "staging_type": ("staging_type", "staging")}
# the source's sections (`sources.postgres.SOURCE_SECTIONS`); below them, an entry's keys
_SOURCE_PREFIX = ("sources", "postgres")
_SOURCE_NAME = "postgres_replica"
_RUNNER_KEYS = ("mode", "schedule")


def _providers(skip: ConfigProvider | None = None) -> list[ConfigProvider]:
    return [p for p in Container()[PluggableRunContext].providers.providers if p is not skip and not p.is_empty]


def pipeline_names() -> list[str]:
    """Every configured pipeline: `[pipelines.<name>]` tables in the TOML files, `PIPELINES__<NAME>__...` env vars,
    and `customers_orders`."""
    names = {BUILT_IN}
    for provider in _providers():
        if not provider.supports_sections or isinstance(provider, PipelineEntries):
            continue
        try:
            table, _ = provider.get_value(SECTION, AnyType, None)
        except Exception:  # a provider that cannot list (or refuses) adds nothing
            continue
        if isinstance(table, Mapping):
            names.update(str(name) for name, entry in table.items() if isinstance(entry, Mapping))
    prefix = SECTION.upper() + "__"
    names.update(k[len(prefix):].split("__", 1)[0].lower() for k in os.environ
                 if k.startswith(prefix) and "__" in k[len(prefix):])
    return sorted(names)


def entry_value(name: str, key: str, default: Any = None) -> Any:
    """One key of `[pipelines.<name>]` as dlt's providers resolve it (env first, then the TOML files)."""
    value = _lookup(None, name, key, (), AnyType)
    return default if value is None else value


def default_mode(name: str) -> str:
    mode = str(entry_value(name, "mode", "incremental"))
    if mode not in MODES:
        from sources.postgres.errors import SourceConfigError

        raise SourceConfigError(f"[pipelines.{name}] mode = {mode!r}: expected one of {', '.join(MODES)}.")
    return mode


def _lookup(skip: ConfigProvider | None, name: str, key: str, path: tuple[str, ...], hint: Any) -> Any:
    secret = is_secret_hint(hint) or "credentials" in (*path, key)
    for provider in _providers(skip):
        if isinstance(provider, PipelineEntries) or not provider.supports_sections:
            continue
        if secret and not provider.supports_secrets:  # a secret never comes from config.toml, here either
            continue
        try:
            value, _ = provider.get_value(key, hint, None, SECTION, name, *path)
        except Exception:
            continue
        if value is not None:
            return value
    return None


class PipelineEntries(ConfigProvider):
    """Answers dlt's lookups scoped to pipeline `<name>` from `[pipelines.<name>]` (see the module docstring)."""

    NAME = "aurora-sync [pipelines.<name>]"

    def get_value(self, key: str, hint: type[Any], pipeline_name: str | None, *sections: str) -> tuple[Any, str]:
        full_key = get_key_name(key, ".", *((pipeline_name,) if pipeline_name else ()), *sections)
        if not pipeline_name or pipeline_name == SECTION:
            return None, full_key
        if not sections and key in _PIPELINE_KEYS:
            candidates: list[tuple[tuple[str, ...], str]] = [((), alias) for alias in _PIPELINE_KEYS[key]]
        elif tuple(sections[:2]) == _SOURCE_PREFIX:
            rest = tuple(sections[2:])
            rest = rest[1:] if rest[:1] == (_SOURCE_NAME,) else rest
            candidates = [(rest, key)]
        else:
            return None, full_key
        for path, name in candidates:
            if not path and name in _RUNNER_KEYS:
                continue
            value = _lookup(self, pipeline_name, name, path, hint)
            if value is not None:
                return value, full_key
        return None, full_key

    def get_value_location(self, key: str, pipeline_name: str | None, *sections: str) -> str:
        return f"[{SECTION}.{pipeline_name}]"

    @property
    def supports_secrets(self) -> bool:
        return True  # only ever hands on what a secrets-capable provider holds (`_lookup`)

    @property
    def supports_sections(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return self.NAME


def register() -> None:
    """Make `[pipelines.<name>]` sections answer dlt's lookups in this process (idempotent)."""
    providers = Container()[PluggableRunContext].providers
    if PipelineEntries.NAME not in providers:
        providers.add_provider(PipelineEntries())


@contextmanager
def scoped(name: str) -> Iterator[None]:
    """Resolve every setting of this block for pipeline `name` first: its entry, `[<name>.*]`, then the shared
    sections. dlt does this by itself inside a pipeline's own steps; the runner's checks, locks and the CDC
    settings are resolved outside them."""
    register()
    with inject_section(ConfigSectionContext(pipeline_name=name)):
        yield


class ConfiguredPipeline:
    """A pipeline from `[pipelines.<name>]`: the functions of `pipelines.customers_orders`, under another name."""

    def __init__(self, name: str) -> None:
        self.PIPELINE_NAME = name

    def make_pipeline(self, pipelines_dir: str | None = None) -> Any:
        from pipelines import customers_orders

        return customers_orders.make_pipeline(pipelines_dir, name=self.PIPELINE_NAME)

    def run(self, **kwargs: Any) -> Any:
        from pipelines import customers_orders

        return customers_orders.run(pipeline=kwargs.pop("pipeline", None) or self.make_pipeline(
            kwargs.pop("pipelines_dir", None)), **kwargs)

    def help_snapshots(self, *args: Any, **kwargs: Any) -> Any:
        from pipelines import customers_orders

        return customers_orders.help_snapshots(*args, name=self.PIPELINE_NAME, **kwargs)
