"""The worker's messages to the supervisor: frame timings batched, events sent at once."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edged.event
import edged.worker
from edged import Event, Frame, Processor
from edged.camera import CameraRuntime
from edged.config import parse_config
from edged.frames import SlotReader, SlotWriter
from edged.processor import NoOptions
from edged.supervisor import Supervisor
from edged.worker import Worker

TOML = """
[events]
path = "events.jsonl"
[cameras.cam1]
source = "synthetic"
"""
MARK = 255  # a frame of this value makes an event


class Marker(Processor):
    def process(self, frame: Frame) -> Iterator[Event]:
        if frame.image[0, 0, 0] == MARK:
            yield Event("marked", {"seq": frame.seq})


class GreyMarker(Processor):
    pixel_format = "gray"

    def process(self, frame: Frame) -> Iterator[Event]:
        yield Event("seen", {"shape": list(frame.image.shape), "value": int(frame.image[0, 0])})


class CountingConn:
    """The supervisor's end of the events pipe, counting the messages it hands out."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.messages = 0

    def poll(self) -> bool:
        return bool(self.conn.poll())

    def recv(self) -> Any:
        self.messages += 1
        return self.conn.recv()


@dataclass
class Rig:
    sup: Supervisor
    cam: CameraRuntime
    writer: SlotWriter
    conn: CountingConn
    stop: threading.Event
    thread: threading.Thread
    timings: list[tuple[float, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def publish(self, value: int) -> None:
        """Publish a frame and wait until the worker has processed it."""
        done = self.cam.slot.worker["frames"] + 1
        buf = self.writer.buffer((4, 6, 3))
        buf[...] = value
        self.writer.publish(time.time(), time.monotonic())
        self.until(lambda: self.cam.slot.worker["frames"] >= done)

    def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.thread.is_alive(), "the worker stopped"
            assert time.monotonic() < deadline, "timed out"
            self.sup.collect_events()
            time.sleep(0.001)


@contextmanager
def running_worker(
    tmp_path: Path,
    before: Callable[[SlotWriter], None] | None = None,
    processor: type[Processor] = Marker,
) -> Iterator[Rig]:
    """A real Supervisor and a Worker thread on a real slot, joined by the events pipe.

    ``before`` may publish frames before the worker starts.
    """
    config = parse_config(TOML, tmp_path / "edged.toml")
    sup = Supervisor(config)
    cfg = config.cameras["cam1"]
    cam = sup.cams["cam1"] = CameraRuntime(cfg)
    events_r = cam.events_r
    conn = CountingConn(events_r)
    cam.events_r = conn  # type: ignore[assignment]
    writer = SlotWriter(cam.slot.name, cam.slot.doorbell_w.fileno())
    reader = SlotReader(cam.slot.name, cam.slot.doorbell_r.fileno())
    if before:
        before(writer)
    stop = threading.Event()
    worker = Worker(cfg, processor(NoOptions(), "cam1"), reader, cam.events_w, stop)
    thread = threading.Thread(target=worker.run, daemon=True)
    r = Rig(sup, cam, writer, conn, stop, thread)
    sup.on_frame.append(lambda name, age, took: r.timings.append((age, took)))
    sup.events.on_written.append(r.events.append)
    thread.start()
    try:
        # The worker takes only frames published after it started.
        r.until(lambda: cam.slot.worker["heartbeat"] > 0)
        yield r
    finally:
        stop.set()
        thread.join(5)
        reader.close()
        writer.close()
        cam.slot.close()
        events_r.close()
        cam.events_w.close()
        sup.events.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with running_worker(tmp_path) as r:
        yield r


def test_frame_timings_arrive_batched(rig: Rig) -> None:
    for _ in range(20):
        rig.publish(0)
    # With no more frames, the worker still sends them within BATCH_INTERVAL.
    rig.until(lambda: len(rig.timings) == 20)
    assert rig.conn.messages < 20
    assert all(age >= 0 and 0 <= took < 10 for age, took in rig.timings)
    assert rig.events == []


def test_a_processor_asking_for_grey_gets_grey_when_the_reader_delivers_bgr(
    tmp_path: Path,
) -> None:
    # The camera's reader delivers BGR (as for colour snapshots): the worker
    # converts, the processor never sees three channels.
    with running_worker(tmp_path, processor=GreyMarker) as rig:
        assert rig.cam.cfg.frame_format == "bgr"
        buf = rig.writer.buffer((4, 6, 3))
        buf[...] = (255, 0, 0)  # pure blue: grey 0.114 * 255
        rig.writer.publish(time.time(), time.monotonic())
        rig.until(lambda: len(rig.events) == 1)
    assert rig.events[0]["data"] == {"shape": [4, 6], "value": 29}


def test_a_frame_from_before_the_worker_started_is_not_processed(tmp_path: Path) -> None:
    # The reader publishes a camera's first frame at once and, with freshness =
    # "next", then converts only frames someone waits for: a worker (re)started
    # later must take neither that old frame nor the one a predecessor was on.
    def a_minute_old_marked_frame(writer: SlotWriter) -> None:
        writer.buffer((4, 6, 3))[...] = MARK
        writer.publish(time.time() - 60, time.monotonic() - 60)

    with running_worker(tmp_path, before=a_minute_old_marked_frame) as rig:
        # Once it waits, it has taken the old frame or decided against it.
        rig.until(lambda: rig.writer.consumer_waiting)
        rig.publish(0)
        rig.until(lambda: len(rig.timings) == 1)
        assert rig.timings[0][0] < 5, "took the old frame"
        assert rig.events == [] and rig.cam.slot.worker["frames"] == 1


def test_events_are_sent_at_once_with_pending_timings(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Timings alone would now wait an hour: whatever arrives came with the event.
    monkeypatch.setattr(edged.worker, "BATCH_INTERVAL", 3600.0)
    rig.publish(0)
    rig.publish(0)
    rig.sup.collect_events()
    assert rig.conn.messages == 0 and rig.timings == []
    rig.publish(MARK)
    rig.until(lambda: len(rig.events) == 1)
    assert rig.conn.messages == 1
    assert len(rig.timings) == 3
    assert rig.events[0]["type"] == "marked" and rig.events[0]["seq"] == 3
    # A clean stop sends what is pending.
    rig.publish(0)
    rig.stop.set()
    rig.thread.join(5)
    assert not rig.thread.is_alive()
    rig.sup.collect_events()
    assert rig.conn.messages == 2 and len(rig.timings) == 4


@contextmanager
def supervisor_with_camera(tmp_path: Path) -> Iterator[tuple[Supervisor, CameraRuntime]]:
    config = parse_config(TOML, tmp_path / "edged.toml")
    sup = Supervisor(config)
    cam = sup.cams["cam1"] = CameraRuntime(config.cameras["cam1"])
    try:
        yield sup, cam
    finally:
        cam.close()
        sup.events.close()


def _spawned_worker_end(cam: CameraRuntime) -> Connection:
    """A new events pipe as a spawned worker holds it: its own copy of the write end."""
    w = cam.new_events_pipe()
    child = Connection(os.dup(w.fileno()), readable=False)
    cam.handed_over()
    return child


def _collect_within(sup: Supervisor, seconds: float = 10.0) -> None:
    """collect_events() in a thread: a test that fails, not one that hangs."""
    thread = threading.Thread(target=sup.collect_events, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "collect_events() hangs"


def test_a_message_torn_by_a_killed_worker_ends_its_pipe(tmp_path: Path) -> None:
    with supervisor_with_camera(tmp_path) as (sup, cam):
        accepted: list[dict[str, Any]] = []
        sup.events.on_written.append(accepted.append)
        w = _spawned_worker_end(cam)
        record = {"id": "e1", "camera": "cam1", "type": "t", "seq": 1}
        w.send({"timings": [[0.01, 0.02]], "events": [record]})
        # Killed while sending the next message: its length, then part of it.
        os.write(w.fileno(), (100_000).to_bytes(4, "big") + b"\x80\x04partial")
        w.close()
        _collect_within(sup)
        assert accepted == [record]
        assert cam.event_pipes() == []  # read to its end and closed
        # The next worker's pipe is a new one: nothing of the torn message in it.
        w2 = _spawned_worker_end(cam)
        w2.send({"timings": [], "events": [{**record, "id": "e2"}]})
        _collect_within(sup)
        assert [e["id"] for e in accepted] == ["e1", "e2"]
        w2.close()


def test_events_left_in_a_dead_workers_pipe_are_read_after_its_successor_starts(
    tmp_path: Path,
) -> None:
    with supervisor_with_camera(tmp_path) as (sup, cam):
        accepted: list[str] = []
        sup.events.on_written.append(lambda r: accepted.append(r["id"]))
        old = _spawned_worker_end(cam)
        old.send({"timings": [], "events": [{"id": "old"}]})
        old.close()
        new = _spawned_worker_end(cam)  # restarted before the supervisor read the old one
        new.send({"timings": [], "events": [{"id": "new"}]})
        _collect_within(sup)
        assert accepted == ["old", "new"]
        assert cam.event_pipes() == [cam.events_r]
        new.close()


def test_a_failing_event_sink_keeps_nothing_from_the_event_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with supervisor_with_camera(tmp_path) as (sup, cam):

        def broken_outbox(record: dict[str, Any]) -> None:
            raise OSError(5, "Input/output error")

        sup.events.on_written.append(broken_outbox)
        for i in range(3):
            sup.events.accept({"id": f"e{i}", "camera": "cam1"})
        sup.events.on_written.remove(broken_outbox)
        sup.events.on_written.append(lambda record: None)
        sup.events.close()
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in lines] == ["e0", "e1", "e2"]
        failed = [r for r in caplog.records if "failed; the event file still gets" in r.message]
        assert len(failed) == 1 and "broken_outbox" in failed[0].message


class FrameInEvent(Processor):
    def process(self, frame: Frame) -> Iterator[Event]:
        yield Event("small", {"n": 1})
        yield Event("big", {"frame": np.zeros((480, 640, 3), np.uint8)})


def test_an_event_with_a_frame_in_its_data_is_kept_with_a_note_instead(tmp_path: Path) -> None:
    with running_worker(tmp_path, processor=FrameInEvent) as r:
        r.publish(1)
        r.until(lambda: len(r.events) >= 2)
    small, big = r.events[:2]
    assert small["type"] == "small" and small["data"] == {"n": 1}
    assert big["type"] == "big" and big["seq"] == small["seq"]
    assert big["data"]["edged_error"] == "data too large"
    assert big["data"]["bytes"] > 900_000 and big["data"]["limit"] == edged.event.MAX_EVENT_DATA
