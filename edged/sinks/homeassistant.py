"""Home Assistant MQTT discovery: what the MQTT sink publishes with ``homeassistant = true``.

One device for the box (``edged_NODE``) with a connectivity entity per edged
process (its status topic), and per camera one device (``edged_NODE_CAMERA``,
``via_device`` the box), each entity configured by a retained message on
``HAPREFIX/COMPONENT/edged_NODE/CAMERA_OBJECT/config``:

- a ``sensor`` ``Status`` on the camera's state topic: its state, the
  state JSON (reason, since, node) as attributes.
- an ``event`` entity on the camera's events topic, for processors that
  declare their ``event_types``. Home Assistant wants ``event_type`` in the
  payload; the value template maps the event's ``type`` to it, keeping the
  event's id, time, seq, snapshot and data as attributes, so the payload on
  the wire stays the JSONL line.
- a ``binary_sensor`` (device class ``motion``) for processors that report
  ``motion.start``, on its own retained topic (``PREFIX/NODE/CAMERA/motion``)
  carrying ``ON`` or ``OFF``. A value template over the events topic would
  not do: those messages are not retained, so after a restart Home Assistant
  would not know whether there is motion until the next event, and every
  other event type on that topic would have to be matched to keep the
  state. A retained state topic is what Home Assistant reads at startup.
- an ``image`` entity on the camera's snapshot topic for a camera whose
  snapshots go to MQTT.
- a ``sensor`` per label a processor counts (``Processor.counted_labels``:
  the ``detect`` processor's ``classes``), on the label's retained count
  topic (``PREFIX/NODE/CAMERA/LABEL``, :func:`count_level`): how many of them
  the camera sees now.

Every entity's availability is the status topic of the process that runs the
camera (``online`` while edged is connected, ``offline`` from the Last Will
or a clean stop): ``PREFIX/NODE/status``, or ``PREFIX/NODE/status/INSTANCE``
for a process running only some cameras (``edged@cam1``; see
``edged.sinks.mqtt.status_topic``). Those reporting what the camera sees
(event, motion, image) also need the camera's state to be ``streaming``
(``availability_mode: all``): a dead camera is unknown, not "no motion".
The status sensor stays available to say why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from edged import __version__
from edged.errors import PluginError
from edged.processor import resolve_processor

if TYPE_CHECKING:
    from edged.config import CameraConfig, MqttConfig

MOTION_START, MOTION_END = "motion.start", "motion.end"
ON, OFF = b"ON", b"OFF"
# The event entity's attributes: the event less its type, which HA takes as event_type.
EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.type, 'id': value_json.id, 'time': value_json.time, "
    "'seq': value_json.seq, 'snapshot': value_json.get('snapshot'), "
    "'data': value_json.data} | tojson }}"
)
# Available (per camera) only while the camera's retained state says it streams.
STREAMING_TEMPLATE = "{{ 'online' if value_json.state == 'streaming' else 'offline' }}"
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def event_types(camera: CameraConfig) -> tuple[str, ...]:
    """The event types the camera's processor declares (empty when it does not)."""
    try:
        return tuple(resolve_processor(camera.processor.type).event_types)
    except PluginError:
        return ()


_RESERVED = frozenset({"events", "state", "motion", "snapshot", "status"})


def counted_labels(camera: CameraConfig) -> tuple[str, ...]:
    """The labels the camera's processor counts (empty when it counts none)."""
    try:
        cls = resolve_processor(camera.processor.type)
        return tuple(cls.counted_labels(camera.processor.build_options()))
    except (PluginError, ValueError):
        return ()


def count_level(label: str) -> str:
    """The topic level of a label's count: the label, lower case, with what a topic
    or an entity id cannot hold as ``_`` ("traffic light" -> ``traffic_light``), and
    ``_count`` after a name the camera's other topics use."""
    level = _NOT_ID.sub("_", label.lower()) or "_"
    return f"{level}_count" if level in _RESERVED else level


def object_count(record: Mapping[str, object]) -> tuple[str, int] | None:
    """(label, count) from an ``object.*`` event that carries them, else None."""
    if not str(record.get("type", "")).startswith("object."):
        return None
    data = record.get("data")
    if not isinstance(data, dict):
        return None
    label, count = data.get("label"), data.get("count")
    if isinstance(label, str) and label and isinstance(count, int) and count >= 0:
        return label, count
    return None


def motion_state(event_type: str) -> bytes | None:
    """The binary sensor's state after an event of this type, or None if it does not change."""
    return ON if event_type == MOTION_START else OFF if event_type == MOTION_END else None


def node_id(node: str) -> str:
    """The discovery topics' node id level of this node's entities: ``edged_NODE``."""
    return "edged_" + _NOT_ID.sub("_", node)


def box_device(node: str) -> dict[str, object]:
    """The edge box's own device: every camera's device is connected ``via_device`` it,
    so two boxes with a camera of the same name are told apart."""
    return {
        "identifiers": [f"edged_{node}"],
        "name": f"edged {node}",
        "manufacturer": "edged",
        "sw_version": __version__,
    }


def camera_available(state_topic: str) -> dict[str, str]:
    """The availability entry that is ``online`` only while the camera streams (read from
    its retained state topic): a dead camera must not look like one seeing nothing."""
    return {
        "topic": state_topic,
        "value_template": STREAMING_TEMPLATE,
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def discovery(
    cfg: MqttConfig, node: str, camera: CameraConfig, availability: str | None = None
) -> dict[str, dict[str, object]]:
    """Discovery config topic -> payload for one camera's entities (none it cannot have).

    ``availability``: the status topic of the process publishing them; default
    ``PREFIX/NODE/status`` (the process running every camera)."""
    prefix, name = cfg.topic_prefix, camera.name
    ident = f"edged_{node}_{name}"

    def topic(what: str) -> str:
        return cfg.camera_topic(node, name, what)

    process = {
        "topic": availability or f"{prefix}/{node}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    common: dict[str, object] = {
        "availability": [process],
        "device": {
            "identifiers": [ident],
            # With the node: two boxes' "front-door" are two devices, told apart by name
            # (and so by the entity ids Home Assistant derives from it).
            "name": f"{name} ({node})",
            "manufacturer": "edged",
            "model": f"{camera.processor.type} on a {camera.source_kind} camera",
            "sw_version": __version__,
            "via_device": f"edged_{node}",
        },
        "origin": {"name": "edged", "sw_version": __version__},
        "qos": 1,
    }
    # What the camera sees is unknown, not "nothing", while it does not stream.
    seeing: dict[str, object] = {
        **common,
        "availability": [process, camera_available(topic("state"))],
        "availability_mode": "all",
    }
    base = f"{cfg.homeassistant_prefix}/{{}}/{node_id(node)}/{name}"
    types = event_types(camera)
    state_topic = topic("state")
    out: dict[str, dict[str, object]] = {
        # Available while the process is: it must say why the camera is down.
        base.format("sensor") + "_status/config": {
            "name": "Status",
            "unique_id": f"{ident}_status",
            "state_topic": state_topic,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": state_topic,
            "entity_category": "diagnostic",
            **common,
        }
    }
    if types:
        out[base.format("event") + "_events/config"] = {
            "name": "Events",
            "unique_id": f"{ident}_events",
            "state_topic": topic("events"),
            "event_types": list(types),
            "value_template": EVENT_TEMPLATE,
            **({"device_class": "motion"} if MOTION_START in types else {}),
            **seeing,
        }
    if MOTION_START in types:
        out[base.format("binary_sensor") + "_motion/config"] = {
            "name": "Motion",
            "unique_id": f"{ident}_motion",
            "device_class": "motion",
            "state_topic": topic("motion"),
            "payload_on": ON.decode(),
            "payload_off": OFF.decode(),
            **seeing,
        }
    for label in counted_labels(camera):
        level = count_level(label)
        out[base.format("sensor") + f"_{level}_count/config"] = {
            "name": f"{label} count",
            "unique_id": f"{ident}_{level}_count",
            "state_topic": topic(level),
            "state_class": "measurement",
            "icon": "mdi:counter",
            **seeing,
        }
    if camera.snapshots.enabled and camera.snapshots.mqtt:
        out[base.format("image") + "_snapshot/config"] = {
            "name": "Snapshot",
            "unique_id": f"{ident}_snapshot",
            "image_topic": topic("snapshot"),
            "content_type": "image/jpeg",
            **seeing,
        }
    return out


def process_discovery(
    cfg: MqttConfig, node: str, availability: str, instance: str = ""
) -> dict[str, dict[str, object]]:
    """The box device's connectivity entity for one edged process (its status topic).

    The object id is capitalised: camera names are lower case, so no camera's
    ``CAMERA_OBJECT`` id can take it."""
    suffix = f"_{_NOT_ID.sub('_', instance)}" if instance else ""
    topic = f"{cfg.homeassistant_prefix}/binary_sensor/{node_id(node)}/Status"
    return {
        f"{topic}{suffix}/config": {
            "name": f"edged {instance}" if instance else "edged",
            "unique_id": f"edged_{node}_status" + (f".{instance}" if instance else ""),
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": availability,
            "payload_on": "online",
            "payload_off": "offline",
            "device": box_device(node),
            "origin": {"name": "edged", "sw_version": __version__},
            "qos": 1,
        }
    }


def discovery_messages(
    cfg: MqttConfig,
    node: str,
    cameras: Mapping[str, CameraConfig],
    availability: str | None = None,
    instance: str = "",
) -> dict[str, bytes]:
    """The box's and every camera's discovery config topics and their JSON payloads."""
    status = availability or f"{cfg.topic_prefix}/{node}/status"
    payloads = process_discovery(cfg, node, status, instance)
    for name in sorted(cameras):
        payloads.update(discovery(cfg, node, cameras[name], availability))
    return {
        topic: json.dumps(payload, separators=(",", ":")).encode()
        for topic, payload in payloads.items()
    }


def has_motion(camera: CameraConfig) -> bool:
    """Whether the camera gets a motion binary sensor."""
    return MOTION_START in event_types(camera)
