"""SQLite backend: the embedded default, one file in the gateway's state directory.

One gateway owns the file (several gateways share Redis, not a file), so every call runs
on the event loop's thread, each write in one ``BEGIN IMMEDIATE`` transaction (WAL,
synchronous=NORMAL: a commit costs tens of microseconds and survives a crash of the
process; a power loss may lose the last ones).
``:memory:`` gives the same behaviour without a file (the fail-open fallback of Redis).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..budget import RPM, Counter, Refusal, admits
from ..response_store import ENTRY_OVERHEAD, StoredResponse
from .base import GatewayState, ResponseLimits, StateError, UsageDelta, UsageRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, used INTEGER NOT NULL,
                                     ends REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (key TEXT NOT NULL, model TEXT NOT NULL,
                                  requests INTEGER NOT NULL, prompt INTEGER NOT NULL,
                                  completion INTEGER NOT NULL, PRIMARY KEY (key, model));
CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL,
                                      expires REAL NOT NULL, size INTEGER NOT NULL,
                                      response BLOB NOT NULL, items BLOB NOT NULL,
                                      session TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL,
                                    created REAL NOT NULL, data BLOB NOT NULL,
                                    PRIMARY KEY (kind, id));
CREATE INDEX IF NOT EXISTS records_by_owner ON records (kind, owner, created);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
                                   expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS batch_lines (batch TEXT NOT NULL, idx INTEGER NOT NULL,
                                        ok INTEGER NOT NULL, line BLOB NOT NULL,
                                        PRIMARY KEY (batch, idx));
"""
STATE_FILE = "state.db"
KEEP_AFTER_S = 3600
"""How long a counter's row outlives its window."""


class SqliteState(GatewayState):
    name = "sqlite"

    def __init__(self, path: str | Path, limits: ResponseLimits):
        super().__init__(limits)
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(responses)")}
            if "session" not in columns:  # (a file from before follow-ups kept their session)
                self.db.execute("ALTER TABLE responses ADD COLUMN session TEXT NOT NULL "
                                "DEFAULT ''")
            row = self.db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM responses"
                                  ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from None
        self.bytes, self.count = int(row[0]), int(row[1])
        self._used: dict[str, int] = {}
        self._ends: dict[str, float] = {}
        self._holds: dict[str, dict[str, tuple[int, float]]] = {}
        self._dirty: dict[str, tuple[int, float]] = {}
        """Tokens counted since the last :meth:`persist`, by counter (with its end)."""
        self._prune_at = 0.0

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"state database {self.path}: {exc}") from None

    # -- tokens ---------------------------------------------------------------------------
    # One gateway owns the file, so it is the only writer: the counters it touched are
    # mirrored in memory (read from the file once) and a reservation reads no row; what
    # requests cost is written once a second (:meth:`persist`) and at close, so a crash of
    # the process forgets at most the last second's tokens. Holds live in memory only: a
    # restart ends this gateway's requests, and their holds with them.
    def _used_of(self, counter: Counter) -> int:
        used = self._used.get(counter.store_key)
        if used is None:
            try:
                row = self.db.execute("SELECT used FROM counters WHERE name = ?",
                                      (counter.store_key,)).fetchone()
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from None
            used = self._used[counter.store_key] = int(row[0]) if row else 0
            self._ends[counter.store_key] = counter.ends_at
        return used

    def _reserved_of(self, name: str, now: float) -> int:
        holds = self._holds.get(name)
        if not holds:
            return 0
        total = 0
        for hold_id, (amount, expires) in list(holds.items()):
            if expires <= now:
                del holds[hold_id]  # its gateway request never settled: it has expired
            else:
                total += amount
        return total

    async def reserve(self, hold_id: str, counters: Sequence[Counter], amount: int,
                      now: float, expires: float) -> Refusal | None:
        if now >= self._prune_at:
            self._prune(now)
        for counter in counters:
            used = self._used_of(counter)
            reserved = self._reserved_of(counter.store_key, now)
            if not admits(counter, used, reserved, amount):
                return Refusal(counter, used, reserved, amount)
        for counter in counters:
            if counter.kind == RPM:  # a request counted at once, never held
                self._add((counter,), 1)
            else:
                self._holds.setdefault(counter.store_key, {})[hold_id] = (amount, expires)
        return None

    def _prune(self, now: float) -> None:
        """Forget the windows that ended (memory), and the file's an hour after."""
        for name in [n for n, ends in self._ends.items() if ends <= now]:
            self._used.pop(name, None)
            self._ends.pop(name, None)
            if not self._holds.get(name):
                self._holds.pop(name, None)
        with self._txn() as db:
            db.execute("DELETE FROM counters WHERE ends <= ?", (now - KEEP_AFTER_S,))
        self._prune_at = now + 60

    def _add(self, counters: Sequence[Counter], tokens: int) -> None:
        """Count ``tokens`` now (memory, exact for the next reservation); written to the
        file by the next :meth:`persist` (within a second: the gateway's flush loop)."""
        for counter in counters:
            self._used[counter.store_key] = self._used_of(counter) + tokens
            self._dirty[counter.store_key] = (self._dirty.get(counter.store_key, (0, 0.0))[0]
                                              + tokens, counter.ends_at)

    async def persist(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            with self._txn() as db:
                db.executemany("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(name) DO "
                               "UPDATE SET used = used + excluded.used",
                               [(name, tokens, ends) for name, (tokens, ends) in dirty.items()])
        except StateError:
            for name, (tokens, ends) in dirty.items():  # kept for the next try
                self._dirty[name] = (self._dirty.get(name, (0, 0.0))[0] + tokens, ends)
            raise

    async def settle(self, hold_id: str, counters: Sequence[Counter], charged: int,
                     now: float) -> None:
        for counter in counters:
            holds = self._holds.get(counter.store_key)
            if holds is not None:
                holds.pop(hold_id, None)
        if charged:  # (also when the hold had expired: the tokens were served)
            self._add(counters, charged)

    async def add_used(self, counters: Sequence[Counter], tokens: int) -> None:
        self._add(counters, tokens)

    async def counter(self, counter: Counter, now: float) -> tuple[int, int]:
        return self._used_of(counter), self._reserved_of(counter.store_key, now)

    # -- usage ----------------------------------------------------------------------------
    async def add_usage(self, delta: UsageDelta) -> None:
        with self._txn() as db:
            db.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?) ON CONFLICT(key, model) DO UPDATE "
                "SET requests = requests + excluded.requests, "
                "prompt = prompt + excluded.prompt, completion = completion + excluded.completion",
                [(k, m, r, p, c) for (k, m), (r, p, c) in delta.items()])

    async def usage(self) -> list[UsageRow]:
        rows = self.db.execute("SELECT key, model, requests, prompt, completion FROM usage "
                               "ORDER BY key, model").fetchall()
        return [UsageRow(str(k), str(m), int(r), int(p), int(c)) for k, m, r, p, c in rows]

    # -- stored Responses -----------------------------------------------------------------
    async def put_response(self, response_id: str, owner: str, response: bytes,
                           items: bytes, now: float, session: str = "") -> bool:
        limits = self.limits
        if not limits.enabled or not limits.fits(response, items):
            return False
        size = len(response) + len(items) + ENTRY_OVERHEAD
        with self._txn() as db:
            self._drop(db, "id = ?", (response_id,))
            db.execute("INSERT INTO responses (id, owner, expires, size, response, items, "
                       "session) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (response_id, owner, now + limits.ttl, size, response, items, session))
            self.bytes += size
            self.count += 1
            self._drop(db, "expires <= ?", (now,))
            # the oldest go first once the byte or entry budget is spent
            while self.bytes > limits.max_bytes or self.count > limits.capacity:
                oldest = db.execute("SELECT id FROM responses ORDER BY rowid LIMIT 1"
                                    ).fetchone()
                if oldest is None:
                    break
                self._drop(db, "id = ?", (oldest[0],))
        return True

    def _drop(self, db: sqlite3.Connection, where: str, args: tuple[object, ...]) -> None:
        row = db.execute(f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM responses "
                         f"WHERE {where}", args).fetchone()
        if row[1]:
            db.execute(f"DELETE FROM responses WHERE {where}", args)
            self.bytes -= int(row[0])
            self.count -= int(row[1])

    async def get_response(self, response_id: str, owner: str, now: float
                           ) -> StoredResponse | None:
        try:
            row = self.db.execute("SELECT owner, expires, response, items, session FROM "
                                  "responses WHERE id = ?", (response_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"state database {self.path}: {exc}") from None
        if row is None or row[1] <= now or row[0] != owner:
            return None
        return StoredResponse(str(row[0]), float(row[1]), bytes(row[2]), bytes(row[3]),
                              str(row[4]))

    async def delete_response(self, response_id: str, owner: str) -> bool:
        with self._txn() as db:
            before = self.count
            self._drop(db, "id = ? AND owner = ?", (response_id, owner))
            return self.count < before

    # -- files and batches ----------------------------------------------------------------
    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state database {self.path}: {exc}") from None

    async def put_record(self, kind: str, record_id: str, owner: str, data: bytes,
                         created: float) -> None:
        with self._txn() as db:
            db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, id) DO "
                       "UPDATE SET owner = excluded.owner, data = excluded.data",
                       (kind, record_id, owner, created, data))

    async def get_record(self, kind: str, record_id: str) -> tuple[str, bytes] | None:
        rows = self._read("SELECT owner, data FROM records WHERE kind = ? AND id = ?",
                          (kind, record_id))
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    async def list_records(self, kind: str, owner: str | None) -> list[bytes]:
        if owner is None:
            rows = self._read("SELECT data FROM records WHERE kind = ? "
                              "ORDER BY created DESC, rowid DESC", (kind,))
        else:
            rows = self._read("SELECT data FROM records WHERE kind = ? AND owner = ? "
                              "ORDER BY created DESC, rowid DESC", (kind, owner))
        return [bytes(r[0]) for r in rows]

    async def delete_record(self, kind: str, record_id: str) -> bool:
        with self._txn() as db:
            return db.execute("DELETE FROM records WHERE kind = ? AND id = ?",
                              (kind, record_id)).rowcount > 0

    async def claim(self, name: str, holder: str, now: float, ttl: float) -> bool:
        with self._txn() as db:
            return db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "holder = excluded.holder, expires = excluded.expires "
                "WHERE leases.holder = excluded.holder OR leases.expires <= ?",
                (name, holder, now + ttl, now)).rowcount > 0

    async def release(self, name: str, holder: str) -> None:
        with self._txn() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    async def put_line_result(self, batch_id: str, index: int, ok: bool, line: bytes) -> bool:
        with self._txn() as db:
            return db.execute("INSERT OR IGNORE INTO batch_lines VALUES (?, ?, ?, ?)",
                              (batch_id, index, int(ok), line)).rowcount > 0

    async def line_results(self, batch_id: str) -> dict[int, tuple[bool, bytes]]:
        rows = self._read("SELECT idx, ok, line FROM batch_lines WHERE batch = ?", (batch_id,))
        return {int(i): (bool(ok), bytes(line)) for i, ok, line in rows}

    async def line_counts(self, batch_id: str) -> tuple[int, int]:
        rows = self._read("SELECT COALESCE(SUM(ok), 0), COUNT(*) FROM batch_lines "
                          "WHERE batch = ?", (batch_id,))
        ok, total = int(rows[0][0]), int(rows[0][1])
        return ok, total - ok

    async def drop_line_results(self, batch_id: str) -> None:
        with self._txn() as db:
            db.execute("DELETE FROM batch_lines WHERE batch = ?", (batch_id,))

    async def close(self) -> None:
        try:
            await self.persist()
        finally:
            self.db.close()
