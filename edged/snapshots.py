"""Snapshots: the frame behind an event, saved as a JPEG under the state directory.

Made in the worker process, the only place the frame exists: while the worker
still holds it (a view of shared memory, valid until it is released) the
frame is encoded once, however many of its events want a snapshot; then the
JPEG is written to a temporary file and renamed into place, so nobody ever
reads half a file, as ``snapshots/CAMERA/20260115T080000.123456Z_42.jpg``
under ``[daemon] state_dir`` (the UTC time of the frame, then its sequence
number). That path, relative to the state directory, goes into each of those
events as ``snapshot``.

Retention (``max_count`` per camera, ``max_age``) is applied after every
write, oldest first, from the list of the camera's files kept in memory; the
folder is scanned once, when the worker starts.

A snapshot that cannot be made (disk full, no permission) never costs the
event: it goes out without ``snapshot``. The first failure of a run of them is
logged, the rest only counted (``snapshot_failures`` in the worker's status),
and the first success after them is logged with the count.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edged.event import EventRecord

if TYPE_CHECKING:
    from edged.config import SnapshotsConfig
    from edged.frames import StatusRecord

log = logging.getLogger(__name__)

FOLDER = "snapshots"
"""The snapshots' folder in ``[daemon] state_dir``: ``snapshots/CAMERA/``."""
SNAPSHOT_NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z_\d+(-\d+)?\.jpg")
"""The file names snapshots get (and nothing else): see :func:`snapshot_name`."""


def snapshot_name(timestamp: float, seq: int, part: int = 0) -> str:
    """The file name of a frame's snapshot; names sort in time order. ``part``: the
    number of an event's own image (:attr:`edged.Event.snapshot`) among the frame's."""
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{when}_{seq}" + (f"-{part}" if part else "") + ".jpg"


Encoded = tuple[bytes, list[dict[str, Any]], int]
"""A JPEG, the records it is the snapshot of, and its part number (0: the frame)."""


class SnapshotWriter:
    """Saves one camera's snapshots and keeps their number and age in bounds."""

    def __init__(
        self,
        camera: str,
        config: SnapshotsConfig,
        state_dir: Path,
        status: StatusRecord | None = None,
    ) -> None:
        self.camera = camera
        self.cfg = config
        self.state_dir = state_dir
        self.folder = state_dir / FOLDER / camera
        self.status = status
        self.saved = 0
        self.failures = 0
        self._burst = 0  # failures since the last success; >0: failing, already logged
        self._files: deque[tuple[str, float]] = deque()  # (file name, wall time), oldest first
        self._scan()

    def _scan(self) -> None:
        try:
            entries = list(os.scandir(self.folder))
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing yet; or a file in the way, which the first save reports
        except OSError as exc:
            log.warning("camera %s: cannot list snapshots in %s: %s", self.camera, self.folder, exc)
            return
        found = []
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                # Left by a worker killed mid-write.
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif SNAPSHOT_NAME.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    found.append((entry.name, entry.stat().st_mtime))
        self._files.extend(sorted(found))
        self._enforce(time.time())

    def wanting(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Those of these events (of one frame) that get a snapshot."""
        return [r for r in records if self.cfg.matches(str(r.get("type", "")))]

    def wants(self, records: list[dict[str, Any]]) -> bool:
        """Whether any of these events (of one frame) gets a snapshot."""
        return bool(self.wanting(records))

    def encode(self, image: np.ndarray) -> bytes | None:
        """The frame as a JPEG, or None (logged and counted) if OpenCV cannot encode it.

        Call it while the frame is still held: the JPEG is a copy, the image is not."""
        # Here, not at the top: the supervisor imports this module (through
        # edged.worker) and has no use for OpenCV; workers get it preloaded.
        import cv2

        try:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.quality])
        except cv2.error as exc:
            self._failed(f"cannot encode the frame as JPEG: {exc}")
            return None
        if not ok:
            self._failed("cannot encode the frame as JPEG")
            return None
        return bytes(buf)

    def encode_all(self, image: np.ndarray, records: list[dict[str, Any]]) -> list[Encoded]:
        """The JPEGs these records (of one frame) want: each record with an image of
        its own (:class:`edged.event.EventRecord`) gets that one, the others share
        one of the frame. Call it while the frame is still held."""
        out: list[Encoded] = []
        shared = []
        for record in self.wanting(records):
            own = record.image if isinstance(record, EventRecord) else None
            if own is None:
                shared.append(record)
            elif (jpeg := self.encode(own)) is not None:
                out.append((jpeg, [record], len(out) + 1))
        if shared and (jpeg := self.encode(image)) is not None:
            out.append((jpeg, shared, 0))
        return out

    def save_all(self, encoded: list[Encoded], timestamp: float, seq: int) -> None:
        """Write what :meth:`encode_all` made, once the frame is released."""
        for jpeg, records, part in encoded:
            self.save(jpeg, timestamp, seq, records, part)

    def save(
        self,
        jpeg: bytes,
        timestamp: float,
        seq: int,
        records: list[dict[str, Any]],
        part: int = 0,
    ) -> None:
        """Write the JPEG and name it in the records that want it; on failure leave them be."""
        name = snapshot_name(timestamp, seq, part)
        path = self.folder / name
        tmp = self.folder / f".{name}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(jpeg)
            # No fsync: a snapshot lost to a power cut is no loss worth a disk flush per event.
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._failed(f"cannot write {exc.filename or path}: {exc.strerror or exc}")
            return
        rel = f"{FOLDER}/{self.camera}/{name}"
        for record in self.wanting(records):
            record["snapshot"] = rel
        self.saved += 1
        if self.status is not None:
            self.status.add("snapshots")
        if self._burst:
            log.info(
                "camera %s: snapshots are saved again (%d could not be)", self.camera, self._burst
            )
            self._burst = 0
        self._files.append((name, timestamp))
        self._enforce(time.time())

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.status is not None:
            self.status.add("snapshot_failures")
        if not self._burst:
            log.error(
                "camera %s: %s; events go out without a snapshot until this works again",
                self.camera,
                why,
            )
        self._burst += 1

    def _enforce(self, now: float) -> None:
        files, limit, max_age = self._files, self.cfg.max_count, self.cfg.max_age
        while files and (
            (limit and len(files) > limit) or (max_age and files[0][1] < now - max_age)
        ):
            name, _ = files.popleft()
            try:
                os.unlink(self.folder / name)
            except FileNotFoundError:
                pass
            except OSError as exc:  # forgotten all the same: retrying each time would not help
                log.debug("camera %s: cannot delete snapshot %s: %s", self.camera, name, exc)
