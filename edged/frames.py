"""The latest-frame slot: how a reader hands frames to a worker through shared memory.

One slot per camera, one writer (the reader process) and one consumer (the
worker process). It is a triple buffer: the writer always has a free buffer to
decode into (neither the newest published one nor the one the consumer holds),
so the writer never waits for the consumer, the consumer never sees a torn
frame, and nothing is copied on the way: the reader decodes straight into the
buffer and the worker processes it in place.

Two shared-memory segments per slot:

* the *control* segment (fixed size, created by the owner of the slot: the
  supervisor or :class:`~edged.capture.LatestFrameCapture`) holds the buffer
  table, the handshake fields and the children's heartbeats and counters;
* the *data* segment (three frame buffers) is created by the writer once it
  knows the frame size, and replaced by a new *generation* when a frame no
  longer fits (a camera came back at another resolution).

The handshake fields are only changed under a lock in the control segment,
robust (:mod:`edged.shmlock`): a reader killed at any instant, even holding it,
cannot wedge the worker, and taking it costs no system call. The consumer
sleeps on a pipe (the doorbell) after saying so under that lock, and the writer
rings it after a publish only when it finds the consumer asleep, so a busy
consumer's handoff makes no system call at all, and no busy-waiting.

The invariants every consumer keeps (:meth:`SlotReader.acquire` for one
slot; :meth:`SlotReader.try_acquire`, :meth:`SlotReader.arm` and select() on
:attr:`SlotReader.fileno` for a shared worker waiting on several):

* READING_IDX/READING_GEN are moved only under the lock, and only to LATEST:
  the writer never picks the buffer a consumer holds, however many slots that
  consumer holds at once (each slot has its own table).
* WAITING is set only under the lock, after seeing no newer frame; publish()
  reads it under the same lock. So a frame is either seen or rung for: no
  lost wake-up. WAITING may be cleared without the lock: a ring too many only
  costs a wake-up, drained before the next wait.
* While WAITING is 0 a writer with freshness = "next" may skip converting
  frames: a consumer that wants the next frame keeps its slot armed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import multiprocessing
import os
import secrets
import select
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker

import numpy as np

from edged import shmlock
from edged.errors import SharedMemoryError

SHM_DIR = "/dev/shm"
PREFIX = "edged"
NBUF = 3
_MAGIC = 0x45444745_44534C54  # "EDGEDSLT"
_VERSION = 3  # 2: the robust mutex replaced flock; 3: the reader's reason

# int64 fields of the control segment
_I_MAGIC, _I_VERSION, _I_GEN, _I_CAPACITY, _I_LATEST_SEQ, _I_LATEST_IDX = range(6)
_I_READING_IDX, _I_READING_GEN, _I_WAITING = 6, 7, 8
_I_BUF = 16  # + 4 * buffer: seq, height, width, channels
_N_I64 = 64
# float64 fields: per-buffer timestamps, then the children's status records
_F_BUF = 0  # + 2 * buffer: wall-clock time, monotonic time
_F_READER = 16
_F_WORKER = 40
_N_F64 = 64
_NOTE_OFFSET = 8 * (_N_I64 + _N_F64)
NOTE_SIZE = 2048  # the reader's last native (FFmpeg) messages, scrubbed, NUL-terminated
_REASON_OFFSET = _NOTE_OFFSET + NOTE_SIZE
REASON_SIZE = 512  # why the reader is not streaming, scrubbed, NUL-terminated
_LOCK_OFFSET = _REASON_OFFSET + REASON_SIZE
CONTROL_SIZE = _LOCK_OFFSET + shmlock.SIZE

# Status records: float64 fields written by one child, read by the supervisor.
# Aligned 8-byte stores are atomic on the platforms we run on, so no lock.
READER_FIELDS = (
    "pid",
    "heartbeat",  # time.monotonic() of the last sign of life outside native calls
    "state",  # a ReaderState code
    "frames",  # frames published
    "last_frame",  # time.monotonic() of the last publish
    "last_frame_wall",
    "opens",  # successful opens of the source
    "open_failures",
    "width",
    "height",
    "fps",  # measured: frames over the last few seconds (edged.rate)
    "state_since",  # time.monotonic() of the last state change
    "probes",  # TCP connects to a network camera's port while it was away (edged.probe)
)
WORKER_FIELDS = (
    "pid",
    "heartbeat",
    "frames",  # frames processed
    "skipped",  # frames published but replaced before the worker looked
    "errors",  # processor exceptions
    "events",
    "busy_since",  # time.monotonic() when process() was entered, 0 when idle
    "last_age",  # seconds: frame age at the start of the last process()
    "last_processing",  # seconds spent in the last process()
    "snapshots",  # snapshot JPEGs saved
    "snapshot_failures",  # snapshots that could not be encoded or written
)


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def new_slot_name(camera: str) -> str:
    """A name unique to this process and slot, recognisable when left over."""
    return f"{PREFIX}_{os.getpid()}_{camera}_{secrets.token_hex(3)}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _reserve(fd: int, size: int) -> None:
    """Give the segment its memory now: a tmpfs too small to hold it fails here
    with ENOSPC, not later with a SIGBUS when a page is first touched."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        try:
            st = os.statvfs(SHM_DIR)
            room = f" ({_mib(st.f_blocks * st.f_frsize)}, {_mib(st.f_bavail * st.f_frsize)} free)"
        except OSError:
            room = ""
        raise SharedMemoryError(
            f"cannot reserve {_mib(size)} of shared memory in {SHM_DIR}{room}: "
            f"enlarge {SHM_DIR} (Docker: --shm-size)"
        ) from None


def _create_segment(name: str, size: int) -> mmap.mmap:
    fd = os.open(segment_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        _reserve(fd, size)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        unlink_segment(name, tracked=False)  # not registered yet: the tracker would complain
        raise
    os.close(fd)
    # The resource tracker (shared by the whole process tree under `spawn`)
    # unlinks the segment if every process using it dies without doing so.
    resource_tracker.register("/" + name, "shared_memory")
    return mm


def _attach_segment(name: str) -> mmap.mmap:
    fd = os.open(segment_path(name), os.O_RDWR | os.O_CLOEXEC)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def unlink_segment(name: str, tracked: bool = True) -> bool:
    """Remove a segment by name; True if it existed. Safe to call from any process.

    ``tracked=False`` for segments of another process tree (left over by a
    supervisor that was killed): our resource tracker never knew them.
    """
    try:
        os.unlink(segment_path(name))
    except FileNotFoundError:
        return False
    if tracked:
        with contextlib.suppress(Exception):
            resource_tracker.unregister("/" + name, "shared_memory")
    return True


def data_segment_name(control_name: str, gen: int) -> str:
    return f"{control_name}_d{gen}"


def leftover_segments() -> list[str]:
    """edged segments whose creating process no longer exists."""
    found = []
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    for name in names:
        parts = name.split("_")
        if parts[0] != PREFIX or len(parts) < 4 or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            found.append(name)
        except PermissionError:
            pass
    return found


class _Control:
    """Typed views of a control segment, attached in this process.

    ``i64``/``f64`` (numpy) serve the status records and the owner; the
    per-frame handshake uses ``q``/``d``, memoryviews of the same bytes, whose
    items are plain Python numbers: a few times cheaper to read and write than
    numpy scalars, which matters at a handoff budget of tens of microseconds.
    """

    def __init__(self, name: str, mm: mmap.mmap, create: bool = False) -> None:
        self.name = name
        self.mm = mm
        self.i64 = np.frombuffer(mm, dtype=np.int64, count=_N_I64, offset=0)
        self.f64 = np.frombuffer(mm, dtype=np.float64, count=_N_F64, offset=8 * _N_I64)
        self._raw = memoryview(mm)
        self.q = self._raw[: 8 * _N_I64].cast("q")
        self.d = self._raw[8 * _N_I64 : 8 * (_N_I64 + _N_F64)].cast("d")
        if create:
            self._mutex = shmlock.SharedLock.create(mm, _LOCK_OFFSET)
        else:
            self._mutex = shmlock.SharedLock(mm, _LOCK_OFFSET)
        # Bound once: the handoff calls them twice a frame.
        self.lock = self._mutex.acquire
        self.unlock = self._mutex.release

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock()
        try:
            yield
        finally:
            self.unlock()

    def read_text(self, offset: int, size: int) -> str:
        raw = bytes(self.mm[offset : offset + size])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def write_text(self, offset: int, size: int, text: str, keep_end: bool = True) -> None:
        data = text.encode("utf-8", "replace")
        data = data[-(size - 1) :] if keep_end else data[: size - 1]
        # No lock: the supervisor may read a mix of old and new text for one
        # tick, never past the end (the terminator is stored first).
        self.mm[offset + len(data)] = 0
        self.mm[offset : offset + len(data)] = data

    def close(self) -> None:
        del self.lock, self.unlock
        self._mutex.close()
        del self.i64, self.f64
        for view in (self.q, self.d, self._raw):
            view.release()
        with contextlib.suppress(BufferError):
            self.mm.close()


def _attach_control(name: str) -> _Control:
    mm = _attach_segment(name)
    magic, version = struct.unpack_from("=qq", mm) if len(mm) >= 16 else (0, 0)
    if magic != _MAGIC or version != _VERSION or len(mm) != CONTROL_SIZE:
        mm.close()
        # A child started from an upgraded install beside an older supervisor.
        raise RuntimeError(
            f"shared memory {name!r} is not an edged slot of this version "
            f"(layout {version}, this edged uses {_VERSION}): restart edged"
        )
    return _Control(name, mm)


class StatusRecord:
    """Named float64 fields in the control segment (a child's status)."""

    def __init__(self, f64: np.ndarray, base: int, fields: tuple[str, ...]) -> None:
        self._f64 = f64
        self._index = {f: base + i for i, f in enumerate(fields)}

    def __getitem__(self, field: str) -> float:
        return float(self._f64[self._index[field]])

    def __setitem__(self, field: str, value: float) -> None:
        self._f64[self._index[field]] = value

    def add(self, field: str, n: float = 1) -> None:
        self._f64[self._index[field]] += n

    def snapshot(self) -> dict[str, float]:
        return {f: float(self._f64[i]) for f, i in self._index.items()}

    def clear(self) -> None:
        for i in self._index.values():
            self._f64[i] = 0.0


class SlotOwner:
    """Creates and removes a slot; lives in the supervisor (or a capture object).

    Reads the children's status records, and cleans up whatever data segment a
    dead writer left behind.
    """

    def __init__(self, camera: str) -> None:
        self.name = new_slot_name(camera)
        mm = _create_segment(self.name, CONTROL_SIZE)
        self._ctl = _Control(self.name, mm, create=True)
        self._ctl.i64[_I_MAGIC] = _MAGIC
        self._ctl.i64[_I_VERSION] = _VERSION
        self._ctl.i64[_I_LATEST_IDX] = -1
        self._ctl.i64[_I_READING_IDX] = -1
        # Connections, not raw fds: multiprocessing hands them to spawned children.
        self.doorbell_r, self.doorbell_w = multiprocessing.get_context("spawn").Pipe(duplex=False)
        os.set_blocking(self.doorbell_w.fileno(), False)
        self.reader = StatusRecord(self._ctl.f64, _F_READER, READER_FIELDS)
        self.worker = StatusRecord(self._ctl.f64, _F_WORKER, WORKER_FIELDS)
        self._data: _DataSegment | None = None  # mapped by copy_latest() only
        # copy_latest() runs in the web server's threads: close() must not unmap
        # the segments under it (a reload removing the camera).
        self._copy_lock = threading.Lock()
        self._closed = False

    @property
    def latest_seq(self) -> int:
        return int(self._ctl.i64[_I_LATEST_SEQ])

    @property
    def frame_shape(self) -> tuple[int, int, int] | None:
        with self._ctl.locked():
            idx = int(self._ctl.i64[_I_LATEST_IDX])
            if idx < 0:
                return None
            b = _I_BUF + 4 * idx
            h, w, c = (int(v) for v in self._ctl.i64[b + 1 : b + 4])
        return (h, w, c)

    @property
    def reader_note(self) -> str:
        """The reader's last native messages (see :meth:`SlotWriter.set_note`)."""
        return self._ctl.read_text(_NOTE_OFFSET, NOTE_SIZE)

    @property
    def reader_reason(self) -> str:
        """Why the reader is not streaming, in its words (see :meth:`SlotWriter.set_reason`)."""
        return self._ctl.read_text(_REASON_OFFSET, REASON_SIZE)

    def copy_latest(self) -> tuple[np.ndarray, int, float] | None:
        """A copy of the newest frame: (image, seq, wall-clock time of its grab), or
        None before the first (for the web page, never for the worker).

        Copied under the slot's lock, so the writer cannot reuse the buffer
        meanwhile: its next publish waits for the copy (a fraction of a
        millisecond at 720p), and the worker's next take too. Callers bound how
        often they ask."""
        with self._copy_lock:
            return None if self._closed else self._copy_latest()

    def _copy_latest(self) -> tuple[np.ndarray, int, float] | None:
        ctl = self._ctl
        with ctl.locked():
            idx, gen = int(ctl.i64[_I_LATEST_IDX]), int(ctl.i64[_I_GEN])
            if idx < 0:
                return None
            b = _I_BUF + 4 * idx
            seq, h, w, c = (int(v) for v in ctl.i64[b : b + 4])
            wall = float(ctl.f64[_F_BUF + 2 * idx])
            if self._data is None or self._data.gen != gen:
                self._data = None  # the old generation's mapping goes first
                try:
                    mm = _attach_segment(data_segment_name(self.name, gen))
                except FileNotFoundError:
                    return None
                self._data = _DataSegment(gen, mm, len(mm) // NBUF, writeable=False)
            return self._data.view(idx, (h, w, c) if c > 1 else (h, w)).copy(), seq, wall

    def reap_writer(self) -> None:
        """After the writer died: remove its data segments (the consumer keeps its mapping)."""
        with self._ctl.locked():
            gen = int(self._ctl.i64[_I_GEN])
            self._ctl.i64[_I_LATEST_IDX] = -1
            self._data = None  # or the dead writer's frames stay in memory
        # GEN + 1 too: a writer killed while replacing its generation leaves
        # the new segment created but never published.
        for g in range(max(1, gen), gen + 2):
            unlink_segment(data_segment_name(self.name, g))

    def close(self) -> None:
        """Remove everything; call after both children are gone."""
        gen = int(self._ctl.i64[_I_GEN])
        for g in range(max(1, gen - 1), gen + 2):
            unlink_segment(data_segment_name(self.name, g))
        with self._copy_lock:
            self._closed = True
            self._data = None
        self.doorbell_r.close()
        self.doorbell_w.close()
        del self.reader, self.worker
        self._ctl.close()
        unlink_segment(self.name)


class _DataSegment:
    def __init__(self, gen: int, mm: mmap.mmap, capacity: int, writeable: bool) -> None:
        self.gen = gen
        self.mm = mm
        self.capacity = capacity
        self.flat = np.frombuffer(mm, dtype=np.uint8)
        self.writeable = writeable
        # Views by (buffer, shape): made once, so a handoff builds no array.
        self._views: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def view(self, idx: int, shape: tuple[int, ...]) -> np.ndarray:
        key = (idx, shape)
        view = self._views.get(key)
        if view is None:
            start = idx * self.capacity
            view = self.flat[start : start + math.prod(shape)].reshape(shape)
            view.flags.writeable = self.writeable
            if len(self._views) >= 4 * NBUF:  # a source that keeps changing size
                self._views.clear()
            self._views[key] = view
        return view


class SlotWriter:
    """The reader's side: pick a free buffer, fill it, publish it."""

    def __init__(self, name: str, doorbell_w: int) -> None:
        self._ctl = _attach_control(name)
        self._doorbell = doorbell_w
        self._data: _DataSegment | None = None
        self._idx = -1
        self._shape: tuple[int, ...] = ()
        self.status = StatusRecord(self._ctl.f64, _F_READER, READER_FIELDS)

    @property
    def consumer_waiting(self) -> bool:
        """True while the consumer sleeps waiting for a frame newer than it has."""
        return bool(self._ctl.q[_I_WAITING])

    @property
    def seq(self) -> int:
        return self._ctl.q[_I_LATEST_SEQ]

    def set_note(self, text: str) -> None:
        """Leave the last native messages where the supervisor can read them after a kill."""
        self._ctl.write_text(_NOTE_OFFSET, NOTE_SIZE, text)

    def set_reason(self, text: str) -> None:
        """Say why the source is down (scrubbed: the supervisor shows it everywhere)."""
        self._ctl.write_text(_REASON_OFFSET, REASON_SIZE, text, keep_end=False)

    def _new_generation(self, capacity: int) -> None:
        ctl = self._ctl
        gen = int(ctl.i64[_I_GEN]) + 1
        name = data_segment_name(ctl.name, gen)
        # A writer killed between creating this segment and publishing its
        # generation left it behind, and O_EXCL would fail every successor. Safe to
        # drop: only the writer creates data segments, and an unpublished
        # generation has no consumer. Untracked, since the dead writer may
        # have died before registering it; _create_segment registers the name
        # again, and the tracker keeps a set, so it is known once either way.
        unlink_segment(name, tracked=False)
        mm = _create_segment(name, NBUF * capacity)
        old = self._data
        self._data = _DataSegment(gen, mm, capacity, writeable=True)
        with ctl.locked():
            ctl.i64[_I_GEN] = gen
            ctl.i64[_I_CAPACITY] = capacity
            ctl.i64[_I_LATEST_IDX] = -1
        # The consumer may still be reading the old buffers: unlinking drops
        # only the name, its mapping stays valid until it lets go.
        if old is not None:
            unlink_segment(data_segment_name(ctl.name, old.gen))
        elif gen > 1:  # left by a writer that died
            unlink_segment(data_segment_name(ctl.name, gen - 1))

    def buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A writable uint8 array of ``shape`` that no one else is looking at."""
        data = self._data
        if data is None or (shape != self._shape and math.prod(shape) > data.capacity):
            # Round up to whole pages so a slightly larger frame reuses it.
            self._new_generation(-(-math.prod(shape) // mmap.PAGESIZE) * mmap.PAGESIZE)
            data = self._data
            assert data is not None
        q = self._ctl.q
        # No lock: LATEST is only ever written by this process, and the
        # consumer moves READING only under the lock, from the buffer it held
        # to LATEST (never to the buffer picked here), and publish() takes the
        # lock after that, which orders its store before these loads. Seeing
        # the old or the new READING is therefore both safe.
        latest = q[_I_LATEST_IDX]
        reading = q[_I_READING_IDX] if q[_I_READING_GEN] == data.gen else -1
        idx = 0
        while idx in (latest, reading):
            idx += 1
        self._idx = idx
        self._shape = shape
        return data.view(idx, shape)

    def publish(
        self,
        wall: float,
        mono: float,
        shape: tuple[int, ...] | None = None,
        seq: int | None = None,
    ) -> int:
        """Make the buffer last returned by :meth:`buffer` the newest frame.

        ``seq`` defaults to one more than the last; a reader that leaves
        frames unpublished passes its own count, so gaps show frames skipped.
        """
        ctl = self._ctl
        q, d = ctl.q, ctl.d
        shape = shape or self._shape
        idx = self._idx
        b = _I_BUF + 4 * idx
        ctl.lock()
        try:
            seq = max(seq or 0, q[_I_LATEST_SEQ] + 1)
            q[b] = seq
            q[b + 1] = shape[0]
            q[b + 2] = shape[1]
            q[b + 3] = shape[2] if len(shape) > 2 else 1
            d[_F_BUF + 2 * idx] = wall
            d[_F_BUF + 2 * idx + 1] = mono
            q[_I_LATEST_IDX] = idx
            q[_I_LATEST_SEQ] = seq
            # The consumer says it will sleep under this lock, after looking at
            # LATEST_SEQ: either it saw this frame, or we see it waiting.
            ring = q[_I_WAITING]
        finally:
            ctl.unlock()
        if ring:
            # A plain try (not contextlib.suppress, a microsecond dearer): a
            # full pipe is rings nobody read yet, so one more is moot.
            try:  # noqa: SIM105
                os.write(self._doorbell, b"\0")
            except BlockingIOError:
                pass
        self._idx = -1
        return seq

    def close(self) -> None:
        """Remove this writer's data segment (the consumer keeps its mapping)."""
        if self._data is not None:
            unlink_segment(data_segment_name(self._ctl.name, self._data.gen))
            self._data = None
        del self.status
        self._ctl.close()


class SlotReader:
    """The worker's side: sleep until a newer frame exists, hold it, release it."""

    def __init__(self, name: str, doorbell_r: int) -> None:
        self._ctl = _attach_control(name)
        self._doorbell = doorbell_r
        os.set_blocking(doorbell_r, False)
        self._poll = select.poll()
        self._poll.register(doorbell_r, select.POLLIN)
        self._data: _DataSegment | None = None
        self.broken = False  # the last try_acquire() found a frame it could not map
        self.status = StatusRecord(self._ctl.f64, _F_WORKER, WORKER_FIELDS)

    @property
    def latest_seq(self) -> int:
        return self._ctl.q[_I_LATEST_SEQ]

    def _drain(self) -> None:
        # One read: rings left over (more than 4096) only make the next poll
        # return at once, and that pass drains them.
        with contextlib.suppress(BlockingIOError):
            os.read(self._doorbell, 4096)

    def _attach(self, gen: int) -> bool:
        if self._data is not None and self._data.gen == gen:
            return True
        try:
            mm = _attach_segment(data_segment_name(self._ctl.name, gen))
        except FileNotFoundError:  # replaced again, or its writer died: wait for the next
            return False
        # The capacity from the segment itself: CAPACITY may already be the
        # next generation's (the writer can replace this one again meanwhile).
        self._data = _DataSegment(gen, mm, len(mm) // NBUF, writeable=False)
        return True

    @property
    def fileno(self) -> int:
        """The doorbell's read end: readable after a publish while :meth:`arm`-ed."""
        return self._doorbell

    def try_acquire(self, after_seq: int) -> tuple[np.ndarray, int, float, float] | None:
        """Hold the newest frame if it is newer than ``after_seq``, without waiting.

        Returns what :meth:`acquire` returns, or None: no newer frame, or (then
        :attr:`broken` is True) one whose data segment was replaced or whose
        writer died, which the next publish or the supervisor's clean-up settles.
        """
        ctl = self._ctl
        q, d = ctl.q, ctl.d
        self.broken = False
        # The path of a busy worker, whose frame is already there: no clock
        # read and no system call before it has the frame.
        if q[_I_LATEST_SEQ] <= after_seq or q[_I_LATEST_IDX] < 0:
            return None
        ctl.lock()
        try:
            idx = q[_I_LATEST_IDX]
            gen = q[_I_GEN]
            if idx >= 0:
                q[_I_READING_IDX] = idx
                q[_I_READING_GEN] = gen
                b = _I_BUF + 4 * idx
                seq, h, w, c = q[b], q[b + 1], q[b + 2], q[b + 3]
                wall = d[_F_BUF + 2 * idx]
                mono = d[_F_BUF + 2 * idx + 1]
        finally:
            ctl.unlock()
        if idx >= 0 and self._attach(gen):
            assert self._data is not None
            image = self._data.view(idx, (h, w, c) if c > 1 else (h, w))
            return image, seq, wall, mono
        self.broken = True
        return None

    def arm(self, after_seq: int) -> bool:
        """Ask the writer to ring the doorbell at its next publish (for a consumer
        that sleeps on several slots' doorbells at once with select()).

        False, and nothing asked, when a frame newer than ``after_seq`` is already
        there: take it instead. The rings of earlier waits are drained first, so
        a readable doorbell means a publish since this call. :meth:`disarm` when
        done waiting; a ring after that is harmless (the next arm drains it).
        """
        ctl = self._ctl
        q = ctl.q
        self._drain()
        # As in acquire(): WAITING is set under the lock, after looking at
        # LATEST_SEQ, and publish() reads it under the same lock, so either the
        # frame is seen here or the writer sees WAITING and rings.
        ctl.lock()
        try:
            newer = q[_I_LATEST_SEQ] > after_seq and q[_I_LATEST_IDX] >= 0
            if not newer:
                q[_I_WAITING] = 1
        finally:
            ctl.unlock()
        return not newer

    def disarm(self) -> None:
        """Stop asking for rings (with freshness = "next" the writer then skips
        converting frames: see reader.py)."""
        self._ctl.q[_I_WAITING] = 0

    def acquire(
        self, after_seq: int, timeout: float
    ) -> tuple[np.ndarray, int, float, float] | None:
        """Wait up to ``timeout`` s for a frame newer than ``after_seq`` and hold it.

        Returns ``(image, seq, wall, mono)``, the image a read-only view that
        stays valid until the next :meth:`acquire` or :meth:`release`.
        """
        ctl = self._ctl
        q = ctl.q
        deadline = 0.0
        drained = False
        while True:
            got = self.try_acquire(after_seq)
            if got is not None:
                return got
            # A broken frame: look again shortly.
            broken = self.broken
            wait = 0.05 if broken else timeout
            if not deadline:
                deadline = time.monotonic() + timeout
            remaining = min(deadline - time.monotonic(), wait)
            if remaining <= 0:
                return None
            if not drained:
                # A ring that came after an earlier wait ended (a timeout) may
                # still be in the pipe: empty it only now that we are about to
                # sleep, so a frame that is there costs no read.
                self._drain()
                drained = True
            # Say we sleep under the lock, and only if there is still no newer
            # frame: publish() reads WAITING under the same lock, so either it
            # published before (we see its frame and go round again) or it
            # sees WAITING and rings.
            ctl.lock()
            try:
                sleep = broken or q[_I_LATEST_SEQ] <= after_seq or q[_I_LATEST_IDX] < 0
                if sleep:
                    q[_I_WAITING] = 1
            finally:
                ctl.unlock()
            if not sleep:
                continue
            try:
                self._poll.poll(max(1, int(remaining * 1000)))
            finally:
                q[_I_WAITING] = 0  # a ring after this is harmless: the next drain takes it
            drained = False

    def release(self) -> None:
        self._ctl.q[_I_READING_IDX] = -1

    def close(self) -> None:
        self.release()
        self._data = None
        del self.status
        self._ctl.close()
