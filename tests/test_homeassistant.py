"""Home Assistant MQTT discovery: the config payloads, retained on a real Mosquitto,
published again on Home Assistant's birth message, and the motion binary sensor's
state around a real motion episode (the daemon test, marked slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from components.mqtt import Mosquitto, Subscriber, mosquitto_sub_retained
from daemon import Daemon, wait_for

import edged
from edged.config import CameraConfig, MqttConfig, parse_config
from edged.sinks import homeassistant as ha
from edged.sinks.mqtt import MqttSink

CAMERAS = textwrap.dedent(
    """
    [cameras.cam1]
    source = "synthetic"
    processor = "motion"
    [cameras.cam2]
    source = "synthetic"
    processor = "null"
    [cameras.cam3]
    source = "synthetic"
    processor = "plugins:SlowProcessor"
    """
)
EVENT = "homeassistant/event/edged_box1/cam1_events/config"
MOTION = "homeassistant/binary_sensor/edged_box1/cam1_motion/config"


def cameras(tmp_path: Path) -> dict[str, CameraConfig]:
    return parse_config(CAMERAS, str(tmp_path / "edged.toml")).cameras


def test_discovery_configs_for_a_motion_camera_and_none_for_undeclared_types(
    tmp_path: Path,
) -> None:
    cfg = MqttConfig(node="box1", homeassistant=True)
    messages = ha.discovery_messages(cfg, "box1", cameras(tmp_path))
    assert sorted(messages) == [MOTION, EVENT]  # null and SlowProcessor declare no types
    event, motion = json.loads(messages[EVENT]), json.loads(messages[MOTION])
    device = {
        "identifiers": ["edged_box1_cam1"],
        "name": "cam1",
        "manufacturer": "edged",
        "model": "motion on a synthetic camera",
        "sw_version": edged.__version__,
    }
    status = {"topic": "edged/box1/status", "payload_available": "online"}
    availability = [{**status, "payload_not_available": "offline"}]
    for entity in (event, motion):
        assert entity["device"] == device
        assert entity["availability"] == availability
        assert entity["origin"]["name"] == "edged" and entity["qos"] == 1
    assert event["unique_id"] == "edged_box1_cam1_events"
    assert event["state_topic"] == "edged/cam1/events"
    assert event["event_types"] == ["motion.start", "motion.end"]
    # HA pops event_type from the rendered JSON; the rest become the entity's attributes.
    template = event["value_template"]
    assert "'event_type': value_json.type" in template and template.endswith("| tojson }}")
    assert motion["unique_id"] == "edged_box1_cam1_motion"
    assert motion["device_class"] == "motion"
    assert motion["state_topic"] == "edged/cam1/motion"
    assert (motion["payload_on"], motion["payload_off"]) == ("ON", "OFF")


def test_discovery_is_off_by_default_and_the_prefix_is_checked(tmp_path: Path) -> None:
    cfg = parse_config("[mqtt]\n" + CAMERAS, str(tmp_path / "edged.toml")).mqtt
    assert cfg is not None and not cfg.homeassistant and cfg.homeassistant_prefix == "homeassistant"
    with pytest.raises(ValueError, match="topic prefix"):
        MqttConfig(homeassistant_prefix="ha/#")


# -- against a real broker ------------------------------------------------------------


def start_sink(
    sinks: list[MqttSink],
    broker: Mosquitto,
    tmp_path: Path,
    cams: dict[str, CameraConfig],
    instance: str = "",
) -> MqttSink:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, node="box1", homeassistant=True)
    sink = MqttSink(cfg, tmp_path, instance, cams)
    sinks.append(sink)
    sink.start()
    return sink


def publish(broker: Mosquitto, topic: str, payload: str) -> None:
    tool = shutil.which("mosquitto_pub")
    assert tool is not None, "mosquitto_pub not found: run scripts/setup --test"
    cmd = [tool, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def configs(sub: Subscriber, topic: str) -> list[Any]:
    return [json.loads(m.payload) for m in sub.received(topic)]


def test_discovery_is_retained_and_published_again_when_home_assistant_comes_online(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(mosquitto, "homeassistant/+/+/+/config", client_id="ha")
    subscribers.append(sub)
    cams = cameras(tmp_path)
    sink = start_sink(sinks, mosquitto, tmp_path, cams)
    wanted = {t: json.loads(p) for t, p in ha.discovery_messages(sink.cfg, "box1", cams).items()}
    wait_for("discovery", lambda: all(configs(sub, t) for t in wanted))
    for topic, payload in wanted.items():
        assert json.loads(mosquitto_sub_retained(mosquitto, topic) or b"null") == payload
    assert len(sub.received()) == 2  # nothing for the cameras without event types
    assert mosquitto_sub_retained(mosquitto, "edged/cam1/motion") == b"OFF"
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"online"

    publish(mosquitto, "homeassistant/status", "offline")  # HA stopping: nothing to do
    publish(mosquitto, "homeassistant/status", "online")  # HA back, discovery forgotten
    wait_for("discovery again", lambda: all(len(configs(sub, t)) == 2 for t in wanted))
    assert all(configs(sub, t) == [p, p] for t, p in wanted.items())

    # A camera gone after a reload: its entities are removed (empty retained configs).
    sink.set_cameras({n: c for n, c in cams.items() if n != "cam1"})
    wait_for("removal", lambda: all(m.payload == b"" for m in sub.received(MOTION)[-1:]))
    wait_for("removed", lambda: mosquitto_sub_retained(mosquitto, EVENT, timeout=1) is None)
    assert mosquitto_sub_retained(mosquitto, MOTION, timeout=1) is None


def test_a_per_camera_unit_makes_its_entities_follow_its_own_availability(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink]
) -> None:
    cams = cameras(tmp_path)
    one = start_sink(sinks, mosquitto, tmp_path, {"cam1": cams["cam1"]}, "cam1")
    wait_for("discovery", lambda: mosquitto_sub_retained(mosquitto, MOTION, timeout=1))
    for topic in (EVENT, MOTION):
        payload = json.loads(mosquitto_sub_retained(mosquitto, topic) or b"{}")
        assert [a["topic"] for a in payload["availability"]] == ["edged/box1/status/cam1"]
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status/cam1") == b"online"
    one.stop()
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status/cam1") == b"offline"


def test_motion_state_follows_motion_events_retained(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(mosquitto, "edged/+/motion", client_id="motion")
    subscribers.append(sub)
    sink = start_sink(sinks, mosquitto, tmp_path, cameras(tmp_path))
    wait_for("OFF at start", lambda: sub.received("edged/cam1/motion"))
    for n, kind in enumerate(["motion.start", "frame", "motion.end", "motion.start"]):
        for cam in ("cam1", "cam2"):
            sink.submit({"schema": 1, "id": f"{cam}-{n}", "camera": cam, "type": kind})
        want = {"motion.start": b"ON", "motion.end": b"OFF"}.get(kind)
        if want:
            wait_for(kind, lambda w=want: sub.received("edged/cam1/motion")[-1].payload == w)
    got = [m.payload for m in sub.received("edged/cam1/motion")]
    assert got == [b"OFF", b"ON", b"OFF", b"ON"]
    assert all(m.qos == 1 for m in sub.received("edged/cam1/motion"))
    assert mosquitto_sub_retained(mosquitto, "edged/cam1/motion") == b"ON"
    assert sub.received("edged/cam2/motion") == []  # the null processor has no sensor


# -- the daemon -----------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_binary_sensor_is_on_during_a_motion_episode(
    tmp_path: Path, mosquitto: Mosquitto, subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(mosquitto, "#", client_id="everything")
    subscribers.append(sub)
    toml = textwrap.dedent(
        f"""
        [events]
        path = "events.jsonl"
        [metrics]
        enabled = false
        [daemon]
        state_dir = "state"
        [mqtt]
        host = "127.0.0.1"
        port = {mosquitto.port}
        node = "box1"
        homeassistant = true
        [cameras.cam1]
        source = "synthetic"
        width = 640
        height = 360
        fps = 15
        [cameras.cam1.processor]
        type = "motion"
        """
    )
    d = Daemon(tmp_path, toml).start()
    try:
        wait_for("an episode", lambda: [e["type"] for e in d.events()][:2]
                 == ["motion.start", "motion.end"], timeout=30)  # fmt: skip
        wait_for("OFF again", lambda: [m.payload for m in sub.received("edged/cam1/motion")]
                 == [b"OFF", b"ON", b"OFF"])  # fmt: skip
        assert d.stop() == 0
    finally:
        d.kill()
    for topic in (EVENT, MOTION):
        retained = json.loads(mosquitto_sub_retained(mosquitto, topic) or b"{}")
        assert retained["device"]["identifiers"] == ["edged_box1_cam1"]
