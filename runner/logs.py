"""Logging: one JSON object per line when not on a terminal (CloudWatch parses it), readable on a TTY.

Every line carries the run id and pipeline; callers add table, phase, rows, bytes, duration via
`extra={"fields": {...}}`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import Any

RUN_ID = uuid.uuid4().hex[:12]
_context: dict[str, Any] = {"run_id": RUN_ID}

logger = logging.getLogger("aurora_sync")


def bind(**fields: Any) -> None:
    """Add fields (pipeline, mode, ...) to every following log line."""
    _context.update({k: v for k, v in fields.items() if v is not None})


class JsonFormatter(logging.Formatter):
    show_tracebacks = False  # only with --debug: operators get one sentence, not a stack

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context,
            **getattr(record, "fields", {}),
        }
        if record.exc_info and self.show_tracebacks:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_info and record.exc_info[1] is not None:
            payload["exception"] = f"{type(record.exc_info[1]).__name__}: {str(record.exc_info[1]).splitlines()[0]}"
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    show_tracebacks = False

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "_aws")
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} " \
               f"{record.getMessage()}{'  ' + extra if extra else ''}"
        if record.exc_info and self.show_tracebacks:
            line += "\n" + self.formatException(record.exc_info)
        return line


class KnownDltNoise(logging.Filter):
    """Demote dlt's 'arrow schema differs from dlt hints' warning to debug.

    We send JSON columns as Arrow strings on purpose and keep dlt's reflected `json` hint; dlt warns
    about that on every run, which would train operators to ignore warnings.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "when merging arrow schema with dlt schema" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class RunnerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our stderr handler. dlt installs its own formatter on the first handler of the `dlt` logger;
    we keep ours so dlt's lines come out in the same JSON shape as the runner's."""

    def lock_formatter(self, formatter: logging.Formatter) -> None:
        super().setFormatter(formatter)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        pass


def setup(debug: bool = False, json_lines: bool | None = None) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = RunnerHandler(sys.stderr)
    formatter = JsonFormatter() if json_lines else TextFormatter()
    formatter.show_tracebacks = debug
    handler.lock_formatter(formatter)
    handler.addFilter(KnownDltNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    dlt_logger = logging.getLogger("dlt")
    dlt_logger.handlers[:] = [handler]
    dlt_logger.propagate = False
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def event(message: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})
