"""``LatestFrameCapture``: the reader as a library, in the ``cv2.VideoCapture`` style.

::

    from edged import LatestFrameCapture

    with LatestFrameCapture("rtsp://cam.local/stream") as cap:
        for image in cap:          # always the newest frame
            slow_algorithm(image)  # frames that arrive meanwhile are skipped

Decoding runs in a separate process (so a hung FFmpeg call never hangs the
script), and frames reach the script through shared memory, not pickling.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import EXIT_END_OF_STREAM
from edged.frames import SlotOwner, SlotReader
from edged.logs import LogSettings
from edged.processor import Frame
from edged.reader import ReaderState, reader_main

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    # `spawn` re-runs the script's __main__ in the child unless the script
    # guards with `if __name__ == "__main__":`. The reader needs nothing from
    # it, so hide it while the child is being prepared: scripts need no guard.
    main = sys.modules.get("__main__")
    saved: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__
    }
    try:
        if main is not None:
            for k in saved:
                if k == "__spec__":
                    main.__spec__ = None
                else:
                    del main.__dict__[k]
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


class LatestFrameCapture:
    """Read the newest frame of a video source; frames you are too slow for are skipped.

    ``source`` is anything a camera's ``source`` accepts: an ``rtsp://`` URL, a
    video file, ``/dev/video0`` or ``0``, ``"synthetic"`` or a
    ``package.module:ClassName`` source. Keyword options are a camera's
    options (``decoder_threads``, ``open_timeout``, ``width``, ``loop``, ...).

    ``read()`` waits up to ``timeout`` seconds for a frame newer than the last
    one returned. With ``copy=False`` the returned image is a read-only view
    of shared memory, valid until the next ``read()``: no copy at all. With
    ``gray=True`` images are HxW grey: for RTSP, URL and file sources the
    decoder's luma plane (usually in the video range 16-235), with no colour
    conversion at all.
    """

    def __init__(
        self,
        source: str | int | Path,
        *,
        timeout: float = 10.0,
        copy: bool = True,
        gray: bool = False,
        name: str = "capture",
        log_level: str = "warning",
        **options: Any,
    ) -> None:
        from edged.config import CameraConfig, camera_from_dict

        self.timeout = timeout
        self.copy = copy
        self.cfg: CameraConfig = camera_from_dict(
            name, {"source": str(source), "pixel_format": "gray" if gray else "bgr", **options}
        )
        self._owner: SlotOwner | None = SlotOwner(name)
        self._slot = SlotReader(self._owner.name, self._owner.doorbell_r.fileno())
        self._last_seq = 0
        self._held = False
        # `spawn`, not the daemon's preloaded fork server (edged/startmethod.py):
        # a script has one or a few readers, where a server costs what it
        # saves (it holds the same imports), and the server is a process-wide
        # multiprocessing singleton whose preload list is the script's business.
        ctx = multiprocessing.get_context("spawn")
        self._proc = ctx.Process(
            target=reader_main,
            args=(
                self.cfg,
                self._owner.name,
                self._owner.doorbell_w,
                LogSettings(log_level, "human"),
            ),
            name=f"edged-capture-{name}",
            daemon=True,
        )
        with _main_not_reimported():
            self._proc.start()

    def __repr__(self) -> str:
        return f"LatestFrameCapture({self.cfg.display_source!r})"

    # -- cv2.VideoCapture style -------------------------------------------------

    def isOpened(self) -> bool:
        """True while the reader runs (it may be reconnecting)."""
        return self._owner is not None and self._proc.is_alive()

    def read(self, timeout: float | None = None) -> tuple[bool, np.ndarray | None]:
        """``(True, image)`` with the newest frame, or ``(False, None)`` on timeout or end."""
        frame = self.read_frame(timeout)
        return (False, None) if frame is None else (True, frame.image)

    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """Like :meth:`read`, with the frame's sequence number and capture times."""
        if self._owner is None:
            return None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self._held:
                self._slot.release()
                self._held = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._last_seq == 0:
                # The first read: the slot may hold a frame from long ago (the
                # reader publishes its first frame at once, then with
                # freshness = "next" only frames someone waits for). The next
                # one is at most a frame interval away.
                self._last_seq = self._slot.latest_seq
            got = self._slot.acquire(self._last_seq, timeout=min(remaining, 0.5))
            if got is None:
                if not self._proc.is_alive():
                    return None
                continue
            image, seq, wall, mono = got
            self._last_seq = seq
            if self.copy:
                image = image.copy()
                self._slot.release()
            else:
                self._held = True
            return Frame(image=image, seq=seq, timestamp=wall, monotonic=mono, camera=self.cfg.name)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Newest frames until the source ends or :meth:`release`; waits through reconnects."""
        while self._owner is not None:
            ok, image = self.read()
            if ok:
                assert image is not None
                yield image
            elif self.ended or not self.isOpened():
                return

    @property
    def ended(self) -> bool:
        """True once a file source without ``loop`` played to its end."""
        if self._owner is None:
            return True
        return (
            self._proc.exitcode == EXIT_END_OF_STREAM
            or int(self._owner.reader["state"]) == ReaderState.ENDED
        )

    @property
    def stats(self) -> dict[str, float]:
        """The reader's counters: frames, fps, width, height, opens, open_failures, ..."""
        return {} if self._owner is None else self._owner.reader.snapshot()

    def release(self) -> None:
        """Stop the reader and free the shared memory. Safe to call twice."""
        owner, self._owner = self._owner, None
        if owner is None:
            return
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(3)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc.join()
        self._slot.close()
        owner.reap_writer()
        owner.close()

    def __enter__(self) -> LatestFrameCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
