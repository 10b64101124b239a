"""The durable outbox: events waiting for the MQTT broker's acknowledgement.

Every event bound for MQTT is stored here *before* it is handed to the MQTT
client, and removed only when the broker has acknowledged it (PUBACK). What is
left when the broker is away, or when edged dies, even by SIGKILL, is sent
again, oldest first, by the next delivery loop or the next run.

Storage: SQLite (standard library), one table keyed by a row id that grows
with every event, in WAL mode. Why not an append-only log of our own: removing
acknowledged events out of order, bounding the size by dropping the oldest,
and surviving a torn write at the end of the file all come with SQLite's
transactions for free, and its WAL lets one connection insert while the
delivery thread reads and deletes, with one small transaction each. A torn
append log would need its own framing, checksums, compaction and recovery
code, which is exactly what SQLite already is, well tested.

Durability (``sync``): ``"normal"`` (``PRAGMA synchronous=NORMAL``, the
default) makes each insert one WAL append with no fsync: committed events
survive a crash or SIGKILL of edged (they are in the kernel's page cache), and
a power loss may lose the last moments of events but never corrupts the file.
Inserting costs tens of microseconds, so each event is committed on its own
as it arrives (no batching, nothing to lose in a batch buffer). ``"full"``
fsyncs the WAL at every commit: events also survive a power loss, at the cost
of one fsync (about a millisecond on an SSD, more on an SD card) per event in
the supervisor's thread.

Bounds: ``max_bytes`` of stored payload and ``max_age``; past either, the
oldest events are dropped first. Every drop is counted (``dropped_total``)
and logged, at most one line per ``DROP_LOG_EVERY`` seconds summarising the
burst. Page overhead makes the file somewhat larger than ``max_bytes``; freed
pages are returned to the file system once the outbox is empty.

Failures: when the file cannot be written (disk full, read-only, I/O error)
new events are held in memory, in order (bounded by ``max_bytes`` too), and
are still delivered; rows already stored keep being delivered and deleted.
When the file cannot be read (an I/O error, a page damaged while running), new
events are still stored if it takes writes, and the stored ones wait there
(the size bound waits too): none is skipped, and a damaged file is salvaged at
the next start.
A file that is corrupt or truncated at start is salvaged: every row that can
still be read is kept, the damaged file is renamed aside with a timestamp
suffix (``outbox.sqlite3.corrupt-20260102T030405``), and that is logged; it
never stops the daemon. If no file can be used at all, the outbox lives in
memory, and that is logged as an error (``edged.sinks.outbox_file`` opens,
locks and salvages the file).

Thread safety: every method takes one lock; :meth:`Outbox.put` is called by
the supervisor's thread, the others by the MQTT delivery thread and metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from edged.sinks.outbox_file import StoredRow, SyncPolicy, open_file

log = logging.getLogger(__name__)

Row = tuple[int, str, bytes]  # (id, camera, payload)

DROP_LOG_EVERY = 10.0  # seconds between log lines about dropped events
_VACUUM_PAGES = 256  # free pages worth giving back to the file system once empty


# Why events leave the outbox undelivered (the keys of dropped_by and of the
# metrics' reason label), and how the log says it.
DROP_REASONS = {
    "size": "the outbox reached outbox_max_bytes",
    "age": "they were older than outbox_max_age",
    "memory": "the outbox file could not be written and memory filled up",
    "rejected": "the broker refused them",
    "oversize": "each was larger than the MQTT payload limit",
    "undeliverable": "the broker closed the connection on each, again and again",
}


@dataclasses.dataclass(frozen=True)
class OutboxStats:
    """The outbox as metrics and the MQTT sink see it."""

    depth: int  # events waiting for the broker's acknowledgement
    bytes: int  # their payload
    dropped_total: int
    oldest_age_s: float  # age of the oldest waiting event (0 when empty)
    held_in_memory: int  # events the outbox's own file would not take
    dropped_by: dict[str, int]  # by reason, every reason of DROP_REASONS present


class Outbox:
    """Events in order, stored until acknowledged. See the module docstring.

    ``path=None`` keeps everything in memory (not durable; for tests and as the
    last resort). Row ids grow with every :meth:`put`; :meth:`fetch` returns
    rows after an id, in order, so a delivery loop can page through the
    outbox without sending a row twice, and :meth:`remove` deletes
    acknowledged rows by id in any order.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        max_bytes: int,
        max_age: float,
        sync: SyncPolicy = "normal",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0 or max_age <= 0:
            raise ValueError("max_bytes and max_age must be positive")
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.sync = sync
        self._clock = clock
        self._lock = threading.Lock()
        self._lockfile: int | None = None
        self._next_id = 1
        self._depth = 0  # rows in the database
        self._bytes = 0  # payload bytes in the database
        # Events the database would not take, oldest first: (id, camera, created, payload).
        self._held: deque[StoredRow] = deque()
        self._held_bytes = 0
        self._failing: str | None = None  # why writes fail, while they do
        # Why reads fail, by what was reading: damage may fail one query and not
        # another, and a success of one must not log a recovery the next undoes.
        self._unreadable: dict[str, str] = {}
        self._stored_top = 0  # the highest id ever inserted into the database
        self.drops = DropCounter(clock)
        self.salvaged = 0  # rows recovered from a corrupt file at start
        self._db = self._open()

    # -- public -------------------------------------------------------------------

    def put(self, camera: str, payload: bytes) -> int:
        """Store one event; returns its id. Never raises for I/O trouble."""
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            now = self._clock()
            if not self._held and self._insert([(rid, camera, now, payload)]):
                self._depth += 1
                self._bytes += len(payload)
                self._enforce_size()
            else:
                self._held.append((rid, camera, now, payload))
                self._held_bytes += len(payload)
                while self._held_bytes > self.max_bytes and len(self._held) > 1:
                    _, _, _, old = self._held.popleft()
                    self._held_bytes -= len(old)
                    self.drops.count("memory", 1)
            return rid

    def fetch(self, after: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with an id above ``after``, oldest first."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "SELECT id, camera, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    (after, limit),
                )
                rows = [(int(i), str(c), bytes(p)) for i, c, p in cur]
            except sqlite3.Error as exc:
                self._read_failed("fetch", exc)
                if after < self._stored_top:
                    # Held events come after every stored row: handing them out
                    # now would move the delivery cursor past stored rows it
                    # has not sent yet, and they would never be sent.
                    return []
                rows = []
            else:
                self._read_ok("fetch")
            if len(rows) < limit:
                rows += [(i, c, p) for i, c, _, p in self._held if i > after][: limit - len(rows)]
            return rows

    def remove(self, ids: Iterable[int]) -> None:
        """Forget acknowledged rows (unknown ids are ignored)."""
        wanted = set(ids)
        if not wanted:
            return
        with self._lock:
            if self._held:
                kept = [h for h in self._held if h[0] not in wanted]
                if len(kept) != len(self._held):
                    self._held = deque(kept)
                    self._held_bytes = sum(len(h[3]) for h in kept)
            self._delete_ids(wanted)

    def drop(self, ids: Iterable[int], reason: str = "rejected") -> None:
        """Remove rows that will never be delivered, counting them as dropped."""
        ids = list(ids)
        self.remove(ids)
        with self._lock:
            self.drops.count(reason, len(ids))

    def maintain(self) -> None:
        """Periodic work (about once a second): expire old rows, move held events to the
        file once it takes writes again, log drops, give free pages back when empty."""
        with self._lock:
            self._expire()
            if self._held:
                self._flush_held()
            if self._depth == 0 and not self._held:
                self._vacuum()
            self.drops.log_due(self._clock())

    def stats(self) -> OutboxStats:
        """What is waiting, and what was dropped (by reason; they sum to ``dropped_total``)."""
        with self._lock:
            oldest: float | None = None
            try:
                row = self._db.execute("SELECT created FROM events ORDER BY id LIMIT 1").fetchone()
                oldest = float(row[0]) if row else None
            except sqlite3.Error:
                pass
            if oldest is None and self._held:
                oldest = self._held[0][2]
            return OutboxStats(
                depth=self._depth + len(self._held),
                bytes=self._bytes + self._held_bytes,
                dropped_total=self.drops.total,
                oldest_age_s=max(0.0, self._clock() - oldest) if oldest is not None else 0.0,
                held_in_memory=len(self._held),
                dropped_by=dict(self.drops.by_reason),
            )

    def close(self) -> None:
        """Log unlogged drops, checkpoint and close. Idempotent."""
        with self._lock:
            self.drops.log_due(float("inf"))
            if self._held:
                self._flush_held()
            if self._held:
                log.error(
                    "outbox: %d events could not be stored and are lost at exit", len(self._held)
                )
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            if self._lockfile is not None:
                os.close(self._lockfile)
                self._lockfile = None

    # -- storage ------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        opened = open_file(self.path, self.sync, self._clock)
        db, self.path, self._lockfile = opened.db, opened.path, opened.lockfile
        if opened.salvaged:
            self._db = db
            salvage = opened.salvaged
            self.salvaged = len(salvage) if self._insert(salvage) else 0
            if not self.salvaged:
                self._held.extend(salvage)
                self._held_bytes = sum(len(r[3]) for r in salvage)
        depth, size, top = db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(max(id), 0) FROM events"
        ).fetchone()
        self._depth, self._bytes = int(depth), int(size)
        self._stored_top = int(top)
        self._next_id = max(int(top), max((r[0] for r in self._held), default=0)) + 1
        if self._depth:
            log.info(
                "outbox: %d undelivered events (%d bytes) from an earlier run will be sent",
                self._depth,
                self._bytes,
            )
        return db

    def _insert(self, rows: list[StoredRow]) -> bool:
        try:
            if len(rows) == 1:
                self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", rows[0])
            else:
                with self._transaction():
                    self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return False
        self._stored_top = max(self._stored_top, max(r[0] for r in rows))
        if self._failing is not None:
            log.info("outbox: %s takes writes again", self._where())
            self._failing = None
        return True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _write_failed(self, exc: sqlite3.Error) -> None:
        reason = str(exc)
        if self._failing != reason:
            log.error(
                "outbox: cannot write %s (%s); holding new events in memory until it can",
                self._where(),
                reason,
            )
            self._failing = reason

    def _read_failed(self, what: str, exc: sqlite3.Error) -> None:
        reason = str(exc)
        if reason not in self._unreadable.values():
            log.error(
                "outbox: cannot read %s (%s); the events stored there wait until it can",
                self._where(),
                reason,
            )
        self._unreadable[what] = reason

    def _read_ok(self, what: str) -> None:
        if self._unreadable.pop(what, None) is not None and not self._unreadable:
            log.info("outbox: %s can be read again", self._where())

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "the in-memory outbox"

    def _flush_held(self) -> None:
        rows = list(self._held)
        if self._insert(rows):
            self._held.clear()
            self._held_bytes = 0
            self._depth += len(rows)
            self._bytes += sum(len(r[3]) for r in rows)
            self._enforce_size()

    def _delete_ids(self, ids: set[int]) -> None:
        marks = ",".join("?" * len(ids))
        try:
            with self._transaction():
                row = self._db.execute(
                    f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM events "
                    f"WHERE id IN ({marks})",
                    tuple(ids),
                ).fetchone()
                self._db.execute(f"DELETE FROM events WHERE id IN ({marks})", tuple(ids))
        except sqlite3.Error as exc:
            # Delivered but still stored: it is sent again later (at least once).
            self._write_failed(exc)
            return
        self._depth -= int(row[0])
        self._bytes -= int(row[1])

    def _delete_oldest(self, upto: int, n: int, size: int, reason: str) -> bool:
        try:
            self._db.execute("DELETE FROM events WHERE id <= ?", (upto,))
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return False
        self._depth -= n
        self._bytes -= size
        self.drops.count(reason, n)
        return True

    def _enforce_size(self) -> None:
        excess = self._bytes - self.max_bytes
        while excess > 0 and self._depth > 1:
            upto, n, size = 0, 0, 0
            try:
                cur = self._db.execute(
                    "SELECT id, length(payload) FROM events ORDER BY id LIMIT 256"
                ).fetchall()
            except sqlite3.Error as exc:
                # The event just stored stays stored: over the bound until the
                # oldest can be read (and dropped) again, not lost.
                self._read_failed("size", exc)
                return
            self._read_ok("size")
            # Keep the newest row whatever its size: it is the one just stored.
            for rid, length in cur[: max(1, min(len(cur), self._depth - 1))]:
                if size >= excess:
                    break
                upto, n, size = int(rid), n + 1, size + int(length)
            if not n or not self._delete_oldest(upto, n, size, "size"):
                return
            excess -= size

    def _expire(self) -> None:
        cutoff = self._clock() - self.max_age
        while self._held and self._held[0][2] < cutoff:
            _, _, _, old = self._held.popleft()
            self._held_bytes -= len(old)
            self.drops.count("age", 1)
        while True:
            try:
                cur = self._db.execute(
                    "SELECT id, created, length(payload) FROM events ORDER BY id LIMIT 512"
                ).fetchall()
            except sqlite3.Error as exc:
                self._read_failed("age", exc)
                return
            self._read_ok("age")
            upto, n, size = 0, 0, 0
            for rid, created, length in cur:
                if created >= cutoff:
                    break
                upto, n, size = int(rid), n + 1, size + int(length)
            if not n or not self._delete_oldest(upto, n, size, "age") or n < len(cur):
                return

    def _vacuum(self) -> None:
        try:
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if free >= _VACUUM_PAGES:
                # execute() stops after one step (one page); executescript runs it through.
                self._db.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error:
            pass


class DropCounter:
    """Events that left the outbox undelivered: counted by reason, and logged at
    most once per ``DROP_LOG_EVERY`` seconds, a line per reason for the burst."""

    _OLDEST = frozenset({"size", "age", "memory"})  # the bounds drop the oldest first

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.total = 0
        self.by_reason: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._unlogged: dict[str, int] = {}
        self._last_log = float("-inf")

    def count(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.total += n
        self.by_reason[reason] = self.by_reason.get(reason, 0) + n
        self._unlogged[reason] = self._unlogged.get(reason, 0) + n
        self.log_due(self._clock())

    def log_due(self, now: float) -> None:
        """Log what is unlogged, if the last line is old enough (``now`` = inf: at once)."""
        if not self._unlogged or now - self._last_log < DROP_LOG_EVERY:
            return
        self._last_log = now if now != float("inf") else self._last_log
        for reason, n in self._unlogged.items():
            log.warning(
                "outbox: dropped the %d %sundelivered event%s: %s (%d dropped in all)",
                n,
                "oldest " if reason in self._OLDEST else "",
                "" if n == 1 else "s",
                DROP_REASONS.get(reason, reason),
                self.total,
            )
        self._unlogged.clear()
