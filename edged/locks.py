"""Camera locks: one edged process captures a camera, never two.

``edged.service`` and an ``edged@NAME`` unit share a config; started together,
both would open the same camera, and two readers would fight over it (many
cameras allow a few RTSP sessions; a V4L2 device allows one). Each camera a
process runs is an exclusive ``flock`` on ``state_dir/locks/NAME.lock``, holding
the owner's pid for the message the second one prints. The kernel drops the
lock when its holder dies, however it dies: nothing is left to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edged.errors import CameraBusyError, StartupError


class CameraLocks:
    """The locks of the cameras this process captures, by name."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._fds: dict[str, int] = {}

    def lock(self, name: str) -> None:
        """Take the camera's lock, or raise :class:`CameraBusyError` naming its holder
        (:class:`StartupError` when the state folder is not usable)."""
        folder = self.state_dir / "locks"
        path = folder / f"{name}.lock"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StartupError(
                f"cannot use daemon.state_dir {self.state_dir}: "
                f"{exc.strerror or exc} ({exc.filename or path})",
                exc,
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CameraBusyError(
                f"camera {name} is already captured by another edged process (pid {holder}, "
                f"lock {path}); stop that one (edged.service or edged@{name}) first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fds[name] = fd

    def unlock(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def unlock_all(self) -> None:
        for name in list(self._fds):
            self.unlock(name)
