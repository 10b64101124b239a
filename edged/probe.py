"""A cheap check that a network camera is back: a TCP connect to its host and port.

While a camera is away its reader probes it every :data:`PROBE_INTERVAL`
seconds and opens the stream as soon as the port accepts again, instead of
waiting out a backoff that has grown to tens of seconds. A connect that is
closed at once costs the camera nothing an RTSP open would not; the full
opens stay under the backoff.

Only sources that FFmpeg reaches over TCP at the URL's own host and port are
probed (RTSP, HTTP, RTMP, ...). Files, V4L2 devices, synthetic and plugin
sources, UDP-based URLs, and HTTP through a proxy are not.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from edged.config import CameraConfig

PROBE_INTERVAL = 0.5  # seconds between probes while a camera is away
PROBE_TIMEOUT = 1.0  # a LAN camera answers a connect in milliseconds
RESOLVE_EVERY = 30.0  # seconds a host name's addresses are reused between probes

# FFmpeg's default port per scheme; schemes over UDP (udp, rtp, srt) have no
# connection to probe.
_DEFAULT_PORTS: dict[str, int | None] = {
    "rtsp": 554,
    "rtsps": 322,
    "http": 80,
    "https": 443,
    "rtmp": 1935,
    "rtmps": 443,
    "mmsh": 80,
    "mmst": 1755,
    "tcp": None,  # tcp:// has no default: the URL names its port
}
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")


def probe_address(cam: CameraConfig) -> tuple[str, int] | None:
    """The (host, port) FFmpeg connects to for ``cam``, or None where a probe makes no sense."""
    if cam.source_kind not in ("rtsp", "url"):
        return None
    try:
        parts = urlsplit(cam.source)
        port = parts.port
    except ValueError:
        return None  # a URL FFmpeg may read otherwise: no guessing, no probe
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if scheme in ("http", "https") and (
        "http_proxy" in cam.ffmpeg_options or any(os.environ.get(v) for v in _PROXY_VARIABLES)
    ):
        return None  # FFmpeg goes through the proxy: the camera's port says nothing
    port = port or _DEFAULT_PORTS[scheme]
    return None if port is None else (parts.hostname, port)


class Probe:
    """TCP connects to one host and port; each call says whether it accepted."""

    def __init__(self, host: str, port: int, timeout: float = PROBE_TIMEOUT) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._addrs: list[tuple[int, int, int, tuple[object, ...]]] = []
        self._resolved = -RESOLVE_EVERY

    @classmethod
    def for_camera(cls, cam: CameraConfig) -> Probe | None:
        address = probe_address(cam)
        if address is None:
            return None
        return cls(*address, timeout=min(PROBE_TIMEOUT, cam.open_timeout))

    def __call__(self) -> str | None:
        """None when the port accepted a connection, else why not (a short cause)."""
        now = time.monotonic()
        if not self._addrs or now - self._resolved > RESOLVE_EVERY:
            try:
                infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                self._addrs = []
                return "host name not resolved"
            self._addrs = [(f, t, p, tuple(a)) for f, t, p, _, a in infos]
            self._resolved = now
        cause = "connection failed"
        for family, kind, proto, sockaddr in self._addrs:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(self.timeout)
            try:
                sock.connect(sockaddr)
                return None
            except TimeoutError:
                cause = "timed out"
            except ConnectionRefusedError:
                cause = "connection refused"
            except OSError as exc:
                unreachable = (errno.EHOSTUNREACH, errno.ENETUNREACH)
                cause = "network unreachable" if exc.errno in unreachable else "connection failed"
            finally:
                sock.close()
        return cause
