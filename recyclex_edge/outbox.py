"""The durable event outbox: an SQLite queue (WAL) in the state directory, between the sorter and MQTT.

An event counts as produced once `append()` returns: the row is committed with `synchronous=FULL`, so a
kill -9 or a power cut after that cannot lose it. The MQTT publisher reads rows in order (`pending()`)
and deletes them only when the broker has acknowledged them (`ack()`); a crash between the two means the
row is sent again, which is why delivery is at-least-once and every event carries a unique id.

Bounds: `max_rows` rows and `max_bytes` bytes of payload. When a new event would exceed either, the
*oldest* rows are dropped to make room (the dashboard cares most about what the bin is doing now) and
the loss is counted, persisted in the file, and reported in health component `outbox`; never silent.

Failures never stop the bin from sorting:
- a corrupt file is moved aside (`outbox.sqlite3.corrupt-<time>`) and a fresh one started;
- when a write fails (disk full, I/O error) events are kept in a small in-memory queue, still in order,
  and published from there if the broker is reachable; they are moved into the file at the next
  successful write. Health reports `failing` while that lasts, because those events would not survive
  a power cut.
- a file that cannot be opened at start (state directory missing or not mounted yet, disk full) is
  tried again every `reopen_interval_s`; once it opens, its rows from before the restart go first and
  the events held in memory are written after them, renumbered. Renumbering starts a new
  `generation`: rows from an older one are never acknowledged (they are sent again, a duplicate).

Example::

    outbox = Outbox(state_dir / "outbox.sqlite3", max_rows=100_000, max_bytes=64 << 20, health=health)
    outbox.append(event_id, json_bytes)          # durable once this returns
    for row in outbox.pending(after_seq=0, limit=50):
        ...publish row.payload, then later...
    outbox.ack([row])
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from recyclex_edge.health import HealthRegistry, Status

log = logging.getLogger("recyclex_edge.outbox")

HEALTH_COMPONENT = "outbox"

# While the file cannot be written, events wait in memory; this bounds that queue. At one deposit every
# few seconds it covers well over an hour of a full disk, and costs well under a megabyte.
MEMORY_FALLBACK_MAX_ROWS = 1000

# How often a file that could not be opened is tried again (while events wait in memory).
REOPEN_INTERVAL_S = 30.0

# Quarantined corrupt files kept for a technician to inspect; older ones are deleted.
_KEEP_CORRUPT_FILES = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    size_bytes INTEGER NOT NULL,
    queued_at REAL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxRow:
    """One queued event. `seq` orders rows within a `generation`; `ack()` takes the rows back."""

    seq: int
    event_id: str
    payload: bytes
    generation: int = 0
    queued_at: float = 0.0  # time.time() when appended: the outbox's oldest age comes from it


class Outbox:
    """A bounded, ordered, crash-safe queue of serialised events. Thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int,
        max_bytes: int,
        health: HealthRegistry | None = None,
        reopen_interval_s: float = REOPEN_INTERVAL_S,
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("outbox bounds must be positive")
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._health = health
        self._lock = threading.Lock()
        self._memory: deque[OutboxRow] = deque()
        self._rows = 0
        self._bytes = 0
        self._lost = 0
        self._lost_persisted = 0
        self._next_seq = 1
        self._oldest_queued_at: float | None = None  # of the oldest queued row; None when empty
        self._opened_at = time.time()
        self._problem = ""  # why the file is not usable right now, "" when it is
        self._notice = ""  # something a technician should know even though all is well now
        self._generation = 0  # bumped when the queued rows are renumbered (a late open)
        self._reopen_interval_s = reopen_interval_s
        self._next_open_at = time.monotonic() + reopen_interval_s
        self._closed = False
        self._db = self._open()
        self._find_oldest()
        self._report()

    # -- opening -------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection | None:
        problem_before = self._problem
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect()
        except OSError as error:
            reason = error.strerror
            if self.path.parent.is_symlink():  # a state directory on a volume that is not mounted
                reason = f"it links to {self.path.parent.readlink()}, which is missing"
            self._problem = f"cannot create {self.path.parent}: {reason}; events kept in memory only"
        except sqlite3.OperationalError as error:
            # Locked, read-only, full, unopenable: the file itself may be fine, so never move it aside.
            self._problem = f"cannot open {self.path}: {error}; events kept in memory only"
        except sqlite3.DatabaseError as error:
            moved_to = self._quarantine()
            self._notice = (
                f"outbox file was unreadable ({error}); moved to {moved_to.name}, "
                "its unsent events are lost (count unknown)"
            )
            log.error("%s", self._notice)
            try:
                return self._connect()
            except sqlite3.DatabaseError as again:
                self._problem = f"cannot create a fresh {self.path}: {again}; events kept in memory only"
        if self._problem != problem_before:  # tried again every reopen_interval_s: log changes only
            log.error("outbox %s", self._problem)
        return None

    def _open_late_if_due(self) -> bool:
        """Under the lock: try again to open a file that could not be opened; True if it opened now.

        The caller reports health after releasing the lock.
        """
        if self._db is not None or self._closed or time.monotonic() < self._next_open_at:
            return False
        self._next_open_at = time.monotonic() + self._reopen_interval_s
        held, held_bytes, lost_in_memory = list(self._memory), self._bytes, self._lost
        self._db = self._open()  # on success, the counters now describe the file alone
        if self._db is None:
            return False
        # The file's rows were queued before the restart, so they go first; the held rows follow them.
        self._generation += 1
        self._memory = deque(
            OutboxRow(self._next_seq + offset, row.event_id, row.payload, self._generation, row.queued_at)
            for offset, row in enumerate(held)
        )
        self._next_seq += len(held)
        self._rows += len(held)
        self._bytes += held_bytes
        self._lost += lost_in_memory
        log.info("outbox %s opened; %d event(s) held in memory queue after its own", self.path, len(held))
        self._write(list(self._memory))  # clears the problem once they are on disk
        self._find_oldest()
        return True

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on the storage before append() returns, so "produced" means durable.
            db.execute("PRAGMA synchronous=FULL")
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {verdict}")
            db.executescript(_SCHEMA)
            columns = {name for _, name, *_ in db.execute("PRAGMA table_info(events)")}
            if "queued_at" not in columns:  # a file from before the column: its rows' age is unknown
                db.execute("ALTER TABLE events ADD COLUMN queued_at REAL")
            rows, size, last = db.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0), coalesce(max(seq), 0) FROM events"
            ).fetchone()
            lost = db.execute("SELECT value FROM meta WHERE name = 'lost'").fetchone()
        except BaseException:
            db.close()
            raise
        self._rows, self._bytes, self._next_seq = rows, size, last + 1
        self._lost = self._lost_persisted = lost[0] if lost else 0
        if rows:
            log.info("outbox %s holds %d unsent event(s) from before the restart", self.path, rows)
        return db

    def _quarantine(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{target}{suffix}"))
        old = sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*[0-9Z]"))
        for stale in old[:-_KEEP_CORRUPT_FILES]:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{stale}{suffix}").unlink(missing_ok=True)
        return target

    # -- the queue -------------------------------------------------------------------------------------

    def append(self, event_id: str, payload: bytes) -> None:
        """Queue one event; durable when this returns, unless health says the file is failing."""
        with self._lock:
            self._open_late_if_due()
            row = OutboxRow(self._next_seq, event_id, payload, self._generation, time.time())
            self._next_seq += 1
            self._rows += 1
            self._bytes += len(payload)
            if not self._write([*self._memory, row]):
                self._memory.append(row)
                while len(self._memory) > min(MEMORY_FALLBACK_MAX_ROWS, self.max_rows):
                    dropped = self._memory.popleft()
                    self._rows -= 1
                    self._bytes -= len(dropped.payload)
                    self._lost += 1
            self._find_oldest()
        self._report()

    def _write(self, rows: list[OutboxRow]) -> bool:
        """Insert `rows` (all the memory rows, oldest first, maybe a new one), counted already. One commit.

        Drops the oldest rows on disk to stay in bounds.
        """
        if self._db is None:
            return False
        try:
            self._db.execute("BEGIN IMMEDIATE")
            dropped_rows, dropped_bytes = self._make_room()
            self._db.executemany(
                "INSERT INTO events (seq, event_id, payload, size_bytes, queued_at) VALUES (?, ?, ?, ?, ?)",
                [(row.seq, row.event_id, row.payload, len(row.payload), row.queued_at) for row in rows],
            )
            lost = self._lost + dropped_rows
            if lost != self._lost_persisted:
                self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('lost', ?)", (lost,))
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            if not self._problem:
                log.error("outbox write failed, keeping events in memory until it works again: %s", error)
            self._problem = f"cannot write {self.path.name}: {error}; events kept in memory only"
            return False
        if self._problem:
            log.info("outbox writes work again; %d event(s) moved from memory to disk", len(self._memory))
        self._problem = ""
        self._memory.clear()
        if dropped_rows:
            log.warning("outbox full: dropped the %d oldest unsent event(s)", dropped_rows)
        self._lost = self._lost_persisted = lost
        self._rows -= dropped_rows
        self._bytes -= dropped_bytes
        return True

    def _make_room(self) -> tuple[int, int]:
        """Delete the oldest rows on disk until all counted rows fit; inside the caller's transaction."""
        assert self._db is not None
        excess_rows = self._rows - self.max_rows
        excess_bytes = self._bytes - self.max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return 0, 0
        dropped_rows = dropped_bytes = 0
        last_seq = 0
        for seq, size in self._db.execute("SELECT seq, size_bytes FROM events ORDER BY seq"):
            if dropped_rows >= excess_rows and dropped_bytes >= excess_bytes:
                break
            dropped_rows += 1
            dropped_bytes += size
            last_seq = seq
        self._db.execute("DELETE FROM events WHERE seq <= ?", (last_seq,))
        return dropped_rows, dropped_bytes

    def _rollback(self) -> None:
        assert self._db is not None
        # sqlite3.Error here means no transaction was open: the failure was BEGIN itself.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def pending(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` queued rows with seq > after_seq, oldest first (see `generation`)."""
        with self._lock:
            opened = self._open_late_if_due()
            rows = self._read(after_seq, limit)
        if opened:
            self._report()
        return rows

    def _read(self, after_seq: int, limit: int) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        if self._db is not None:
            try:
                rows = [
                    OutboxRow(seq, event_id, bytes(payload), self._generation)
                    for seq, event_id, payload in self._db.execute(
                        "SELECT seq, event_id, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after_seq, limit),
                    )
                ]
            except sqlite3.Error as error:
                # Serving the memory rows now would send them ahead of the unread older ones.
                log.error("cannot read the outbox: %s", error)
                return []
        return rows + [row for row in self._memory if row.seq > after_seq][: limit - len(rows)]

    def ack(self, rows: Iterable[OutboxRow]) -> None:
        """Forget rows the broker has acknowledged (one commit for the whole batch).

        Rows of an older generation are ignored: their seq now names another row, and they are queued
        still, under a new seq, to be sent again.
        """
        with self._lock:
            wanted = {row.seq for row in rows if row.generation == self._generation}
            if not wanted:
                return
            self._delete(wanted)
            self._find_oldest()

    def _delete(self, wanted: set[int]) -> None:
        """Forget the rows numbered `wanted`, in memory and on disk; called with the lock held."""
        for row in [row for row in self._memory if row.seq in wanted]:
            self._memory.remove(row)
            self._rows -= 1
            self._bytes -= len(row.payload)
            wanted.discard(row.seq)
        if not wanted or self._db is None:
            return
        removed_rows = removed_bytes = 0
        try:
            # No fsync for deletions: losing one to a power cut only means a duplicate, and the next
            # append's FULL commit syncs the log up to and including it. Halves the SD card's writes.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            for seq in sorted(wanted):
                # A row dropped for space while in flight is simply not found.
                for (size,) in self._db.execute(
                    "DELETE FROM events WHERE seq = ? RETURNING size_bytes", (seq,)
                ).fetchall():
                    removed_rows += 1
                    removed_bytes += size
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            # The rows stay and are sent again later: a duplicate, never a loss.
            self._rollback()
            log.error("cannot delete acknowledged events from the outbox: %s", error)
            return
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        self._rows -= removed_rows
        self._bytes -= removed_bytes

    def _find_oldest(self) -> None:
        """Note when the oldest queued row was queued; after every change, so reading it costs nothing.

        Called with the lock held (or before any other thread has the outbox). Rows written before the
        file had a `queued_at` column count from when this outbox opened the file.
        """
        oldest: float | None = None
        if self._db is not None:
            try:
                row = self._db.execute("SELECT queued_at FROM events ORDER BY seq LIMIT 1").fetchone()
            except sqlite3.Error as error:
                log.error("cannot read the outbox's oldest row: %s", error)
                row = None
            if row is not None:
                oldest = row[0] if row[0] is not None else self._opened_at
        if oldest is None and self._memory:
            oldest = self._memory[0].queued_at
        self._oldest_queued_at = oldest

    # -- reporting -----------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Changes when queued rows were renumbered: a reader must start again from seq 0."""
        return self._generation

    @property
    def depth(self) -> int:
        """Events waiting for the broker's acknowledgement."""
        return self._rows

    @property
    def oldest_age_s(self) -> float:
        """Seconds the oldest unacknowledged event has waited; 0 when none waits."""
        oldest = self._oldest_queued_at
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def lost(self) -> int:
        """Events dropped because a bound was reached, since this outbox file was created."""
        return self._lost

    @property
    def durable(self) -> bool:
        """False while events are only in memory (the file cannot be written)."""
        return not self._problem

    def _report(self) -> None:
        if self._health is None:
            return
        if self._problem:
            status, detail = Status.FAILING, self._problem
        elif self._lost or self._notice:
            lost = (
                f"{self._lost} event(s) dropped since the outbox was created because it was full "
                f"({self.max_rows} rows / {self.max_bytes} bytes); oldest dropped first"
            )
            status = Status.DEGRADED
            detail = "; ".join(part for part in (self._notice, lost if self._lost else "") if part)
        else:
            status, detail = Status.OK, "events are written to disk before they count as produced"
        self._health.report(HEALTH_COMPONENT, status, detail, critical=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None
