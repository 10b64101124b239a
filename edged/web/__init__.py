"""The read-only web page on the metrics listener: what each camera sees.

Routes (GET and HEAD only; nothing here changes anything):

- ``/``: a card per camera: state and reason, fps, frame age, skipped frames,
  events in the last hour, and its newest frame;
- ``/cameras/NAME``: the camera's picture with its zones, masks and the
  processor's boxes drawn over it, its numbers, and its recent events with
  their snapshots;
- ``/cameras/NAME/frame.jpg[?width=N]``: the newest frame as a JPEG, encoded on
  request (``edged.web.pictures``); 503 with the state and reason while the
  camera has none to show;
- ``/cameras/NAME/overlay.json``: the newest boxes (``edged.overlay``), zones
  and masks, state and reason;
- ``/cameras/NAME/snapshots/FILE.jpg``: a snapshot of the camera's, by its file
  name only (``edged.snapshots`` names), so no path can leave the folder.

A camera with ``web = false`` shows its state only: its frames, boxes and
snapshots are 404. With a password (``[web] password_file`` or
``password_credential``) every route here needs HTTP basic auth, compared in
constant time. The metrics server calls :meth:`Web.handle` from its own
threads: the supervisor's loop never waits for a browser.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from edged.snapshots import FOLDER, SNAPSHOT_NAME
from edged.web import pages
from edged.web.pictures import Busy, FrameSource, Pictures

if TYPE_CHECKING:
    from edged.camera import CameraSnapshot
    from edged.config import CameraConfig, WebConfig
    from edged.overlay import Overlay

__all__ = ["Reply", "Web", "WebSources"]

HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
RECENT = 50  # events kept per camera for its page
HOUR = 3600.0
_MAX_TIMES = 20_000  # event times kept per camera, to count the last hour
_CAMERA_PATH = re.compile(r"^/cameras/([a-z0-9_-]+)(/[^/]*)?(/[^/]*)?$")


@dataclasses.dataclass(frozen=True)
class WebSources:
    """What the page reads, each called per request (from the HTTP threads)."""

    cameras: Callable[[], Mapping[str, CameraSnapshot]]
    configs: Callable[[], Mapping[str, CameraConfig]]
    frame: FrameSource
    overlay: Callable[[str], Overlay | None]
    state_dir: Path
    node: str


@dataclasses.dataclass(frozen=True)
class Reply:
    code: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class RecentEvents:
    """Each camera's newest events and the times of the last hour's (in memory, since
    this process started), fed by the event router once an event is written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, deque[dict[str, Any]]] = {}
        self._times: dict[str, deque[float]] = {}

    def written(self, record: dict[str, Any]) -> None:
        camera = str(record.get("camera", ""))
        with self._lock:
            self._events.setdefault(camera, deque(maxlen=RECENT)).append(record)
            self._times.setdefault(camera, deque(maxlen=_MAX_TIMES)).append(time.monotonic())

    def recent(self, camera: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events.get(camera, ()))

    def last_hour(self, camera: str) -> int:
        cutoff = time.monotonic() - HOUR
        with self._lock:
            times = self._times.get(camera)
            while times and times[0] < cutoff:
                times.popleft()
            return len(times) if times else 0


class Web:
    """Answers the page's requests; see the module docstring."""

    def __init__(self, config: WebConfig, sources: WebSources) -> None:
        self.sources = sources
        self.events = RecentEvents()
        self.pictures = Pictures(sources.frame, config.max_fps, config.quality)
        self.period_ms = max(100, round(1000 / config.max_fps))
        password = config.password_value()
        self._credentials: tuple[bytes, bytes] | None = (
            None if password is None else (config.username.encode(), password.encode())
        )

    # -- the request -----------------------------------------------------------------

    def handles(self, path: str) -> bool:
        return path == "/" or path.startswith("/cameras/") or path == "/cameras"

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header lets the request in."""
        if self._credentials is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        want_user, want_password = self._credentials
        # Both compared, always: how long it takes says nothing about either.
        ok_user = hmac.compare_digest(user, want_user)
        ok_password = hmac.compare_digest(password, want_password)
        return bool(sep) and ok_user and ok_password

    def handle(self, target: str) -> Reply:
        path, _, query = target.partition("?")
        path = unquote(path)
        if path == "/":
            return Reply(200, HTML, pages.index(self._cards(), self.sources.node, self.period_ms))
        match = _CAMERA_PATH.match(path)
        configs = self.sources.configs()
        if match is None or match.group(1) not in configs:
            return _text(404, "no such camera\n" if match else "not found\n")
        name, what, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        cam = configs[name]
        if what == "" and not rest:
            return self._camera_page(name, cam)
        if not cam.web:
            return _text(404, f"camera {name} is not shown on the web page (web = false)\n")
        if what == "/frame.jpg" and not rest:
            return self._frame(name, query)
        if what == "/overlay.json" and not rest:
            return self._overlay(name, cam)
        if what == "/snapshots" and rest:
            return self._snapshot(name, rest[1:])
        return _text(404, "not found\n")

    # -- the routes ------------------------------------------------------------------

    def _cards(self) -> list[pages.Card]:
        snaps, configs = self.sources.cameras(), self.sources.configs()
        return [self._card(snaps[n], configs[n]) for n in snaps if n in configs]

    def _card(self, snap: CameraSnapshot, cam: CameraConfig) -> pages.Card:
        processed = snap.counters.get("frames_processed", 0)
        skipped = snap.counters.get("frames_skipped", 0)
        return pages.Card(
            name=snap.name,
            state=snap.state,
            reason=snap.reason,
            processor=cam.shared_processor or cam.processor.type,
            fps=snap.fps,
            frame_age=snap.frame_age,
            skipped=skipped / (processed + skipped) if processed + skipped else 0.0,
            events_hour=self.events.last_hour(snap.name),
            width=snap.width,
            height=snap.height,
            shown=cam.web,
        )

    def _camera_page(self, name: str, cam: CameraConfig) -> Reply:
        snap = self.sources.cameras().get(name)
        if snap is None:  # in the config, not run by this process (edged@other)
            return _text(404, f"camera {name} is not run by this edged process\n")
        regions = cam.regions
        body = pages.camera(
            self._card(snap, cam),
            regions.zones,
            regions.masks,
            self.events.recent(name),
            self.period_ms,
        )
        return Reply(200, HTML, body)

    def _frame(self, name: str, query: str) -> Reply:
        snap = self.sources.cameras().get(name)
        if snap is None or snap.state != "streaming":
            state = snap.state if snap is not None else "not run by this process"
            why = f": {snap.reason}" if snap is not None and snap.reason else ""
            return _text(503, f"camera {name} has no picture now ({state}{why})\n")
        try:
            width = int(parse_qs(query).get("width", ["0"])[0])
        except ValueError:
            return _text(400, "width: a number of pixels\n")
        try:
            picture = self.pictures.get(name, width)
        except Busy:
            return Reply(503, TEXT, b"busy: try again\n", (("Retry-After", "1"),))
        if picture is None:
            return _text(503, f"camera {name} has no frame yet\n")
        headers = (("X-Frame-Seq", str(picture.seq)), ("X-Frame-Time", f"{picture.taken:.3f}"))
        return Reply(200, "image/jpeg", picture.jpeg, headers)

    def _overlay(self, name: str, cam: CameraConfig) -> Reply:
        snap = self.sources.cameras().get(name)
        overlay = self.sources.overlay(name)
        regions = cam.regions
        body = {
            "camera": name,
            "state": snap.state if snap else "",
            "reason": snap.reason if snap else "",
            "seq": overlay.seq if overlay else 0,
            "age_s": round(time.time() - overlay.received, 3) if overlay else None,
            "boxes": overlay.boxes if overlay else [],
            "zones": {z.name: [list(p) for p in z.points] for z in regions.zones},
            "masks": {m.name: [list(p) for p in m.points] for m in regions.masks},
        }
        return Reply(200, "application/json", (json.dumps(body) + "\n").encode())

    def _snapshot(self, name: str, file: str) -> Reply:
        # Only names the snapshot writer makes: no '/', no '..', nothing else.
        if not SNAPSHOT_NAME.fullmatch(file):
            return _text(404, "not found\n")
        path = self.sources.state_dir / FOLDER / name / file
        try:
            data = path.read_bytes()
        except OSError:
            return _text(404, "no such snapshot (deleted by retention?)\n")
        return Reply(200, "image/jpeg", data, (("Cache-Control", "max-age=86400"),))


def _text(code: int, text: str) -> Reply:
    return Reply(code, TEXT, text.encode())
