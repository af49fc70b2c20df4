"""A seeded, random application workload against PostgreSQL, run from threads while the sync runs.

Three tables in schema `app`, chosen for the CDC paths that are hard to get right:

- `app.docs`: integer key, a large `big` value stored out of line (TOAST, `STORAGE EXTERNAL`) so that updates
  of the other columns send pgoutput's "unchanged TOAST" marker instead of the value; key updates that move a
  row far across the key range; delete-then-reinsert of one key in one transaction; transactions updating hundreds
  of rows at once (cut across batches); TRUNCATE and refill; DDL.
- `app.pairs`: a composite key (int, text), numeric values, key updates of either part.
- `app.bag`: no key, `REPLICA IDENTITY FULL`, many duplicate rows; single copies deleted or updated by ctid.

Every thread draws its operations from its own `random.Random(f"{seed}:{thread}")`, so a seed reproduces the
operation mix and the values (not the interleaving, which is the point of running it concurrently). Threads own
disjoint key partitions (`id % threads`), so their own transactions rarely conflict; TRUNCATE, DDL and
the bag's duplicate rows are shared. A failed transaction (lock timeout, deadlock, a key taken by a refill) is
rolled back, counted, and the thread re-reads its keys: aborted work never reaches the WAL, so it is harmless.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import psycopg2
import psycopg2.extensions

APPLICATION_NAME = "race-workload"
KEY_SPACE = 1_000_000  # default: docs ids live in 1..KEY_SPACE; seeded rows are 1..N, so key moves can go far
PAIR_A_SPACE = 20_000
PAIR_B = ("x", "y", "z", "w", "é", "日本", "k-1", "k 2")
BAG_X = 400
BAG_Y = ("red", "green", "blue", "ünï", None)
SMALL_ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFG0123456789-_éüß日本語✓"

SCHEMA_SQL = (
    "CREATE SCHEMA IF NOT EXISTS app",
    "CREATE TABLE app.docs (id int PRIMARY KEY, grp int, n int, small text, big text, "
    "updated_at timestamptz DEFAULT now())",
    # out of line and uncompressed whatever the value: an update of another column never resends it
    "ALTER TABLE app.docs ALTER COLUMN big SET STORAGE EXTERNAL",
    "CREATE TABLE app.pairs (a int, b text, v numeric(12,2), note text, PRIMARY KEY (a, b))",
    "CREATE TABLE app.bag (x int, y text)",
    "ALTER TABLE app.bag REPLICA IDENTITY FULL",
)

# weights of the operations; `truncate` and `ddl` also need their flags, and are capped per run
DEFAULT_OPS: dict[str, float] = {
    "insert": 10, "update_small": 22, "update_big": 6, "key_update": 6, "delete": 5, "delete_reinsert": 4,
    "pairs_insert": 5, "pairs_update": 6, "pairs_key_update": 3, "pairs_delete": 3,
    "bag_insert_dup": 6, "bag_delete_one": 5, "bag_update_one": 3,
    "multi": 8, "long_txn": 0.5, "bulk_update": 0.8, "truncate": 0.3, "ddl": 0.8,
}
DDL_KINDS = ("drop_add_small", "retype_n", "add_extra")
SIMPLE_OPS = ("insert", "update_small", "update_big", "key_update", "delete", "delete_reinsert", "pairs_insert",
              "pairs_update", "pairs_key_update", "pairs_delete", "bag_insert_dup", "bag_delete_one",
              "bag_update_one")
LONG_TXN_OPS = ("update_small", "update_big", "pairs_update", "bag_update_one", "insert", "key_update")


def big_value(rng: random.Random, low: int = 3000, high: int = 20000) -> str:
    """3-20 kB of incompressible text (hex of random bytes): always stored out of line."""
    return rng.randbytes(rng.randint(low, high) // 2).hex()


def small_value(rng: random.Random) -> str | None:
    if rng.random() < 0.05:
        return None
    return "".join(rng.choice(SMALL_ALPHABET) for _ in range(rng.randint(0, 40)))


def create_schema(dsn: str) -> None:
    _autocommit(dsn, SCHEMA_SQL)


def seed_rows(dsn: str, seed: int, docs: int, pairs: int, bag: int, big_percent: int = 8) -> None:
    """Deterministic initial rows: docs 1..`docs` (some with a 3-19 kB `big` made of md5 chains), `pairs` composite
    keys, `bag` keyless rows with many duplicates (and NULLs)."""
    s = int(seed)
    _autocommit(dsn, (
        "INSERT INTO app.docs (id, grp, n, small, big) "
        f"SELECT g, g % 50, (g * 7919 + {s}) % 1000, "
        f"CASE WHEN g % 37 = 0 THEN NULL ELSE 's' || left(md5(g::text || ':{s}'), 1 + g % 24) END, "
        f"CASE WHEN abs(hashint4(g + {s})) % 100 < {big_percent} THEN "
        f"(SELECT string_agg(md5(g::text || ':' || i::text || ':{s}'), '') "
        f"FROM generate_series(1, 100 + (g * 31 + {s}) % 500) i) END "
        f"FROM generate_series(1, {docs}) g",
        "INSERT INTO app.pairs (a, b, v, note) "
        f"SELECT q.a, q.b, round((((q.a * 131 + {s}) % 1000000) / 7.0)::numeric, 2), "
        "CASE WHEN q.a % 11 = 0 THEN NULL ELSE 'note ' || q.a END "
        f"FROM (SELECT a, (ARRAY{list(PAIR_B)})[1 + (a * 7 + o) % {len(PAIR_B)}] AS b "
        f"FROM generate_series(1, {max(1, pairs // 3)}) a, generate_series(0, 2) o) q "
        "ON CONFLICT DO NOTHING",
        "INSERT INTO app.bag (x, y) "
        f"SELECT (g * 13 + {s}) % {BAG_X}, (ARRAY['red', 'green', 'blue', 'ünï', NULL])[1 + g % 5] "
        f"FROM generate_series(1, {bag}) g",
        "ANALYZE app.docs", "ANALYZE app.pairs", "ANALYZE app.bag",
    ))


def _autocommit(dsn: str, statements: Iterable[str]) -> None:
    conn = psycopg2.connect(dsn, application_name=APPLICATION_NAME)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


class Pool:
    """A set with O(1) random choice (the keys a thread believes exist)."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self.items: list[Any] = []
        self.pos: dict[Any, int] = {}
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: Any) -> bool:
        return item in self.pos

    def add(self, item: Any) -> None:
        if item not in self.pos:
            self.pos[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: Any) -> None:
        i = self.pos.pop(item, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rng: random.Random) -> Any | None:
        return self.items[rng.randrange(len(self.items))] if self.items else None


class _Worker:
    def __init__(self, workload: Workload, index: int) -> None:
        self.w, self.index = workload, index
        self.rng = random.Random(f"{workload.seed}:{index}")
        self.conn: psycopg2.extensions.connection | None = None
        self.ids = Pool()
        self.pairs = Pool()
        self.generation = -1
        self.after_commit: list[Callable[[], None]] = []
        self.thread = threading.Thread(target=self.loop, name=f"race-workload-{index}", daemon=True)

    # --- plumbing ---------------------------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        return self.w.threads

    def connect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            return
        self.conn = psycopg2.connect(self.w.dsn, application_name=APPLICATION_NAME, connect_timeout=10)
        with self.conn.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")
            cur.execute("SET statement_timeout = '60s'")
        self.conn.commit()

    def refresh(self) -> None:
        """Re-read the keys of this thread's partitions (after an abort, a TRUNCATE, at start)."""
        assert self.conn is not None
        self.generation = self.w.generation
        with self.conn.cursor() as cur:
            cur.execute("SELECT id FROM app.docs WHERE id %% %s = %s", (self.threads, self.index))
            self.ids = Pool(sorted(r[0] for r in cur.fetchall()))
            cur.execute("SELECT a, b FROM app.pairs WHERE a %% %s = %s", (self.threads, self.index))
            self.pairs = Pool(sorted(cur.fetchall()))
        self.conn.commit()

    def free_id(self, near: int | None = None) -> int:
        for _ in range(100):
            if near is not None and self.rng.random() < 0.5:
                candidate = near + self.threads * self.rng.randint(-20, 20)
            else:
                candidate = self.rng.randrange(self.w.key_space // self.threads) * self.threads + self.index
            in_partition = 0 < candidate <= self.w.key_space and candidate % self.threads == self.index
            if in_partition and candidate not in self.ids:
                return candidate
        raise RuntimeError("no free id found")

    def free_pair(self) -> tuple[int, str]:
        for _ in range(100):
            a = self.rng.randrange(PAIR_A_SPACE // self.threads) * self.threads + self.index
            key = (a, self.rng.choice(PAIR_B))
            if key not in self.pairs:
                return key
        raise RuntimeError("no free pair found")

    def bag_x(self) -> int:
        return self.rng.randrange(BAG_X // self.threads) * self.threads + self.index

    # --- the loop ---------------------------------------------------------------------------------------------
    def loop(self) -> None:
        try:
            while not self.w.stopping.is_set():
                try:
                    self.connect()
                    if self.generation != self.w.generation:
                        self.refresh()
                    self.step()
                except psycopg2.Error as exc:
                    self.w.note_error("refresh", exc)
                    self._reset()
                    self.w.stopping.wait(0.2)
                think = self.rng.expovariate(1 / self.w.think) if self.w.think > 0 else 0
                self.w.stopping.wait(min(think, 1.0))
        except Exception as exc:  # a harness bug: remember it, the scenario reports it
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.w.crashes.append(f"{self.thread.name}: {type(exc).__name__}: {exc} at {where.name}:{where.lineno}")
        finally:
            if self.conn is not None and not self.conn.closed:
                try:
                    self.conn.rollback()
                finally:
                    self.conn.close()

    def _reset(self) -> None:
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                self.conn.close()
        self.generation = -1  # re-read the keys before the next operation

    def step(self) -> None:
        op = self.w.choose(self.rng)
        if op == "truncate":
            return self.transaction(op, self.truncate)
        if op == "ddl":
            kind = self.rng.choice(DDL_KINDS)
            return self.transaction(f"ddl_{kind}", lambda cur: self.ddl(cur, kind))
        if op == "multi":
            parts = [self.rng.choice(SIMPLE_OPS) for _ in range(self.rng.randint(2, 5))]
            return self.transaction(op, lambda cur: " | ".join(getattr(self, p)(cur) for p in parts))
        if op == "long_txn":
            return self.transaction(op, self.long_txn)
        return self.transaction(op, getattr(self, op))

    def transaction(self, op: str, body: Callable[[Any], str]) -> None:
        assert self.conn is not None
        started = time.monotonic()
        self.after_commit = []
        try:
            with self.conn.cursor() as cur:
                detail = body(cur)
            self.conn.commit()
        except psycopg2.Error as exc:
            self.w.note_error(op, exc)
            self._reset()
            return
        self.w.note_commit(self.index, op, detail, time.monotonic() - started)
        for callback in self.after_commit:
            callback()

    # --- app.docs ---------------------------------------------------------------------------------------------
    def insert(self, cur: Any) -> str:
        key = self.free_id()
        big = big_value(self.rng) if self.rng.random() < 0.5 else (None if self.rng.random() < 0.5 else "short")
        cur.execute("INSERT INTO app.docs (id, grp, n, small, big) VALUES (%s, %s, %s, %s, %s)",
                    (key, self.rng.randrange(50), self.rng.randrange(1000), small_value(self.rng), big))
        self.ids.add(key)
        return f"insert docs {key}"

    def update_small(self, cur: Any) -> str:
        key = self.ids.choice(self.rng)
        if key is None:
            return self.insert(cur)
        kind = self.rng.randrange(4)
        if kind == 0:
            cur.execute("UPDATE app.docs SET n = %s WHERE id = %s", (self.rng.randrange(1000), key))
        elif kind == 1:
            cur.execute("UPDATE app.docs SET small = %s, updated_at = now() WHERE id = %s",
                        (small_value(self.rng), key))
        elif kind == 2:
            cur.execute("UPDATE app.docs SET n = n + 1, grp = %s, updated_at = now() WHERE id = %s",
                        (self.rng.randrange(50), key))
        else:  # the same key twice in one transaction: the second update's TOAST comes from the first
            cur.execute("UPDATE app.docs SET n = %s WHERE id = %s", (self.rng.randrange(1000), key))
            cur.execute("UPDATE app.docs SET small = %s WHERE id = %s", (small_value(self.rng), key))
        return f"update_small docs {key} kind {kind}"

    def update_big(self, cur: Any) -> str:
        key = self.ids.choice(self.rng)
        if key is None:
            return self.insert(cur)
        r = self.rng.random()
        big = big_value(self.rng) if r < 0.8 else (None if r < 0.9 else "now short")
        cur.execute("UPDATE app.docs SET big = %s, updated_at = now() WHERE id = %s", (big, key))
        return f"update_big docs {key}"

    def key_update(self, cur: Any) -> str:
        old = self.ids.choice(self.rng)
        if old is None:
            return self.insert(cur)
        new = self.free_id(near=old)
        kind = self.rng.randrange(3)
        if kind == 0:
            cur.execute("UPDATE app.docs SET id = %s WHERE id = %s", (new, old))
        elif kind == 1:
            cur.execute("UPDATE app.docs SET id = %s, n = %s WHERE id = %s", (new, self.rng.randrange(1000), old))
        else:  # move, then touch the moved row (its TOAST value still comes from the old key)
            cur.execute("UPDATE app.docs SET id = %s WHERE id = %s", (new, old))
            cur.execute("UPDATE app.docs SET small = %s WHERE id = %s", (small_value(self.rng), new))
        self.ids.discard(old)
        self.ids.add(new)
        return f"key_update docs {old}->{new} kind {kind}"

    def bulk_update(self, cur: Any) -> str:
        """One transaction updating hundreds of rows (not `big`): cut across batches, their TOAST values unchanged."""
        modulus = self.rng.randint(5, 20)
        part = self.rng.randrange(modulus)
        cur.execute("UPDATE app.docs SET n = n + 1, updated_at = now() WHERE id %% %s = %s AND (id / %s) %% %s = %s",
                    (self.threads, self.index, self.threads, modulus, part))
        return f"bulk_update docs 1/{modulus} of partition {self.index}: {cur.rowcount} rows"

    def delete(self, cur: Any) -> str:
        key = self.ids.choice(self.rng)
        if key is None:
            return "delete docs none"
        cur.execute("DELETE FROM app.docs WHERE id = %s", (key,))
        self.ids.discard(key)
        return f"delete docs {key}"

    def delete_reinsert(self, cur: Any) -> str:
        key = self.ids.choice(self.rng)
        if key is None:
            return self.insert(cur)
        cur.execute("DELETE FROM app.docs WHERE id = %s", (key,))
        r = self.rng.random()
        big = big_value(self.rng) if r < 0.6 else (None if r < 0.8 else "re")
        cur.execute("INSERT INTO app.docs (id, grp, n, small, big) VALUES (%s, %s, %s, %s, %s)",
                    (key, self.rng.randrange(50), self.rng.randrange(1000), small_value(self.rng), big))
        if self.rng.random() < 0.3:  # and touch it again: the re-inserted big is now an unchanged TOAST value
            cur.execute("UPDATE app.docs SET n = n + 1 WHERE id = %s", (key,))
        return f"delete_reinsert docs {key}"

    # --- app.pairs --------------------------------------------------------------------------------------------
    def pairs_insert(self, cur: Any) -> str:
        key = self.free_pair()
        cur.execute("INSERT INTO app.pairs (a, b, v, note) VALUES (%s, %s, %s, %s)",
                    (*key, f"{self.rng.randrange(-10**9, 10**9) / 100:.2f}", small_value(self.rng)))
        self.pairs.add(key)
        return f"insert pairs {key}"

    def pairs_update(self, cur: Any) -> str:
        key = self.pairs.choice(self.rng)
        if key is None:
            return self.pairs_insert(cur)
        if self.rng.random() < 0.5:
            cur.execute("UPDATE app.pairs SET v = %s WHERE a = %s AND b = %s",
                        (f"{self.rng.randrange(-10**9, 10**9) / 100:.2f}", *key))
        else:
            cur.execute("UPDATE app.pairs SET note = %s, v = v + 0.01 WHERE a = %s AND b = %s",
                        (small_value(self.rng), *key))
        return f"update pairs {key}"

    def pairs_key_update(self, cur: Any) -> str:
        old = self.pairs.choice(self.rng)
        if old is None:
            return self.pairs_insert(cur)
        new = self.free_pair()
        if self.rng.random() < 0.5:
            new = (old[0], new[1]) if (old[0], new[1]) not in self.pairs else new
        cur.execute("UPDATE app.pairs SET a = %s, b = %s WHERE a = %s AND b = %s", (*new, *old))
        self.pairs.discard(old)
        self.pairs.add(new)
        return f"key_update pairs {old}->{new}"

    def pairs_delete(self, cur: Any) -> str:
        key = self.pairs.choice(self.rng)
        if key is None:
            return "delete pairs none"
        cur.execute("DELETE FROM app.pairs WHERE a = %s AND b = %s", key)
        self.pairs.discard(key)
        return f"delete pairs {key}"

    # --- app.bag (no key, duplicates) -------------------------------------------------------------------------
    def _bag_row(self, cur: Any) -> tuple[int, str | None] | None:
        """An existing (x, y) of this thread's partition, preferring one with duplicates."""
        x = self.bag_x()
        cur.execute("SELECT x, y FROM app.bag WHERE x = %s GROUP BY x, y ORDER BY count(*) DESC, y LIMIT 1", (x,))
        row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def bag_insert_dup(self, cur: Any) -> str:
        row = self._bag_row(cur) if self.rng.random() < 0.7 else None
        x, y = row if row else (self.bag_x(), self.rng.choice(BAG_Y))
        copies = self.rng.choice((1, 1, 2, 3))
        cur.execute("INSERT INTO app.bag (x, y) SELECT %s, %s FROM generate_series(1, %s)", (x, y, copies))
        return f"insert bag ({x}, {y!r}) x{copies}"

    def bag_delete_one(self, cur: Any) -> str:
        row = self._bag_row(cur)
        if row is None:
            return "delete bag none"
        cur.execute("DELETE FROM app.bag WHERE ctid = (SELECT ctid FROM app.bag WHERE x = %s "
                    "AND y IS NOT DISTINCT FROM %s LIMIT 1)", row)
        return f"delete one bag {row} ({cur.rowcount})"

    def bag_update_one(self, cur: Any) -> str:
        row = self._bag_row(cur)
        if row is None:
            return "update bag none"
        y = self.rng.choice(BAG_Y)
        cur.execute("UPDATE app.bag SET y = %s WHERE ctid = (SELECT ctid FROM app.bag WHERE x = %s "
                    "AND y IS NOT DISTINCT FROM %s LIMIT 1)", (y, *row))
        return f"update one bag {row} -> {y!r} ({cur.rowcount})"

    # --- long transactions, TRUNCATE, DDL ---------------------------------------------------------------------
    def long_txn(self, cur: Any) -> str:
        parts = [getattr(self, self.rng.choice(LONG_TXN_OPS))(cur) for _ in range(self.rng.randint(2, 4))]
        hold = self.rng.uniform(2, 8)
        self.w.open_long.add(self.index)
        try:
            self.w.stopping.wait(hold)  # a quiesce shortens the wait; the transaction still commits
        finally:
            self.w.open_long.discard(self.index)
        return f"long {hold:.1f}s: " + " | ".join(parts)

    def truncate(self, cur: Any) -> str:
        refill = self.rng.randint(300, 3000)
        same_txn = self.rng.random() < 0.5
        cur.execute("TRUNCATE app.docs")
        if not same_txn:
            assert self.conn is not None
            self.conn.commit()
            self.w.bump_generation()
        cur.execute(
            "INSERT INTO app.docs (id, grp, n, small, big) "
            "SELECT g, g %% 50, g %% 1000, 'refill ' || g, "
            "CASE WHEN g %% 10 = 0 THEN (SELECT string_agg(md5(g::text || ':' || i || %s), '') "
            "FROM generate_series(1, 120) i) END FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
            (f":{self.w.seed}:{self.rng.random()}", refill))
        self.after_commit.append(self.w.bump_generation)
        return f"truncate docs, refill {refill} rows ({'same' if same_txn else 'next'} transaction)"

    def ddl(self, cur: Any, kind: str) -> str:
        if kind == "drop_add_small":
            cur.execute("ALTER TABLE app.docs DROP COLUMN small")
            cur.execute("ALTER TABLE app.docs ADD COLUMN small text")
        elif kind == "retype_n":
            cur.execute("ALTER TABLE app.docs ALTER COLUMN n TYPE int USING (n % 1000000) * 100")
        else:
            cur.execute("ALTER TABLE app.docs DROP COLUMN IF EXISTS extra")
            cur.execute("ALTER TABLE app.docs ADD COLUMN extra int DEFAULT 7")
        return f"ddl {kind}"


class Workload:
    """`Workload(dsn, seed).start()` ... `.stop()`; `.counters()` says what it did.

    ops: weights by operation name (`DEFAULT_OPS` for the names); missing names keep their default weight, 0
    disables one. `ddl` / `truncate` switch those operations on; `max_truncates` / `max_ddl` cap them per run.
    `think`: mean seconds each thread waits between transactions. `key_space`: docs ids are drawn from
    1..key_space (key updates move rows anywhere in it).
    """

    def __init__(self, dsn: str, seed: int, ops: dict[str, float] | None = None, ddl: bool = False,
                 truncate: bool = True, threads: int = 3, think: float = 0.03, max_truncates: int = 2,
                 max_ddl: int = 3, key_space: int = KEY_SPACE, journal_size: int = 50_000) -> None:
        self.dsn, self.seed, self.threads, self.think = dsn, seed, threads, think
        self.key_space = key_space
        self.ddl, self.truncate = ddl, truncate
        self.max_truncates, self.max_ddl = max_truncates, max_ddl
        self.weights = {**DEFAULT_OPS, **(ops or {})}
        unknown = set(self.weights) - set(DEFAULT_OPS)
        if unknown:
            raise ValueError(f"unknown workload operations: {sorted(unknown)}")
        self.stopping = threading.Event()
        self.generation = 0
        self.open_long: set[int] = set()
        self.crashes: list[str] = []
        self._lock = threading.Lock()
        self._committed: Counter[str] = Counter()
        self._aborted: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._special: Counter[str] = Counter()  # truncates and DDL chosen (the caps count these)
        self._slowest = 0.0
        self.journal: deque[tuple[float, int, str, str]] = deque(maxlen=journal_size)
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._workers: list[_Worker] = []

    # --- control ----------------------------------------------------------------------------------------------
    def start(self) -> Workload:
        assert not self._workers, "already started"
        self.started_at = time.monotonic()
        self._workers = [_Worker(self, i) for i in range(self.threads)]
        for worker in self._workers:
            worker.thread.start()
        return self

    def stop(self, timeout: float = 90) -> dict[str, Any]:
        """Quiesce: stop choosing operations and wait until every thread finished (committed or rolled back) its
        transaction and closed its connection. Raises when a thread does not end or a transaction stays open."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.thread.join(max(0.1, deadline - time.monotonic()))
        alive = [w.thread.name for w in self._workers if w.thread.is_alive()]
        if alive:
            raise RuntimeError(f"workload threads did not stop within {timeout}s: {alive}")
        self.stopped_at = time.monotonic()
        conn = psycopg2.connect(self.dsn)
        try:
            for _ in range(50):
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                "AND datname = current_database() AND pid <> pg_backend_pid()", (APPLICATION_NAME,))
                    if cur.fetchone()[0] == 0:
                        break
                conn.rollback()
                time.sleep(0.1)
            else:
                raise RuntimeError("workload sessions are still open after the threads ended")
        finally:
            conn.close()
        return self.counters()

    # --- bookkeeping (called from the threads) ----------------------------------------------------------------
    def choose(self, rng: random.Random) -> str:
        with self._lock:
            weights = dict(self.weights)
            if not self.truncate or self._special["truncate"] >= self.max_truncates:
                weights["truncate"] = 0
            if not self.ddl or self._special["ddl"] >= self.max_ddl:
                weights["ddl"] = 0
            names = sorted(weights)
            op = rng.choices(names, [weights[n] for n in names])[0]
            if op in ("truncate", "ddl"):
                self._special[op] += 1
            return op

    def bump_generation(self) -> None:
        with self._lock:
            self.generation += 1

    def note_commit(self, thread: int, op: str, detail: str, seconds: float) -> None:
        with self._lock:
            self._committed[op] += 1
            self._slowest = max(self._slowest, seconds)
            self.journal.append((round(time.monotonic() - (self.started_at or 0), 3), thread, op, detail))

    def note_error(self, op: str, exc: psycopg2.Error) -> None:
        with self._lock:
            self._aborted[op] += 1
            self._errors[f"{type(exc).__name__}:{exc.pgcode or '-'}"] += 1

    def counters(self) -> dict[str, Any]:
        with self._lock:
            duration = ((self.stopped_at or time.monotonic()) - self.started_at) if self.started_at else 0.0
            return {
                "seed": self.seed, "threads": self.threads, "ddl": self.ddl, "truncate": self.truncate,
                "duration_s": round(duration, 1), "committed_total": sum(self._committed.values()),
                "aborted_total": sum(self._aborted.values()), "committed": dict(sorted(self._committed.items())),
                "aborted": dict(sorted(self._aborted.items())), "errors": dict(sorted(self._errors.items())),
                "slowest_txn_s": round(self._slowest, 2), "crashes": list(self.crashes),
            }

    def journal_lines(self) -> list[str]:
        with self._lock:
            return [f"{t:9.3f} t{thread} {op}: {detail}" for t, thread, op, detail in self.journal]
