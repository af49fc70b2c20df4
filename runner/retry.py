"""Retry transient failures with exponential backoff and jitter; fail fast on permanent ones.

A retried run is safe: dlt keeps extracted and normalized load packages on disk and `pipeline.run`
finishes pending packages before extracting again, so nothing is lost or loaded twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import psycopg2
import sqlalchemy as sa
from dlt.common.exceptions import TerminalException, TransientException
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from sources.postgres.errors import SourceError, SourceUnreachable, explain_connection_error

from . import logs
from .errors import RunnerError, causes
from .settings import RunnerSettings

T = TypeVar("T")
THROTTLING = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "TooManyRequestsException",
              "ServiceUnavailable", "InternalError", "RequestTimeout"}


def is_transient(exc: BaseException) -> bool:
    for cause in causes(exc):
        if isinstance(cause, SourceUnreachable | TransientException):
            return True
        if isinstance(cause, RunnerError | SourceError | TerminalException):
            return False
        if isinstance(cause, psycopg2.errors.QueryCanceled):
            return False  # statement_timeout: retrying repeats the same long statement
        if isinstance(cause, psycopg2.OperationalError | sa.exc.OperationalError):
            return explain_connection_error(cause, "") is None or isinstance(
                explain_connection_error(cause, ""), SourceUnreachable)
        if type(cause).__module__.startswith("botocore"):
            response = getattr(cause, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return code in THROTTLING or status >= 500 or response == {}
        if type(cause).__module__.startswith("snowflake.connector") and type(cause).__name__ == "OperationalError":
            return True
        if isinstance(cause, ConnectionError | TimeoutError):
            return True
    return False


def with_retries(settings: RunnerSettings, attempt: Callable[[], T]) -> T:
    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logs.event(f"transient failure, retrying: {exc}", logging.WARNING, phase="retry",
                   attempt=state.attempt_number, sleep_s=round(state.upcoming_sleep, 1))

    retrying = Retrying(
        stop=stop_after_attempt(settings.max_attempts),
        wait=wait_exponential_jitter(multiplier=settings.backoff_initial_seconds, max=settings.backoff_max_seconds),
        retry=retry_if_exception(is_transient),
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(attempt)
