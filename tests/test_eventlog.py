from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

import edged.eventlog
from edged.eventlog import format_event, iter_events, run_events_command
from edged.sinks.jsonl import JsonlWriter

DEADLINE = 20.0


class Collector(io.StringIO):
    """A text stream that the follower thread writes and the test reads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            return super().write(s)

    def lines(self) -> list[str]:
        with self._lock:
            return self.getvalue().splitlines()


# Waits for what the follower thread prints: it does so within milliseconds, and a
# test may wait for it hundreds of times, so poll often.
wait_for_follower = functools.partial(wait_for, timeout=DEADLINE, every=0.002)


def missing(json_lines: list[str], total: int) -> str:
    seqs = seqs_of(json_lines)
    gone = sorted(set(range(total)) - set(seqs))
    more = " ..." if len(gone) > 20 else ""
    return f"missing {gone[:20]}{more}, {len(seqs) - len(set(seqs))} repeated"


def event(
    seq: int, camera: str = "cam1", type_: str = "motion.start", **data: Any
) -> dict[str, Any]:
    return {
        "schema": 1,
        "id": f"id-{seq}",
        "camera": camera,
        "processor": "motion",
        "type": type_,
        "time": "2026-11-25T02:41:03.123456Z",
        "seq": seq,
        "frame_age_ms": 12.3,
        "processing_ms": 4.5,
        "data": data,
    }


def writer(path: Path, **kw: Any) -> JsonlWriter:
    args: dict[str, Any] = dict(max_bytes=10_000_000, backups=3, fsync="never", fsync_interval=1.0)
    args.update(kw)
    return JsonlWriter(path, **args)


def run(path: Path, **kw: Any) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    args: dict[str, Any] = dict(follow=False, camera=None, type_=None, as_json=False)
    args.update(kw)
    rc = run_events_command(path, out=out, err=err, **args)
    return rc, out.getvalue().splitlines(), err.getvalue()


def seqs_of(json_lines: list[str]) -> list[int]:
    return [json.loads(line)["seq"] for line in json_lines]


@contextmanager
def following(path: Path, **kw: Any) -> Iterator[tuple[Collector, Collector]]:
    out, err = Collector(), Collector()
    stop = threading.Event()
    result: list[int] = []
    args: dict[str, Any] = dict(camera=None, type_=None, as_json=True, poll_interval=0.005)
    args.update(kw)

    def target() -> None:
        result.append(run_events_command(path, follow=True, out=out, err=err, stop=stop, **args))

    thread = threading.Thread(target=target, name="follower")
    thread.start()
    try:
        yield out, err
    finally:
        stop.set()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert result == [0]


def test_human_format() -> None:
    e = event(123, area=1234)
    assert format_event(e) == (
        '2026-11-25 02:41:03.123Z cam1 motion.start seq=123 age=12ms proc=4ms {"area": 1234}'
    )
    e.update(time="2026-11-25T03:41:03.5+01:00", data={})
    del e["frame_age_ms"]
    assert format_event(e) == "2026-11-25 02:41:03.500Z cam1 motion.start seq=123 proc=4ms"
    assert format_event({"time": "yesterday"}) == "yesterday - -"


def test_prints_backups_first_in_human_and_json(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with writer(path, max_bytes=1000, backups=50) as w:
        for i in range(40):
            w.write(event(i, area=i))
    assert (tmp_path / "events.jsonl.2").exists()
    assert [e["seq"] for e in iter_events(path)] == list(range(40))

    rc, lines, err = run(path)
    assert rc == 0 and err == ""
    assert len(lines) == 40
    assert (
        lines[7] == '2026-11-25 02:41:03.123Z cam1 motion.start seq=7 age=12ms proc=4ms {"area": 7}'
    )

    rc, lines, _ = run(path, as_json=True)
    assert rc == 0
    files = [*sorted(tmp_path.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:])), path]
    raw = b"".join(p.read_bytes() for p in files)
    assert "\n".join(lines).encode() + b"\n" == raw  # the lines, unchanged


def test_filters(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with writer(path) as w:
        w.write(event(0, camera="cam1", type_="motion.start"))
        w.write(event(1, camera="cam2", type_="motion.end"))
        w.write(event(2, camera="cam1", type_="motionx.start"))
        w.write(event(3, camera="cam1", type_="motion"))
        w.write(event(4, camera="cam2", type_="person.seen"))
    assert seqs_of(run(path, as_json=True, camera="cam2")[1]) == [1, 4]
    assert seqs_of(run(path, as_json=True, type_="motion")[1]) == [0, 1, 3]
    assert seqs_of(run(path, as_json=True, type_="motion.start")[1]) == [0]
    assert seqs_of(run(path, as_json=True, type_="motion", camera="cam1")[1]) == [0, 3]
    assert seqs_of(run(path, as_json=True, type_="motion.st")[1]) == []


def test_garbage_is_reported_once_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = [json.dumps(event(i)) for i in range(3)]
    path.write_text(f'{good[0]}\nnot json\n{good[1]}\n[1, 2]\n{good[2]}\n{{"seq": 9, "cut')
    rc, lines, err = run(path, as_json=True)
    assert rc == 0
    assert seqs_of(lines) == [0, 1, 2]
    assert err.count("\n") == 2
    assert f"{path}:2:" in err and f"{path}:4:" in err


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing" / "events.jsonl"
    rc, lines, err = run(path)
    assert rc == 1 and lines == []
    assert str(path) in err
    with pytest.raises(FileNotFoundError):
        list(iter_events(path))


def test_follow_starts_with_the_last_ten_then_picks_up_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    w = writer(path)
    for i in range(15):
        w.write(event(i))
    with following(path) as (out, err):
        wait_for_follower("the last ten events", lambda: len(out.lines()) >= 10)

        def write_more() -> None:
            for i in range(15, 65):
                w.write(event(i))

        t = threading.Thread(target=write_more)
        t.start()
        t.join()
        wait_for_follower("the new events", lambda: len(out.lines()) >= 60)
    w.close()
    assert seqs_of(out.lines()) == list(range(5, 65))
    assert err.lines() == []


def test_follow_filters_and_human_format(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with writer(path) as w:
        for i in range(40):
            w.write(event(i, camera="cam1" if i % 3 else "cam2"))
        with following(path, camera="cam2", as_json=False) as (out, _):
            wait_for_follower("the last ten cam2 events", lambda: len(out.lines()) >= 10)
            w.write(event(40, camera="cam2"))
            w.write(event(41, camera="cam1"))
            w.write(event(42, camera="cam2"))
            wait_for_follower("new cam2 events", lambda: len(out.lines()) >= 12)
    got = [int(line.split("seq=")[1].split()[0]) for line in out.lines()]
    assert got == [*range(12, 40, 3), 40, 42]
    assert all(" cam2 " in line for line in out.lines())


def test_follow_across_one_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    w = writer(path, max_bytes=3000, backups=1)
    w.write(event(0))
    with following(path) as (out, _):
        wait_for_follower("the first event", lambda: len(out.lines()) >= 1)
        n = 1
        while w.rotations == 0:
            w.write(event(n))
            n += 1
        w.write(event(n))
        n += 1
        wait_for_follower("events after the rotation", lambda: len(out.lines()) >= n)
    w.close()
    assert seqs_of(out.lines()) == list(range(n))


@pytest.mark.parametrize("backups", [0, 2, 1000])
def test_follow_across_many_rotations_loses_and_repeats_nothing(
    tmp_path: Path, backups: int
) -> None:
    path = tmp_path / "events.jsonl"
    w = writer(path, max_bytes=2000, backups=backups)
    total = 600
    with following(path) as (out, err):

        def write_all() -> None:
            for i in range(total):
                w.write(event(i, pad="x" * (i % 40)))
                if backups < 1000 and i % 5 == 0:
                    # With few backups a file can be gone before the follower
                    # sees it (tail -F loses those too): let it keep up.
                    done = i + 1
                    wait_for_follower("the follower", lambda done=done: len(out.lines()) >= done)

        t = threading.Thread(target=write_all)
        t.start()
        t.join()
        wait_for_follower(
            lambda: f"all events: got {len(out.lines())}, {missing(out.lines(), total)}",
            lambda: len(out.lines()) >= total,
        )
    w.close()
    assert w.rotations > 20
    assert seqs_of(out.lines()) == list(range(total))
    assert err.lines() == []


def test_follow_is_not_fooled_by_a_listing_taken_mid_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory listing that misses the file last read loses nothing.

    Listing the backups while the writer shifts ``.1`` to ``.2`` ... can miss
    a file. edged's writer does not rotate while the follower holds the
    rotation lock; without the lock (taken away here, as with a rotator that
    does not know it), this fake listing misses every backup, twice in a row,
    as a writer rotating non-stop can make happen. The file last read still
    exists, so the follower must look again rather than jump to the newest
    file and skip the backups in between.
    """

    @contextmanager
    def no_lock(*args: Any, **kwargs: Any) -> Iterator[bool]:
        yield False

    monkeypatch.setattr(edged.eventlog, "rotation_lock", no_lock)
    hide = threading.Event()
    hidden_listings = 0
    real = edged.eventlog.backup_paths

    def listing(path: Path) -> list[Path]:
        nonlocal hidden_listings
        if hide.is_set():
            hidden_listings += 1
            return []
        return real(path)

    monkeypatch.setattr(edged.eventlog, "backup_paths", listing)
    path = tmp_path / "events.jsonl"
    w = writer(path, max_bytes=500, backups=10)
    w.write(event(0))
    with following(path) as (out, _):
        wait_for_follower("the first event", lambda: len(out.lines()) == 1)
        hide.set()
        seq = 1
        while w.rotations < 2:  # a file rotated away whole, and its successor
            w.write(event(seq))
            seq += 1
        w.write(event(seq))
        seq += 1
        wait_for_follower("the follower to list the backups", lambda: hidden_listings >= 2)
        hide.clear()
        wait_for_follower(
            lambda: f"{seq} events: got {len(out.lines())}, {missing(out.lines(), seq)}",
            lambda: len(out.lines()) >= seq,
        )
    w.close()
    assert seqs_of(out.lines()) == list(range(seq))


def test_follow_goes_on_when_the_file_it_read_leaves_the_folder(tmp_path: Path) -> None:
    # As logrotate's olddir does: the backup is elsewhere now, so the
    # follower cannot read what came between; it must go on with the file.
    path = tmp_path / "events.jsonl"
    elsewhere = tmp_path / "old"
    elsewhere.mkdir()
    path.write_text(json.dumps(event(0)) + "\n")
    with following(path) as (out, err):
        wait_for_follower("the first event", lambda: len(out.lines()) == 1)
        path.rename(elsewhere / "events.jsonl.1")
        path.write_text(json.dumps(event(1)) + "\n")
        wait_for_follower("the event in the new file", lambda: len(out.lines()) == 2)
    assert seqs_of(out.lines()) == [0, 1]
    assert err.lines() == []


def test_follow_does_not_repeat_old_backups_when_the_file_is_deleted(tmp_path: Path) -> None:
    # Someone deletes the live file; the writer starts a new one. The backups
    # are older than the deleted file: the follower must not print them again.
    path = tmp_path / "events.jsonl"
    now = [1000.0]
    w = writer(path, max_bytes=1000, backups=50, clock=lambda: now[0])
    seq = 0
    while w.rotations < 3:
        w.write(event(seq))
        seq += 1
    with following(path) as (out, err):
        wait_for_follower("the tail of the file", lambda: len(out.lines()) > 0)
        shown = len(out.lines())
        path.unlink()
        now[0] += 60  # the writer looks for a moved file once a second
        w.write(event(seq))
        assert w.reopens == 1
        wait_for_follower("the event in the new file", lambda: len(out.lines()) > shown)
    w.close()
    assert seqs_of(out.lines()) == list(range(seq - shown, seq + 1))


def test_follow_reads_every_backup_left_after_rotations_deleted_its_file(
    tmp_path: Path,
) -> None:
    # Between two looks the writer rotated so often that the file being read
    # fell off the end (backups = 2): what is left is all newer, read it all.
    path = tmp_path / "events.jsonl"
    w = writer(path, max_bytes=1000, backups=2)
    w.write(event(0))
    with following(path, poll_interval=2.0) as (out, _):
        wait_for_follower("the first event", lambda: len(out.lines()) == 1)
        seq = 1
        while w.rotations < 5:  # well within the 2 s until the next look
            w.write(event(seq))
            seq += 1
        kept = seqs_of(
            [
                line
                for n in (2, 1)
                for line in path.with_name(f"events.jsonl.{n}").read_text().splitlines()
            ]
            + path.read_text().splitlines()
        )
        wait_for_follower("the newest event", lambda: seqs_of(out.lines())[-1:] == [seq - 1])
    w.close()
    shown = seqs_of(out.lines())
    # In order, nothing twice, every line still on disk; the first file's
    # lines come from the descriptor the follower kept open on it.
    assert shown == sorted(set(shown)), shown
    assert set(kept) <= set(shown), (kept, shown)
    assert len(shown) < seq  # a whole file went unread: the case under test


def test_follow_reads_backups_it_missed(tmp_path: Path) -> None:
    """Several rotations between two polls: the files in between are read too."""
    path = tmp_path / "events.jsonl"
    w = writer(path, max_bytes=1000, backups=50)
    w.write(event(0))
    with following(path, poll_interval=0.2) as (out, _):
        wait_for_follower("the first event", lambda: len(out.lines()) >= 1)
        for i in range(1, 60):  # several rotations, most likely within one poll
            w.write(event(i))
        wait_for_follower("all events", lambda: len(out.lines()) >= 60)
    w.close()
    assert w.rotations >= 4
    assert seqs_of(out.lines()) == list(range(60))


def test_follow_waits_for_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "later" / "events.jsonl"
    with following(path) as (out, err):
        wait_for_follower("a note that the file is missing", lambda: str(path) in err.getvalue())
        with writer(path) as w:
            for i in range(3):
                w.write(event(i))
            wait_for_follower("events in the new file", lambda: len(out.lines()) >= 3)
    assert seqs_of(out.lines()) == [0, 1, 2]  # a new file is read from its start
    assert "appeared" in err.getvalue()


def test_follow_waits_for_a_partial_line_to_complete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line = (json.dumps(event(1)) + "\n").encode()
    with open(path, "wb", buffering=0) as f:
        f.write((json.dumps(event(0)) + "\n").encode())
        f.write(line[:20])  # unfinished at start: not in the tail, read once complete
        with following(path) as (out, err):
            wait_for_follower("the complete event", lambda: len(out.lines()) >= 1)
            f.write(line[20:40])
            f.write(line[40:] + line[:30])
            wait_for_follower("the completed line", lambda: len(out.lines()) >= 2)
            f.write(line[30:])
            wait_for_follower("the second completed line", lambda: len(out.lines()) >= 3)
    assert seqs_of(out.lines()) == [0, 1, 1]
    assert err.lines() == []


def test_follow_reports_garbage_once(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("garbage one\n" + json.dumps(event(0)) + "\n")
    with following(path) as (out, err), open(path, "a") as f:
        wait_for_follower("the first event", lambda: len(out.lines()) >= 1)
        f.write("garbage two\n" + json.dumps(event(1)) + "\n")
        f.flush()
        wait_for_follower("the second event", lambda: len(out.lines()) >= 2)
    assert seqs_of(out.lines()) == [0, 1]
    notes = err.lines()
    assert len(notes) == 2
    assert f"{path}:1:" in notes[0] and f"{path}:3:" in notes[1]


def test_follow_goes_on_when_only_an_unfinished_line_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JsonlWriter truncates a write that hit a full disk back off the file: the
    # follower has read the fragment, and must neither repeat the file nor lose it.
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event(i)) + "\n" for i in range(3)))
    fragment = (json.dumps(event(3)) + "\n").encode()[:25]
    read_it, saw_undo = threading.Event(), threading.Event()
    size = path.stat().st_size
    pread, fstat = edged.eventlog.os.pread, edged.eventlog.os.fstat

    def watching_pread(fd: int, n: int, offset: int) -> bytes:
        data = pread(fd, n, offset)
        if fragment in data:
            read_it.set()
        return data

    def watching_fstat(fd: int) -> os.stat_result:
        st = fstat(fd)
        if read_it.is_set() and st.st_size == size:
            saw_undo.set()  # the follower's next drain starts from the smaller size
        return st

    monkeypatch.setattr(edged.eventlog.os, "pread", watching_pread)
    monkeypatch.setattr(edged.eventlog.os, "fstat", watching_fstat)
    with following(path) as (out, err), open(path, "ab", buffering=0) as f:
        wait_for_follower("the first events", lambda: len(out.lines()) >= 3)
        f.write(fragment)
        assert read_it.wait(DEADLINE), "the follower never read the fragment"
        f.truncate(size)
        assert saw_undo.wait(DEADLINE), "the follower never looked at the file again"
        f.seek(size)
        f.write((json.dumps(event(3)) + "\n" + json.dumps(event(4)) + "\n").encode())
        wait_for_follower("the events written after the undo", lambda: len(out.lines()) >= 5)
        f.write((json.dumps(event(5)) + "\n").encode())
        wait_for_follower("one more event", lambda: len(out.lines()) >= 6)
    assert seqs_of(out.lines()) == [0, 1, 2, 3, 4, 5]
    assert err.lines() == []


def test_follow_file_truncated(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event(i)) + "\n" for i in range(5)))
    with following(path) as (out, err):
        wait_for_follower("the first events", lambda: len(out.lines()) >= 5)
        path.write_text(json.dumps(event(100)) + "\n")  # copytruncate-style
        wait_for_follower("the event after truncation", lambda: len(out.lines()) >= 6)
    assert seqs_of(out.lines()) == [0, 1, 2, 3, 4, 100]
    assert "truncated" in err.getvalue()


def test_a_deeply_nested_line_is_skipped_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    deep = '{"type": "x", "data": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text(f"{json.dumps(event(0))}\n{deep}\n{json.dumps(event(1))}\n")
    assert [e["seq"] for e in iter_events(path)] == [0, 1]
    for flags in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "edged", "events", "--file", str(path), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 2
        assert done.stderr == f"edged events: {path}:2: skipping a line that is not a JSON event\n"
