"""Many tables in one dlt load package, and one bad table never stops the others.

A run first tries all its tables in one package: one state commit and one set of destination round trips,
which is what keeps hundreds of tables cheap (a package per table costs ~0.2 s each on DuckDB, seconds on
Snowflake). When that package fails because of one table (its extraction raised, its load job failed
terminally), dlt's own abort throws the package away and rewinds the local state (cursors, schema) to where
it started; the run then goes on without that table. When the failure names no table (a schema migration or
normalize error), each table is tried in a package of its own. dlt has no per-table failure handling inside a
package, hence this module.

A table that failed is remembered in the source state (committed to the destination, so a fresh ECS task
knows it too): the next run tries it alone first, so a persistent failure costs that table's read, not a
repeat of everyone else's, and it rejoins the shared package once it loads.

Failures that are about no table (source or destination unreachable, a signal) fail the whole run instead,
so the runner retries it and nothing is set aside by mistake. A package left by an earlier run that can no
longer load is aborted the same way, so it can never wedge the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dlt
from dlt.common.destination.exceptions import DestinationTransientException
from dlt.common.exceptions import SignalReceivedException
from dlt.common.pipeline import LoadInfo
from dlt.extract import DltSource
from dlt.extract.exceptions import ResourceExtractionError
from dlt.load.exceptions import LoadClientJobException
from dlt.pipeline.exceptions import PipelineStepFailed

from sources.postgres import SOURCE_NAME, source_state
from sources.postgres.errors import is_connection_error

log = logging.getLogger("aurora_sync.run")
FAILED_TABLES_KEY = "failed_tables"


@dataclass
class TableFailure:
    table: str  # resource (destination table) name
    step: str  # extract | normalize | load
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"table": self.table, "step": self.step, "error": self.error}


class TableLoadFailed(Exception):
    """A load package failed because of one table (`table`), or of a table it did not name (`table` is None)."""

    def __init__(self, table: str | None, step: str, error: str) -> None:
        super().__init__(f"{table or 'a table'}: {step} failed: {error}")
        self.table, self.step, self.error = table, step, error


class NotATableFailure(Exception):
    """A step failed for every table alike: nothing was set aside; the run failed and the next one retries it."""

    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"The {step} step failed for every table alike, so the cause is not one table's: {error}")


class TablesFailed(Exception):
    """Some tables were set aside; every other table was loaded."""

    def __init__(self, failures: dict[str, TableFailure]) -> None:
        self.failures = failures
        listed = "; ".join(f"{t} ({f.step}: {f.error})" for t, f in sorted(failures.items()))
        super().__init__(
            f"{len(failures)} table(s) could not be synced and were set aside, every other table was loaded: "
            f"{listed}. Fix the cause; the next run tries them again on their own (or `aurora-sync resync "
            "--table <schema.table>` now).")


@dataclass
class IsolatedRun:
    """What a run did: its loads, rows per table, the tables it set aside and those that loaded again."""

    pipeline: dlt.Pipeline
    infos: list[LoadInfo] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    failures: dict[str, TableFailure] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    discarded_packages: list[str] = field(default_factory=list)  # left by an earlier run, could not load

    def raise_on_failures(self) -> None:
        if self.failures:
            raise TablesFailed(self.failures)


def causes(exc: BaseException, *, suppressed: bool = False) -> Iterator[BaseException]:
    """The exception and what caused it, as Python prints the chain (`raise ... from None` ends it), or with
    `suppressed` also the context such a raise hides (the runner classifies by anything in the chain: dlt wraps
    errors in step and resource errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        hidden = current.__suppress_context__ and not suppressed
        current = current.__cause__ or (None if hidden else current.__context__)


def describe(exc: BaseException) -> str:
    """The innermost cause's first line: what an operator needs, without dlt's wrapping."""
    root = list(causes(exc))[-1]
    text = str(getattr(root, "orig", None) or root).strip().splitlines()
    return f"{type(root).__name__}: {text[0] if text else ''}"


def is_about_no_table(exc: BaseException) -> bool:
    """Source or destination unreachable, or the process is being stopped: retry the run, set nothing aside."""
    for cause in causes(exc):
        if isinstance(cause, SignalReceivedException | KeyboardInterrupt):
            return True
        if isinstance(cause, DestinationTransientException) and not isinstance(cause, LoadClientJobException):
            return True
        if is_connection_error(cause):
            return True
    return False


def culprit(exc: BaseException) -> str | None:
    """The table a failed step names, if any."""
    for cause in causes(exc):
        if isinstance(cause, ResourceExtractionError):
            return str(cause.pipe_name)
        job_id = getattr(cause, "job_id", None)
        if isinstance(cause, LoadClientJobException) and isinstance(job_id, str):
            return job_id.split(".", 1)[0]
    return None


def failed_tables(pipeline: dlt.Pipeline) -> dict[str, Any]:
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get(FAILED_TABLES_KEY, {}))


def _discard_pending(pipeline: dlt.Pipeline) -> None:
    """dlt's abort: drops what the failed attempt left pending and rewinds local state and schemas to its start."""
    if pipeline.has_pending_data:
        pipeline.abort_packages()


def recover_pending(pipeline: dlt.Pipeline, result: IsolatedRun) -> None:
    """Finish packages an interrupted run left; one that cannot load is aborted, never retried forever."""
    pipeline.sync_destination()
    # dlt's `run` syncs once per pipeline object, while `_state_restored` is unset: this sync is that one. The
    # run holds the pipeline's lock (`runner.lock`; helper tasks write other pipelines), so the destination's state
    # cannot change before its loads, and reading it again would only delay the first read from the source
    pipeline._state_restored = True
    if not pipeline.has_pending_data:
        return
    try:
        info = pipeline.run()
        result.infos.append(info)
    except PipelineStepFailed as exc:
        if is_about_no_table(exc):
            raise
        _discard_pending(pipeline)
        message = describe(exc)
        result.discarded_packages.append(message)
        log.warning(f"a load package left by an earlier run could not be loaded ({message}); it was discarded "
                    "and its rows are read again", extra={"fields": {"phase": exc.step}})


def _attempt(pipeline: dlt.Pipeline, make_source: Callable[[list[str]], DltSource], names: list[str],
             refresh: Any, result: IsolatedRun) -> TableFailure | None:
    try:
        info = pipeline.run(make_source(names), refresh=refresh)
    except PipelineStepFailed as exc:
        if is_about_no_table(exc):
            raise
        _discard_pending(pipeline)
        table = culprit(exc)
        return TableFailure(table if table in names else "", exc.step, describe(exc))
    result.infos.append(info)
    trace = pipeline.last_trace
    counts = dict(trace.last_normalize_info.row_counts) if trace and trace.last_normalize_info else {}
    for table, count in counts.items():
        if not table.startswith("_dlt"):
            result.rows[table] = result.rows.get(table, 0) + count
    return None


@dataclass
class RunPlan:
    """What a run does beyond loading its tables together: decided once pending packages are dealt with."""

    reload: set[str] = field(default_factory=set)  # dropped and loaded anew alone (a column type changed)
    # loaded on their own, by their own means (a chunked snapshot), which report a failure or None
    separately: dict[str, Callable[[IsolatedRun, bool], TableFailure | None]] = field(default_factory=dict)


def run_isolated(
    pipeline: dlt.Pipeline,
    make_source: Callable[[list[str] | None], DltSource],
    *,
    refresh: Any = None,
    plan: Callable[[], RunPlan] = RunPlan,
) -> IsolatedRun:
    """Load every resource of `make_source(None)`; `make_source(names)` must return a fresh source of those.

    `plan()`, asked once pending packages are dealt with, names tables to drop and load anew (each alone, with
    dlt's `drop_resources` refresh) and tables loaded by their own means (`RunPlan.separately`, given whether they
    must be dropped first), each isolated like any other table.
    """
    result = IsolatedRun(pipeline)
    recover_pending(pipeline, result)
    names = list(make_source(None).selected_resources)  # first: it validates the source's configuration
    run_plan = plan()
    reload = set(run_plan.reload)
    previously = failed_tables(pipeline)

    def fail(failure: TableFailure) -> None:
        result.failures[failure.table] = failure
        log.error(f"{failure.table} set aside in this run ({failure.step} failed: {failure.error}); the other "
                  "tables go on", extra={"fields": {"table": failure.table, "phase": failure.step}})

    for name, load in run_plan.separately.items():
        failure = load(result, name in reload)
        if failure is None and name in previously:
            result.recovered.append(name)
        elif failure is not None:
            fail(TableFailure(name, failure.step, failure.error))
    names_alone = [n for n in names if (n in previously or n in reload) and n not in run_plan.separately]
    for name in names_alone:
        failure = _attempt(pipeline, make_source, [name], "drop_resources" if name in reload else refresh, result)
        if failure is None and name in previously:
            result.recovered.append(name)
        elif failure is not None:
            fail(TableFailure(name, failure.step, failure.error))
    together = [n for n in names if n not in previously and n not in reload and n not in run_plan.separately]
    while together:
        failure = _attempt(pipeline, make_source, together, refresh, result)
        if failure is None:
            break
        if failure.table:
            fail(failure)
            together.remove(failure.table)
            continue
        log.warning(f"a {failure.step} failure named no table ({failure.error}): loading each table on its own")
        alone_failures = {}
        for name in together:
            alone = _attempt(pipeline, make_source, [name], refresh, result)
            if alone is not None:
                alone_failures[name] = TableFailure(name, alone.step, alone.error)
        if len(alone_failures) == len(together):
            # every table fails on its own too: the cause is not a table's, so fail the run and set nothing aside
            raise NotATableFailure(failure.step, failure.error)
        for failure_alone in alone_failures.values():
            fail(failure_alone)
        break
    _remember(pipeline, names, previously, result)
    return result


def _remember(pipeline: dlt.Pipeline, names: list[str], previously: dict[str, Any], result: IsolatedRun) -> None:
    """Commit the set of failing tables with the pipeline's state when it changed (a state-only package)."""
    now = datetime.now(UTC).isoformat()
    current = {k: v for k, v in previously.items() if k not in names}  # tables this run did not try
    for name, failure in result.failures.items():
        current[name] = {**failure.as_dict(), "since": previously.get(name, {}).get("since", now)}
    if current == previously:
        return

    def update(state: dict[str, Any]) -> None:
        if current:
            state[FAILED_TABLES_KEY] = current
        else:
            state.pop(FAILED_TABLES_KEY, None)

    pipeline.run(source_state(update))
