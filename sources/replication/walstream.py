"""The replication connection: START_REPLICATION with the CopyBoth protocol driven through libpq.

psycopg2 opens the connection and issues START_REPLICATION, but its `read_message()` quietly moves
the flush position it reports to the server's keepalive `wal_end` whenever it believes the client has
confirmed the last message (psycopg2 `pq_read_replication_message`). That advances the slot past
positions our destination state never recorded, which breaks the rule we rely on: the server only
hears a flush LSN after the destination committed it, so a slot that is *ahead* of our state proves
that changes were lost. We therefore read CopyData and send standby status updates ourselves through
the same libpq library psycopg2 loaded (`PQgetCopyData`/`PQputCopyData` on `connection.pgconn_ptr`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import select
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from sources.postgres.errors import describe_url, explain_connection_error
from sources.postgres.transport import secure_dsn

from .errors import (
    PrerequisiteMissing,
    ReplicationError,
    SlotInUse,
    SlotInvalidated,
    SlotMissing,
    SlotUndecodable,
    StreamInterrupted,
)

PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix microseconds
_STATUS = struct.Struct("!cQQQq?")
_XLOG_HEADER = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!Qq?")

# `ctypes.string_at` without its Python wrapper (a message's bytes are copied once per message)
_string_at = getattr(ctypes, "_string_at", ctypes.string_at)

# Text formats the walsender's output functions use: the same as our snapshot sessions (session.py),
# so a value reads identically whether it came from COPY or from the WAL.
WALSENDER_OPTIONS = (
    "-c DateStyle=ISO -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex"
)


def pg_now_us() -> int:
    return int(time.time() * 1_000_000) - PG_EPOCH_US


def _load_libpq() -> ctypes.CDLL:
    """The libpq psycopg2 itself uses: a second copy could not safely touch psycopg2's PGconn."""
    import psycopg2._psycopg  # make sure it is mapped

    candidates: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if os.path.basename(path).startswith("libpq") and path not in candidates:
                    candidates.append(path)
    except OSError:  # not Linux: psycopg2-binary's bundled copy, else the system one
        libs = os.path.join(os.path.dirname(os.path.dirname(psycopg2.__file__)), "psycopg2_binary.libs")
        candidates += [*glob.glob(os.path.join(libs, "libpq*")), ctypes.util.find_library("pq") or ""]
    expected = psycopg2.extensions.libpq_version()
    for path in filter(None, candidates):
        lib = ctypes.CDLL(path)
        if lib.PQlibVersion() == expected:
            return lib
    raise ReplicationError(f"Cannot locate the libpq (version {expected}) that psycopg2 uses for replication.")


class _LibPQ:
    _lib: ctypes.CDLL | None = None

    @classmethod
    def get(cls) -> ctypes.CDLL:
        if cls._lib is None:
            lib = _load_libpq()
            vp, cp = ctypes.c_void_p, ctypes.c_char_p
            signatures: dict[str, tuple[list[Any], Any]] = {
                "PQgetCopyData": ([vp, ctypes.POINTER(vp), ctypes.c_int], ctypes.c_int),
                "PQputCopyData": ([vp, cp, ctypes.c_int], ctypes.c_int),
                "PQputCopyEnd": ([vp, cp], ctypes.c_int),
                "PQflush": ([vp], ctypes.c_int),
                "PQconsumeInput": ([vp], ctypes.c_int),
                "PQfreemem": ([vp], None),
                "PQerrorMessage": ([vp], cp),
                "PQgetResult": ([vp], vp),
                "PQresultStatus": ([vp], ctypes.c_int),
                "PQresultErrorMessage": ([vp], cp),
                "PQclear": ([vp], None),
            }
            for name, (args, restype) in signatures.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, restype
            # called once per message, never blocking (async PQgetCopyData reads libpq's buffer): without releasing
            # and retaking the GIL, which the CDLL functions above do on every call
            lib.get_copy_data_gil = ctypes.PYFUNCTYPE(ctypes.c_int, vp, ctypes.POINTER(vp), ctypes.c_int)(
                ("PQgetCopyData", lib))
            lib.freemem_gil = ctypes.PYFUNCTYPE(None, vp)(("PQfreemem", lib))
            cls._lib = lib
        return cls._lib


def replication_connection(dsn: str, application_name: str, connect_timeout: int = 10) -> Any:
    """A `replication=database` connection whose walsender prints values like our snapshot sessions."""
    try:
        return psycopg2.connect(secure_dsn(dsn), connection_factory=psycopg2.extras.LogicalReplicationConnection,
                                application_name=application_name, connect_timeout=connect_timeout,
                                options=WALSENDER_OPTIONS)
    except psycopg2.OperationalError as exc:
        explained = explain_connection_error(exc, describe_url(dsn))
        if explained is None and "replication" in str(exc).lower():
            explained = PrerequisiteMissing(
                f"PostgreSQL refused a replication connection for {describe_url(dsn)}: grant the role "
                "rds_replication (Aurora) or REPLICATION, and allow replication connections in pg_hba.conf.")
        raise (explained or exc) from None


def classify_start_error(message: str, slot: str) -> Exception:
    lowered = message.lower()
    if "does not exist" in lowered and "slot" in lowered:
        return SlotMissing(f"Replication slot {slot!r} does not exist: run `aurora-sync setup` (or set "
                           "`on_slot_lost = \"resnapshot\"`).")
    if "is active for pid" in lowered:
        return SlotInUse(f"Replication slot {slot!r} is in use by another process ({message.strip()}); "
                         "retry when it has stopped.")
    if "can no longer get changes" in lowered or "invalidated" in lowered:
        return SlotInvalidated(f"Replication slot {slot!r} was invalidated by PostgreSQL, so changes were lost: "
                               "resnapshot (`on_slot_lost = \"resnapshot\"` or `aurora-sync setup --resnapshot`).")
    if "could not map filenode" in lowered:
        # a PostgreSQL decoding failure at one change of the slot's WAL (seen once in the race soak, right after
        # a TRUNCATE committed while the slot was created): it repeats on every start, so retrying cannot help
        return SlotUndecodable(f"PostgreSQL cannot decode the WAL of replication slot {slot!r} "
                               f"({message.strip()}); the slot can never advance past that change. Resnapshot: "
                               "`aurora-sync setup --resnapshot`.")
    return StreamInterrupted(f"Replication stream on slot {slot!r} failed: {message.strip()}")


class WalStream:
    """One START_REPLICATION session on a logical slot with the pgoutput plugin (protocol 1).

    `read()` returns `(data_start, payload)` for each XLogData message and answers keepalives;
    `confirm(lsn)` is the only way the flush position moves.
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        *,
        messages: bool = True,
        status_interval: float = 10.0,
        application_name: str = "aurora-snowflake-sync-cdc",
        connect_timeout: int = 10,
    ) -> None:
        self.dsn, self.slot, self.publication = dsn, slot, publication
        self.messages = messages
        self.status_interval = status_interval
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.conn: Any = None
        self.flush_lsn = 0  # what the server has been told is durable
        self.server_wal_end = 0  # from keepalives: every change committed before it has been sent
        self.last_status = 0.0
        self._lock = threading.Lock()
        self._pgconn: ctypes.c_void_p | None = None
        self._lib = _LibPQ.get()
        self._buffer = ctypes.c_void_p()  # where PQgetCopyData puts its message
        self._buffer_ref = ctypes.byref(self._buffer)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, start_lsn: int = 0) -> None:
        self.conn = replication_connection(self.dsn, self.application_name, self.connect_timeout)
        options = f"proto_version '1', publication_names '{self.publication}'"
        if self.messages:
            options += ", messages 'true'"
        command = f"START_REPLICATION SLOT {self.slot} LOGICAL {start_lsn >> 32:X}/{start_lsn & 0xFFFFFFFF:X} " \
                  f"({options})"
        try:
            self.conn.cursor().start_replication_expert(command, decode=False)
        except psycopg2.Error as exc:
            self.close()
            raise classify_start_error(str(exc), self.slot) from None
        self._pgconn = ctypes.c_void_p(self.conn.pgconn_ptr)
        self.last_status = time.monotonic()

    def close(self) -> None:
        if self.conn is not None:
            try:
                if self._pgconn is not None:
                    with self._lock:
                        self._lib.PQputCopyEnd(self._pgconn, None)
                        self._lib.PQflush(self._pgconn)
            finally:
                self.conn.close()
                self.conn = None
                self._pgconn = None

    def __enter__(self) -> WalStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------------------------
    def _error(self) -> str:
        raw = self._lib.PQerrorMessage(self._pgconn)
        return raw.decode(errors="replace") if raw else "connection lost"

    def _end_of_copy(self) -> Exception:
        """The server ended the stream: find out why from the final result."""
        message = ""
        while True:
            result = self._lib.PQgetResult(self._pgconn)
            if not result:
                break
            text = self._lib.PQresultErrorMessage(result)
            message = message or (text.decode(errors="replace") if text else "")
            self._lib.PQclear(result)
        return classify_start_error(message or self._error(), self.slot)

    def read(self, timeout: float) -> tuple[int, bytes] | None:
        """The next XLogData as `(data_start, payload)`, or None when nothing arrived within `timeout`."""
        deadline = None  # from the first time nothing is buffered: a message waiting costs no clock read
        lib, buffer, buffer_ref = self._lib, self._buffer, self._buffer_ref
        while True:
            with self._lock:
                size = lib.get_copy_data_gil(self._pgconn, buffer_ref, 1)
                if size > 0:
                    data = _string_at(buffer, size)
                    lib.freemem_gil(buffer)
            if size > 0:
                kind = data[:1]
                if kind == b"w":
                    data_start = _XLOG_HEADER.unpack_from(data, 1)[0]
                    return data_start, data[25:]
                if kind == b"k":
                    wal_end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                    self.server_wal_end = max(self.server_wal_end, wal_end)
                    if reply:
                        self.send_status()
                    continue
                raise StreamInterrupted(f"Unexpected replication message type {kind!r} on slot {self.slot!r}.")
            if size == -1:
                raise self._end_of_copy()
            if size == -2:
                raise classify_start_error(self._error(), self.slot)
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if now - self.last_status >= self.status_interval:
                self.send_status()
            remaining = deadline - now
            if remaining <= 0:
                return None
            wait = min(remaining, max(0.0, self.last_status + self.status_interval - now))
            select.select([self.conn.fileno()], [], [], wait)
            with self._lock:
                if not self._lib.PQconsumeInput(self._pgconn):
                    raise StreamInterrupted(
                        f"Replication connection for slot {self.slot!r} was lost: {self._error().strip()}")

    def send_status(self, reply: bool = False) -> None:
        """Standby status update; write/flush/apply are all the confirmed position."""
        lsn = self.flush_lsn
        message = _STATUS.pack(b"r", lsn, lsn, lsn, pg_now_us(), reply)
        with self._lock:
            if self._pgconn is None:
                return
            if self._lib.PQputCopyData(self._pgconn, message, len(message)) != 1 or self._lib.PQflush(self._pgconn):
                raise StreamInterrupted(
                    f"Could not send feedback on slot {self.slot!r}: {self._error().strip()}")
        self.last_status = time.monotonic()

    def confirm(self, lsn: int) -> None:
        """Tell the server everything committed before `lsn` is durable in the destination."""
        if lsn > self.flush_lsn:
            self.flush_lsn = lsn
        self.send_status()

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Keep sending status updates while the caller is busy (a destination load can outlast
        `wal_sender_timeout`, after which the server would drop the connection)."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.status_interval):
                try:
                    self.send_status()
                except Exception:  # the main thread notices a dead connection on its next read
                    return

        thread = threading.Thread(target=beat, name=f"keepalive-{self.slot}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
