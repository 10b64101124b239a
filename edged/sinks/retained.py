"""Retained topics left on the broker by cameras that are no longer in the config.

A camera removed from the config while edged was stopped keeps its retained
Home Assistant discovery configs, ``PREFIX/NODE/CAMERA/state``, ``/motion`` and
``/snapshot``: Home Assistant would show it (motion on, available) forever,
since nothing publishes for it again. At every connect the MQTT sink
subscribes to :func:`sweep_topics`, collects the retained messages the broker
sends for ``SWEEP_WINDOW`` seconds (MQTT has no "end of retained messages"
marker: a time bound it is), and clears what :func:`stale_topics` finds
(an empty retained payload deletes a retained message).

Only this node's, and only cameras not in the config at all: an ``edged@cam1``
unit shares its config with the units running the other cameras, and another
box may share the broker and the topic prefix. What is this node's:

- a discovery config under node id ``edged_NODE`` whose device is
  ``edged_NODE_CAMERA`` (a camera), or ``edged_NODE`` (the box: a process's
  connectivity entity, stale when its instance names a camera no longer
  configured; its status topic goes too);
- ``PREFIX/NODE/CAMERA/state`` (``PREFIX/CAMERA/state`` with ``topic_layout =
  "camera"``) whose JSON names ``node``. The camera's per-camera
  topics (state, motion, snapshot) are cleared when its state is this node's,
  or names no node (an older edged wrote it) and this node's discovery names
  the camera; a state another node wrote is left alone.

In the node layout, what this node left in the camera layout (an edged before
the upgrade, or ``topic_layout = "camera"`` before) is cleared too: its states
there name this node.

Discovery configs of a camera this process runs that it no longer announces
(the processor changed while edged was stopped) are cleared too.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from edged.sinks import homeassistant as ha

if TYPE_CHECKING:
    from edged.config import MqttConfig

SWEEP_WINDOW = 2.0  # seconds after connecting to collect retained messages
CAMERA_TOPICS = ("state", "motion", "snapshot")


def sweep_topics(cfg: MqttConfig, node: str) -> list[str]:
    """The topic filters whose retained messages tell what this node left behind
    (in the node layout also the camera layout's: what it left before an upgrade)."""
    topics = [cfg.camera_topic(node, "+", "state")]
    if cfg.topic_layout == "node":
        topics.append(f"{cfg.topic_prefix}/+/state")
    if cfg.homeassistant:
        topics.append(f"{cfg.homeassistant_prefix}/+/{ha.node_id(node)}/+/config")
    return topics


def state_json(payload: bytes) -> dict[str, object]:
    """A retained state's JSON object ({} if it is not one)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _device(config: dict[str, object]) -> str:
    device = config.get("device")
    ids = device.get("identifiers") if isinstance(device, dict) else None
    return ids[0] if isinstance(ids, list) and ids and isinstance(ids[0], str) else ""


def stale_topics(
    cfg: MqttConfig,
    node: str,
    configured: Collection[str],
    running: Collection[str],
    announced: Collection[str],
    retained: Mapping[str, bytes],
) -> tuple[list[str], list[str]]:
    """(topics to clear, cameras gone) among the ``retained`` messages (topic -> payload).

    ``configured``: every camera in the config; ``running``: this process's;
    ``announced``: the discovery config topics this process publishes."""
    prefix, box = cfg.topic_prefix, f"edged_{node}"
    clear: set[str] = set()
    state_node: dict[str, object] = {}  # camera -> the node its retained state names
    legacy: dict[str, object] = {}  # the same, in the camera layout while we use the node's
    discovered: set[str] = set()  # cameras this node's discovery configs name
    own_head = cfg.camera_topic(node, "", "state").removesuffix("//state")
    for topic, payload in retained.items():
        head, _, camera = topic.removesuffix("/state").rpartition("/")
        if topic.endswith("/state") and head == own_head:
            state_node[camera] = state_json(payload).get("node")
            continue
        if topic.endswith("/state") and head == prefix:  # the node layout's own is longer
            legacy[camera] = state_json(payload).get("node")
            continue
        if not topic.startswith(f"{cfg.homeassistant_prefix}/"):
            continue
        config = state_json(payload)
        device = _device(config)
        if device == box:
            status = str(config.get("state_topic", ""))
            instance = status.removeprefix(f"{prefix}/{node}/status/")
            if instance != status and not set(instance.split(".")) <= set(configured):
                clear.update((topic, status))
        elif device.startswith(f"{box}_"):
            camera = device.removeprefix(f"{box}_")
            discovered.add(camera)
            if camera not in configured or (camera in running and topic not in announced):
                clear.add(topic)
            # A gone camera's count sensor's retained topic (PREFIX/NODE/CAMERA/LABEL);
            # not its events topic, whose subscribers would get an empty "event".
            state = str(config.get("state_topic", ""))
            own = state.startswith(cfg.camera_topic(node, camera, ""))
            if camera not in configured and own and not state.endswith("/events"):
                clear.add(state)
    gone = sorted(
        camera
        for camera in (set(state_node) | discovered) - set(configured)
        if state_node.get(camera) == node
        or (state_node.get(camera) is None and camera in discovered)
    )
    clear.update(cfg.camera_topic(node, c, what) for c in gone for what in CAMERA_TOPICS)
    # Moved to PREFIX/NODE/CAMERA/...: what this node left at PREFIX/CAMERA/... goes,
    # or Home Assistant and subscribers would read its last state there forever.
    moved = [
        camera
        for camera, owner in legacy.items()
        if owner == node or (owner is None and camera in discovered)
    ]
    clear.update(f"{prefix}/{c}/{what}" for c in moved for what in CAMERA_TOPICS)
    return sorted(clear), gone
