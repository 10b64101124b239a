#!/usr/bin/python3.11
"""Live H.264 RTSP test server (GStreamer RTSP server), run with Debian's /usr/bin/python3.11.

    /usr/bin/python3.11 tests/components/rtsp_server.py --port 8554 [--path /stream]
        [--width 1280 --height 720 --fps 25] [--pattern moving|solid]
        [--user NAME --password PW [--auth-method digest|basic]]
        [--start-delay SECONDS [--start-mode notfound|silent]]

Serves rtsp://127.0.0.1:PORT/PATH (listens on 127.0.0.1 only). One shared pipeline for
all clients: appsrc (I420, fed in real time by a Python thread) -> x264enc
(zerolatency, ultrafast, one keyframe per second) -> rtph264pay. Frames are produced
only while at least one client is playing. Each frame carries its creation time
(time.time_ns() // 1000) in the timestamp strip described in rtsp.py.

Patterns:
  moving  a bright box bouncing over a grey gradient.
  solid   the whole frame (outside the strip) is one luma value that rises by one every
          frame: Y = 16 + n % 220 (limited range, so it decodes to about
          (n % 220) * 255 / 219 in BGR).

Starting up (--start-delay S), like a camera that accepts connections before it can
serve media: for S seconds the port accepts TCP connections and then
  notfound  answers every request with 404 Not Found (the stream is not mounted yet);
  silent    never answers (the connections stay open, unanswered, until the server exits).
"MEDIA <port>" on stdout says when the stream is served.

Prints "READY <port>" on stdout once listening; exits with status 0 on SIGTERM/SIGINT,
3 when it cannot listen on the port, and by itself when its parent process goes away.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time

import gi
import numpy as np

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtsp, GstRtspServer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rtsp import EXIT_ADDR_IN_USE, draw_timestamp, strip_layout  # noqa: E402


def log(msg: str) -> None:
    print(f"rtsp_server[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Frames:
    """Makes I420 frames for one pattern; ``make(n)`` returns (bytes, timestamp_us)."""

    def __init__(self, width: int, height: int, fps: int, pattern: str) -> None:
        self.w, self.h, self.fps, self.pattern = width, height, fps, pattern
        self.ysize = width * height
        self.csize = (width // 2) * (height // 2)
        self.buf = np.empty(self.ysize + 2 * self.csize, np.uint8)
        self.y = self.buf[: self.ysize].reshape(height, width)
        self.u = self.buf[self.ysize : self.ysize + self.csize].reshape(height // 2, width // 2)
        self.v = self.buf[self.ysize + self.csize :].reshape(height // 2, width // 2)
        if pattern == "moving":
            xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
            ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
            self.bg = (40 + 140 * xs + 30 * ys).astype(np.uint8)
            self.side = max(16, (height // 4) & ~1)
        self.u[:] = 128
        self.v[:] = 128

    @staticmethod
    def _bounce(pos: int, span: int) -> int:
        if span <= 0:
            return 0
        pos %= 2 * span
        return pos if pos < span else 2 * span - pos

    def make(self, n: int) -> tuple[bytes, int]:
        if self.pattern == "solid":
            self.y[:] = 16 + n % 220
        else:
            s = self.side
            np.copyto(self.y, self.bg)
            self.u[:] = 128
            self.v[:] = 128
            # Crosses the frame in about 2 s horizontally and 3 s vertically.
            x = self._bounce(n * max(2, self.w // (2 * self.fps)), self.w - s) & ~1
            y = self._bounce(n * max(2, self.h // (3 * self.fps)), self.h - s) & ~1
            self.y[y : y + s, x : x + s] = 235
            self.u[y // 2 : (y + s) // 2, x // 2 : (x + s) // 2] = 90
            self.v[y // 2 : (y + s) // 2, x // 2 : (x + s) // 2] = 200
        us = time.time_ns() // 1000
        draw_timestamp(self.y, us)
        return self.buf.tobytes(), us


class Feeder(threading.Thread):
    """Pushes frames into the current appsrc at ``fps``, paced on the monotonic clock."""

    def __init__(self, frames: Frames, fps: int) -> None:
        super().__init__(name="feeder", daemon=True)
        self.frames, self.period = frames, 1.0 / fps
        self.duration = Gst.SECOND // fps
        self.cond = threading.Condition()
        self.appsrc: GstApp.AppSrc | None = None
        self.stopping = False
        self.n = 0

    def attach(self, appsrc: GstApp.AppSrc | None) -> None:
        with self.cond:
            self.appsrc = appsrc
            self.cond.notify_all()

    def detach(self, appsrc: GstApp.AppSrc) -> None:
        with self.cond:
            if self.appsrc is appsrc:
                self.appsrc = None
                self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    @staticmethod
    def _running_time(appsrc: GstApp.AppSrc) -> int | None:
        """The pipeline's running time now, or None unless the pipeline is PLAYING.

        Explicit PTS instead of do-timestamp: a buffer pushed while the shared media is
        still starting up would be stamped with a base time of 0, i.e. with the raw clock
        (system uptime), and the RTSP sinks would then wait that long before sending it.
        """
        _, state, _ = appsrc.get_state(0)
        clock = appsrc.get_clock()
        if state != Gst.State.PLAYING or clock is None:
            return None
        now = clock.get_time()
        base = appsrc.get_base_time()
        return now - base if now >= base else None

    def run(self) -> None:
        next_t: float | None = None
        current = None
        while True:
            with self.cond:
                while not self.stopping and self.appsrc is None:
                    self.cond.wait()
                if self.stopping:
                    return
                if self.appsrc is not current:
                    current, next_t = self.appsrc, None
                now = time.monotonic()
                if next_t is None:
                    next_t = now
                if now < next_t:
                    self.cond.wait(next_t - now)
                    continue  # re-check stop / appsrc changes, then the clock
            appsrc = current
            next_t += self.period
            pts = self._running_time(appsrc)
            if pts is None:
                continue  # not PLAYING yet (or any more): produce nothing
            data, _ = self.frames.make(self.n)
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts = pts
            buf.duration = self.duration
            ret = appsrc.push_buffer(buf)
            if ret not in (Gst.FlowReturn.OK, Gst.FlowReturn.FLUSHING):
                log(f"push-buffer: {ret.value_nick}")
            self.n += 1
            if time.monotonic() - next_t > 1.0:  # stalled for a second (e.g. SIGSTOP)
                log("feeder fell more than 1 s behind; resynchronising")
                next_t = time.monotonic()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/stream")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--pattern", choices=("moving", "solid"), default="moving")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--auth-method", choices=("digest", "basic"), default="digest")
    ap.add_argument("--start-delay", type=float, default=0.0)
    ap.add_argument("--start-mode", choices=("notfound", "silent"), default="notfound")
    args = ap.parse_args()
    if args.width % 2 or args.height % 2:
        ap.error("width and height must be even (I420)")
    if args.fps < 1:
        ap.error("fps must be >= 1")
    if (args.user is None) != (args.password is None):
        ap.error("give both --user and --password, or neither")
    try:
        _, rows = strip_layout(args.width)
    except ValueError as exc:
        ap.error(str(exc))
    if args.height < rows * 16 + 16:
        ap.error("height too small for the timestamp strip")
    path = args.path if args.path.startswith("/") else "/" + args.path

    Gst.init(None)
    frames = Frames(args.width, args.height, args.fps, args.pattern)
    feeder = Feeder(frames, args.fps)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    caps = f"video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1"
    # threads=1: with tune=zerolatency x264 otherwise uses sliced threads (several slices
    # per frame), and this GStreamer 1.22 + rtph264pay path then delivers P-frames that
    # FFmpeg/OpenCV (and rtspsrc) decode corrupted: only keyframes come out intact.
    # config-interval=-1: SPS/PPS before every keyframe, so clients can join any time.
    factory.set_launch(
        f"( appsrc name=src is-live=true do-timestamp=false format=time caps={caps} "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} threads=1 "
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(True)

    def on_unprepared(media: GstRtspServer.RTSPMedia, appsrc: GstApp.AppSrc) -> None:
        feeder.detach(appsrc)

    def on_configure(_factory: object, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        # Live camera semantics: if downstream ever blocks, drop the oldest frames.
        appsrc.set_property("max-bytes", 4 * len(frames.buf))
        appsrc.set_property("leaky-type", GstApp.AppLeakyType.DOWNSTREAM)
        media.connect("unprepared", on_unprepared, appsrc)
        feeder.attach(appsrc)
        log("media configured (new pipeline)")

    factory.connect("media-configure", on_configure)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        # One method per server: PyGObject cannot pass BASIC|DIGEST (the typelib
        # declares GstRTSPAuthMethod an enum, not flags).
        if args.auth_method == "basic":
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)
        factory.add_role_from_structure(
            Gst.Structure.from_string(
                "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )[0]
        )

    loop = GLib.MainLoop()

    def quit_(*_: object) -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    parent = os.getppid()

    def watch_parent() -> bool:
        if os.getppid() != parent:
            log("parent process went away; exiting")
            loop.quit()
            return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_)
    GLib.timeout_add_seconds(1, watch_parent)

    def serve_media() -> bool:
        server.get_mount_points().add_factory(path, factory)
        log(
            f"serving rtsp://127.0.0.1:{args.port}{path} {args.width}x{args.height}@{args.fps} "
            f"{args.pattern}{f' with {args.auth_method} auth' if args.user else ''}"
        )
        print(f"MEDIA {args.port}", flush=True)
        return GLib.SOURCE_REMOVE

    def attach() -> bool:
        if server.attach(None) == 0:
            log(f"cannot listen on 127.0.0.1:{args.port}")
            loop.quit()
            result.append(EXIT_ADDR_IN_USE)
        return GLib.SOURCE_REMOVE

    result: list[int] = []
    delay_ms = int(args.start_delay * 1000)
    silent: Silent | None = None
    if args.start_delay > 0 and args.start_mode == "silent":
        try:
            silent = Silent(args.port)
        except OSError as exc:
            log(f"cannot listen on 127.0.0.1:{args.port}: {exc}")
            return EXIT_ADDR_IN_USE

        def take_over() -> bool:
            assert silent is not None
            silent.close_listener()  # the unanswered connections stay open
            attach()
            return serve_media() if not result else GLib.SOURCE_REMOVE

        GLib.timeout_add(delay_ms, take_over)
    else:
        attach()
        if result:
            return result[0]
        if args.start_delay > 0:
            log(f"starting up: 404 for {args.start_delay:g}s")
            GLib.timeout_add(delay_ms, serve_media)
        else:
            serve_media()
    feeder.start()
    print(f"READY {args.port}", flush=True)
    loop.run()
    feeder.stop()
    feeder.join(2.0)
    if silent is not None:
        silent.close()
    log("stopped")
    return result[0] if result else 0


class Silent:
    """Accepts TCP connections on 127.0.0.1:port and never answers them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # GStreamer binds the port after us while our connections stay open.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="silent", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # listener closed
            with self.lock:
                self.held.append(conn)

    def close_listener(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        log(f"starting up: held {len(self.held)} connection(s) unanswered")

    def close(self) -> None:
        with self.lock:
            for conn in self.held:
                conn.close()


if __name__ == "__main__":
    sys.exit(main())
