"""`aurora-sync snowflake-bootstrap [--print]`: create (or converge) the Snowflake objects the loader needs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from replica.snowflake_bootstrap import (
    KINDS,
    BootstrapConfigError,
    execute,
    generate,
    render,
    select,
    settings_from_config,
    terraform_outputs,
)

from .. import logs
from ..errors import RunnerError
from ..exit_codes import ExitCode


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate idempotent SQL from the dlt config and run it as the admin in "
        "[snowflake_bootstrap.credentials] (or only print it with --print)."
    )
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the SQL, run nothing")
    parser.add_argument("--terraform-outputs", metavar="FILE",
                        help="`terraform output -json` file: integration role ARN and bucket come from it")
    parser.add_argument("--public-key-file", metavar="FILE", help="the loader's RSA public key (PEM)")
    parser.add_argument("--only", nargs="+", choices=KINDS, metavar="KIND",
                        help=f"only these kinds of statement ({', '.join(KINDS)})")
    parser.set_defaults(func=main)


def _connect() -> Any:
    """The admin connection, from `[snowflake_bootstrap.credentials]` (a secret: env var, secrets.toml or Vault)."""
    import snowflake.connector
    from dlt.common.configuration import resolve_configuration
    from dlt.destinations.impl.snowflake.configuration import SnowflakeCredentials

    credentials = resolve_configuration(SnowflakeCredentials(), sections=("snowflake_bootstrap", "credentials"))
    return snowflake.connector.connect(**credentials.to_connector_params())


def main(args: argparse.Namespace) -> ExitCode:
    overrides: dict[str, Any] = {}
    if args.terraform_outputs:
        overrides.update(terraform_outputs(args.terraform_outputs))
    if args.public_key_file:
        with open(args.public_key_file, encoding="ascii") as fh:
            overrides["public_key"] = fh.read()
    try:
        statements = select(generate(settings_from_config(overrides)), args.only)
    except BootstrapConfigError as exc:
        raise RunnerError(str(exc), ExitCode.CONFIG_ERROR) from exc
    if args.print_only:
        sys.stdout.write(render(statements))
        return ExitCode.SUCCESS
    logs.event("snowflake bootstrap started", phase="bootstrap", statements=len(statements))
    connection = _connect()
    try:
        count = execute(connection, statements)
    finally:
        connection.close()
    logs.event("snowflake bootstrap succeeded", phase="bootstrap", statements=count, outcome="succeeded")
    return ExitCode.SUCCESS
