"""`aurora-sync`: the command ECS tasks run. It composes pipelines and sources; it re-implements nothing.

Exit codes are in `runner.exit_codes`; each subcommand lives in its own module under
`runner/commands/` and is listed in SUBCOMMANDS below.

Start-up time: only the module of the command being run is imported (`build_parser(only=...)`). Every command
module pulls in what it runs on (dlt, SQLAlchemy, pyarrow, rich, the replication and replica packages); loading
all of them cost every `aurora-sync` process, ECS task and test subprocess about 0.15 s more than the command
needed, and `aurora-sync --help` about a second.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from . import logs
from .exit_codes import ExitCode


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str  # under runner/commands/: `register(parser)` adds its arguments and sets `func` to its `main(args)`
    help: str  # the line `aurora-sync --help` lists it with (without importing its module)


SUBCOMMANDS = (
    Subcommand("run", "run", "run one sync of a pipeline"),
    Subcommand("merge", "merge", "apply the CDC batches landed in S3 to the warehouse"),
    Subcommand("setup", "setup", "prepare logical replication (publication, slot) and copy tables"),
    Subcommand("teardown", "teardown", "drop the replication slot and publication of a pipeline"),
    Subcommand("status", "status", "show last runs, the last verify per table, pending packages, cursors and lag"),
    Subcommand("verify", "verify", "reconcile source and destination: row counts, checksums, drifting key ranges"),
    Subcommand("doctor", "doctor", "check every prerequisite and how to fix it"),
    Subcommand("dlq", "dlq", "list or replay dead-lettered rows"),
    Subcommand("resync", "resync", "re-snapshot one table"),
    Subcommand("rollback", "rollback", "Snowflake Time Travel rollback of one table"),
    Subcommand("snowflake-bootstrap", "snowflake_bootstrap",
               "create the Snowflake database, warehouse, role, user, integration and stage"),
    Subcommand("restore", "restore", "rebuild a table (or --all) as of a point in time from the archived files in S3"),
    Subcommand("snapshot-helper", "snapshot_helper",
               "help the pipeline's run read the chunks of its large-table snapshots"),
)


def command_module(command: Subcommand) -> ModuleType:
    return importlib.import_module(f"runner.commands.{command.module}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command with its arguments (the reference docs are generated from it), or with `only` the arguments
    of that command alone (`""`: of none): the others are listed, their modules are not imported."""
    parser = argparse.ArgumentParser(
        prog="aurora-sync",
        description="Sync Aurora PostgreSQL into Snowflake (or DuckDB) with dlt.",
        epilog="Exit codes: 0 success, 1 failure, 2 configuration error, 3 lock held, 4 drift found.",
    )
    parser.add_argument("--debug", action="store_true", help="show stack traces and debug logs")
    parser.add_argument("--json-logs", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON log lines (default: when stderr is not a terminal)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        subparser = subparsers.add_parser(command.name, help=command.help)
        if only is None or only == command.name:
            command_module(command).register(subparser)
    return parser


def chosen_command(argv: list[str]) -> str:
    """The subcommand `argv` runs: its first positional argument (the global options take no value), else ""."""
    first = next((arg for arg in argv if not arg.startswith("-")), "")
    return first if any(command.name == first for command in SUBCOMMANDS) else ""


def main(argv: list[str] | None = None) -> int:
    if argv is None and os.environ.get("AURORA_SYNC_FORK_SERVER"):  # the test suite's only (runner.fork_server)
        from .fork_server import delegate
        code = delegate(sys.argv)
        if code is not None:
            return code
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=chosen_command(argv)).parse_args(argv)
    logs.setup(debug=args.debug, json_lines=args.json_logs)
    # what every command runs under: imported once the arguments are valid, so `--help` and usage errors
    # answer without loading dlt (the command's own module, already imported, loads the rest)
    from pipelines import registry

    from . import vault
    from .errors import classify

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
