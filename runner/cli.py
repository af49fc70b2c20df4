"""`aurora-sync`: the command ECS tasks run. It composes pipelines and sources; it re-implements nothing.

Exit codes are in `runner.exit_codes`; each subcommand lives in its own module under
`runner/commands/` and registers itself in COMMANDS below.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from types import ModuleType

from pipelines import registry

from . import logs, vault
from .commands import dlq as dlq_command
from .commands import doctor as doctor_command
from .commands import merge as merge_command
from .commands import restore as restore_command
from .commands import resync as resync_command
from .commands import rollback as rollback_command
from .commands import run as run_command
from .commands import setup as setup_command
from .commands import snapshot_helper as snapshot_helper_command
from .commands import snowflake_bootstrap as snowflake_bootstrap_command
from .commands import status as status_command
from .commands import teardown as teardown_command
from .commands import verify as verify_command
from .errors import classify
from .exit_codes import ExitCode

# each module has `register(subparsers)` and a `main(args) -> ExitCode` set via set_defaults(func=...)
COMMANDS: list[ModuleType] = [
    run_command, merge_command, setup_command, teardown_command, status_command, verify_command, doctor_command,
    dlq_command, resync_command, rollback_command, snowflake_bootstrap_command, restore_command,
    snapshot_helper_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aurora-sync",
        description="Sync Aurora PostgreSQL into Snowflake (or DuckDB) with dlt.",
        epilog="Exit codes: 0 success, 1 failure, 2 configuration error, 3 lock held, 4 drift found.",
    )
    parser.add_argument("--debug", action="store_true", help="show stack traces and debug logs")
    parser.add_argument("--json-logs", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON log lines (default: when stderr is not a terminal)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(debug=args.debug, json_lines=args.json_logs)
    handler: Callable[[argparse.Namespace], ExitCode] = args.func
    try:
        # secrets from Vault when configured (docs/secrets.md); leases are revoked when the command ends
        # and every setting resolved for the chosen pipeline first (its `[pipelines.<name>]` entry)
        with vault.activate(), registry.scoped(getattr(args, "pipeline", None) or registry.BUILT_IN):
            return int(handler(args))
    except KeyboardInterrupt:
        logs.event("interrupted", logging.ERROR)
        return int(ExitCode.FAILURE)
    except Exception as exc:
        code, message = classify(exc)
        logs.logger.error(message, exc_info=exc if args.debug else None,
                          extra={"fields": {"phase": args.command, "outcome": "failed", "exit_code": int(code)}})
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
