"""A camera's ``source``: which kind it is, and the user and password in a URL."""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import unquote

SourceKind = Literal["synthetic", "rtsp", "url", "v4l2", "plugin", "file"]

PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
V4L2 = re.compile(r"\d+|/dev/.+")
FFMPEG_SCHEMES = {"http", "https", "rtmp", "rtmps", "rtp", "srt", "udp", "tcp", "mmsh", "mmst"}
MALFORMED_URL = re.compile(r":.*@")  # 'user:password@' without a '://' before it


def split_userinfo(url: str) -> tuple[str | None, str | None, str]:
    """(user, password, url without them), percent-decoded, splitting as urlsplit does."""
    scheme, sep, rest = url.partition("://")
    end = len(rest)
    for stop in "/?#":
        if stop in rest:
            end = min(end, rest.index(stop))
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not sep or not at:
        return None, None, url
    user, colon, password = userinfo.partition(":")
    return unquote(user), unquote(password) if colon else None, f"{scheme}://{hostport}{rest[end:]}"


def source_kind(source: str) -> SourceKind:
    """What kind of source ``source`` names (see :attr:`CameraConfig.source_kind`)."""
    if source == "synthetic":
        return "synthetic"
    scheme = source.partition("://")[0].lower() if "://" in source else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme:
        return "url"
    if V4L2.fullmatch(source) and not os.path.isfile(source):
        # /dev/video0, a udev link; a clip in /dev/shm is a file all the same.
        return "v4l2"
    if PLUGIN.fullmatch(source):
        return "plugin"
    return "file"
