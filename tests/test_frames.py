"""The latest-frame slot: triple-buffer handshake, no torn frames, clean-up."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time

import pytest

from edged import frames
from edged.frames import SHM_DIR, SlotOwner, SlotReader, SlotWriter, segment_path


def _segments(owner: SlotOwner) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(owner.name)]


@pytest.fixture
def slot():
    owner = SlotOwner("test")
    writer = SlotWriter(owner.name, owner.doorbell_w.fileno())
    reader = SlotReader(owner.name, owner.doorbell_r.fileno())
    yield owner, writer, reader
    reader.close()
    writer.close()
    owner.close()
    assert not os.path.exists(segment_path(owner.name))


def _publish(writer: SlotWriter, value: int, shape=(4, 6, 3)) -> int:
    buf = writer.buffer(shape)
    buf[...] = value
    return writer.publish(time.time(), time.monotonic())


def test_consumer_gets_newest_frame_and_skips_older(slot):
    owner, writer, reader = slot
    for v in (1, 2, 3):
        _publish(writer, v)
    got = reader.acquire(0, timeout=1)
    assert got is not None
    image, seq, wall, mono = got
    assert seq == 3
    assert (image == 3).all()
    assert not image.flags.writeable
    assert reader.acquire(3, timeout=0.05) is None


def test_writer_never_overwrites_the_held_buffer(slot):
    owner, writer, reader = slot
    _publish(writer, 7)
    image, seq, _, _ = reader.acquire(0, timeout=1)
    addr = image.ctypes.data
    for v in range(50):  # many publishes while the consumer holds frame 1
        buf = writer.buffer((4, 6, 3))
        assert buf.ctypes.data != addr
        buf[...] = v
        writer.publish(time.time(), time.monotonic())
    assert (image == 7).all()
    reader.release()


def test_timestamps_and_shape_travel_with_the_frame(slot):
    owner, writer, reader = slot
    buf = writer.buffer((2, 3, 3))
    buf[...] = 1
    writer.publish(123.5, 45.25)
    image, seq, wall, mono = reader.acquire(0, timeout=1)
    assert image.shape == (2, 3, 3)
    assert (wall, mono) == (123.5, 45.25)
    assert owner.frame_shape == (2, 3, 3)


def test_resolution_change_makes_a_new_generation(slot):
    owner, writer, reader = slot
    _publish(writer, 1, (4, 4, 3))
    first = reader.acquire(0, timeout=1)[0]
    _publish(writer, 2, (480, 640, 3))  # larger than the first segment's capacity
    image, seq, _, _ = reader.acquire(1, timeout=1)
    assert image.shape == (480, 640, 3) and (image == 2).all()
    assert (first == 1).all()  # the old mapping is still valid for its holder
    assert len(_segments(owner)) == 2  # control + the current data segment only


def test_a_generation_replaced_while_the_consumer_attaches_keeps_its_own_size(
    slot, monkeypatch: pytest.MonkeyPatch
):
    # The consumer reads LATEST and GEN under the lock and attaches after it;
    # the writer can make the next generation (a bigger frame) in between,
    # before it unlinks this one.
    owner, writer, reader = slot
    _publish(writer, 5, (100, 100, 3))
    _publish(writer, 7, (100, 100, 3))
    attach = SlotReader._attach

    def replaced_meanwhile(self: SlotReader, gen: int) -> bool:
        monkeypatch.setattr(frames, "unlink_segment", lambda *a, **k: False)
        writer.buffer((1000, 1000, 3))  # the old segment's unlink comes a moment later
        monkeypatch.undo()
        return attach(self, gen)

    monkeypatch.setattr(SlotReader, "_attach", replaced_meanwhile)
    image, seq, _, _ = reader.acquire(0, timeout=1)
    monkeypatch.undo()
    assert image.shape == (100, 100, 3) and (image == 7).all() and seq == 2
    for name in _segments(owner):  # the unlink the test held back
        if name != owner.name:
            frames.unlink_segment(name)


def test_acquire_sleeps_until_a_publish(slot):
    owner, writer, reader = slot
    start = time.monotonic()
    assert reader.acquire(0, timeout=0.2) is None
    assert time.monotonic() - start >= 0.19


def _doorbell_rung(owner: SlotOwner) -> bool:
    return bool(select.select([owner.doorbell_r.fileno()], [], [], 0)[0])


def test_a_busy_consumer_is_not_rung_and_stale_rings_do_not_spin_a_wait(slot):
    owner, writer, reader = slot
    seq = 0
    for v in range(100):  # a busy consumer: each frame is there when it asks
        _publish(writer, v)
        got = reader.acquire(seq, timeout=1)
        assert got is not None
        seq = got[1]
        reader.release()
    assert not _doorbell_rung(owner)  # nobody was asleep: no system call to wake anyone
    # Rings that outlived the wait they were for (it timed out as the frame
    # came): the next wait drains them and sleeps in poll()
    os.write(owner.doorbell_w.fileno(), b"\0" * 100)
    cpu, start = time.thread_time(), time.monotonic()
    assert reader.acquire(seq, timeout=0.3) is None
    assert time.monotonic() - start >= 0.29
    assert time.thread_time() - cpu < 0.1  # a spinning wait would use ~0.3 s
    # and a frame published while it sleeps wakes it
    timer = threading.Timer(0.1, _publish, (writer, 1))
    timer.start()
    start = time.monotonic()
    got = reader.acquire(seq, timeout=10)
    timer.join()
    assert got is not None and got[1] == seq + 1
    assert time.monotonic() - start < 5


def test_reap_writer_removes_its_data_segment(slot):
    owner, writer, reader = slot
    _publish(writer, 1)
    assert len(_segments(owner)) == 2
    owner.reap_writer()
    assert len(_segments(owner)) == 1


def _killed_replacing_its_generation(name: str, fd_conn) -> None:
    writer = SlotWriter(name, fd_conn.fileno())
    _publish(writer, 1, (4, 4, 3))

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    # The instant between creating the segment of GEN + 1 and publishing GEN + 1
    frames._DataSegment = killed
    writer.buffer((480, 640, 3))


def _kill_a_writer_mid_generation(owner: SlotOwner) -> str:
    """Leaves generation 1 published and generation 2 created but never published."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_killed_replacing_its_generation, args=(owner.name, owner.doorbell_w))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    stale = frames.data_segment_name(owner.name, 2)
    assert os.path.exists(segment_path(stale))
    return stale


def test_a_generation_left_unpublished_by_a_killed_writer_does_not_fail_its_successor():
    owner = SlotOwner("stale")
    reader = SlotReader(owner.name, owner.doorbell_r.fileno())
    try:
        _kill_a_writer_mid_generation(owner)
        held = reader.acquire(0, timeout=1)[0]  # the dead writer's last frame, generation 1
        # Not even reap_writer() first: the successor alone copes with the leftover.
        successor = SlotWriter(owner.name, owner.doorbell_w.fileno())
        _publish(successor, 5, (4, 4, 3))
        image, seq, _, _ = reader.acquire(1, timeout=1)
        assert seq == 2 and (image == 5).all()
        assert (held == 1).all()  # the consumer's old mapping survives the unlinks
        successor.close()
        owner.reap_writer()
    finally:
        reader.close()
        owner.close()
    assert not [x for x in os.listdir(SHM_DIR) if x.startswith(owner.name)]


@pytest.mark.parametrize("reap", [True, False], ids=["reap_writer", "close_only"])
def test_owner_removes_a_generation_left_unpublished_by_a_killed_writer(reap):
    owner = SlotOwner("stale")
    try:
        _kill_a_writer_mid_generation(owner)
        if reap:
            owner.reap_writer()
            assert _segments(owner) == [owner.name]
    finally:
        owner.close()
    assert not [x for x in os.listdir(SHM_DIR) if x.startswith(owner.name)]
    assert not [x for x in frames.leftover_segments() if x.startswith(owner.name)]


def _solid_writer(name: str, fd_conn, n: int, shape) -> None:
    writer = SlotWriter(name, fd_conn.fileno())
    for i in range(1, n + 1):
        buf = writer.buffer(shape)
        # Row by row, so a reader looking at a buffer being written would
        # see two values.
        for row in range(shape[0]):
            buf[row] = i % 251
        writer.publish(time.time(), time.monotonic())
    writer.close()


def test_no_torn_frames_across_processes():
    owner = SlotOwner("torn")
    reader = SlotReader(owner.name, owner.doorbell_r.fileno())
    shape = (270, 480, 3)
    n = 600
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_solid_writer, args=(owner.name, owner.doorbell_w, n, shape))
    proc.start()
    seen = 0
    last = 0
    try:
        while last < n:
            got = reader.acquire(last, timeout=10)
            assert got is not None, "writer stopped publishing"
            image, seq, _, _ = got
            assert seq > last
            first = image[0, 0, 0]
            time.sleep(0.002)  # hold it while the writer keeps going: the point of the test
            assert (image == first).all(), f"torn frame at seq {seq}"
            assert first == seq % 251
            last = seq
            seen += 1
            reader.release()
        proc.join(10)
        assert proc.exitcode == 0
        assert 1 < seen <= n
    finally:
        if proc.is_alive():
            proc.kill()
        reader.close()
        owner.close()
    assert not [x for x in os.listdir(SHM_DIR) if x.startswith(owner.name)]


def _die_holding_the_lock(name: str, fd_conn, held) -> None:
    writer = SlotWriter(name, fd_conn.fileno())
    writer._ctl.lock()  # as if killed in the middle of publish()
    held.set()
    signal.pause()


def _publish_one(name: str, fd_conn, done) -> None:
    writer = SlotWriter(name, fd_conn.fileno())
    _publish(writer, 9, (8, 8, 3))
    done.wait(30)  # keep the data segment until the worker has looked
    writer.close()


def _acquire_one(name: str, fd_conn, result) -> None:
    reader = SlotReader(name, fd_conn.fileno())
    got = reader.acquire(0, timeout=10)
    result.send(None if got is None else (got[1], bool((got[0] == 9).all())))
    reader.close()


def test_a_reader_killed_holding_the_lock_wedges_neither_the_worker_nor_its_successor():
    owner = SlotOwner("killed")
    ctx = multiprocessing.get_context("spawn")
    held, done = ctx.Event(), ctx.Event()
    result_r, result_w = ctx.Pipe(duplex=False)
    dying = ctx.Process(target=_die_holding_the_lock, args=(owner.name, owner.doorbell_w, held))
    # Children all: a lock left held hangs them, and fails the test, not the run.
    successor = ctx.Process(target=_publish_one, args=(owner.name, owner.doorbell_w, done))
    worker = ctx.Process(target=_acquire_one, args=(owner.name, owner.doorbell_r, result_w))
    try:
        dying.start()
        assert held.wait(30)
        dying.kill()
        dying.join(10)
        successor.start()
        worker.start()
        assert result_r.poll(30), "the worker hung: the dead reader's lock was never freed"
        assert result_r.recv() == (1, True)
        done.set()
        successor.join(10)
        assert successor.exitcode == 0, "the new reader hung in publish()"
        assert owner.frame_shape == (8, 8, 3)
    finally:
        for p in (dying, successor, worker):
            if p.is_alive():
                p.kill()
            p.join(10)
        owner.close()


def test_a_slot_of_another_layout_is_refused_with_what_to_do(slot):
    owner, writer, reader = slot
    owner._ctl.i64[1] = frames._VERSION - 1  # made by an older edged still running
    with pytest.raises(RuntimeError, match=r"not an edged slot of this version.*restart edged"):
        SlotReader(owner.name, owner.doorbell_r.fileno())
    owner._ctl.i64[1] = frames._VERSION
