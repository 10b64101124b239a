"""The outbox's file: opening it, locking it, and salvaging a damaged one.

:func:`open_file` gives :class:`edged.sinks.outbox.Outbox` a SQLite connection
in WAL mode with its table, and never fails: a file another edged process
holds, or one that cannot be created, leaves an in-memory database (logged as
an error); a file that is corrupt or truncated is salvaged (every row that can
still be read is returned, to be stored again) and renamed aside with a
timestamp suffix (``outbox.sqlite3.corrupt-20260102T030405``).

:func:`find_stranded` looks at the other outbox files of the same state folder
(``edged.service`` and ``edged@NAME`` units keep separate ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

log = logging.getLogger("edged.sinks.outbox")  # the outbox's lines, one logger

SyncPolicy = Literal["normal", "full"]
StoredRow = tuple[int, str, float, bytes]  # (id, camera, created, payload)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events ("
    "id INTEGER PRIMARY KEY, camera TEXT NOT NULL, created REAL NOT NULL, payload BLOB NOT NULL)"
)
_LOCK_PATIENCE = 0.5  # seconds to wait for an outbox lock another process holds briefly


@dataclasses.dataclass
class OpenedFile:
    """What :func:`open_file` gives the outbox."""

    db: sqlite3.Connection
    path: Path | None  # None: the database is in memory
    lockfile: int | None  # the descriptor holding the file's flock
    salvaged: list[StoredRow]  # rows read from a damaged file, to be stored again


def open_file(path: Path | None, sync: SyncPolicy, clock: Callable[[], float]) -> OpenedFile:
    """Open (or create) the outbox at ``path``; see the module docstring."""
    lockfile: int | None = None
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lockfile = _lock_path(path)
        except OSError as exc:
            log.error(
                "outbox: cannot use %s (%s); keeping undelivered events in memory only, "
                "they are lost if edged stops",
                path,
                exc.strerror or exc,
            )
            path = None
    try:
        return OpenedFile(connect(path, sync), path, lockfile, [])
    except (sqlite3.Error, _Damaged) as exc:
        assert path is not None  # an in-memory database does not fail like this
        if not _is_damage(exc):
            # Locked, unreadable, disk full: the file may well be fine. Leave it be.
            log.error(
                "outbox: cannot open %s (%s); keeping undelivered events in memory only, "
                "they are lost if edged stops",
                path,
                exc,
            )
            return OpenedFile(connect(None, sync), None, lockfile, [])
        salvaged = _salvage(path)
        aside = _move_aside(path, clock)
        log.warning(
            "outbox: %s is damaged (%s): salvaged %d events, moved the file to %s",
            path,
            exc,
            len(salvaged),
            aside or "(nowhere: it could not be renamed, so it was deleted)",
        )
    try:
        return OpenedFile(connect(path, sync), path, lockfile, salvaged)
    except (sqlite3.Error, _Damaged) as exc2:
        log.error("outbox: cannot create %s (%s); keeping events in memory only", path, exc2)
        return OpenedFile(connect(None, sync), None, lockfile, salvaged)


def connect(path: Path | None, sync: SyncPolicy) -> sqlite3.Connection:
    """A connection to the outbox at ``path`` (None: in memory), checked and with its
    table; raises ``sqlite3.Error``, or ``_Damaged`` for a file that is not sound."""
    # isolation_level=None: each statement commits on its own unless we BEGIN.
    db = sqlite3.connect(
        ":memory:" if path is None else str(path),
        isolation_level=None,
        check_same_thread=False,  # one connection, guarded by the outbox's lock
        timeout=5.0,
    )
    try:
        if path is not None:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes on a new file
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot use WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        check = db.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise _Damaged(str(check[0][0]) if check else "quick_check failed")
        db.execute(_SCHEMA)
        try:
            db.execute("SELECT id, camera, created, payload FROM events LIMIT 0")
        except sqlite3.OperationalError as exc:
            raise _Damaged(f"unexpected table layout: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


def _lock_path(path: Path) -> int:
    # Two edged processes sharing one outbox would each send every event.
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    # A moment's patience: find_stranded() in another process may hold the lock
    # for the instant it takes to see whether the file is in use.
    deadline = time.monotonic() + _LOCK_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise OSError(f"{path} is in use by another edged process") from None
            time.sleep(0.02)


def _move_aside(path: Path, clock: Callable[[], float]) -> Path | None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    moved: Path | None = aside
    for suffix in ("", "-wal"):
        src = Path(f"{path}{suffix}")
        try:
            os.replace(src, Path(f"{aside}{suffix}"))
        except FileNotFoundError:
            pass
        except OSError:
            with contextlib.suppress(OSError):
                src.unlink()
            moved = None if suffix == "" else moved
    with contextlib.suppress(OSError):
        Path(f"{path}-shm").unlink()
    return moved


class _Damaged(Exception):
    """The outbox file is readable but not sound."""


def _is_damage(exc: Exception) -> bool:
    if isinstance(exc, _Damaged):
        return True
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _is_event(payload: object) -> bool:
    """Whether a salvaged payload is whole: a row cut by the damage may read as
    zeros, and the outbox only ever holds JSON objects."""
    if not isinstance(payload, bytes):
        return False
    try:
        return isinstance(json.loads(payload), dict)
    except ValueError:  # also UnicodeDecodeError
        return False


def _salvage(path: Path) -> list[StoredRow]:
    """Every row that can still be read from a damaged outbox file, oldest first."""
    found: dict[int, StoredRow] = {}
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return []
    try:
        # Lets SQLite read a truncated file up to where it ends instead of refusing
        # it whole (the header's page count is then larger than the file).
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA writable_schema=ON")
        # Read forwards and backwards: a damaged page in the middle stops one
        # scan, and the other still reaches the rows beyond it.
        for order in ("ASC", "DESC"):
            try:
                for rid, camera, created, payload in db.execute(
                    f"SELECT id, camera, created, payload FROM events ORDER BY id {order}"
                ):
                    if isinstance(rid, int) and _is_event(payload):
                        found[rid] = (rid, str(camera), float(created), payload)
            except (sqlite3.Error, ValueError, TypeError):
                pass
    finally:
        db.close()
    return [found[k] for k in sorted(found)]


def find_stranded(own: Path) -> list[tuple[Path, dict[str, int]]]:
    """Other outbox files beside ``own`` that no running edged holds and that still
    hold events: (file, undelivered events per camera). They are left by another
    way of running the same cameras (``edged.service`` and ``edged@NAME`` units
    keep separate files), and nothing sends them until that way runs again."""
    found: list[tuple[Path, dict[str, int]]] = []
    try:
        others = sorted(own.parent.glob("outbox*.sqlite3"))
    except OSError:
        return found
    for path in others:
        if path == own or not path.is_file():
            continue
        try:
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a running edged delivers these
            try:
                db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
                try:
                    counts = dict(db.execute("SELECT camera, count(*) FROM events GROUP BY camera"))
                finally:
                    db.close()
            except sqlite3.Error:
                continue
        finally:
            os.close(fd)  # also releases the lock
        if counts:
            found.append((path, {str(c): int(n) for c, n in sorted(counts.items())}))
    return found
