from __future__ import annotations

import datetime
import errno
import fcntl
import itertools
import json
import math
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.errors import EdgedError
from edged.sinks.jsonl import ROTATION_LOCK_WAIT, JsonlWriter, SinkError, rotation_lock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_writer(path: Path, **kw: Any) -> JsonlWriter:
    args: dict[str, Any] = dict(max_bytes=10_000_000, backups=3, fsync="never", fsync_interval=1.0)
    args.update(kw)
    return JsonlWriter(path, **args)


def event(seq: int, **data: Any) -> dict[str, Any]:
    return {
        "schema": 1,
        "id": f"id-{seq}",
        "camera": "cam1",
        "processor": "motion",
        "type": "motion.start",
        "time": "2026-11-25T02:41:03.123456Z",
        "seq": seq,
        "frame_age_ms": 12.3,
        "processing_ms": 4.5,
        "data": data,
    }


def read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "file ends mid-line"
    return data.split(b"\n")[:-1]


def seqs(*paths: Path) -> list[int]:
    return [json.loads(line)["seq"] for p in paths for line in read_lines(p)]


def test_lines_are_complete_json(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sent = [event(i, area=i * 10, note="caf\u00e9 \u2028 line\nbreak \u2603") for i in range(100)]
    with make_writer(path) as w:
        for e in sent:
            w.write(e)
        assert w.lines_written == 100
        assert w.bytes_written == path.stat().st_size
    lines = read_lines(path)
    assert [json.loads(line) for line in lines] == sent
    assert b"\\u00e9" not in lines[0]  # ensure_ascii=False: UTF-8, not escapes
    assert b", " not in lines[0] and b'": ' not in lines[0]  # compact separators


def test_creates_directories_and_opens_append_cloexec(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "events.jsonl"
    old = os.umask(0o022)
    try:
        w = make_writer(path)
    finally:
        os.umask(old)
    try:
        assert (path.parent.stat().st_mode & 0o777) == 0o750
        assert (path.stat().st_mode & 0o777) == 0o640
        assert w._fd is not None
        flags = fcntl.fcntl(w._fd, fcntl.F_GETFL)
        assert flags & os.O_APPEND
        assert not os.get_inheritable(w._fd)
    finally:
        w.close()
    # Reopening appends; it never truncates.
    with make_writer(path) as w:
        w.write(event(1))
    with make_writer(path) as w:
        w.write(event(2))
    assert seqs(path) == [1, 2]


def test_bad_arguments_and_closed_writer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        make_writer(tmp_path / "e", max_bytes=0)
    with pytest.raises(ValueError, match="fsync"):
        make_writer(tmp_path / "e", fsync="sometimes")
    w = make_writer(tmp_path / "e")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(event(1))


def test_rotation_keeps_every_line_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with make_writer(path, max_bytes=2000, backups=100) as w:
        for i in range(300):
            w.write(event(i))
        rotations = w.rotations
    backups = sorted(tmp_path.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert rotations == len(backups) > 10
    for p in [*backups, path]:
        assert p.stat().st_size <= 2000
    assert seqs(*backups, path) == list(range(300))


def test_rotation_waits_for_a_listing_reader_but_not_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `edged events --follow` holds the rotation lock shared while it lists
    # the backups; one stuck there must not stop the writer.
    path = tmp_path / "events.jsonl"
    with make_writer(path, max_bytes=2000, backups=5) as w:
        with rotation_lock(tmp_path, shared=True, wait=0) as held:
            assert held
            start = time.monotonic()
            i = 0
            while w.rotations == 0:
                w.write(event(i))
                i += 1
            waited = time.monotonic() - start
        assert ROTATION_LOCK_WAIT <= waited < ROTATION_LOCK_WAIT + 5
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "rotating without the rotation lock" in warnings[0]
        # Free again: the next rotations take it, with no more warnings.
        while w.rotations < 3:
            w.write(event(i))
            i += 1
        with rotation_lock(tmp_path, shared=False, wait=0) as held:
            assert held  # the writer let go of it
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    backups = [tmp_path / f"events.jsonl.{n}" for n in (3, 2, 1)]
    assert seqs(*backups, path) == list(range(i))


def test_rotation_keeps_only_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with make_writer(path, max_bytes=2000, backups=3) as w:
        for i in range(300):
            w.write(event(i))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["events.jsonl", "events.jsonl.1", "events.jsonl.2", "events.jsonl.3"]
    kept = seqs(
        tmp_path / "events.jsonl.3", tmp_path / "events.jsonl.2", tmp_path / "events.jsonl.1", path
    )
    assert kept == list(range(300 - len(kept), 300))  # newest lines, contiguous


def test_backups_zero_starts_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with make_writer(path, max_bytes=2000, backups=0) as w:
        for i in range(100):
            w.write(event(i))
        assert w.rotations > 0
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]
    kept = seqs(path)
    assert path.stat().st_size <= 2000
    assert kept == list(range(100 - len(kept), 100))


def test_a_line_longer_than_max_bytes_gets_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with make_writer(path, max_bytes=1000, backups=5) as w:
        w.write(event(0))
        w.write(event(1, blob="x" * 3000))
        w.write(event(2))
    assert seqs(tmp_path / "events.jsonl.2") == [0]
    assert seqs(tmp_path / "events.jsonl.1") == [1]
    assert seqs(path) == [2]


def test_existing_file_without_final_newline_is_not_glued_to(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq": 0}\n{"seq": 1, "cut off by a cra')
    with make_writer(path) as w:
        w.write(event(2))
    lines = read_lines(path)
    assert len(lines) == 3
    assert json.loads(lines[2])["seq"] == 2


_APPENDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from edged.sinks.jsonl import JsonlWriter

    path, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    w = JsonlWriter(path, max_bytes=1 << 30, backups=0, fsync="never", fsync_interval=1.0)
    go.with_name("ready-" + tag).touch()
    deadline = time.monotonic() + 30
    while not go.exists():
        assert time.monotonic() < deadline, "never told to go"
    for i in range(10_000):
        size = 10 + (i % 7) * (1500 if i % 50 == 0 else 7)  # some lines over PIPE_BUF
        w.write({"writer": tag, "seq": i, "pad": tag * size})
    w.close()
    """
)


def test_two_processes_appending_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), tag, str(go)])
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{tag}").exists() for tag in ("a", "b")):
        assert time.monotonic() < deadline, "appenders did not start"
        assert all(p.poll() is None for p in procs), "an appender died"
        time.sleep(0.01)
    go.touch()  # both start appending at the same moment
    for p in procs:
        assert p.wait(timeout=120) == 0
    by_writer: dict[str, list[int]] = {"a": [], "b": []}
    lines = read_lines(path)
    assert len(lines) == 20_000
    for line in lines:
        obj = json.loads(line)
        assert set(obj["pad"]) == {obj["writer"]}
        by_writer[obj["writer"]].append(obj["seq"])
    assert by_writer == {"a": list(range(10_000)), "b": list(range(10_000))}
    writers = [json.loads(line)["writer"] for line in lines]
    switches = sum(1 for x, y in itertools.pairwise(writers) if x != y)
    assert switches > 2, "the two appenders did not overlap: the test proved nothing"


@pytest.fixture
def fsync_log(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The fds fsync'ed, of files and of folders."""
    calls: dict[str, list[int]] = {"file": [], "folder": []}
    real = os.fsync

    def counting_fsync(fd: int) -> None:
        calls["folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"].append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


@pytest.fixture
def fsyncs(fsync_log: dict[str, list[int]]) -> list[int]:
    return fsync_log["file"]


def test_fsync_always(tmp_path: Path, fsyncs: list[int]) -> None:
    w = make_writer(tmp_path / "e", fsync="always")
    for i in range(5):
        w.write(event(i))
    assert len(fsyncs) == 5
    w.close()
    assert len(fsyncs) == 5  # nothing left to sync


def test_new_and_rotated_files_have_their_folder_synced(
    tmp_path: Path, fsync_log: dict[str, list[int]]
) -> None:
    w = make_writer(tmp_path / "e", fsync="always", max_bytes=200, backups=2)
    assert len(fsync_log["folder"]) == 1  # the file is new: its name must last too
    w.write(event(0))
    w.write(event(1))  # over max_bytes: rotated, the renames and the new file synced
    assert (tmp_path / "e.1").exists()
    assert len(fsync_log["folder"]) == 2
    w.close()
    reopened = make_writer(tmp_path / "e", fsync="always", max_bytes=200, backups=2)
    assert len(fsync_log["folder"]) == 2  # the file was there already
    reopened.close()


def test_fsync_never(tmp_path: Path, fsyncs: list[int], fsync_log: dict[str, list[int]]) -> None:
    w = make_writer(tmp_path / "e", fsync="never", max_bytes=1000, backups=1)
    for i in range(20):
        w.write(event(i))
    assert w.tick() is False
    w.close()
    assert fsyncs == []
    assert fsync_log["folder"] == []


def test_fsync_interval(tmp_path: Path, fsyncs: list[int]) -> None:
    clock = FakeClock()
    w = make_writer(tmp_path / "e", fsync="interval", fsync_interval=10.0, clock=clock)
    w.write(event(0))
    clock.now += 5
    w.write(event(1))
    assert fsyncs == []
    clock.now += 4
    assert w.tick() is False
    clock.now += 1
    assert w.tick() is True  # a quiet period still gets synced
    assert w.tick() is False  # nothing new
    assert len(fsyncs) == 1
    clock.now += 15
    w.write(event(2))  # due at write time
    assert len(fsyncs) == 2
    w.write(event(3))
    assert len(fsyncs) == 2
    w.close()
    assert len(fsyncs) == 3


def test_fsync_failure_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    w = make_writer(tmp_path / "e", fsync="always")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    w.write(event(0))  # the line is in the file: raising would make the caller write it twice
    assert w.errors == 1
    w.close()
    assert seqs(tmp_path / "e") == [0]


def test_file_deleted_under_the_writer_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    clock = FakeClock()
    with make_writer(path, clock=clock) as w:
        w.write(event(0))
        path.unlink()
        clock.now += 1.0
        w.write(event(1))
        assert w.reopens == 1
    assert seqs(path) == [1]


def test_directory_removed_under_the_writer_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    clock = FakeClock()
    with make_writer(path, clock=clock) as w:
        w.write(event(0))
        path.unlink()
        path.parent.rmdir()
        clock.now += 1.0
        w.write(event(1))
    assert seqs(path) == [1]


def test_file_moved_away_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    clock = FakeClock()
    with make_writer(path, clock=clock) as w:
        w.write(event(0))
        path.rename(tmp_path / "moved")
        w.write(event(1))  # checked at most once a second: still the old file
        clock.now += 1.0
        w.write(event(2))
    assert seqs(tmp_path / "moved") == [0, 1]
    assert seqs(path) == [2]


def test_short_write_then_enospc_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    w = make_writer(path)
    w.write(event(0))
    real_write = os.write
    calls = []

    def disk_filling_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_filling_write)
    with pytest.raises(SinkError) as info:
        w.write(event(1))
    assert isinstance(info.value, EdgedError)
    assert str(path) in str(info.value)
    assert "No space left on device" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert len(calls) == 2
    assert seqs(path) == [0]  # the half line was truncated away
    assert w.errors == 1
    monkeypatch.setattr(os, "write", real_write)
    w.write(event(1))  # the caller retries later
    w.close()
    assert seqs(path) == [0, 1]


def test_enospc_before_any_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    w = make_writer(path)

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SinkError, match="No space left"):
        w.write(event(0))
    assert w.lines_written == 0
    assert path.read_bytes() == b""
    w.close()


def test_partial_line_that_cannot_be_truncated_is_fenced_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    w = make_writer(path)
    w.write(event(0))
    real_write = os.write
    state = {"n": 0}

    def short_then_full(fd: int, data: bytes) -> int:
        state["n"] += 1
        if state["n"] == 1:
            return real_write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "full")

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", short_then_full)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(SinkError):
        w.write(event(1))
    monkeypatch.undo()
    w.write(event(2))
    w.close()
    lines = read_lines(path)
    assert len(lines) == 3
    assert json.loads(lines[0])["seq"] == 0
    with pytest.raises(ValueError):
        json.loads(lines[1])  # the fragment: one invalid line that readers skip
    assert json.loads(lines[2])["seq"] == 2


def test_cannot_open_raises_sink_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SinkError, match="file"):
        make_writer(tmp_path / "file" / "events.jsonl")


def test_unserialisable_data_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    loop: list[Any] = [1]
    loop.append(loop)
    data = {
        "obj": object(),
        "nan": math.nan,
        "inf": [math.inf, -math.inf, 1.5],
        "bytes": b"\x00\x01",
        "set": {3},
        "when": datetime.datetime(2026, 11, 25, 2, 41, 3, tzinfo=datetime.UTC),
        "array": np.arange(3, dtype=np.uint8),
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        (1, 2): "tuple key",
        "loop": loop,
        "big": 10**5000,
        "surrogate": "bad \udc80 name",
    }
    with make_writer(path) as w:
        w.write(event(0, **{str(k) if isinstance(k, tuple) else k: v for k, v in data.items()}))
        w.write({"nested": {(1, 2): math.nan}})
        assert w.coerced == 2
        assert w.lines_written == 2
    first, second = (json.loads(line) for line in read_lines(path))
    got = first["data"]
    assert got["obj"].startswith("<object object")
    assert got["nan"] is None
    assert got["inf"] == [None, None, 1.5]
    assert got["bytes"] == repr(b"\x00\x01")
    assert got["set"] == "{3}"
    assert got["when"] == "2026-11-25T02:41:03+00:00"
    assert got["array"] == [0, 1, 2]
    assert got["f32"] == 0.5
    assert got["i64"] == 7
    assert got["(1, 2)"] == "tuple key"
    assert got["loop"] == [1, "<circular>"]
    assert got["big"].startswith("<int of")
    assert got["surrogate"] == "bad \udc80 name"
    assert second == {"nested": {"(1, 2)": None}}
