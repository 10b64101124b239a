"""The retained per-camera side of the MQTT sink: states, Home Assistant, the sweep.

:class:`CameraTopics` holds what a node keeps retained on the broker for its
cameras, and publishes it when the MQTT sink's delivery thread asks:

- ``PREFIX/NODE/CAMERA/state``: the camera's state and reason (JSON), recorded
  by :meth:`CameraTopics.on_state` in the supervisor's thread;
- ``PREFIX/NODE/CAMERA/LABEL``: how many objects of a label the camera sees
  now, from the ``count`` of its ``object.*`` events (``0`` at start for the
  labels its processor counts, and while the camera is not streaming);
- Home Assistant's discovery configs and the ``motion`` binary sensors
  (``edged.sinks.homeassistant``), after every connect and whenever Home
  Assistant announces ``online``;
- at connect, the sweep of what cameras no longer in the config left retained
  (``edged.sinks.retained``), and for the whole connection the watch of its
  own cameras' state topics: a state there that this process did not write is
  a collision (another box with the same node name, or one sharing topics).

It never touches the network itself: the sink hands it a ``publish`` callable
and, at connect, its paho client to subscribe with. Its lock guards what the
supervisor's thread, paho's thread and the delivery thread share.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from edged.sinks import homeassistant as ha
from edged.sinks import retained

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edged.camera import CameraSnapshot
    from edged.config import CameraConfig, MqttConfig

log = logging.getLogger("edged.sinks.mqtt")  # one logger for the sink's lines, as before

Publish = Callable[[str, bytes, bool], object]
"""``publish(topic, payload, retain)``: QoS 1, through the sink's client."""


class CameraTopics:
    """The retained topics of this process's cameras; see the module docstring."""

    def __init__(self, config: MqttConfig, node: str, instance: str, status_topic: str) -> None:
        self.cfg = config
        self.node = node
        self.instance = instance
        self.status_topic = status_topic
        # Says which process wrote a state: the same node name on two boxes shows as
        # a state of one of our cameras, naming our node, that we did not publish.
        self.session = secrets.token_hex(6)
        self.collisions: dict[str, str] = {}  # camera -> the other node on its topics
        self.ha_status_topic = f"{config.homeassistant_prefix}/status"
        self._lock = threading.Lock()
        self._states: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._discovery: dict[str, bytes] = {}  # Home Assistant config topic -> payload
        self._discover = threading.Event()  # publish the discovery configs (again)
        self._motion: dict[str, bytes] = {}  # camera -> ON/OFF, the binary sensor's state
        self._motion_dirty: set[str] = set()
        self._untyped: set[str] = set()  # cameras whose missing event entity was logged
        self._sweep_due: float | None = None  # collecting retained messages until then
        self._found: dict[str, bytes] = {}  # what the sweep collected: topic -> payload
        self._running: frozenset[str] = frozenset()
        self._configured: frozenset[str] = frozenset()
        self._watched: dict[str, str] = {}  # state topic of a camera we run -> camera
        self._counts: dict[tuple[str, str], bytes] = {}  # (camera, label) -> objects now
        self._counts_dirty: set[tuple[str, str]] = set()

    def topic(self, camera: str, what: str) -> str:
        """A camera's topic: ``events``, ``state``, ``motion`` or ``snapshot``."""
        return self.cfg.camera_topic(self.node, camera, what)

    # -- the supervisor's thread ----------------------------------------------------

    def set_cameras(
        self, cameras: Mapping[str, CameraConfig], configured: Collection[str] | None
    ) -> list[str]:
        """The cameras this process runs, and every camera in the config; returns
        the state topics newly watched (to subscribe to now, if connected)."""
        self._running = frozenset(cameras)
        self._configured = frozenset(cameras if configured is None else configured)
        watched = {self.topic(name, "state"): name for name in cameras}
        new = sorted(set(watched) - set(self._watched))
        self._watched = watched
        with self._lock:
            for name, camera in cameras.items():
                for label in ha.counted_labels(camera):
                    if (name, label) not in self._counts:
                        self._counts[(name, label)] = b"0"  # a new worker sees none yet
                        self._counts_dirty.add((name, label))
        if self.cfg.homeassistant:
            self._set_discovery(cameras)
        return new

    def _set_discovery(self, cameras: Mapping[str, CameraConfig]) -> None:
        for name in sorted(set(cameras) - self._untyped):
            if not ha.event_types(cameras[name]):
                self._untyped.add(name)
                log.info(
                    "mqtt: camera %s: processor %s declares no event_types: Home Assistant "
                    "gets no event entity for it (its events are on %s)",
                    name,
                    cameras[name].processor.type,
                    self.topic(name, "events"),
                )
        configs = ha.discovery_messages(
            self.cfg, self.node, cameras, self.status_topic, self.instance
        )
        with self._lock:
            gone = {topic: b"" for topic in self._discovery if topic not in configs}
            self._discovery = {**gone, **configs}
            for name in cameras:
                if ha.has_motion(cameras[name]) and name not in self._motion:
                    self._motion[name] = ha.OFF  # a new worker starts with no episode
                    self._motion_dirty.add(name)
        self._discover.set()

    def on_state(self, snap: CameraSnapshot) -> None:
        """Record a camera's new state, to be published (retained)."""
        since = dt.datetime.fromtimestamp(snap.state_since, dt.UTC)
        payload = {
            "node": self.node,  # whose it is, for the sweep of cameras gone (see retained)
            "session": self.session,
            "state": snap.state,
            "reason": snap.reason,
            "since": since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        with self._lock:
            self._states[snap.name] = data
            self._dirty.add(snap.name)
            if snap.state != "streaming":
                # What it sees now is nothing known: no count outlives the picture,
                # and no motion episode (a worker that restarts starts with none,
                # and never sends the motion.end of its predecessor's).
                for key, count in self._counts.items():
                    if key[0] == snap.name and count != b"0":
                        self._counts[key] = b"0"
                        self._counts_dirty.add(key)
                if self._motion.get(snap.name) == ha.ON:
                    self._motion[snap.name] = ha.OFF
                    self._motion_dirty.add(snap.name)

    def on_event(self, camera: str, record: Mapping[str, object]) -> None:
        """An event of the camera: the motion sensor and the object counts follow
        events as they happen, not as they are delivered (after an outage the
        current state matters, not the past)."""
        state = ha.motion_state(str(record.get("type", "")))
        if state is not None and camera in self._motion:
            with self._lock:
                if self._motion[camera] != state:
                    self._motion[camera] = state
                    self._motion_dirty.add(camera)
        found = ha.object_count(record)
        if found is not None and camera in self._running:
            key, count = (camera, found[0]), str(found[1]).encode()
            with self._lock:
                if self._counts.get(key) != count:
                    self._counts[key] = count
                    self._counts_dirty.add(key)

    # -- paho's thread --------------------------------------------------------------

    def connected(self, client: mqtt.Client) -> None:
        """A connection was accepted: subscribe for Home Assistant's birth message, the
        sweep and the collision watch, and have everything published again."""
        if self.cfg.homeassistant:
            # Subscriptions end with the session: made again on every connect.
            client.subscribe(self.ha_status_topic, qos=1)
            self._discover.set()
        with self._lock:
            self._found = {}
            self._sweep_due = time.monotonic() + retained.SWEEP_WINDOW
            self._dirty.update(self._states)
            self._motion_dirty.update(self._motion)
            self._counts_dirty.update(self._counts)
        client.subscribe([(t, 1) for t in retained.sweep_topics(self.cfg, self.node)])
        # For the whole connection: another box writing our cameras' state is a collision.
        if self._watched:  # paho refuses an empty list
            client.subscribe([(t, 1) for t in sorted(self._watched)])

    def on_message(self, msg: mqtt.MQTTMessage) -> bool:
        """A message on a topic subscribed to; whether discovery is to go out again."""
        camera = self._watched.get(msg.topic)
        if camera is not None and msg.payload:
            self._check_collision(camera, msg.topic, bytes(msg.payload), bool(msg.retain))
        if msg.retain and msg.payload and msg.topic != self.ha_status_topic:
            with self._lock:
                if self._sweep_due is not None:
                    self._found[msg.topic] = bytes(msg.payload)
            return False
        # Home Assistant's birth message: it (re)started and forgot what was discovered.
        if msg.topic == self.ha_status_topic and msg.payload == b"online":
            log.debug("mqtt: Home Assistant is online: publishing discovery again")
            self._discover.set()
            return True
        return False

    def _check_collision(self, camera: str, topic: str, payload: bytes, old: bool) -> None:
        """A state on one of our cameras' state topics that this process did not write:
        another box publishes there (a retained one from before we connected only
        when it names another node: naming ours, it is our previous run's)."""
        state = retained.state_json(payload)
        node, session = state.get("node"), state.get("session")
        if not isinstance(node, str) or session == self.session:
            return
        if node == self.node and (old or session is None):
            return
        if self.collisions.get(camera) == node:
            return
        self.collisions[camera] = node
        if node == self.node:
            log.error(
                "mqtt: camera %s: another box also calls itself node %r and publishes on %s: "
                "every box of a fleet needs its own [daemon] node (and client id)",
                camera,
                node,
                topic,
            )
            return
        log.error(
            "mqtt: camera %s: node %r publishes on this box's topic %s too: their states "
            "overwrite each other and their events mix; give each box's topics its node "
            '(topic_layout = "node", the default) or its own topic_prefix',
            camera,
            node,
            topic,
        )

    # -- the delivery thread --------------------------------------------------------

    def publish_due(self, publish: Publish) -> None:
        """Publish what changed: discovery configs first (when due), then states and
        motion sensors."""
        if self._discover.is_set():
            self._discover.clear()
            with self._lock:
                configs = dict(self._discovery)
                self._discovery = {t: p for t, p in configs.items() if p}  # removals go once
            for topic, payload in configs.items():
                publish(topic, payload, True)
        with self._lock:
            todo = [(name, self._states[name]) for name in sorted(self._dirty)]
            self._dirty.clear()
            motion = [(name, self._motion[name]) for name in sorted(self._motion_dirty)]
            self._motion_dirty.clear()
            counts = [(key, self._counts[key]) for key in sorted(self._counts_dirty)]
            self._counts_dirty.clear()
        for name, data in todo:
            publish(self.topic(name, "state"), data, True)
        for name, data in motion:
            publish(self.topic(name, "motion"), data, True)
        for (name, label), data in counts:
            publish(self.topic(name, ha.count_level(label)), data, True)

    def sweep_if_due(self, publish: Publish, unsubscribe: Callable[[list[str]], Any]) -> None:
        """Once the sweep window after a connect has passed: clear what cameras no
        longer in the config left retained (see ``edged.sinks.retained``)."""
        due = self._sweep_due
        if due is None or time.monotonic() < due:
            return
        with self._lock:
            found, self._found, self._sweep_due = self._found, {}, None
            announced = {topic for topic, payload in self._discovery.items() if payload}
        unsubscribe(retained.sweep_topics(self.cfg, self.node))
        topics, gone = retained.stale_topics(
            self.cfg, self.node, self._configured, self._running, announced, found
        )
        for topic in topics:
            publish(topic, b"", True)
        if topics:
            log.info(
                "mqtt: cleared %d retained topics of this node no longer in use%s",
                len(topics),
                f" (cameras no longer in the config: {', '.join(gone)})" if gone else "",
            )

    def motion_off(self, publish: Publish) -> None:
        """At a clean stop: no episode outlives the process. OFF before 'offline', or
        Home Assistant shows motion again when 'online' comes back."""
        for name in sorted(self._motion):
            publish(self.topic(name, "motion"), ha.OFF, True)
