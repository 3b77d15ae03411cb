"""SQLite backend: the embedded default, one file in the gateway's state directory.

One gateway owns the file, so every call runs on the event loop's thread, each in one
``BEGIN IMMEDIATE`` transaction (WAL, synchronous=NORMAL: a commit costs tens of
microseconds and survives a crash of the process; a power loss may lose the last ones).
``:memory:`` gives the same behaviour without a file (the fail-open fallback of Redis).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..budget import Counter, Refusal, admits
from ..response_store import ENTRY_OVERHEAD, StoredResponse
from .base import GatewayState, ResponseLimits, StateError, UsageDelta, UsageRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, used INTEGER NOT NULL,
                                     ends REAL NOT NULL);
CREATE TABLE IF NOT EXISTS holds (id TEXT NOT NULL, name TEXT NOT NULL,
                                  amount INTEGER NOT NULL, expires REAL NOT NULL,
                                  PRIMARY KEY (id, name));
CREATE INDEX IF NOT EXISTS holds_by_name ON holds (name);
CREATE TABLE IF NOT EXISTS usage (key TEXT NOT NULL, model TEXT NOT NULL,
                                  requests INTEGER NOT NULL, prompt INTEGER NOT NULL,
                                  completion INTEGER NOT NULL, PRIMARY KEY (key, model));
CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL,
                                      expires REAL NOT NULL, size INTEGER NOT NULL,
                                      response BLOB NOT NULL, items BLOB NOT NULL);
"""
STATE_FILE = "state.db"


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
            row = self.db.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM responses"
                                  ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from None
        self.bytes, self.count = int(row[0]), int(row[1])
        self._prune_counters_at = 0.0

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
    def _used_reserved(self, db: sqlite3.Connection, name: str) -> tuple[int, int]:
        used = db.execute("SELECT used FROM counters WHERE name = ?", (name,)).fetchone()
        held = db.execute("SELECT COALESCE(SUM(amount), 0) FROM holds WHERE name = ?",
                          (name,)).fetchone()
        return (int(used[0]) if used else 0), int(held[0])

    async def reserve(self, hold_id: str, counters: Sequence[Counter], amount: int,
                      now: float, expires: float) -> Refusal | None:
        with self._txn() as db:
            db.execute("DELETE FROM holds WHERE expires <= ?", (now,))
            if now >= self._prune_counters_at:
                db.execute("DELETE FROM counters WHERE ends <= ?", (now,))
                self._prune_counters_at = now + 60
            for counter in counters:
                used, reserved = self._used_reserved(db, counter.store_key)
                if not admits(counter, used, reserved, amount):
                    return Refusal(counter, used, reserved, amount)
            db.executemany("INSERT OR REPLACE INTO holds VALUES (?, ?, ?, ?)",
                           [(hold_id, c.store_key, amount, expires) for c in counters])
        return None

    def _add(self, db: sqlite3.Connection, counters: Sequence[Counter], tokens: int) -> None:
        db.executemany("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                       "SET used = used + excluded.used",
                       [(c.store_key, tokens, c.ends_at) for c in counters])

    async def settle(self, hold_id: str, counters: Sequence[Counter], charged: int,
                     now: float) -> None:
        with self._txn() as db:
            db.execute("DELETE FROM holds WHERE id = ?", (hold_id,))
            if charged:  # (also when the hold had expired: the tokens were served)
                self._add(db, counters, charged)

    async def add_used(self, counters: Sequence[Counter], tokens: int) -> None:
        with self._txn() as db:
            self._add(db, counters, tokens)

    async def counter(self, counter: Counter, now: float) -> tuple[int, int]:
        with self._txn() as db:
            db.execute("DELETE FROM holds WHERE expires <= ?", (now,))
            return self._used_reserved(db, counter.store_key)

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
                           items: bytes, now: float) -> bool:
        limits = self.limits
        if not limits.enabled or not limits.fits(response, items):
            return False
        size = len(response) + len(items) + ENTRY_OVERHEAD
        with self._txn() as db:
            self._drop(db, "id = ?", (response_id,))
            db.execute("INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                       (response_id, owner, now + limits.ttl, size, response, items))
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
            row = self.db.execute("SELECT owner, expires, response, items FROM responses "
                                  "WHERE id = ?", (response_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"state database {self.path}: {exc}") from None
        if row is None or row[1] <= now or row[0] != owner:
            return None
        return StoredResponse(str(row[0]), float(row[1]), bytes(row[2]), bytes(row[3]))

    async def delete_response(self, response_id: str, owner: str) -> bool:
        with self._txn() as db:
            before = self.count
            self._drop(db, "id = ? AND owner = ?", (response_id, owner))
            return self.count < before

    async def close(self) -> None:
        self.db.close()
