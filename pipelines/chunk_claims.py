"""Who reads which chunk, when several tasks share one table's snapshot: advisory locks on the source writer.

Session-level advisory locks, like the run lock (`runner.lock`): they write nothing, need no privilege, hold no
transaction open (the session is autocommit and idle between calls, so no xmin is held), and PostgreSQL releases
them when the session ends, so a task killed with `kill -9` frees its chunks at once. Three kinds, all keyed by
the pipeline:

- a **chunk claim** (exclusive, per snapshot generation and chunk): the one task reading and loading that chunk;
- the **generation lock** (exclusive, per table and generation): held by the coordinator (the pipeline's run)
  while it works on that snapshot; a helper works on a generation only while it is held, so it never appends
  rows of a snapshot that was abandoned (`--full-refresh`) or finished;
- the **table lock**: helpers hold it shared while they load chunks; the coordinator takes it exclusive to
  replace the table (the first package), to delete rows of loads that never completed, and to finish.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2

from sources.postgres.errors import describe_url, explain_connection_error
from sources.postgres.session import APPLICATION_NAME, session_options
from sources.postgres.transport import secure_dsn

TABLE_LOCK_TIMEOUT_S = 1800.0  # a helper's in-flight package (or the coordinator's replace) is waited for this long


def _key(*parts: str) -> int:
    """A stable signed 64-bit key (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(":".join(("aurora-sync", *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ClaimTimeout(Exception):
    """Another task held a lock for longer than we wait: this run fails the table, the next one retries."""


class ChunkClaims:
    """One autocommit session on the writer that holds this task's claims and locks."""

    def __init__(self, dsn: str, pipeline_name: str, role: str) -> None:
        self.pipeline_name = pipeline_name
        try:
            self.conn = psycopg2.connect(secure_dsn(dsn), application_name=f"{APPLICATION_NAME} {role}",
                                         options=session_options(60_000), connect_timeout=10)
        except psycopg2.OperationalError as exc:
            raise (explain_connection_error(exc, describe_url(dsn)) or exc) from None
        self.conn.autocommit = True

    def close(self) -> None:
        self.conn.close()  # ends the session: every claim and lock is released

    def _one(self, sql: str, key: int) -> Any:
        with self.conn.cursor() as cur:
            cur.execute(sql, (key,))
            return cur.fetchone()[0]

    # --- chunk claims ---
    def _chunk_key(self, generation: str, index: int) -> int:
        return _key(self.pipeline_name, "chunk", generation, str(index))

    def try_claim(self, generation: str, index: int) -> bool:
        return bool(self._one("SELECT pg_try_advisory_lock(%s)", self._chunk_key(generation, index)))

    def release(self, generation: str, index: int) -> None:
        self._one("SELECT pg_advisory_unlock(%s)", self._chunk_key(generation, index))

    # --- the coordinator's generation lock ---
    def _generation_key(self, resource: str, generation: str) -> int:
        return _key(self.pipeline_name, "generation", resource, generation)

    def hold_generation(self, resource: str, generation: str) -> None:
        """The coordinator works on this snapshot until `release_generation` (or until its session ends)."""
        self._one("SELECT pg_try_advisory_lock(%s)", self._generation_key(resource, generation))

    def release_generation(self, resource: str, generation: str) -> None:
        self._one("SELECT pg_advisory_unlock(%s)", self._generation_key(resource, generation))

    def generation_live(self, resource: str, generation: str) -> bool:
        """Whether a coordinator holds this snapshot now (if we can take its lock, none does)."""
        key = self._generation_key(resource, generation)
        if self._one("SELECT pg_try_advisory_lock(%s)", key):
            self._one("SELECT pg_advisory_unlock(%s)", key)
            return False
        return True

    # --- the table lock ---
    @contextmanager
    def table(self, resource: str, exclusive: bool, timeout_s: float = TABLE_LOCK_TIMEOUT_S) -> Iterator[None]:
        """Shared for a helper's load, exclusive for the coordinator's replace, clean-up and finish. Waiting
        happens on the server (a waiting exclusive request also holds back new shared ones, so helpers cannot
        starve the coordinator), bounded by `lock_timeout`."""
        key = _key(self.pipeline_name, "table", resource)
        suffix = "" if exclusive else "_shared"
        with self.conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {int(timeout_s * 1000)}")
            cur.execute(f"SET statement_timeout = {int(timeout_s * 1000) + 5000}")
            try:
                cur.execute(f"SELECT pg_advisory_lock{suffix}(%s)", (key,))
            except psycopg2.errors.LockNotAvailable:
                raise ClaimTimeout(f"{resource}: another task held the table's snapshot lock for more than "
                                   f"{timeout_s:.0f} s; the next run tries again") from None
            finally:
                cur.execute("RESET lock_timeout")
                cur.execute("RESET statement_timeout")
        try:
            yield
        finally:
            if not self.conn.closed:
                self._one(f"SELECT pg_advisory_unlock{suffix}(%s)", key)


def claim_some(claims: ChunkClaims, generation: str, indexes: list[int], limit: int) -> set[int]:
    """Claim up to `limit` of these chunks, in order, skipping those another task holds; never waits. The caller
    checks the ledger again once it holds them: a chunk may have been finished since it looked."""
    claimed: set[int] = set()
    for index in indexes:
        if len(claimed) >= limit:
            break
        if claims.try_claim(generation, index):
            claimed.add(index)
    return claimed
