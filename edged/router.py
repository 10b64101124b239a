"""The events' one owner after they leave a worker: the record first, then the rest.

A worker sends small event records to the supervisor, which hands each to
:meth:`EventRouter.accept`. The router writes it to the JSONL file (the
record: an event is in the file before any other sink can see it), then
calls the ``on_written`` hooks (MQTT's outbox, latency metrics). While the
file cannot be written (a full disk), events are held in memory in order,
bounded by ``[events] max_pending_bytes`` (oldest dropped first, counted and
logged once per run of drops), and retried every tick; a stop that still
cannot write them keeps them in a spill file in ``state_dir`` that the next
start writes first. A hook that raises costs only that hook its event:
logged once, never the file nor the supervisor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edged.config import EventsConfig
from edged.sinks.jsonl import JsonlWriter, SinkError

__all__ = ["MAX_PENDING", "EventFileStats", "EventRouter", "open_writer"]

log = logging.getLogger(__name__)

# Events held in memory while the event file cannot be written: at most
# [events] max_pending_bytes of lines, and this many (a line costs ~40 bytes of
# bookkeeping beside its own, which matters only for tiny events).
MAX_PENDING = 100_000

EventHook = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class EventFileStats:
    """The event file as metrics see it."""

    errors: int  # failed writes
    pending: int  # events held in memory, waiting for the file
    pending_bytes: int
    dropped: int  # held events dropped (oldest first) this run
    written: int  # lines written this run
    coerced: int  # events whose data had to be converted to JSON


def open_writer(ev: EventsConfig) -> JsonlWriter:
    """The JSONL writer for ``[events]`` (raises :class:`SinkError` if it cannot open)."""
    return JsonlWriter(
        ev.path,
        max_bytes=ev.max_bytes,
        backups=ev.backups,
        fsync=ev.fsync,
        fsync_interval=ev.fsync_interval,
    )


class EventRouter:
    """Owns events after a worker: the JSONL file, held events, the other sinks' hooks."""

    def __init__(self, events: EventsConfig, state_dir: Path, instance: str = "") -> None:
        self.writer = open_writer(events)
        self.max_pending_bytes = events.max_pending_bytes
        self.state_dir = state_dir
        self.instance = instance  # sets this process's spill file apart (edged@NAME)
        # Lines the event file would not take, oldest first, encoded: their
        # length is what they cost (a decoded record costs several times more).
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.dropped = 0  # held events dropped, this run
        self._dropping = 0  # the same, since the file last took writes
        self._spilled = 0  # held events at the front of pending also in the spill file
        self.sink_failing = False
        self.events_total = 0
        self._failing_hooks: set[str] = set()
        # on_accept(record) for every event from a worker (counted even while the
        # file fails); on_written(record) for every event once it is in the file.
        self.on_accept: list[EventHook] = []
        self.on_written: list[EventHook] = []

    def stats(self) -> EventFileStats:
        return EventFileStats(
            errors=self.writer.errors,
            pending=len(self.pending),
            pending_bytes=self.pending_bytes,
            dropped=self.dropped,
            written=self.writer.lines_written,
            coerced=self.writer.coerced,
        )

    def reconfigure(self, events: EventsConfig, writer: JsonlWriter | None) -> None:
        """A reload's ``[events]``: ``writer`` is its file, opened before anything
        changed (None when the file is the same)."""
        self.max_pending_bytes = events.max_pending_bytes
        if writer is not None:
            self.writer.close()
            self.writer = writer

    def tick(self) -> None:
        """Every supervisor tick: retry what is held, fsync on the interval policy."""
        self.flush()
        self.writer.tick()

    def stop(self) -> None:
        """At shutdown, after the last events came in: write, report, keep what is left."""
        self.flush()
        if self._dropping:
            log.error(
                "%d events were dropped while the event file could not be written",
                self._dropping,
            )
        if self.pending:
            self._spill()

    def close(self) -> None:
        self.writer.close()

    def accept(self, record: dict[str, Any]) -> None:
        """An event from a worker: into the file now, or held until it can be written."""
        self.events_total += 1
        for hook in self.on_accept:
            hook(record)
        line = self.writer.encode(record)
        if self.pending:
            self._hold(line)  # behind the older ones: the file keeps their order
            return
        try:
            self.writer.write_line(line)
        except SinkError as exc:
            self._sink_failed(exc)
            self._hold(line)
        else:
            self._written(record)

    def _written(self, record: dict[str, Any]) -> None:
        """The event is in the file (written, not necessarily synced): only now may
        the other sinks see it. An event on MQTT but in no file (a SIGKILL between
        the two) would be a record with a hole in it."""
        for hook in self.on_written:
            try:
                hook(record)
            except Exception:
                # A sink that breaks (MQTT's outbox on a failing disk) must not
                # stop the supervisor, nor the other sinks.
                self._hook_failed(hook)
            else:
                if self._failing_hooks:
                    self._hook_recovered(hook)

    def _hold(self, line: bytes) -> None:
        self.pending.append(line)
        self.pending_bytes += len(line)
        limit = self.max_pending_bytes
        # The newest stays, whatever its size: it is the one just accepted.
        while len(self.pending) > 1 and (
            self.pending_bytes > limit or len(self.pending) > MAX_PENDING
        ):
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        old = self.pending.popleft()
        self.pending_bytes -= len(old)
        self._unspill()
        self.dropped += 1
        self._dropping += 1
        if self._dropping == 1:  # once per run of drops; _file_writable() sums it up
            log.error(
                "event file %s still cannot be written and %d events (%d bytes) are held "
                "in memory, the most [events] max_pending_bytes (%d) allows: dropping the "
                "oldest, neither written nor sent to MQTT, until it can",
                self.writer.path,
                len(self.pending),
                self.pending_bytes,
                self.max_pending_bytes,
            )

    def _hook_failed(self, hook: Callable[..., None]) -> None:
        name = getattr(hook, "__qualname__", repr(hook))
        if name not in self._failing_hooks:
            self._failing_hooks.add(name)
            log.exception("event sink %s failed; the event file still gets every event", name)

    def _hook_recovered(self, hook: Callable[..., None]) -> None:
        name = getattr(hook, "__qualname__", repr(hook))
        if name in self._failing_hooks:
            self._failing_hooks.discard(name)
            log.info("event sink %s works again", name)

    def _sink_failed(self, exc: Exception) -> None:
        if not self.sink_failing:
            log.error(
                "cannot write events: %s; holding them in memory (up to [events] "
                "max_pending_bytes, %d bytes) and retrying; MQTT gets them once written",
                exc,
                self.max_pending_bytes,
            )
            self.sink_failing = True

    def flush(self) -> None:
        """Write what is held, oldest first, as far as the file takes it."""
        while self.pending:
            line = self.pending[0]
            try:
                self.writer.write_line(line)
            except SinkError as exc:
                self._sink_failed(exc)
                return
            self.pending.popleft()
            self.pending_bytes -= len(line)
            self._unspill()
            record = _decode(line)
            if record is not None:
                self._written(record)
        if self.sink_failing:
            self._file_writable()

    def _file_writable(self) -> None:
        self.sink_failing = False
        if self._dropping:
            log.warning(
                "event file writable again; %d events were dropped while it was not",
                self._dropping,
            )
            self._dropping = 0
        else:
            log.info("event file writable again")

    # -- events a stop could not write ------------------------------------------

    def spill_path(self) -> Path:
        """Where a stop keeps the events the event file would not take, for the next start."""
        name = (
            f"events-unwritten-{self.instance}.jsonl" if self.instance else "events-unwritten.jsonl"
        )
        return self.state_dir / name

    def load_spill(self) -> None:
        """Hold the events an earlier stop could not write: the first tick writes them
        before any new one (then MQTT gets them). The file goes once they are written."""
        path = self.spill_path()
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read %s, events an earlier run could not write: %s", path, exc)
            return
        lines = [line + b"\n" for line in data.split(b"\n") if line.strip()]
        good = [line for line in lines if _decode(line) is not None]
        if len(good) < len(lines):
            log.warning("%s: skipped %d lines that are not events", path, len(lines) - len(good))
        log.info(
            "%d events an earlier run could not write are in %s: writing them to %s first",
            len(good),
            path,
            self.writer.path,
        )
        for line in good:
            self._hold(line)
        self._spilled = len(self.pending)
        if not self._spilled:
            self._remove_spill()

    def _unspill(self) -> None:
        if self._spilled:
            self._spilled -= 1
            if not self._spilled:
                self._remove_spill()

    def _remove_spill(self) -> None:
        try:
            self.spill_path().unlink(missing_ok=True)
        except OSError as exc:
            # Its events are in the event file: the next start writes them again.
            log.error("cannot remove %s: %s; its events may be written twice", exc.filename, exc)

    def _spill(self) -> None:
        """At stop: keep what the event file would not take, or say it is lost."""
        path = self.spill_path()
        n = len(self.pending)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.writelines(self.pending)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # all of them or, as before, none
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.error(
                "stopping with %d events not written to the event file %s, nor sent to "
                "MQTT (they wait for the file), and they cannot be kept in %s either (%s): "
                "they are lost",
                n,
                self.writer.path,
                path,
                exc.strerror or exc,
            )
            return
        log.error(
            "stopping with %d events not written to the event file %s (not sent to MQTT "
            "either: they wait for the file): kept in %s; the next start writes them, "
            "then sends them",
            n,
            self.writer.path,
            path,
        )


def _decode(line: bytes) -> dict[str, Any] | None:
    """A held line back as the record the hooks take (the same bytes when encoded
    again); None for one that is not an event (from a damaged spill file)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None
