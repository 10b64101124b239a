"""What the supervisor keeps per camera: its slot, its two children, its state and counters.

:class:`CameraSnapshot` is the read-only view the observers (metrics, health,
systemd STATUS, MQTT state) are given.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

from edged.child import Child, RestartPolicy
from edged.config import CameraConfig
from edged.frames import SlotOwner
from edged.reader import ReaderState
from edged.states import CameraState, Role

log = logging.getLogger("edged.supervisor")  # read by the supervisor: its lines

TimingHook = Callable[[str, float, float], None]
"""``(camera, age, took)`` of one processed frame."""
EventHook = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class CameraSnapshot:
    """A camera as the outside sees it: for metrics, health, systemd STATUS, MQTT state."""

    name: str
    state: str  # starting | streaming | stalled | reconnecting | restarting | ended | failed
    reason: str  # why, when not streaming ("" otherwise)
    state_since: float  # time.time() of the last state change
    up: bool  # streaming and fresh
    last_frame_time: float  # wall-clock time of the newest frame, 0 if none yet
    frame_age: float  # seconds since the newest frame was grabbed (inf if none)
    fps: float  # decoded frames per second over the last few seconds
    width: int
    height: int
    stale_after: float
    counters: dict[str, int]  # frames_decoded, frames_processed, frames_skipped,
    # processor_errors, events, opens, open_failures, probes, stalls, snapshots_saved,
    # snapshot_failures (whole life of the camera)
    restarts: dict[str, int]  # "reader" / "worker" -> restarts
    restart_reasons: dict[str, int]  # "crash", "killed", "hung", "setup" -> count
    last_error: str


class EventPipes:
    """A worker's events pipe, one per worker process, and those of workers gone
    that still hold messages (a camera's own worker, or a shared instance's)."""

    def __init__(self) -> None:
        self.events_r: Connection | None
        self.events_w: Connection | None
        self.events_r, self.events_w = Pipe(duplex=False)
        # Pipes of workers that are gone, read to their end before they are closed.
        self.retired_events: list[Connection] = []

    def new_events_pipe(self) -> Connection:
        """A pipe of its own for the next worker: the write end to hand it.

        A worker killed in the middle of a message leaves that message torn.
        On a pipe shared with its successor, the supervisor would wait forever
        for the rest; on its own pipe, once the supervisor has closed its copy
        of the write end (:meth:`handed_over`), a torn message reads as EOF.
        """
        if self.events_r is not None:
            self.retired_events.append(self.events_r)
        if self.events_w is not None:
            self.events_w.close()
        self.events_r, self.events_w = Pipe(duplex=False)
        return self.events_w

    def setup_failed(self, reason: str) -> None:
        """The worker on these pipes said why it cannot set up."""
        raise NotImplementedError

    def handed_over(self) -> None:
        """The worker has the write end: drop ours, so its death reads as EOF."""
        if self.events_w is not None:
            self.events_w.close()
            self.events_w = None

    def event_pipes(self) -> list[Connection]:
        """Every pipe with events still to read, oldest worker first."""
        live = [] if self.events_r is None else [self.events_r]
        return [*self.retired_events, *live]

    def pipe_ended(self, conn: Connection) -> None:
        conn.close()
        if conn is self.events_r:
            self.events_r = None
        else:
            self.retired_events.remove(conn)

    def drain(
        self,
        who: str,
        on_timing: TimingHook,
        on_event: EventHook,
        on_boxes: Callable[[str, object], None],
    ) -> None:
        """Read every message waiting in the pipes, oldest worker first, without
        blocking. ``who``: the camera of a camera's own worker; a shared worker names
        the camera in each message.

        A message is ``{"timings": [[age, took], ...], "events": [record, ...]}``:
        the timings of the frames processed since the worker's last message,
        oldest first, and the events of the newest of them (edged/worker.py
        batches timings, never events)."""
        for conn in self.event_pipes():
            while conn.poll():
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    # Its worker is gone and everything it sent is read; a message
                    # it was killed in the middle of ends here too.
                    self.pipe_ended(conn)
                    break
                except Exception as exc:
                    # Its bytes are consumed, so the next message is intact.
                    log.error("%s: unreadable message from the worker: %r", who, exc)
                    continue
                if "setup_error" in msg:
                    # The worker's last words before exit 78: the failed state's reason.
                    self.setup_failed(str(msg["setup_error"]))
                    continue
                camera = msg.get("camera", who)
                if "boxes" in msg:
                    on_boxes(camera, msg["boxes"])  # edged.overlay: for the live view
                for age, took in msg["timings"]:
                    on_timing(camera, age, took)
                for record in msg["events"]:
                    on_event(record)

    def close_pipes(self) -> None:
        for conn in self.event_pipes():
            conn.close()
        self.retired_events.clear()
        self.events_r = None
        self.handed_over()


class CameraRuntime(EventPipes):
    """Everything the supervisor keeps per camera."""

    def __init__(self, cfg: CameraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.slot = SlotOwner(cfg.name)
        policy = RestartPolicy(cfg.restart_delay, cfg.restart_max_delay, cfg.restart_reset_after)
        self.reader = Child(Role.READER, policy)
        self.worker = Child(Role.WORKER, policy)
        # A camera of a [processors] table: `worker` is its shared instance's
        # (edged.pool), which the pool starts and reaps, and this names it.
        self.shared = False
        self.worker_label = "worker"
        self.state = CameraState.STARTING
        self.reason = ""
        self.ended = False
        self.totals: dict[str, float] = {}
        self.state_since = time.time()
        self.stopping = False
        self.stalls = 0
        self.restart_reasons: dict[str, int] = {}
        self.last_error = ""

    @property
    def name(self) -> str:
        return self.cfg.name

    def setup_failed(self, reason: str) -> None:
        self.worker.setup_failed(reason)

    _COUNTERS = {
        (Role.READER, "frames"): "frames_decoded",
        (Role.READER, "opens"): "opens",
        (Role.READER, "open_failures"): "open_failures",
        (Role.READER, "probes"): "probes",
        (Role.WORKER, "frames"): "frames_processed",
        (Role.WORKER, "skipped"): "frames_skipped",
        (Role.WORKER, "errors"): "processor_errors",
        (Role.WORKER, "events"): "events",
        (Role.WORKER, "snapshots"): "snapshots_saved",
        (Role.WORKER, "snapshot_failures"): "snapshot_failures",
    }

    def bank_counters(self, role: Role) -> None:
        """Before a child's status record is reused: keep its counters in the totals."""
        record = self.slot.reader if role == Role.READER else self.slot.worker
        for (r, field), name in self._COUNTERS.items():
            if r == role:
                self.totals[name] = self.totals.get(name, 0.0) + record[field]
        record.clear()

    def counters(self) -> dict[str, int]:
        """Counters over the camera's whole life, across child restarts."""
        out = {}
        for (role, field), name in self._COUNTERS.items():
            record = self.slot.reader if role == Role.READER else self.slot.worker
            out[name] = int(self.totals.get(name, 0.0) + record[field])
        out["stalls"] = self.stalls
        return out

    def snapshot(self, now: float) -> CameraSnapshot:
        rs = self.slot.reader
        last = rs["last_frame"]
        age = now - last if last else float("inf")
        return CameraSnapshot(
            name=self.name,
            state=self.state,
            reason=self.reason,
            state_since=self.state_since,
            up=self.state == CameraState.STREAMING,
            last_frame_time=rs["last_frame_wall"],
            frame_age=age,
            fps=rs["fps"] if self.state == CameraState.STREAMING else 0.0,
            width=int(rs["width"]),
            height=int(rs["height"]),
            stale_after=self.cfg.stale_after,
            counters=self.counters(),
            restarts={Role.READER: self.reader.restarts, Role.WORKER: self.worker.restarts},
            restart_reasons=dict(self.restart_reasons),
            last_error=self.last_error,
        )

    def state_at(self, now: float) -> tuple[CameraState, str]:
        """The camera's state and why, from its children and its slot (a query: the
        supervisor records a change, see ``Supervisor.check_health``)."""
        if self.ended:
            return CameraState.ENDED, "end of file"
        if self.reader.failed:
            return CameraState.FAILED, f"reader {self.reader.failure()}"
        if self.worker.failed:
            return CameraState.FAILED, f"{self.worker_label} {self.worker.failure()}"
        if self.reader.process is None:
            return CameraState.RESTARTING, f"reader {self.reader.last_exit}"
        # Frames that nobody processes make no events: not up either.
        if self.worker.process is None:
            return CameraState.RESTARTING, f"{self.worker_label} {self.worker.last_exit}"
        if self.worker.hung:
            return CameraState.RESTARTING, f"{self.worker_label} stuck: killed"
        rs = self.slot.reader
        code = int(rs["state"])
        if code == ReaderState.STREAMING:
            last = rs["last_frame"]
            if last and now - last > self.cfg.stale_after:
                return CameraState.STALLED, f"no frame for {now - last:.1f}s"
            if not self.slot.worker["pid"]:
                return CameraState.STARTING, "processor setting up"
            return CameraState.STREAMING, ""
        if code == ReaderState.RECONNECTING:
            return CameraState.RECONNECTING, self.slot.reader_reason
        if code == ReaderState.ENDED:
            return CameraState.ENDED, "end of file"
        return CameraState.STARTING, ""

    def children(self) -> tuple[Child, ...]:
        """The children this camera starts and reaps itself (not a shared worker)."""
        return (self.reader,) if self.shared else (self.reader, self.worker)

    def use_shared_worker(self, child: Child, label: str) -> None:
        """Be served by a shared processor's instance (``label`` names it in states)."""
        if not self.shared:
            self.close_pipes()  # its own worker never ran: nothing to read
        self.worker, self.worker_label, self.shared = child, label, True

    def close(self) -> None:
        """Free the slot and the pipes; call after both children are gone and read."""
        self.close_pipes()
        self.slot.close()
