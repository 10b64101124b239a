"""The durable MQTT outbox: order, persistence, bounds, damaged files, a full disk."""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from pathlib import Path

import pytest

from edged.sinks.outbox import DROP_LOG_EVERY, Outbox


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(path: Path | None, clock: Clock | None = None, **kw: object) -> Outbox:
    opts: dict[object, object] = {"max_bytes": 1 << 20, "max_age": 3600.0, **kw}
    return Outbox(path, clock=clock or Clock(), **opts)  # type: ignore[arg-type]


def payload(i: int, size: int = 100) -> bytes:
    # Valid JSON, the same length for every i below a million.
    return (f'{{"n":{i},"pad":"' + "x" * (size + 6 - len(str(i))) + '"}').encode()


def ids(rows: list[tuple[int, str, bytes]]) -> list[int]:
    return [r[0] for r in rows]


def test_rows_come_back_in_order_and_go_when_acknowledged(tmp_path: Path) -> None:
    box = make(tmp_path / "o.sqlite3")
    got = [box.put("cam1" if i % 2 else "cam2", payload(i)) for i in range(10)]
    assert got == list(range(1, 11))
    rows = box.fetch(0, 4)
    assert ids(rows) == [1, 2, 3, 4]
    assert rows[0] == (1, "cam2", payload(0))
    assert ids(box.fetch(4, 100)) == list(range(5, 11))
    box.remove([2, 1, 7, 999])  # out of order, and one unknown id
    assert ids(box.fetch(0, 100)) == [3, 4, 5, 6, 8, 9, 10]
    stats = box.stats()
    assert stats.depth == 7
    assert stats.bytes == sum(len(payload(i)) for i in (2, 3, 4, 5, 7, 8, 9))
    assert stats.dropped_total == 0
    box.close()


def test_what_is_not_acknowledged_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = make(path)
    for i in range(5):
        box.put("cam1", payload(i))
    box.remove([1, 2])
    box.close()
    again = make(path)
    assert [r[2] for r in again.fetch(0, 100)] == [payload(2), payload(3), payload(4)]
    assert again.put("cam1", payload(5)) == 6  # ids keep growing
    again.close()


def test_a_kill_loses_nothing_committed(tmp_path: Path) -> None:
    # No close(): what a SIGKILL leaves behind (the WAL is not checkpointed).
    path = tmp_path / "o.sqlite3"
    box = make(path)
    for i in range(50):
        box.put("cam1", payload(i))
    assert Path(f"{path}-wal").stat().st_size > 0
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM events").fetchone() == (50,)
    db.close()
    box.close()


def test_size_bound_drops_the_oldest_counts_and_logs_once_per_burst(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    box = make(tmp_path / "o.sqlite3", clock, max_bytes=10 * len(payload(0)))
    caplog.set_level(logging.WARNING, "edged.sinks.outbox")
    for i in range(25):
        box.put("cam1", payload(i))
    rows = box.fetch(0, 100)
    assert [r[2] for r in rows] == [payload(i) for i in range(15, 25)]  # the newest kept
    stats = box.stats()
    assert (stats.depth, stats.dropped_total) == (10, 15)
    assert stats.bytes <= 10 * len(payload(0))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # one line for the burst, not one per event
    assert "dropped the 1 oldest undelivered event" in lines[0]
    assert "outbox_max_bytes" in lines[0]
    caplog.clear()
    clock.now += DROP_LOG_EVERY
    box.maintain()  # the rest of the burst, summed up
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "dropped the 14 oldest undelivered events" in lines[0], lines
    assert "(15 dropped in all)" in lines[0]
    box.close()


def test_an_event_larger_than_the_bound_is_still_kept(tmp_path: Path) -> None:
    box = make(tmp_path / "o.sqlite3", max_bytes=4096)
    box.put("cam1", payload(0))
    box.put("cam1", payload(1, 10_000))
    assert ids(box.fetch(0, 10)) == [2]
    box.close()


def test_age_bound_drops_old_events(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    box = make(tmp_path / "o.sqlite3", clock, max_age=60.0)
    for i in range(5):
        box.put("cam1", payload(i))
        clock.now += 10
    assert box.stats().oldest_age_s == pytest.approx(50)
    clock.now += 25  # the first two are now more than 60 s old
    box.maintain()
    assert ids(box.fetch(0, 10)) == [3, 4, 5]
    assert box.stats().dropped_total == 2
    assert "older than outbox_max_age" in caplog.text
    box.close()


def test_garbage_file_is_moved_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not a database\n" * 200)
    box = make(path)
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("o.sqlite3.corrupt-20"), aside
    assert (tmp_path / aside[0]).read_bytes().startswith(b"this is not a database")
    assert "is damaged" in caplog.text and "salvaged 0 events" in caplog.text
    assert aside[0] in caplog.text
    box.put("cam1", payload(1))  # and the new file works
    assert len(box.fetch(0, 10)) == 1
    box.close()
    again = make(path)  # no second move aside
    assert len([p for p in tmp_path.iterdir() if ".corrupt-" in p.name]) == 1
    again.close()


def test_truncated_file_is_salvaged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite3"
    box = make(path)
    for i in range(2000):
        box.put("cam1", payload(i))
    box.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    again = make(path)
    rows = again.fetch(0, 10_000)
    # Some rows survive, in order, exactly as stored; the rest is reported.
    assert 100 < len(rows) < 2000
    assert all(r[2] == payload(r[0] - 1) for r in rows)
    assert ids(rows) == sorted(ids(rows))
    assert again.salvaged == len(rows)
    assert f"salvaged {len(rows)} events" in caplog.text
    assert again.put("cam1", payload(9)) > rows[-1][0]
    again.close()


def test_full_disk_holds_new_events_in_memory_and_delivery_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edged.sinks.outbox")
    box = make(tmp_path / "o.sqlite3")
    for i in range(3):
        box.put("cam1", payload(i, 3000))
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is now full
    for i in range(3, 6):
        box.put("cam1", payload(i, 3000))
    assert "cannot write" in caplog.text and "full" in caplog.text
    assert caplog.text.count("cannot write") == 1  # once, not per event
    stats = box.stats()
    assert (stats.depth, stats.held_in_memory) == (6, 3)
    # Everything is still delivered in order, the stored ones can still be removed.
    assert ids(box.fetch(0, 100)) == [1, 2, 3, 4, 5, 6]
    box.remove([1, 2, 4])
    assert ids(box.fetch(0, 100)) == [3, 5, 6]
    box._db.execute("PRAGMA max_page_count=1000000")  # space again
    box.maintain()
    assert "takes writes again" in caplog.text
    assert box.stats().held_in_memory == 0
    box.close()
    again = make(tmp_path / "o.sqlite3")
    assert ids(again.fetch(0, 100)) == [3, 5, 6]
    again.close()


def damage_the_oldest_page(box: Outbox, path: Path) -> None:
    """Overwrite the leaf page of the oldest rows while the outbox runs, as a failing disk might."""
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    size = box._db.execute("PRAGMA page_size").fetchone()[0]
    root = box._db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    with open(path, "r+b") as f:
        f.seek((root - 1) * size)
        page = f.read(size)
        assert page[0] == 5  # an interior table page: the rows span more than one leaf
        (cell,) = struct.unpack_from(">H", page, 12)  # the first cell, the leftmost child
        (leaf,) = struct.unpack_from(">I", page, cell)
        f.seek((leaf - 1) * size)
        f.write(b"\xff" * size)
    box._db.execute("PRAGMA shrink_memory")  # drop the cached copy: the next read sees the damage


def test_a_page_damaged_while_running_neither_escapes_put_nor_loses_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edged.sinks.outbox")
    path = tmp_path / "o.sqlite3"
    box = make(path, max_bytes=40 * len(payload(0)))
    for i in range(40):  # at the bound: the next put has to find the oldest to drop
        box.put("cam1", payload(i))
    damage_the_oldest_page(box, path)
    assert [box.put("cam1", payload(i)) for i in range(40, 45)] == [41, 42, 43, 44, 45]
    box.maintain()  # expiry reads the same page
    assert caplog.text.count("cannot read") == 1, caplog.text  # once, not per event
    assert "malformed" in caplog.text
    assert "cannot write" not in caplog.text and "takes writes again" not in caplog.text
    assert ids(box.fetch(40, 100)) == [41, 42, 43, 44, 45]  # stored, beyond the damage
    assert box.fetch(0, 100) == []  # what cannot be read is not skipped either
    assert box.stats().dropped_total == 0
    box.close()
    again = make(path)  # the next start salvages what can still be read
    assert "is damaged" in caplog.text
    assert ids(again.fetch(0, 100))[-5:] == [41, 42, 43, 44, 45]
    again.close()


def test_held_events_wait_behind_stored_rows_that_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = make(path)
    for i in range(40):
        box.put("cam1", payload(i))
    damage_the_oldest_page(box, path)
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages}")  # and the disk is full
    for i in range(40, 43):
        box.put("cam1", payload(i, 3000))
    assert box.stats().held_in_memory == 3
    # Handing out 41.. now would move the delivery cursor past 1..40 for good.
    assert box.fetch(0, 100) == []
    assert ids(box.fetch(40, 100)) == [41, 42, 43]  # past the stored rows they still go
    box.close()


def test_a_second_process_on_the_same_outbox_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite3"
    first = make(path)
    second = make(path)
    assert second.path is None
    assert "in use by another edged process" in caplog.text
    second.put("cam1", payload(1))
    assert len(second.fetch(0, 10)) == 1
    second.close()
    first.close()


def test_unwritable_state_dir_falls_back_to_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    box = make(blocker / "state" / "o.sqlite3")  # its parent is a file
    assert box.path is None and "in memory only" in caplog.text
    box.put("cam1", payload(1))
    assert len(box.fetch(0, 10)) == 1
    box.close()


def test_space_is_given_back_once_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = make(path, max_bytes=64 << 20)
    for i in range(3000):
        box.put("cam1", payload(i, 1000))
    box.remove(range(1, 3001))
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    big = path.stat().st_size
    box.maintain()
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(path) < big / 4
    box.close()


def test_drops_are_counted_by_reason_in_the_stats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = make(tmp_path / "o.sqlite3")
    rows = [box.put("cam1", payload(i)) for i in range(4)]
    box.drop(rows[:2], "oversize")
    box.drop(rows[2:3], "undeliverable")
    box.maintain()
    stats = box.stats()
    assert (
        stats.dropped_total,
        stats.dropped_by["oversize"],
        stats.dropped_by["undeliverable"],
    ) == (
        3,
        2,
        1,
    )
    assert stats.dropped_by["size"] == stats.dropped_by["age"] == 0 and stats.depth == 1
    assert "larger than the MQTT payload limit" in caplog.text
    assert "oldest" not in caplog.text  # not the oldest: these were picked out
    box.close()
