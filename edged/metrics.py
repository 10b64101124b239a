"""Prometheus metrics and health checks, served over HTTP by the supervisor.

One listener serves three paths:

- ``/metrics``: the Prometheus text exposition. Per-camera state and counters
  are read from :meth:`Supervisor.snapshot` at scrape time (a custom collector
  over what the children report through shared memory), so children never
  touch prometheus-client and no multiprocess mode is needed. Frame age,
  processing time and sink latency are real histograms fed by the
  supervisor's hooks.
- ``/healthz``: 200 ``ok`` while the supervisor's main loop ticks; 503 when it
  has not ticked for more than ``HEALTH_TIMEOUT`` seconds.
- ``/readyz``: 200 when every camera is streaming within its staleness budget,
  503 otherwise; a JSON body saying, per camera, its state and why, either way.

Which address: a daemon that serves exactly one camera (``edged run --camera
NAME``, as ``edged@NAME`` does, or a config with a single camera) listens on
that camera's ``metrics_listen`` if it sets one, so ``edged@cam1`` and
``edged@cam2`` run side by side from one config; every other daemon listens
on ``[metrics] listen`` (default ``127.0.0.1:9850``). :func:`listen_address`
is the rule; ``edged status`` uses it too. ``edged check-config`` reports two
cameras, or a camera and ``[metrics] listen``, sharing an address.

Counter semantics that are not obvious from the name:

- ``edged_camera_reconnects_total``: times the stream was re-established
  after the first successful open (by the reader reconnecting or by a
  restarted reader), i.e. successful opens minus one.
- ``edged_camera_open_failures_total``: failed attempts to open the source;
  it climbs while a camera is away, ``reconnects`` steps when it is back.
- ``edged_camera_probes_total``: TCP connects to a network camera's port
  while it is away (every 0.5 s); a full open follows when one gets in.
- ``edged_child_restarts_total{role}`` and
  ``edged_child_restart_reasons_total{reason}`` count the same restarts, by
  child (``reader``/``worker``) and by cause (``crash``, ``killed``, ``hung``,
  ``setup``).
- ``edged_event_latency_seconds{sink}``: from the frame's grab (the event's
  ``time``) to the sink's acknowledgement (``jsonl``: the line written).

What the metrics read comes in through :class:`MetricsSources`: callables
returning typed snapshots (the cameras', the event file's, the MQTT sink's),
called at scrape time; nothing here reaches into the supervisor. Every
``edged_outbox_*`` series reads 0 without MQTT; ``edged_mqtt_*`` ones exist
only with it. Broker acknowledgements arrive through
:meth:`Metrics.event_acknowledged`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import logging
import math
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged import __version__
from edged.config.listen import split_listen
from edged.errors import EdgedError, exit_code_for
from edged.sinks.outbox import DROP_REASONS
from edged.states import CameraState, RestartReason, Role

if TYPE_CHECKING:
    from edged.camera import CameraSnapshot
    from edged.config import Config
    from edged.router import EventFileStats
    from edged.sinks.mqtt import MqttStats
    from edged.web import Web

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 10.0  # seconds without a supervisor tick before /healthz fails
# Each connection has a thread: an idle one is closed after IDLE_TIMEOUT seconds
# without a byte, and at MAX_CONNECTIONS a new one closes the oldest that has not
# sent its request yet, so idle or slow clients cannot pile up threads or lock
# Prometheus and /healthz out.
IDLE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
# Around the frame budget (40 ms at 25 fps): sub-millisecond hand-overs up to
# processors that take seconds.
FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.25, 2.5, 5, 10)
# Sinks may hold events through an outage: the tail is longer.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.25, 2.5, 5, 10, 30, 60, 300)
STATES = tuple(CameraState)
ROLES = tuple(Role)
RESTART_REASONS = tuple(RestartReason)
# The classic text format: every name here is a legacy one, so the body is the
# same as prometheus-client's newer 1.0.0, and every Prometheus 2.x and tool reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsError(EdgedError):
    """The metrics endpoint cannot be served (its address is in use, say)."""


def listen_address(config: Config, cameras: Sequence[str] | None = None) -> str:
    """The ``host:port`` a daemon running ``cameras`` (default: all) listens on."""
    names = list(cameras) if cameras else list(config.cameras)
    if len(names) == 1:
        own = config.cameras[names[0]].metrics_listen
        if own is not None:
            return own
    return config.metrics.listen


def url_for(listen: str) -> str:
    """``http://host:port`` to reach a daemon listening on ``listen``."""
    host, port = split_listen(listen)
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def event_latency(record: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds from the grab of the event's frame (its ``time``) to ``now``."""
    try:
        wall = dt.datetime.fromisoformat(record["time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    return (time.time() if now is None else now) - wall


def camera_ready(snap: CameraSnapshot) -> bool:
    """Streaming, with a frame younger than the camera's ``stale_after``."""
    return snap.up and snap.frame_age <= snap.stale_after


@dataclasses.dataclass(frozen=True)
class MetricsSources:
    """What the metrics read, each called at scrape time (from the HTTP thread)."""

    cameras: Callable[[], Mapping[str, CameraSnapshot]]
    event_file: Callable[[], EventFileStats]
    mqtt: Callable[[], MqttStats | None]  # None without [mqtt]


class SupervisorCollector(Collector):
    """Per-camera and sink series, read from :class:`MetricsSources` at scrape time."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        snaps = self.sources.cameras()
        cam = ["camera"]

        def gauge(name: str, doc: str, labels: list[str] = cam) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        def counter(name: str, doc: str, labels: list[str] = cam) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=labels)

        up = gauge("edged_camera_up", "1 while the camera streams fresh frames, else 0.")
        state = gauge(
            "edged_camera_state", "1 for the camera's current state.", ["camera", "state"]
        )
        last = gauge(
            "edged_camera_last_frame_timestamp_seconds",
            "Wall-clock time the newest frame was grabbed (0: none yet).",
        )
        stale = gauge(
            "edged_camera_stale_after_seconds",
            "No frame for this long marks the camera stalled (its staleness budget).",
        )
        fps = gauge("edged_camera_fps", "Frames decoded per second, last 4 s (0 unless streaming).")
        width = gauge("edged_camera_frame_width_pixels", "Width of the newest frame.")
        height = gauge("edged_camera_frame_height_pixels", "Height of the newest frame.")
        counters = {
            "frames_decoded": counter(
                "edged_frames_decoded_total", "Frames decoded by the reader."
            ),
            "frames_processed": counter(
                "edged_frames_processed_total", "Frames the processor ran on."
            ),
            "frames_skipped": counter(
                "edged_frames_skipped_total",
                "Frames decoded but replaced by a newer one before the processor was free.",
            ),
            "processor_errors": counter(
                "edged_processor_exceptions_total", "Frames on which the processor raised."
            ),
            "open_failures": counter(
                "edged_camera_open_failures_total", "Failed attempts to open the source."
            ),
            "probes": counter(
                "edged_camera_probes_total",
                "TCP connects to the camera's port to notice its return while it is away.",
            ),
            "stalls": counter(
                "edged_camera_stalls_total", "Times the camera went without frames too long."
            ),
            "snapshots_saved": counter("edged_snapshots_saved_total", "Snapshot JPEGs saved."),
            "snapshot_failures": counter(
                "edged_snapshot_failures_total",
                "Snapshots that could not be encoded or written (the events went without).",
            ),
        }
        reconnects = counter(
            "edged_camera_reconnects_total",
            "Times the stream was re-established after its first open (successful opens - 1).",
        )
        restarts = counter(
            "edged_child_restarts_total",
            "Reader and worker processes restarted after exiting unexpectedly.",
            ["camera", "role"],
        )
        reasons = counter(
            "edged_child_restart_reasons_total",
            "Child restarts by cause: crash, killed (by a signal), hung (killed by edged "
            "for a silent heartbeat, or a process() call over process_timeout), setup (the "
            "processor could not be set up).",
            ["camera", "reason"],
        )
        for name, snap in snaps.items():
            up.add_metric([name], 1.0 if camera_ready(snap) else 0.0)
            for s in (*STATES, *([snap.state] if snap.state not in STATES else [])):
                state.add_metric([name, s], 1.0 if s == snap.state else 0.0)
            last.add_metric([name], snap.last_frame_time)
            stale.add_metric([name], snap.stale_after)
            fps.add_metric([name], snap.fps)
            width.add_metric([name], snap.width)
            height.add_metric([name], snap.height)
            for key, family in counters.items():
                family.add_metric([name], snap.counters.get(key, 0))
            reconnects.add_metric([name], max(0, snap.counters.get("opens", 0) - 1))
            for role in ROLES:
                restarts.add_metric([name, role], snap.restarts.get(role, 0))
            extra = [r for r in snap.restart_reasons if r not in RESTART_REASONS]
            for reason in (*RESTART_REASONS, *extra):
                reasons.add_metric([name, reason], snap.restart_reasons.get(reason, 0))
        yield from (up, state, last, stale, fps, width, height, *counters.values())
        yield from (reconnects, restarts, reasons)
        yield from self._sinks(snaps)
        build = gauge("edged_build_info", "The running edged's version; always 1.", ["version"])
        build.add_metric([__version__], 1.0)
        yield build

    def _sinks(self, snaps: Mapping[str, CameraSnapshot]) -> Iterator[Metric]:
        sink = ["sink"]
        errors = CounterMetricFamily(
            "edged_sink_errors_total", "Failed writes to the event file.", labels=sink
        )
        pending = GaugeMetricFamily(
            "edged_sink_pending_events",
            "Events held in memory because the sink cannot take them now.",
            labels=sink,
        )
        pending_bytes = GaugeMetricFamily(
            "edged_sink_pending_bytes",
            "Bytes of the events held in memory for the event file "
            "(bounded by [events] max_pending_bytes).",
            labels=sink,
        )
        dropped = CounterMetricFamily(
            "edged_sink_dropped_events_total",
            "Events dropped, oldest first, because too many were held for the sink.",
            labels=sink,
        )
        coerced = CounterMetricFamily(
            "edged_events_coerced_total",
            "Events whose data JSON could not represent as it was, converted to strings "
            "and numbers.",
        )
        file = self.sources.event_file()
        errors.add_metric(["jsonl"], file.errors)
        pending.add_metric(["jsonl"], file.pending)
        pending_bytes.add_metric(["jsonl"], file.pending_bytes)
        dropped.add_metric(["jsonl"], file.dropped)
        coerced.add_metric([], file.coerced)
        mqtt = self.sources.mqtt()
        if mqtt is not None:
            pending.add_metric(["mqtt"], mqtt.outbox.held_in_memory)
        depth = GaugeMetricFamily(
            "edged_outbox_events", "Events in the MQTT outbox, not yet acknowledged by the broker."
        )
        size = GaugeMetricFamily("edged_outbox_bytes", "Payload bytes in the MQTT outbox.")
        oldest = GaugeMetricFamily(
            "edged_outbox_oldest_age_seconds", "Age of the oldest event in the MQTT outbox."
        )
        lost = CounterMetricFamily(
            "edged_outbox_dropped_events_total",
            "Events dropped from the MQTT outbox (all still in the JSONL file), by reason: "
            "size and age (its limits, oldest first), memory (held while its file failed), "
            "rejected (by the broker), oversize (over max_payload or the broker's limit), "
            "undeliverable (the broker closed the connection on it every time).",
            labels=["reason"],
        )
        box = mqtt.outbox if mqtt is not None else None
        depth.add_metric([], box.depth if box else 0)
        size.add_metric([], box.bytes if box else 0)
        oldest.add_metric([], box.oldest_age_s if box else 0)
        by = box.dropped_by if box else {}
        for reason in sorted(set(by) | set(DROP_REASONS)):
            lost.add_metric([reason], by.get(reason, 0))
        yield from (errors, pending, pending_bytes, dropped, coerced, depth, size, oldest, lost)
        if mqtt is not None:
            yield from _mqtt_series(mqtt)
            yield _collisions(mqtt, snaps)


def _mqtt_series(mqtt: MqttStats) -> Iterator[Metric]:
    connected = GaugeMetricFamily("edged_mqtt_connected", "1 while connected to the MQTT broker.")
    connected.add_metric([], 1.0 if mqtt.connected else 0.0)
    delivered = CounterMetricFamily(
        "edged_mqtt_delivered_events_total",
        "Events the broker acknowledged (PUBACK) since edged started.",
    )
    delivered.add_metric([], mqtt.delivered_total)
    inflight = GaugeMetricFamily(
        "edged_mqtt_inflight_events", "Events sent to the broker, not yet acknowledged."
    )
    inflight.add_metric([], mqtt.inflight)
    published = CounterMetricFamily(
        "edged_mqtt_snapshots_published_total", "Snapshot JPEGs published to the broker."
    )
    published.add_metric([], mqtt.snapshots_published)
    missing = CounterMetricFamily(
        "edged_mqtt_snapshots_missing_total",
        "Snapshots an event named that were gone (retention) or unreadable when due to go out.",
    )
    missing.add_metric([], mqtt.snapshots_missing)
    yield from (connected, delivered, inflight, published, missing)


def _collisions(mqtt: MqttStats, cameras: Iterable[str]) -> Metric:
    collision = GaugeMetricFamily(
        "edged_mqtt_topic_collision",
        "1 when another box (node) was seen publishing on this camera's MQTT topics "
        "during this run (the log names it).",
        labels=["camera"],
    )
    for name in sorted(set(cameras) | set(mqtt.collisions)):
        collision.add_metric([name], 1.0 if name in mqtt.collisions else 0.0)
    return collision


class Metrics:
    """The supervisor's metrics registry, hook receivers and HTTP endpoint.

    ``start()`` binds (raising :class:`MetricsError` naming the address if it
    cannot) and serves from a daemon thread; ``stop()`` closes the listener.
    The supervisor calls :meth:`loop_alive` every tick and
    :meth:`observe_event` for every event it accepts, and registers
    :meth:`observe_frame` as an ``on_frame`` hook; sinks call :meth:`event_acknowledged`.
    """

    def __init__(self, sources: MetricsSources, config: Config, cameras: Sequence[str]) -> None:
        # Series like edged_events_created would only double the exposition.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.sources = sources
        self.listen = listen_address(config, cameras)
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(SupervisorCollector(sources))
        self.frame_age = Histogram(
            "edged_frame_age_seconds",
            "Age of the frame (since its grab) when the processor started on it.",
            ["camera"],
            buckets=FRAME_BUCKETS,
            registry=self.registry,
        )
        self.processing = Histogram(
            "edged_processing_duration_seconds",
            "Time the processor took on one frame.",
            ["camera"],
            buckets=FRAME_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "edged_events",
            "Events accepted from the processors, by type.",
            ["camera", "type"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edged_event_latency_seconds",
            "From the grab of an event's frame to the sink's acknowledgement.",
            ["camera", "sink"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Series exist from the start and read 0, rather than appearing later;
        # render() adds those of cameras a reload starts.
        self._age: dict[str, Histogram] = {}
        self._took: dict[str, Histogram] = {}
        self._add_series(cameras)
        self._last_tick = time.monotonic()
        self.idle_timeout = IDLE_TIMEOUT
        self.max_connections = MAX_CONNECTIONS
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.web: Web | None = None  # the page (edged.web), when [web] serves it here

    # -- hooks ----------------------------------------------------------------------

    def loop_alive(self) -> None:
        """The supervisor's main loop ticked."""
        self._last_tick = time.monotonic()

    def _add_series(self, cameras: Iterable[str]) -> None:
        for name in cameras:
            if name not in self._age:
                self._age[name] = self.frame_age.labels(name)
                self._took[name] = self.processing.labels(name)
                self.latency.labels(name, "jsonl")

    def observe_frame(self, camera: str, age: float, took: float) -> None:
        """A processed frame: its age when processing started, and the processing time."""
        self._add_series([camera])
        self._age[camera].observe(age)
        self._took[camera].observe(took)

    def observe_event(self, record: dict[str, Any]) -> None:
        """An event accepted from a worker."""
        self.events.labels(record.get("camera", ""), record.get("type", "")).inc()

    def observe_sink_latency(self, sink: str, camera: str, seconds: float) -> None:
        """``sink`` acknowledged an event of ``camera`` ``seconds`` after its frame's grab."""
        self.latency.labels(camera, sink).observe(max(0.0, seconds))

    def file_written(self, record: dict[str, Any]) -> None:
        """The event file has the event ``record``."""
        self.event_acknowledged("jsonl", record)

    def event_acknowledged(self, sink: str, record: dict[str, Any]) -> None:
        """``sink`` has the event ``record`` (written, or acknowledged by the broker)."""
        seconds = event_latency(record)
        if seconds is not None:
            self.observe_sink_latency(sink, str(record.get("camera", "")), seconds)

    # -- health -----------------------------------------------------------------------

    def alive(self) -> tuple[bool, float]:
        """(the main loop ticked recently, seconds since its last tick)."""
        silent = time.monotonic() - self._last_tick
        return silent <= HEALTH_TIMEOUT, silent

    def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, "alive": bool, "cameras": {name: {...}}}`` for ``/readyz``."""
        alive, _ = self.alive()
        cameras: dict[str, Any] = {}
        for name, snap in self.sources.cameras().items():
            age, ready = snap.frame_age, camera_ready(snap)
            reason = snap.reason
            if not ready and not reason:
                reason = f"no frame for {age:.1f}s" if math.isfinite(age) else "no frame yet"
            cameras[name] = {
                "ready": ready,
                "state": snap.state,
                "reason": reason,
                "frame_age_s": round(age, 3) if math.isfinite(age) else None,
                "stale_after_s": snap.stale_after,
                "fps": round(snap.fps, 2),
                "last_error": snap.last_error,
            }
        # No camera at all (a reload took the last one away) is nothing working.
        ready = alive and bool(cameras) and all(c["ready"] for c in cameras.values())
        return {"ready": ready, "alive": alive, "cameras": cameras}

    def render(self) -> bytes:
        # The cameras running now, not those at start: a reload may have added some.
        self._add_series(self.sources.cameras())
        return generate_latest(self.registry)

    # -- the listener -------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is real even for ``:0``."""
        if self._server is None:
            return split_listen(self.listen)
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def shown_address(self) -> str:
        """The bound address as logs show it: ``host:port``, ``[v6]:port``."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        host, port = split_listen(self.listen)
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            hint = (
                "another edged running? set [metrics] listen, or cameras.NAME.metrics_listen "
                "for edged@NAME"
                if exc.errno == errno.EADDRINUSE
                else "check [metrics] listen"
            )
            error = MetricsError(f"cannot serve metrics on {self.listen}: {reason} ({hint})")
            error.exit_code = exit_code_for(exc)
            raise error from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="edged-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s", self.shown_address)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's 5 drops the SYNs of a burst (each client then waits 1 s to retry).
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], metrics: Metrics) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.metrics = metrics
        self.idle_timeout = metrics.idle_timeout
        self.max_connections = metrics.max_connections
        # Open connections, oldest first -> whether its request has arrived.
        self._open: dict[socket.socket, bool] = {}
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # In the serving thread, before a thread exists for this connection.
        with self._open_lock:
            if len(self._open) >= self.max_connections and not self._close_oldest_idle():
                log.debug("metrics: %d requests being served: refusing one", len(self._open))
                refused = True
            else:
                self._open[request] = False
                refused = False
        if refused:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _close_oldest_idle(self) -> bool:
        """Shut down the oldest connection still waiting for its request (its own
        thread wakes up to an end of file and closes it). Holds ``_open_lock``."""
        for conn, busy in self._open.items():
            if not busy:
                del self._open[conn]
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                return True
        return False

    def request_arrived(self, conn: socket.socket) -> None:
        """The connection's request is in: it is served, no longer closed to make room."""
        with self._open_lock:
            if conn in self._open:
                self._open[conn] = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback; a client that resets its connection is
        # routine (our handler logs its own failures).
        log.debug("metrics: connection from %s: %s", client_address[0], sys.exc_info()[1])

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:  # before close: the fd must not be shut down once reused
            self._open.pop(request, None)
        super().shutdown_request(request)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS (getfqdn), which
        # can hang on a box without a resolver; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"edged/{__version__}"
    _head = False  # a HEAD request: headers only

    def setup(self) -> None:
        super().setup()
        # For every recv and send: a silent client ends in "Request timed out".
        self.connection.settimeout(self.server.idle_timeout)

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # the request line and every header are in
        self.server.request_arrived(self.connection)
        return parsed

    def do_HEAD(self) -> None:
        self._head = True  # for this request: a connection may carry a GET next
        try:
            self.do_GET()
        finally:
            self._head = False

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        metrics = self.server.metrics
        web = metrics.web
        try:
            if web is not None and web.handles(path):
                if not web.authorized(self.headers.get("Authorization")):
                    auth = (("WWW-Authenticate", 'Basic realm="edged", charset="UTF-8"'),)
                    self._reply(401, "text/plain; charset=utf-8", b"authentication needed\n", auth)
                    return
                reply = web.handle(self.path)
                self._reply(reply.code, reply.content_type, reply.body, reply.headers)
            elif path == "/metrics":
                self._reply(200, CONTENT_TYPE, metrics.render())
            elif path == "/healthz":
                alive, silent = metrics.alive()
                text = "ok\n" if alive else f"supervisor loop silent for {silent:.0f}s\n"
                self._reply(200 if alive else 503, "text/plain; charset=utf-8", text.encode())
            elif path == "/readyz":
                body = metrics.readiness()
                data = (json.dumps(body, indent=1) + "\n").encode()
                self._reply(200 if body["ready"] else 503, "application/json", data)
            elif path == "/":
                links = b"edged: /metrics /healthz /readyz\n"
                self._reply(200, "text/plain; charset=utf-8", links)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")
        except Exception:
            log.exception("metrics: serving %s failed", path)
            with contextlib.suppress(OSError):
                self._reply(500, "text/plain; charset=utf-8", b"internal error\n")

    def _reply(
        self, code: int, ctype: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if not any(k == "Cache-Control" for k, _ in headers):
                self.send_header("Cache-Control", "no-store")
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            if not self._head:
                self.wfile.write(body)
        except OSError:
            pass  # the client went away, or stopped reading (timed out); nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)
