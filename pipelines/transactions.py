"""Every table's merge or replace is one warehouse transaction, as the apply invariant assumes (`docs/cdc.md`).

dlt 1.31 leaves `supports_transactions` unset in the DuckDB and Snowflake capabilities, and runs a follow-up job
that has no DDL (a merge's DELETE of the changed keys, then the INSERT of their new versions) statement by statement
in autocommit. A kill -9, an outage or a failed INSERT between the two left those keys deleted; the fencing check
(`pipelines.fence`) would not be in the writes' transaction either. Both warehouses run these statements in one
transaction perfectly well, so the capability is set explicitly on the destination factory (its `caps_params`, which
dlt applies over the factory's own capabilities).
"""

from __future__ import annotations

from typing import Any

TRANSACTIONAL = ("duckdb", "snowflake")


def transactional(destination: Any) -> Any:
    """`destination` (a dlt destination factory, or None), set to run each follow-up job in one transaction."""
    if destination is not None and destination.destination_type.rsplit(".", 1)[-1] in TRANSACTIONAL:
        destination.caps_params = {**destination.caps_params, "supports_transactions": True}
    return destination
