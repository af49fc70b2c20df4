"""Fencing: a task that lost its lock without knowing it can never commit to the warehouse again.

`merge` and the direct CDC follower each take a lock (`runner.lock`): a session advisory lock on the writer. A failover
of the writer, `idle_session_timeout` or a network partition ends that session silently, another task then takes the
lock, and for a while both run. A lock alone cannot stop the first one's next commit; a fencing token checked inside
the write's own transaction can (Kleppmann, "How to do distributed locking").

Each holder writes a token of its own into `<dataset>._aurora_fence` when it starts (`take_over`), replacing the
previous holder's. Every transaction in which it changes the warehouse through dlt checks that the token is still
its own, and fails otherwise:

- a table's merge (dlt's DELETE and INSERT from the staging dataset, one transaction per table);
- a table's replace (loaded into staging, then copied over in one transaction: `insert-from-staging`);
- the load's completion (`_dlt_loads`), which is what makes the package's dlt state visible to the next task.

In Snowflake the check first *updates* the holder's fence row, which serialises it with a take-over writing that row:
either the stale transaction commits before the new holder took over, or it sees another token and raises inside
the warehouse. DuckDB needs only the read: one process at a time opens its file for writing.
The apply's own SQL (a TRUNCATE, keyless deletes by key) is guarded by position or idempotent (`pipelines.apply`),
so a stale holder cannot undo anything with it either.

dlt has no hook for a check inside its transactions, so the destination's job client is subclassed (the merge and
replace follow-up jobs prepend the check, `complete_load` wraps it) for the two warehouses this tool writes to,
DuckDB and Snowflake; other destinations are used unfenced.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dlt
from dlt.common.destination.client import PreparedTableSchema, StateInfo
from dlt.common.time import ensure_datetime_in_tz
from dlt.destinations.exceptions import DatabaseUndefinedRelation
from dlt.destinations.sql_jobs import SqlMergeFollowupJob, SqlStagingReplaceFollowupJob

from pipelines.transactions import transactional

log = logging.getLogger("aurora_sync.fence")


class LockLost(Exception):
    """This task lost its lock and another took over: its commit was refused inside the warehouse."""
FENCE_TABLE = "_aurora_fence"
FENCEABLE = ("duckdb", "snowflake")
LOST = "this task lost its lock: another task took over (fencing token)"


def raise_if_fenced_off(exc: BaseException) -> None:
    """A failure caused by the fencing check is not a table's: the whole task must stop (exit code 3)."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if LOST in str(current):
            raise LockLost(f"{LOST}; nothing more was committed by this task. The task holding the lock now "
                           "carries on from the committed state.") from exc
        current = current.__cause__ or current.__context__


def fence_sql(sql_client: Any, role: str, token: str, *, serialise: bool = True) -> list[str]:
    """Statements that fail unless `token` still holds `role`: run first in the transaction they protect.

    `serialise=False` leaves out the write to the fence row, for DuckDB: one process at a time can open its file for
    writing, so no take-over can commit while this transaction is open, and the tables' parallel jobs would only
    conflict with each other on the row (DuckDB fails one of two concurrent updates of a row, then dlt retries)."""
    table = sql_client.make_qualified_table_name(FENCE_TABLE)
    mine = f"role = '{role}' AND token = '{token}'"
    check = f"SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM {table} WHERE {mine}) THEN '1' ELSE '{LOST}' END AS INT)"
    if not serialise:
        return [check]
    # a write first: it waits for (or blocks) a take-over writing the row, so the check below cannot go stale
    return [f"UPDATE {table} SET checked_at = taken_at WHERE {mine}", check]


def _fenced_job(base: type, role: str, token: str, serialise: bool) -> type:
    def generate_sql(cls: type, table_chain: Sequence[PreparedTableSchema], sql_client: Any) -> list[str]:
        return (fence_sql(sql_client, role, token, serialise=serialise)
                + base.generate_sql.__func__(cls, table_chain, sql_client))

    return type(f"Fenced{base.__name__}", (base,), {"generate_sql": classmethod(generate_sql)})


def _fenced_client(base: type, role: str, token: str) -> type:
    # the destinations' clients are imported here, for the destination in use: importing this module (every
    # command does, through `runner.errors`) loads neither duckdb nor the Snowflake connector
    from dlt.destinations.impl.duckdb.duck import DuckDbClient

    merge_job = SqlMergeFollowupJob
    serialise = not issubclass(base, DuckDbClient)
    if any(c.__module__.startswith("dlt.destinations.impl.snowflake.") for c in base.__mro__):
        # only then: importing the Snowflake connector costs a DuckDB run a third of a second of CPU
        from dlt.destinations.impl.snowflake.snowflake import SnowflakeClient, SnowflakeMergeJob

        if issubclass(base, SnowflakeClient):
            merge_job = SnowflakeMergeJob
    merge = _fenced_job(merge_job, role, token, serialise)
    replace = _fenced_job(SqlStagingReplaceFollowupJob, role, token, serialise)

    def _create_merge_followup_jobs(self: Any, table_chain: Sequence[PreparedTableSchema]) -> list[Any]:
        return [merge.from_table_chain(table_chain, self.sql_client)]

    def _create_replace_followup_jobs(self: Any, table_chain: Sequence[PreparedTableSchema]) -> list[Any]:
        return [replace.from_table_chain(table_chain, self.sql_client)]

    def complete_load(self: Any, load_id: str) -> None:
        with self.sql_client.begin_transaction():
            for statement in fence_sql(self.sql_client, role, token, serialise=serialise):
                self.sql_client.execute_sql(statement)
            base.complete_load(self, load_id)

    def get_stored_state(self: Any, pipeline_name: str) -> Any:
        """The newest state by its version counter: dlt orders by load id, a wall-clock time, so a task whose clock
        is behind would restore an older state than the one before it wrote."""
        state_table = self.sql_client.make_qualified_table_name(self.schema.state_table_name)
        loads_table = self.sql_client.make_qualified_table_name(self.schema.loads_table_name)
        load_id, dlt_load_id, name, status, version = self._norm_and_escape_columns(
            "load_id", "_dlt_load_id", "pipeline_name", "status", "version")
        query = (f"SELECT {self.state_table_columns} FROM {state_table} AS s JOIN {loads_table} AS l "
                 f"ON l.{load_id} = s.{dlt_load_id} WHERE {name} = %s AND l.{status} = 0 "
                 f"ORDER BY s.{version} DESC, l.{load_id} DESC LIMIT 1")
        with self.sql_client.execute_query(query, pipeline_name) as cursor:
            row = cursor.fetchone()
        if not row:
            return None
        return StateInfo(version=row[0], engine_version=row[1], pipeline_name=row[2], state=row[3],
                         created_at=ensure_datetime_in_tz(row[4], UTC), _dlt_load_id=row[5])

    return type(f"Fenced{base.__name__}", (base,), {
        "_create_merge_followup_jobs": _create_merge_followup_jobs,
        "_create_replace_followup_jobs": _create_replace_followup_jobs,
        "complete_load": complete_load,
        "get_stored_state": get_stored_state,
    })


def fenced_pipeline(pipeline: dlt.Pipeline, role: str, *, pipeline_name: str | None = None) -> dlt.Pipeline:
    """A pipeline on the same warehouse and dataset as `pipeline` whose every commit checks a token of its own for
    `role` (call `take_over` before its first write). Destinations other than DuckDB and Snowflake come back
    unfenced."""
    destination = pipeline.destination
    token = uuid.uuid4().hex[:16]
    fenceable = destination is not None and destination.destination_type.rsplit(".", 1)[-1] in FENCEABLE
    if fenceable:
        factory = type(destination)
        client = _fenced_client(destination.client_class, role, token)
        kind = destination.destination_type  # config sections and capabilities stay the original's
        fenced_factory = type(f"Fenced{factory.__name__}", (factory,), {
            "client_class": property(lambda self: client),
            "destination_type": property(lambda self: kind),
            "__orig_base__": getattr(factory, "__orig_base__", factory),
        })
        fenced = copy.copy(destination)
        fenced.__class__ = fenced_factory
        # replaces go through the staging dataset too, so the copy into the table is one checked transaction
        fenced.config_params = {**destination.config_params, "replace_strategy": "insert-from-staging"}
        transactional(fenced)  # the check, the DELETE and the INSERT in one transaction
        destination = fenced
    result = dlt.pipeline(pipeline_name=pipeline_name or pipeline.pipeline_name, pipelines_dir=pipeline.pipelines_dir,
                          destination=destination, staging=pipeline.staging, dataset_name=pipeline.dataset_name,
                          progress=pipeline.collector)
    if fenceable:
        result._aurora_fence = (role, token)  # type: ignore[attr-defined]
    return result


def take_over(pipeline: dlt.Pipeline) -> None:
    """Make this task the holder of its role: every earlier holder's next commit fails from now on.

    Packages an earlier holder left on this disk are dropped first: their follow-up jobs were written with that
    holder's token, and what they would have applied is applied again anyway (replay-safe, `pipelines.apply`)."""
    fence = getattr(pipeline, "_aurora_fence", None)
    if fence is None:
        return
    role, token = fence
    if pipeline.has_pending_data:
        log.warning("dropping load packages an earlier task left on this disk; their changes are applied again",
                    extra={"fields": {"role": role}})
        pipeline.abort_packages()
        if pipeline.has_pending_data:  # the package being loaded completes as aborted
            pipeline.load()
    with pipeline.sql_client(pipeline.default_schema_name or None) as client:
        table = client.make_qualified_table_name(FENCE_TABLE)
        try:
            client.execute_sql(f"SELECT 1 FROM {table} WHERE 1 = 0")
        except DatabaseUndefinedRelation:  # the first holder ever: no DDL in later cycles
            if not client.has_dataset():
                client.create_dataset()
            client.execute_sql(f"CREATE TABLE IF NOT EXISTS {table} (role VARCHAR, token VARCHAR, "
                               "taken_at TIMESTAMP, checked_at TIMESTAMP)")
        with client.begin_transaction():
            client.execute_sql(f"DELETE FROM {table} WHERE role = %s", role)
            client.execute_sql(f"INSERT INTO {table} (role, token, taken_at) VALUES (%s, %s, %s)", role, token,
                               datetime.now(UTC).replace(tzinfo=None))
    log.info("took over the fencing token", extra={"fields": {"role": role}})
