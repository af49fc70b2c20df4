"""`aurora-sync snapshot-helper`: one more task reading the chunks of a pipeline's snapshots in progress.

The pipeline's run stays the coordinator (set `[sources.postgres.snapshot] helper_tasks` there); helpers claim
chunks it has not claimed, load them, and exit 0 once there was nothing to do for `--idle-seconds`
(`pipelines.snapshot_helper`; terraform: `snapshot_helper_tasks`). No pipeline lock: any number may run.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from pipelines.snapshot_helper import HelperConfigError

from .. import logs
from ..errors import RunnerError
from ..exit_codes import ExitCode
from ..settings import load_settings
from .run import PIPELINES, load_pipeline_module


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--idle-seconds", type=float, default=300.0,
                        help="exit 0 once there was no chunk to load for this long (default 300)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline, mode="snapshot-helper")
    settings = load_settings()
    module = load_pipeline_module(args.pipeline)
    # SIGTERM (ECS stop): finish the package in flight, then stop; dlt would abort it instead
    os.environ["RUNTIME__INTERCEPT_SIGNALS"] = "false"
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    logs.event("snapshot helper started", phase="snapshot")
    try:
        result = module.help_snapshots(args.idle_seconds, settings.dead_letter_url, stop)
    except HelperConfigError as exc:
        raise RunnerError(str(exc), ExitCode.CONFIG_ERROR) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    logs.event("snapshot helper done", phase="snapshot", chunks=sum(result.chunks.values()),
               rows=sum(result.rows.values()), tables=sorted(result.chunks),
               duration_s=round(time.monotonic() - started, 3))
    return ExitCode.SUCCESS
