"""`aurora-sync teardown`: stop CDC at the source (drop the slot and publication).

Dropping the slot is what stops the source from retaining WAL for us; the destination tables stay. A
later `setup` copies every table again. Requires `--yes`, because the position is gone for good.
"""

from __future__ import annotations

import argparse
import time

from pipelines import cdc

from .. import logs
from ..errors import RunnerError
from ..exit_codes import ExitCode
from ..lock import pipeline_lock
from .run import PIPELINES, load_pipeline_module, source_dsn


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="customers_orders", choices=sorted(PIPELINES))
    parser.add_argument("--keep-publication", action="store_true", help="drop only the slot")
    parser.add_argument("--yes", action="store_true", help="confirm: the CDC position is lost for good")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> ExitCode:
    logs.bind(pipeline=args.pipeline, mode="cdc")
    if not args.yes:
        raise RunnerError("teardown drops the replication slot: the next CDC run needs `aurora-sync setup`, which "
                          "copies every table again. Rerun with --yes to confirm.", ExitCode.CONFIG_ERROR)
    module = load_pipeline_module(args.pipeline)
    started = time.monotonic()
    with pipeline_lock(source_dsn(), args.pipeline):
        report = cdc.teardown(module.make_pipeline(), keep_publication=args.keep_publication)
    logs.event("teardown succeeded", phase="teardown", slot=report.slot, slot_dropped=report.slot_dropped,
               publication=report.publication, publication_dropped=report.publication_dropped,
               duration_s=round(time.monotonic() - started, 3), outcome="succeeded")
    return ExitCode.SUCCESS
