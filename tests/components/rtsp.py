"""A real RTSP server for tests and benchmarks, and the timestamp strip it burns into frames.

The server itself (``rtsp_server.py`` next to this file) runs under Debian's
``/usr/bin/python3.11``, which has the GStreamer ``gi`` bindings; this module does
not import ``gi`` and works from the project's venv. ``rtsp_server.py`` imports the
strip layout from here, so this module must stay importable by Debian's interpreter
too: standard library and numpy only at module level (cv2 is imported lazily).

Timestamp strip
---------------
Every frame carries its creation time, ``time.time_ns() // 1000`` (microseconds since
the epoch, 64 bit), as 72 black/white blocks of ``BLOCK`` x ``BLOCK`` pixels in the
top-left corner: 64 timestamp bits (most significant first) followed by a CRC-8
(polynomial 0x07, initial value 0xFF) of the 8 big-endian timestamp bytes, laid out
row by row, at most ``MAX_COLUMNS`` blocks per row. For frames at least 576 px wide
that is 2 rows: the strip covers ``x < 576, y < 32`` (``STRIP_HEIGHT``) and nothing
else. Everything below ``strip_height(width)`` rows is pattern content (for
``solid``: uniform). Blocks are luma 16 / 235 (decoded to about 0 / 255 in BGR).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

# --------------------------------------------------------------------------------------
# Timestamp strip layout (shared with rtsp_server.py)
# --------------------------------------------------------------------------------------

BLOCK = 16  # block edge in pixels
TS_BITS = 64
CRC_BITS = 8
N_BITS = TS_BITS + CRC_BITS  # 72 blocks
MAX_COLUMNS = 36
# Luma used for the blocks (limited range: decodes to about 0 / 255 in BGR).
Y_BLACK = 16
Y_WHITE = 235
STRIP_HEIGHT = 32  # for frames >= STRIP_WIDTH px wide
STRIP_WIDTH = MAX_COLUMNS * BLOCK  # 576
MIN_WIDTH = 8 * BLOCK  # narrower frames cannot hold the strip


def strip_layout(width: int) -> tuple[int, int]:
    """(columns, rows) of the strip in a frame ``width`` pixels wide."""
    if width < MIN_WIDTH:
        raise ValueError(f"frame width {width} < {MIN_WIDTH}: no room for the timestamp strip")
    cols = min(MAX_COLUMNS, width // BLOCK)
    rows = -(-N_BITS // cols)
    return cols, rows


def strip_height(width: int) -> int:
    """Rows at the top of the frame that the strip may occupy (32 for width >= 576)."""
    return strip_layout(width)[1] * BLOCK


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07, initial value 0xFF (so an all-black strip is invalid)."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _bits(us: int) -> list[int]:
    raw = (us & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big")
    word = (int.from_bytes(raw, "big") << CRC_BITS) | crc8(raw)
    return [(word >> (N_BITS - 1 - i)) & 1 for i in range(N_BITS)]


def draw_timestamp(luma: np.ndarray, us: int) -> None:
    """Burn ``us`` (microseconds) into a 2-D uint8 luma plane, in place."""
    cols, _ = strip_layout(luma.shape[1])
    for i, bit in enumerate(_bits(us)):
        r, c = divmod(i, cols)
        luma[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = Y_WHITE if bit else Y_BLACK


_PLAUSIBLE_US = (946_684_800_000_000, 4_102_444_800_000_000)  # years 2000 to 2100


def decode_timestamp_us(image: np.ndarray) -> int | None:
    """Microseconds since the epoch from a decoded frame (BGR or grey), or None.

    Reads the centre 8x8 pixels of each block and thresholds at 128. Returns None when
    any block is not clearly black or white, when the CRC does not match, or when the
    time is not between the years 2000 and 2100.
    """
    if image is None or image.ndim not in (2, 3) or image.dtype != np.uint8:
        return None
    h, w = image.shape[:2]
    try:
        cols, rows = strip_layout(w)
    except ValueError:
        return None
    if h < rows * BLOCK:
        return None
    region = image[: rows * BLOCK, : cols * BLOCK]
    if region.ndim == 3:
        region = region.mean(axis=2)
    # (rows, BLOCK, cols, BLOCK) -> centre quarter of every block -> mean per block.
    blocks = region.reshape(rows, BLOCK, cols, BLOCK)
    q = BLOCK // 4
    means = blocks[:, q : BLOCK - q, :, q : BLOCK - q].mean(axis=(1, 3)).reshape(-1)[:N_BITS]
    if np.any((means > 80) & (means < 176)):
        return None
    word = 0
    for m in means:
        word = (word << 1) | int(m >= 128)
    us, crc = word >> CRC_BITS, word & 0xFF
    if crc8(us.to_bytes(8, "big")) != crc or not _PLAUSIBLE_US[0] <= us < _PLAUSIBLE_US[1]:
        return None
    return us


def decode_timestamp(image: np.ndarray) -> float | None:
    """Capture time of a frame in seconds since the epoch, or None if unreadable."""
    us = decode_timestamp_us(image)
    return None if us is None else us / 1e6


# --------------------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3.11"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SETUP_HINT = "run `scripts/setup --test` to install the GStreamer RTSP server and python3-gi"
PATTERNS = ("moving", "solid")


def check_gstreamer() -> str | None:
    """None if Debian's Python can run the server, else a message saying what is missing."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found: {SETUP_HINT}"
    code = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstApp', '1.0');"
        "gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstApp, GstRtspServer; import numpy; Gst.init(None);"
        "missing = [e for e in ('appsrc', 'x264enc', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None];"
        "assert not missing, 'missing GStreamer elements: %s' % missing"
    )
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=_child_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}: {SETUP_HINT}"
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return f"GStreamer RTSP server not usable ({tail[0]}): {SETUP_HINT}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Debian's interpreter must see its own site-packages, not the venv's.
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RtspServerError(RuntimeError):
    pass


# Exit status of rtsp_server.py when it cannot listen on the requested port.
EXIT_ADDR_IN_USE = 3


class RtspServer:
    """Runs ``rtsp_server.py`` on 127.0.0.1; one H.264 stream at ``url``.

    ``port=None`` picks a free port at the first ``start()``; ``restart()`` keeps it.
    """

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 25,
        pattern: str = "moving",
        path: str = "/stream",
        user: str | None = None,
        password: str | None = None,
        auth_method: str = "digest",
        port: int | None = None,
        ready_timeout: float = 20.0,
        stop_grace: float = 5.0,
        start_delay: float = 0.0,
        start_mode: str = "notfound",
    ) -> None:
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, not {pattern!r}")
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        if auth_method not in ("digest", "basic"):
            raise ValueError(f"auth_method must be 'digest' or 'basic', not {auth_method!r}")
        if start_mode not in ("notfound", "silent"):
            raise ValueError(f"start_mode must be 'notfound' or 'silent', not {start_mode!r}")
        strip_layout(width)
        if not path.startswith("/"):
            path = "/" + path
        self.width, self.height, self.fps = width, height, fps
        self.pattern, self.path = pattern, path
        self.user, self.password, self.auth_method = user, password, auth_method
        self.ready_timeout, self.stop_grace = ready_timeout, stop_grace
        # A camera starting up: for start_delay seconds after every start the port
        # accepts connections and answers 404 ("notfound") or nothing ("silent").
        self.start_delay, self.start_mode = start_delay, start_mode
        self._out = b""  # what the server printed on stdout and nobody read yet
        self._port = port
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None  # temp file with the server's stderr
        self.last_stderr = ""  # stderr of the last server process, once it has stopped
        self.last_returncode: int | None = None  # its exit status (0 after a clean SIGTERM)

    # ---- properties -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RtspServerError("server has no port yet: call start()")
        return self._port

    @property
    def url(self) -> str:
        """URL without credentials."""
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def url_with_credentials(self, user: str | None = None, password: str | None = None) -> str:
        """URL with ``user:password@`` (the server's own unless given), percent-encoded."""
        user = quote(self.user or "" if user is None else user, safe="")
        password = quote(self.password or "" if password is None else password, safe="")
        return f"rtsp://{user}:{password}@127.0.0.1:{self.port}{self.path}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_text(self) -> str:
        if self._stderr is None:
            return self.last_stderr
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> RtspServer:
        if self.running:
            raise RtspServerError("server already running")
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            if not self._fixed_port and (self._port is None or attempt > 0):
                self._port = free_port()
            status = self._spawn_and_wait()
            if status is None:
                self._fixed_port = True  # restart() must reuse this port
                return self
            if status != EXIT_ADDR_IN_USE:
                break
        raise RtspServerError(
            f"RTSP server on port {self._port} did not become ready "
            f"(exit status {status}); stderr:\n{self.last_stderr}"
        )

    def _cmd(self) -> list[str]:
        cmd = [
            SYSTEM_PYTHON,
            str(SERVER_SCRIPT),
            "--port", str(self.port),
            "--path", self.path,
            "--width", str(self.width),
            "--height", str(self.height),
            "--fps", str(self.fps),
            "--pattern", self.pattern,
        ]  # fmt: skip
        if self.user is not None and self.password is not None:
            cmd += ["--user", self.user, "--password", self.password]
            cmd += ["--auth-method", self.auth_method]
        if self.start_delay > 0:
            cmd += ["--start-delay", str(self.start_delay), "--start-mode", self.start_mode]
        return cmd

    def _spawn_and_wait(self) -> int | str | None:
        """Start the process; None when READY, else its exit status (or 'timeout')."""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _terminate()
        self._proc = subprocess.Popen(
            self._cmd(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_child_env(),
            start_new_session=True,  # a Ctrl-C in the test run is not delivered twice
        )
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        want = f"READY {self.port}".encode()
        deadline = time.monotonic() + self.ready_timeout
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._terminate()
                self.last_stderr += f"\n[no READY within {self.ready_timeout} s]"
                return "timeout"
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:  # EOF: the server died
                self._terminate()
                return self.last_returncode
            buf += chunk
            if any(line.strip() == want for line in buf.split(b"\n")[:-1]):
                self._out = buf
                return None

    def wait_media(self, timeout: float = 20.0) -> float:
        """Wait until the stream is served (at once, or after ``start_delay``);
        the ``time.monotonic()`` when this saw it."""
        if self._proc is None or self._proc.stdout is None:
            raise RtspServerError("server is not running")
        fd = self._proc.stdout.fileno()
        want = f"MEDIA {self.port}".encode()
        deadline = time.monotonic() + timeout
        while not any(line.strip() == want for line in self._out.split(b"\n")[:-1]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RtspServerError(f"no MEDIA from the RTSP server within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RtspServerError(f"RTSP server exited:\n{self.stderr_text()}")
                self._out += chunk
        self._out = b""
        return time.monotonic()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.last_returncode = proc.returncode
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.seek(0)
            self.last_stderr = self._stderr.read().decode(errors="replace")
            self._stderr.close()
            self._stderr = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_grace`` seconds. Safe to call twice."""
        self._terminate()

    def restart(self) -> RtspServer:
        """Stop and start again on the same port (a camera reboot)."""
        self.stop()
        return self.start()

    def __enter__(self) -> RtspServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"RtspServer({self._port}, {self.width}x{self.height}@{self.fps} "
            f"{self.pattern}, {state})"
        )


# --------------------------------------------------------------------------------------
# Client helper
# --------------------------------------------------------------------------------------


def open_capture(
    url: str,
    *,
    transport: str | None = "tcp",
    open_timeout: float = 10.0,
    read_timeout: float = 5.0,
    threads: int | None = None,
) -> Any:
    """``cv2.VideoCapture(url, CAP_FFMPEG)`` with bounded open/read timeouts.

    ``transport`` sets OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;<transport> for this
    open only (OpenCV reads the variable at open; it is restored afterwards; not
    thread-safe). ``None`` leaves the environment as it is.
    """
    import cv2

    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000),
    ]  # fmt: skip
    if threads is not None:
        params += [cv2.CAP_PROP_N_THREADS, threads]
    key = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    saved = os.environ.get(key)
    try:
        if transport is not None:
            os.environ[key] = f"rtsp_transport;{transport}"
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    finally:
        if transport is not None:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved


if __name__ == "__main__":  # pragma: no cover - manual use
    with RtspServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else None) as srv:
        print(srv.url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
