"""The MQTT sink: events at least once, in order, through the durable outbox.

Topics (``PREFIX`` is ``[mqtt] topic_prefix``, default ``edged``; ``NODE`` is
``[daemon] node``; per-camera topics are ``PREFIX/NODE/CAMERA/...``, or
``PREFIX/CAMERA/...`` with ``topic_layout = "camera"``, see
``MqttConfig.camera_topic``):

- ``PREFIX/NODE/CAMERA/events``: every event, QoS 1, not retained; the payload is
  the event's JSONL line (same bytes, without the newline).
- ``PREFIX/NODE/status``: ``online`` (retained) once connected; ``offline``
  (retained) on a clean stop, and as the Last Will when edged dies or loses
  the connection. A process running only some cameras (``edged@cam1``) has
  its own, ``PREFIX/NODE/status/INSTANCE`` (``INSTANCE``: its camera names
  joined by ``.``), so stopping one unit does not mark the others offline;
  ``PREFIX/+/status/#`` matches both forms.
- ``PREFIX/NODE/CAMERA/state``: retained JSON ``{"node", "session", "state",
  "reason", "since"}`` at start and whenever a camera's state changes (``since``
  is UTC, like an event's time; ``session`` is random per run). The sink stays
  subscribed to its cameras' state topics: a state there that this process did
  not write (another node's; or ours, live, from another session: the same node
  name on two boxes) is a collision, logged as an error and counted
  (``collisions``, ``edged_mqtt_topic_collision``).
- ``PREFIX/NODE/CAMERA/snapshot``: with the camera's ``snapshots.mqtt``, the JPEG
  an event names in ``snapshot``, retained, QoS 0, sent right after the
  event. QoS 0 because it is a latest-picture state that the next one
  replaces: a large retransmitted copy in paho's session would only delay
  the events behind it, and a snapshot lost with a connection is still on
  disk. A file already deleted (retention) is skipped and counted.
- With ``homeassistant = true``: Home Assistant discovery configs and
  ``PREFIX/NODE/CAMERA/motion`` (``ON``/``OFF``, retained); see
  ``edged.sinks.homeassistant``. They are published after every connect and
  again whenever Home Assistant announces ``online`` on its status topic.
- At every connect the states go out before ``online`` (and motion ``OFF``
  before a clean ``offline``), and what cameras no longer in the config left
  retained is cleared; see ``edged.sinks.retained``.

Threads: :meth:`MqttSink.submit` and :meth:`MqttSink.on_state` run in the
supervisor's thread and never touch the network: ``submit`` stores the event
in the outbox (one SQLite insert, committed at once; see
``edged.sinks.outbox``) and wakes the delivery thread; ``on_state`` only
records the state. The retained per-camera side (states, Home Assistant
discovery and motion sensors, the sweep, collisions) is
``edged.sinks.camera_topics.CameraTopics``, which the delivery thread asks to
publish what changed. paho's own thread (``loop_start``) runs the connection and
reconnects with paho's doubling backoff. The delivery thread pages through
the outbox in id order, keeps at most ``max_inflight`` events published and
unacknowledged, and removes each from the outbox when its PUBACK arrives
(``on_publish`` hands the message id over through a queue; paho calls it with
its own lock held, so it must not wait for ours). Events published before a
disconnect stay in paho's session and are sent again on reconnect (QoS 1
allows the duplicate); after a restart the outbox replays everything not
acknowledged.

Payload size: an event whose PUBLISH would exceed the limit (``[mqtt]
max_payload``, default 256 KiB, and with MQTT 5 the broker's Maximum Packet
Size from its CONNACK) is never sent: a broker closes the connection on an
oversize packet, and the event would be resent after every reconnect,
blocking everything behind it forever (and in the outbox, across restarts).
It is dropped from MQTT delivery (the JSONL file has it), counted as
``oversize`` and logged. A broker with a lower limit that does not announce
it (MQTT 3.1.1) shows as the connection closing while the same event is the
oldest in flight: after ``POISON_STRIKES`` such disconnects in a row the
event is dropped as ``undeliverable``, counted and logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edged.config import CameraConfig, MqttConfig
from edged.event import encode_event
from edged.sinks.camera_topics import CameraTopics
from edged.sinks.outbox import Outbox, OutboxStats
from edged.sinks.outbox_file import find_stranded

if TYPE_CHECKING:
    from collections.abc import Callable

    from edged.camera import CameraSnapshot

log = logging.getLogger(__name__)

MAINTAIN_EVERY = 1.0  # seconds between outbox maintenance (age limit, held events, logs)
DRAIN_TIMEOUT = 2.0  # seconds stop() waits for the outbox to empty while connected
OFFLINE_TIMEOUT = 1.0  # seconds stop() waits for the broker to acknowledge 'offline'
_AUTH_CODES = {4, 5, 134, 135}  # bad user name or password / not authorised (3.1.1 and 5)
POISON_STRIKES = 3  # disconnects in a row with the same event oldest in flight: undeliverable
POISON_MIN_BYTES = 16 * 1024  # only events this big are suspected (no broker limit is smaller)
_LOST = 0  # not a paho message id (1-65535): marks a lost connection in the ack queue
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)")


def outbox_path(state_dir: Path, instance: str = "") -> Path:
    """The outbox file for a process running all cameras (``instance=""``) or some."""
    return state_dir / (f"outbox-{instance}.sqlite3" if instance else "outbox.sqlite3")


def status_topic(prefix: str, node: str, instance: str = "") -> str:
    """The retained availability topic (and Last Will) of a process running all
    cameras (``instance=""``: ``PREFIX/NODE/status``) or some (``.../status/INSTANCE``)."""
    return f"{prefix}/{node}/status" + (f"/{instance}" if instance else "")


def publish_size(topic: str, payload: bytes, v5: bool) -> int:
    """Bytes of a QoS 1 PUBLISH packet without properties, as a broker's limit counts them."""
    remaining = 2 + len(topic.encode()) + 2 + (1 if v5 else 0) + len(payload)
    length_bytes = (
        1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    )
    return 1 + length_bytes + remaining


def _connect_error(exc: BaseException | None, tls: bool, timeout: float) -> str:
    """What a failed connect says, for the log: the OS or TLS error, with a hint."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, TimeoutError):
        # Silence, not a refusal: a hung or overloaded broker, or a firewall that drops.
        if "handshake" in str(exc):
            return (
                f"TCP connected, but no answer to the TLS handshake within {timeout:g}s "
                "(is the broker hung or overloaded?)"
            )
        return f"no answer within {timeout:g}s (is the broker down, or a firewall dropping?)"
    text = _SSL_LOCATION.sub("", str(exc)) or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{text} (check ca_file, or tls_insecure for testing)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {text} (is this port a TLS listener? check tls and port)"
    if tls and isinstance(exc, ConnectionResetError | ConnectionAbortedError):
        # A plain MQTT listener drops a TLS ClientHello; the TCP connect itself worked.
        return f"{text} (during the TLS handshake? is this port a TLS listener? check tls and port)"
    return text


def _timed_out(reason: ReasonCode) -> bool:
    """Whether paho closed the connection itself because nothing came within a keepalive."""
    return reason.getName() == "Keep alive timeout"


@dataclasses.dataclass(frozen=True)
class MqttStats:
    """The MQTT sink as metrics see it."""

    outbox: OutboxStats
    delivered_total: int  # events the broker acknowledged (PUBACK), this run
    inflight: int  # events handed to the client, not yet acknowledged
    connected: bool
    snapshots_published: int
    snapshots_missing: int  # deleted (retention) or unreadable before they went out
    collisions: dict[str, str]  # camera -> another node seen on its topics this run


class MqttSink:
    """Publishes events, availability and camera state; see the module docstring.

    ``instance`` names the cameras a process runs when it runs only some
    (``edged run --camera a``): it keeps the outbox file, the client id (a
    configured one too: ``CLIENT_ID-INSTANCE``) and the availability topic apart
    from those of the processes running the others. ``cameras``
    (this process's) are for snapshots and Home Assistant discovery.
    """

    def __init__(
        self,
        config: MqttConfig,
        state_dir: Path,
        instance: str = "",
        cameras: Mapping[str, CameraConfig] | None = None,
        configured: Collection[str] | None = None,
    ) -> None:
        self.cfg = config
        self.state_dir = state_dir
        self.node = config.node_name
        self.prefix = config.topic_prefix
        self.instance = instance
        # Two processes with one client id take the session from each other, over
        # and over: a configured id shared by edged@ units gets the instance too.
        base = config.client_id or f"edged-{self.node}"
        self.client_id = f"{base}-{instance}" if instance else base
        self.status_topic = status_topic(self.prefix, self.node, instance)
        self.topics = CameraTopics(config, self.node, instance, self.status_topic)
        self.session = self.topics.session
        self.max_payload = int(config.max_payload)
        self._broker_max_packet: int | None = None  # MQTT 5 CONNACK's Maximum Packet Size
        self._oversize_logged = False
        self._answered = False  # the broker sent a CONNACK on this connection
        self._strikes: tuple[int, int] = (0, 0)  # (outbox row oldest in flight, disconnects)
        self.where = f"{config.host}:{config.broker_port}"
        self.outbox = Outbox(
            outbox_path(state_dir, instance),
            max_bytes=config.outbox_max_bytes,
            max_age=config.outbox_max_age,
            sync=config.outbox_sync,
        )
        self._report_stranded()
        self.delivered_total = 0
        # Called (in the delivery thread) with each event the broker acknowledged.
        self.on_ack: Callable[[dict[str, Any]], None] | None = None
        self._payloads: dict[int, bytes] = {}
        self.connected = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()  # nothing waiting and nothing in flight
        self._acks: deque[tuple[int, ReasonCode | None]] = deque()  # (mid or _LOST, reason)
        self._announce = False  # connected: publish 'online' and every state
        self._link = ""  # the connection state last logged
        self._refusal = ""  # the last reason the broker gave for refusing an event
        self._inflight: dict[int, int] = {}  # paho message id -> outbox row id
        self._cursor = 0  # highest outbox row id handed to paho
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.snapshots_published = 0
        self.snapshots_missing = 0  # deleted (retention) or unreadable before they went out
        self._snapshot_cameras: frozenset[str] = frozenset()
        self.set_cameras(cameras or {}, configured)
        self._client = self._make_client()

    @property
    def keepalive(self) -> int:
        """Seconds between pings, and how long paho waits for the CONNACK."""
        return max(5, round(self.cfg.keepalive))

    def _report_stranded(self) -> None:
        # Switching between edged.service and edged@NAME units (or adding a camera to
        # a one-camera config) changes the outbox file: say what the old one still holds.
        if self.outbox.path is None:
            return
        for path, counts in find_stranded(self.outbox.path):
            log.warning(
                "mqtt: %s holds %d undelivered events (%s) of another way of running these "
                "cameras (edged.service or edged@NAME); they are sent only when that runs again",
                path,
                sum(counts.values()),
                ", ".join(f"{camera}: {n}" for camera, n in counts.items()),
            )

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password_value())
        if cfg.use_tls:
            client.tls_set_context(cfg.ssl_context())
            # Else paho checks the host name itself, against a certificate not verified.
            client.tls_insecure_set(cfg.tls_insecure)
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(
            max(1, round(cfg.reconnect_min_delay)), max(1, round(cfg.reconnect_max_delay))
        )
        # Our window bounds what is in flight; paho's extra room is for status and state.
        client.max_inflight_messages_set(cfg.max_inflight + 32)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- the supervisor's side -------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start delivering; returns at once."""
        log.info(
            "mqtt: publishing to %s as %s (topics %s/...; %s)",
            self.where,
            self.client_id,
            self.prefix,
            "TLS" if self.cfg.use_tls else "no TLS",
        )
        self._client.connect_async(self.cfg.host, self.cfg.broker_port, keepalive=self.keepalive)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._deliver, name="edged-mqtt", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> None:
        """Store one event for delivery. Called for every event once it is in the JSONL
        file (the record: MQTT never carries one it lacks); never blocks on the network."""
        payload = encode_event(record)[:-1]  # the JSONL line without its newline
        camera = str(record.get("camera", ""))
        self.outbox.put(camera, payload)
        self.topics.on_event(camera, record)
        self._idle.clear()
        self._wake.set()

    def set_cameras(
        self, cameras: Mapping[str, CameraConfig], configured: Collection[str] | None = None
    ) -> None:
        """The cameras this process runs (again, after a reload): which publish
        snapshots, and what Home Assistant discovery announces. A camera gone
        has its discovery configs removed (empty retained messages).
        ``configured``: every camera in the config (default: ``cameras``); what
        a camera not among them left retained is cleared at connect."""
        new = self.topics.set_cameras(cameras, configured)
        if new and self.connected:
            self._client.subscribe([(t, 1) for t in new])
        self._snapshot_cameras = frozenset(
            n for n, c in cameras.items() if c.snapshots.enabled and c.snapshots.mqtt
        )
        self._wake.set()

    def on_state(self, snap: CameraSnapshot) -> None:
        """Record a camera's new state; the delivery thread publishes it (retained)."""
        self.topics.on_state(snap)
        self._wake.set()

    def stats(self) -> MqttStats:
        """The outbox's stats and the broker session's."""
        return MqttStats(
            outbox=self.outbox.stats(),
            delivered_total=self.delivered_total,
            inflight=len(self._inflight),
            connected=self.connected,
            snapshots_published=self.snapshots_published,
            snapshots_missing=self.snapshots_missing,
            collisions=dict(self.topics.collisions),
        )

    def stop(self) -> None:
        """Deliver what is waiting (briefly), publish ``offline``, disconnect cleanly.

        Events still undelivered stay in the outbox for the next run. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is None:
            self.outbox.close()
            return
        if self.connected:
            # Everything was submitted before this: the next full pass sees it all.
            self._idle.clear()
            self._wake.set()
            self._idle.wait(DRAIN_TIMEOUT)
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        if self.connected:
            self.topics.motion_off(self._publish)
            info = self._client.publish(self.status_topic, b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not queued: disconnected
                info.wait_for_publish(OFFLINE_TIMEOUT)
        self._client.disconnect()
        self._client.loop_stop()
        waiting = self.outbox.stats().depth
        self.outbox.close()
        log.info(
            "mqtt: stopped: %d events delivered this run, %d kept in the outbox for the next",
            self.delivered_total,
            waiting,
        )

    # -- paho's thread --------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        self._answered = True
        if reason.is_failure:
            hint = " (check username and password)" if reason.value in _AUTH_CODES else ""
            self._link_changed(
                f"refused: {reason}",
                logging.ERROR,
                "mqtt: %s refused the connection: %s%s; retrying with backoff",
                self.where,
                reason,
                hint,
            )
            return
        limit = getattr(properties, "MaximumPacketSize", None)
        self._broker_max_packet = int(limit) if isinstance(limit, int) and limit > 0 else None
        self.topics.connected(client)  # before _announce: discovery goes out before 'online'
        self.connected = True
        self._announce = True
        self._link_changed("connected", logging.INFO, "mqtt: connected to %s", self.where)
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the connect, with
        # no argument: the exception being handled is the reason. Its text is
        # the OS's or OpenSSL's, which never holds the password.
        why = _connect_error(sys.exc_info()[1], self.cfg.use_tls, client.connect_timeout)
        self._link_changed(
            f"unreachable: {why}",
            logging.WARNING,
            "mqtt: cannot connect to %s: %s; retrying with backoff (at most %ds apart)",
            self.where,
            why,
            round(self.cfg.reconnect_max_delay),
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        was = self.connected
        self.connected = False
        answered, self._answered = self._answered, False
        if not was and not answered and not self._stopping.is_set() and _timed_out(reason):
            # paho waits a keepalive for the CONNACK, then gives up: the broker said
            # nothing at all (hung, stopped, overloaded), which no setting here explains.
            self._link_changed(
                "no CONNACK",
                logging.WARNING,
                "mqtt: %s accepted the TCP connection but sent no CONNACK within %ds "
                "(is the broker hung or overloaded?); retrying with backoff",
                self.where,
                self.keepalive,
            )
        elif not was and not answered and not self._stopping.is_set():
            # TCP connected, then closed with no CONNACK: typically plain MQTT sent
            # to a TLS listener, or a broker rejecting the protocol outright.
            self._link_changed(
                "closed before CONNACK",
                logging.ERROR,
                "mqtt: %s closed the connection before accepting it (%s): is it a TLS "
                "listener (check tls and port), or not an MQTT %s broker? retrying with backoff",
                self.where,
                "TLS on" if self.cfg.use_tls else "no TLS",
                self.cfg.protocol,
            )
        if was:
            self._acks.append((_LOST, None))  # in order with the acks before it
            self._wake.set()
        if was and not self._stopping.is_set():
            # Without a DISCONNECT from the broker paho says "Unspecified error".
            why = str(reason) if flags.is_disconnect_packet_from_server else "connection lost"
            self._link_changed(
                "disconnected",
                logging.WARNING,
                "mqtt: disconnected from %s: %s; reconnecting (events wait in the outbox)",
                self.where,
                why,
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        # Called with paho's message lock held: hand over, never wait here.
        self._acks.append((mid, reason))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.topics.on_message(msg):
            self._wake.set()

    def topic(self, camera: str, what: str) -> str:
        """A camera's topic: ``events``, ``state``, ``motion`` or ``snapshot``."""
        return self.topics.topic(camera, what)

    def _link_changed(self, state: str, level: int, msg: str, *args: Any) -> None:
        if state != self._link:
            self._link = state
            log.log(level, msg, *args)

    # -- the delivery thread --------------------------------------------------------

    def _deliver(self) -> None:
        next_maintain = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(MAINTAIN_EVERY)
            self._wake.clear()
            try:
                self._take_acks()
                if time.monotonic() >= next_maintain:
                    self.outbox.maintain()
                    next_maintain = time.monotonic() + MAINTAIN_EVERY
                if self.connected:
                    announce, self._announce = self._announce, False
                    self.topics.publish_due(self._publish)
                    if announce:
                        # Last: 'online' before the states would make Home Assistant
                        # show the previous run's retained ones (a motion ON) as current.
                        self._publish(self.status_topic, b"online", retain=True)
                    self.topics.sweep_if_due(self._publish, self._client.unsubscribe)
                    self._fill_window()
                if not self._inflight and not self.outbox.fetch(self._cursor, 1):
                    self._idle.set()
            except Exception:
                # A bug here must not silently end delivery for the rest of the run.
                log.exception("mqtt: delivery failed; retrying")
                self._stopping.wait(MAINTAIN_EVERY)
        self._take_acks()

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def _fill_window(self) -> None:
        room = self.cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        bad: list[int] = []
        oversize: list[int] = []
        for rid, camera, payload in self.outbox.fetch(self._cursor, room):
            topic = self.topic(camera, "events")
            if self._oversize(rid, camera, topic, payload):
                oversize.append(rid)
                self._cursor = rid
                continue
            try:
                info = self._publish(topic, payload)
            except ValueError as exc:  # an invalid topic or payload: it never will be valid
                log.error("mqtt: cannot publish event %d of camera %r: %s", rid, camera, exc)
                bad.append(rid)
                self._cursor = rid
                continue
            # NO_CONN: paho keeps it and sends it after reconnecting, like one in flight.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                break
            self._inflight[info.mid] = rid
            self._payloads[info.mid] = payload  # for on_ack, and to name an undeliverable one
            self._cursor = rid
            if camera in self._snapshot_cameras and b'"snapshot"' in payload:
                self._publish_snapshot(camera, payload)
        if bad:
            self.outbox.drop(bad)
        if oversize:
            self.outbox.drop(oversize, "oversize")

    def _oversize(self, rid: int, camera: str, topic: str, payload: bytes) -> bool:
        """Whether the event is too large to publish (then it is logged, once per run
        at WARNING and after at DEBUG: the outbox counts and summarises every drop)."""
        size, limit, what = len(payload), self.max_payload, "max_payload"
        broker = self._broker_max_packet
        packet = publish_size(topic, payload, self.cfg.protocol == "5")
        if size <= limit and (broker is None or packet <= broker):
            return False
        if size <= limit and broker is not None:
            size, limit, what = packet, broker, "the broker's Maximum Packet Size"
        log.log(
            logging.DEBUG if self._oversize_logged else logging.ERROR,
            "mqtt: event %d of camera %s is %d bytes, over the limit of %d (%s): not sent "
            "to MQTT (it is in the JSONL file)",
            rid,
            camera,
            size,
            limit,
            what,
        )
        self._oversize_logged = True
        return True

    def _publish_snapshot(self, camera: str, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        rel = event.get("snapshot") if isinstance(event, dict) else None
        # Our own worker wrote the name; still, never read outside the state folder.
        if not isinstance(rel, str) or rel.startswith("/") or ".." in PurePosixPath(rel).parts:
            return
        try:
            jpeg = (self.state_dir / rel).read_bytes()
        except OSError as exc:
            self.snapshots_missing += 1
            log.debug("mqtt: snapshot %s not published: %s", rel, exc)
            return
        info = self._client.publish(self.topic(camera, "snapshot"), jpeg, qos=0, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.snapshots_published += 1

    def _take_acks(self) -> None:
        done: list[int] = []
        refused: list[int] = []
        while self._acks:
            mid, reason = self._acks.popleft()
            if mid == _LOST or reason is None:
                self._connection_lost()
                continue
            rid = self._inflight.pop(mid, None)
            payload = self._payloads.pop(mid, None)
            if rid is None:
                continue  # status or state
            if reason.is_failure:
                refused.append(rid)
                if str(reason) != self._refusal:
                    self._refusal = str(reason)
                    log.error("mqtt: the broker refuses events: %s (they are dropped)", reason)
            else:
                done.append(rid)
                if self.on_ack is not None and payload is not None:
                    try:
                        self.on_ack(json.loads(payload))
                    except Exception:
                        log.debug("mqtt: on_ack failed", exc_info=True)
        if done:
            self.outbox.remove(done)
            self.delivered_total += len(done)
        if refused:
            self.outbox.drop(refused, "rejected")

    def _connection_lost(self) -> None:
        """The connection dropped (seen in order with the acks before it): a broker
        that closes it on one event every time, with no reason it can tell (a packet
        limit lower than ours under MQTT 3.1.1), would block delivery for good."""
        if not self._inflight:
            self._strikes = (0, 0)
            return
        mid, rid = min(self._inflight.items(), key=lambda item: item[1])
        payload = self._payloads.get(mid)
        if payload is None or len(payload) < POISON_MIN_BYTES:
            # A small event fits any broker: a link that keeps dropping (a
            # cellular modem) must not cost it. Only big ones can be poison.
            self._strikes = (0, 0)
            return
        strikes = self._strikes[1] + 1 if self._strikes[0] == rid else 1
        self._strikes = (rid, strikes)
        if strikes < POISON_STRIKES:
            return
        self._strikes = (0, 0)
        # Out of paho's session too, or it is sent again at the next reconnect.
        # paho 2.x's private queue: without it (a paho that renamed it) the event
        # is still dropped from the outbox, paho just tries it once more.
        mutex = getattr(self._client, "_out_message_mutex", None)
        queue = getattr(self._client, "_out_messages", None)
        if mutex is not None and queue is not None:
            with mutex:
                queue.pop(mid, None)
        self._inflight.pop(mid, None)
        self._payloads.pop(mid, None)
        log.error(
            "mqtt: the broker closed the connection %d times in a row with event %d "
            "(%d bytes) the oldest unacknowledged: dropped it as undeliverable (it is in the "
            "JSONL file); is the broker's packet size limit below max_payload?",
            POISON_STRIKES,
            rid,
            len(payload),
        )
        self.outbox.drop([rid], "undeliverable")
