"""Process exit codes: ECS, schedulers and alarms tell outcomes apart by these alone.

This module is the one source of the exit-code table: `python -m runner.reference` renders it (with the SIGTERM
row from `ExitCode`'s docstring) into docs/cli.md#exit-codes, which every other document links to. Each member's
docstring is its meaning, then `Do:` what an operator does about it.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """What `aurora-sync` exits with.

    SIGTERM (ECS StopTask, a deployment of the follower, the stop timeout's first signal): the CDC follower
    (`run --mode cdc --follow`), `merge --follow` and `snapshot-helper` finish the batch or package in flight,
    confirm it and return as usual (0). Any other command stops: exit 143 (128 + SIGTERM), after the runner revoked
    its Vault leases and token when Vault is configured (`runner/vault`); a dlt step in progress is stopped by dlt
    at its next safe point instead, and the run exits 1. Either way nothing committed is lost: the next run resumes
    from the committed state. The task-failed alarm ignores 0, 3 and 143.
    """

    SUCCESS = 0
    """Success. Do: nothing."""

    FAILURE = 1
    """The run failed (source or destination unreachable after retries, a load or a table failed, dead letters
    under policy `fail`); nothing committed is lost. Do: let the next run repair it; page if it repeats (alarm
    `run-failures`)."""

    CONFIG_ERROR = 2
    """Bad configuration, credentials or input (a config value, wrong credentials, a missing schema, a table
    without a key, a Vault permission). Do: fix what the message names; retrying will not help."""

    LOCK_HELD = 3
    """Another run of the same pipeline holds the lock; this one did nothing. Do: nothing (a hung holder shows
    in `aurora-sync status`)."""

    DRIFT_FOUND = 4
    """`verify` found source and destination differ, and printed the key ranges. Do: `aurora-sync resync --table
    …` for the tables named (docs/operations.md#drift-verify-exit-4)."""
