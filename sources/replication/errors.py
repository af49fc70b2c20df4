"""Replication errors: one actionable sentence each, classified by `runner.errors` through `SourceError`.

Errors that a later retry can fix (the slot is busy, the stream dropped) derive from `SourceUnreachable`
so the runner exits with FAILURE (retry); everything else means an operator must act.
"""

from __future__ import annotations

from sources.postgres.errors import SourceError, SourceUnreachable


class ReplicationError(SourceError):
    """Base class for logical-replication problems."""


class PrerequisiteMissing(ReplicationError):
    """wal_level, privileges, keys or slots are not what logical replication needs."""


class PublicationError(ReplicationError):
    """The publication cannot be created or extended by this user."""


class SlotMissing(ReplicationError):
    """The replication slot does not exist (never set up, dropped, or lost in a failover)."""


class SlotInvalidated(ReplicationError):
    """PostgreSQL invalidated the slot (max_slot_wal_keep_size exceeded): changes were lost."""


class SlotUndecodable(ReplicationError):
    """PostgreSQL's logical decoding fails on the slot's WAL itself ("could not map filenode"): every retry stops
    at the same change, so the slot can never advance and has to be re-created (a resnapshot)."""


class SlotAheadOfState(ReplicationError):
    """The slot confirmed changes our destination never recorded: someone else consumed it."""


class SlotInUse(SourceUnreachable):
    """Another process streams from the slot right now; retry when it has stopped."""


class StreamInterrupted(SourceUnreachable):
    """The replication connection ended unexpectedly; nothing unconfirmed was lost, rerun."""


class TruncateRefused(ReplicationError):
    """A TRUNCATE arrived and `truncate_mode = "fail"`."""


class RetainedWalExceeded(ReplicationError):
    """The slot retains more WAL than `retained_wal_fail_bytes` even after this run."""


class SlotCreationTimeout(SourceUnreachable):
    """Creating the slot waited `slot_create_timeout_seconds` for open transactions and was cancelled."""


class SlotCreationRaced(SourceUnreachable):
    """Every attempt to create the slot overlapped a catalog change (TRUNCATE, DDL); none was kept, rerun."""
