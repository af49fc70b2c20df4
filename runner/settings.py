"""The runner's own settings, resolved by dlt from `[runner]` in .dlt/config.toml or RUNNER__* env vars."""

from __future__ import annotations

from typing import ClassVar, Literal

from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs import BaseConfiguration

DeadLetterPolicy = Literal["fail", "continue"]


@configspec
class RunnerSettings(BaseConfiguration):
    max_attempts: int = 3
    """Attempts per run for transient failures (dropped connection, throttling, 5xx)."""
    backoff_initial_seconds: float = 2.0
    backoff_max_seconds: float = 60.0
    dead_letter_url: str = "dead_letter"
    """`s3://<bucket>/dead_letter` in production; a local folder for DuckDB."""
    dead_letter_policy: str = "fail"
    """`fail`: the run loads the good rows but exits 1 when any row was dead-lettered. `continue`: exit 0."""
    notify_sns_topic_arn: str | None = None
    notify_webhook_url: str | None = None
    metrics_namespace: str = "AuroraSnowflakeSync"
    liveness_seconds: float = 60.0
    """Follow mode reports RunSucceeded/LagSeconds this often while it makes progress (staleness alarm)."""

    __section__: ClassVar[str] = "runner"

    def on_resolved(self) -> None:
        from sources.postgres.errors import SourceConfigError

        if self.max_attempts < 1:
            raise SourceConfigError(f"`runner.max_attempts` must be >= 1, got {self.max_attempts}.")
        if self.dead_letter_policy not in ("fail", "continue"):
            raise SourceConfigError(
                f"`runner.dead_letter_policy` must be 'fail' or 'continue', got {self.dead_letter_policy!r}.")


def load_settings() -> RunnerSettings:
    return resolve_configuration(RunnerSettings(), sections=("runner",))
