"""Home Assistant MQTT discovery: the config payloads, retained on a real Mosquitto,
published again on Home Assistant's birth message, and the motion binary sensor's
state around a real motion episode (the daemon test, marked slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from components.mqtt import Mosquitto, Subscriber, mosquitto_sub_retained, start_sink
from daemon import Daemon, wait_for

import edged
from edged.camera import CameraSnapshot
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
IMAGE = "homeassistant/image/edged_box1/cam1_snapshot/config"
BOX = "homeassistant/binary_sensor/edged_box1/Status/config"
STATUS = {c: f"homeassistant/sensor/edged_box1/{c}_status/config" for c in ("cam1", "cam2", "cam3")}


def last_payload(sub: Subscriber, topic: str) -> bytes | None:
    """The newest payload the subscriber got on ``topic``; None before the first."""
    got = sub.received(topic)
    return got[-1].payload if got else None


def cameras(tmp_path: Path) -> dict[str, CameraConfig]:
    return parse_config(CAMERAS, str(tmp_path / "edged.toml")).cameras


def test_discovery_configs_for_a_motion_camera_and_none_for_undeclared_types(
    tmp_path: Path,
) -> None:
    cfg = MqttConfig(node="box1", homeassistant=True)
    messages = ha.discovery_messages(cfg, "box1", cameras(tmp_path))
    # null and SlowProcessor declare no types: only their status sensors
    assert sorted(messages) == sorted([BOX, MOTION, EVENT, *STATUS.values()])
    event, motion = json.loads(messages[EVENT]), json.loads(messages[MOTION])
    status = json.loads(messages[STATUS["cam1"]])
    device = {
        "identifiers": ["edged_box1_cam1"],
        "name": "cam1 (box1)",
        "manufacturer": "edged",
        "model": "motion on a synthetic camera",
        "sw_version": edged.__version__,
        "via_device": "edged_box1",
    }
    process = {"topic": "edged/box1/status", "payload_available": "online"}
    process["payload_not_available"] = "offline"
    streaming = {**process, "topic": "edged/box1/cam1/state"}
    streaming["value_template"] = "{{ 'online' if value_json.state == 'streaming' else 'offline' }}"
    for entity in (event, motion, status):
        assert entity["device"] == device
        assert entity["origin"]["name"] == "edged" and entity["qos"] == 1
    # What the camera sees is unknown while it does not stream; its status says why.
    for entity in (event, motion):
        assert entity["availability"] == [process, streaming]
        assert entity["availability_mode"] == "all"
    assert status["availability"] == [process] and "availability_mode" not in status
    assert event["unique_id"] == "edged_box1_cam1_events"
    assert event["state_topic"] == "edged/box1/cam1/events"
    assert event["event_types"] == ["motion.start", "motion.end"]
    assert event["device_class"] == "motion"
    # HA pops event_type from the rendered JSON; the rest become the entity's attributes.
    template = event["value_template"]
    assert "'event_type': value_json.type" in template and template.endswith("| tojson }}")
    assert motion["unique_id"] == "edged_box1_cam1_motion"
    assert motion["device_class"] == "motion"
    assert motion["state_topic"] == "edged/box1/cam1/motion"
    assert (motion["payload_on"], motion["payload_off"]) == ("ON", "OFF")
    assert status["unique_id"] == "edged_box1_cam1_status"
    assert status["state_topic"] == status["json_attributes_topic"] == "edged/box1/cam1/state"
    assert status["value_template"] == "{{ value_json.state }}"
    # The box: every camera's device is connected via it, and it shows the process.
    box = json.loads(messages[BOX])
    assert box["device"] == {
        "identifiers": ["edged_box1"],
        "name": "edged box1",
        "manufacturer": "edged",
        "sw_version": edged.__version__,
    }
    assert box["device_class"] == "connectivity" and box["state_topic"] == "edged/box1/status"
    assert (box["payload_on"], box["payload_off"]) == ("online", "offline")
    assert "availability" not in box  # it is the availability


def test_an_image_entity_for_a_camera_publishing_snapshots(tmp_path: Path) -> None:
    toml = CAMERAS + "[cameras.cam1.snapshots]\nenabled = true\nmqtt = true\n"
    cams = parse_config(toml, str(tmp_path / "edged.toml")).cameras
    cfg = MqttConfig(node="box1", homeassistant=True)
    messages = ha.discovery_messages(cfg, "box1", cams)
    image = json.loads(messages[IMAGE])
    assert image["image_topic"] == "edged/box1/cam1/snapshot"
    assert image["content_type"] == "image/jpeg"
    assert image["unique_id"] == "edged_box1_cam1_snapshot"
    assert image["availability_mode"] == "all"
    assert image["device"]["identifiers"] == ["edged_box1_cam1"]
    assert IMAGE not in ha.discovery_messages(cfg, "box1", cameras(tmp_path))


def test_discovery_is_off_by_default_and_the_prefix_is_checked(tmp_path: Path) -> None:
    cfg = parse_config("[mqtt]\n" + CAMERAS, str(tmp_path / "edged.toml")).mqtt
    assert cfg is not None and not cfg.homeassistant and cfg.homeassistant_prefix == "homeassistant"
    with pytest.raises(ValueError, match="topic prefix"):
        MqttConfig(homeassistant_prefix="ha/#")


# -- against a real broker ------------------------------------------------------------


def snap(name: str, state: str, reason: str = "") -> CameraSnapshot:
    return CameraSnapshot(name=name, state=state, reason=reason, state_since=time.time(),
                          up=state == "streaming", last_frame_time=0.0, frame_age=float("inf"),
                          fps=0.0, width=0, height=0, stale_after=5.0, counters={}, restarts={},
                          restart_reasons={}, last_error="")  # fmt: skip


def publish(broker: Mosquitto, topic: str, payload: str, retain: bool = False) -> None:
    tool = shutil.which("mosquitto_pub")
    assert tool is not None, "mosquitto_pub not found: run scripts/setup --test"
    cmd = [tool, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload]
    subprocess.run(cmd + ["-r"] * retain, check=True, capture_output=True, timeout=10)


def retained_topics(broker: Mosquitto) -> dict[str, bytes]:
    """Every retained message on the broker (topic -> payload), as mosquitto_sub sees them."""
    tool = shutil.which("mosquitto_sub")
    assert tool is not None, "mosquitto_sub not found: run scripts/setup --test"
    cmd = [tool, "-h", "127.0.0.1", "-p", str(broker.port), "-t", "#", "-v", "-W", "1"]
    cmd.append("--retained-only")
    out = subprocess.run(cmd, capture_output=True, timeout=10).stdout
    found = {}
    for line in out.splitlines():
        topic, _, payload = line.partition(b" ")
        found[topic.decode()] = payload
    return found


def configs(sub: Subscriber, topic: str) -> list[Any]:
    return [json.loads(m.payload) for m in sub.received(topic)]


def test_discovery_is_retained_and_published_again_when_home_assistant_comes_online(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(mosquitto, "homeassistant/+/+/+/config", client_id="ha")
    subscribers.append(sub)
    cams = cameras(tmp_path)
    sink = start_sink(sinks, mosquitto, tmp_path, cameras=cams, homeassistant=True)
    wanted = {t: json.loads(p) for t, p in ha.discovery_messages(sink.cfg, "box1", cams).items()}
    wait_for("discovery", lambda: all(configs(sub, t) for t in wanted))
    for topic, payload in wanted.items():
        assert json.loads(mosquitto_sub_retained(mosquitto, topic) or b"null") == payload
    # Only status sensors for the cameras without event types, and the box's entity.
    assert len(sub.received()) == len(wanted) == 6
    assert mosquitto_sub_retained(mosquitto, "edged/box1/cam1/motion") == b"OFF"
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
    one = start_sink(
        sinks, mosquitto, tmp_path, "cam1", cameras={"cam1": cams["cam1"]}, homeassistant=True
    )
    wait_for("discovery", lambda: mosquitto_sub_retained(mosquitto, MOTION, timeout=1))
    for topic in (EVENT, MOTION):
        payload = json.loads(mosquitto_sub_retained(mosquitto, topic) or b"{}")
        topics = [a["topic"] for a in payload["availability"]]
        assert topics == ["edged/box1/status/cam1", "edged/box1/cam1/state"]
    box = mosquitto_sub_retained(mosquitto, BOX.replace("Status", "Status_cam1"))
    assert json.loads(box or b"{}")["state_topic"] == "edged/box1/status/cam1"
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status/cam1") == b"online"
    one.stop()
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status/cam1") == b"offline"


def test_motion_state_follows_motion_events_retained(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(mosquitto, "edged/+/+/motion", client_id="motion")
    subscribers.append(sub)
    sink = start_sink(sinks, mosquitto, tmp_path, cameras=cameras(tmp_path), homeassistant=True)
    wait_for("OFF at start", lambda: sub.received("edged/box1/cam1/motion"))
    for n, kind in enumerate(["motion.start", "frame", "motion.end", "motion.start"]):
        for cam in ("cam1", "cam2"):
            sink.submit({"schema": 1, "id": f"{cam}-{n}", "camera": cam, "type": kind})
        want = {"motion.start": b"ON", "motion.end": b"OFF"}.get(kind)
        if want:
            wait_for(kind, lambda w=want: last_payload(sub, "edged/box1/cam1/motion") == w)
    got = [m.payload for m in sub.received("edged/box1/cam1/motion")]
    assert got == [b"OFF", b"ON", b"OFF", b"ON"]
    assert all(m.qos == 1 for m in sub.received("edged/box1/cam1/motion"))
    assert mosquitto_sub_retained(mosquitto, "edged/box1/cam1/motion") == b"ON"
    assert sub.received("edged/box1/cam2/motion") == []  # the null processor has no sensor


def test_motion_goes_off_when_the_camera_stops_streaming(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    # A worker that crashes mid-episode never sends its motion.end, and its
    # successor starts with no episode: ON would stay until the next one ended.
    sub = Subscriber(mosquitto, "edged/box1/cam1/motion", client_id="motion-off")
    subscribers.append(sub)
    sink = start_sink(sinks, mosquitto, tmp_path, cameras=cameras(tmp_path), homeassistant=True)
    topic = "edged/box1/cam1/motion"
    wait_for("OFF at start", lambda: last_payload(sub, topic) == b"OFF")
    sink.submit({"schema": 1, "id": "m1", "camera": "cam1", "type": "motion.start"})
    wait_for("ON", lambda: last_payload(sub, topic) == b"ON")
    sink.on_state(snap("cam1", "restarting", "worker exited with status 1"))
    wait_for("OFF again", lambda: last_payload(sub, topic) == b"OFF")
    assert mosquitto_sub_retained(mosquitto, topic) == b"OFF"


def test_states_go_out_before_online_and_motion_off_before_a_clean_offline(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    # The last run died during a motion episode: its ON and its Last Will are retained.
    publish(mosquitto, "edged/box1/cam1/motion", "ON", retain=True)
    publish(mosquitto, "edged/box1/status", "offline", retain=True)
    sub = Subscriber(mosquitto, "#", client_id="ha")
    subscribers.append(sub)
    cams = cameras(tmp_path)
    states = [snap("cam1", "reconnecting", "connection refused"), snap("cam2", "starting")]
    sink = start_sink(
        sinks, mosquitto, tmp_path, cameras=cams, snapshots=states, homeassistant=True
    )
    wait_for("online", lambda: last_payload(sub, "edged/box1/status") == b"online")
    live = [(m.topic, m.payload) for m in sub.received() if not m.retain]
    online = live.index(("edged/box1/status", b"online"))
    # What Home Assistant reads after 'online' is this run's: no unavailable -> on -> off.
    assert live.index(("edged/box1/cam1/motion", b"OFF")) < online
    state = json.loads(dict(live[:online])["edged/box1/cam1/state"])
    assert state["node"] == "box1"
    assert (state["state"], state["reason"]) == ("reconnecting", "connection refused")
    assert "edged/box1/cam2/state" in dict(live[:online])
    wanted = ha.discovery_messages(sink.cfg, "box1", cams)
    assert set(wanted) <= set(dict(live[:online]))  # entities exist before they are available

    sink.submit({"schema": 1, "id": "e1", "camera": "cam1", "type": "motion.start"})
    wait_for("ON", lambda: last_payload(sub, "edged/box1/cam1/motion") == b"ON")
    sink.stop()
    wait_for("offline", lambda: last_payload(sub, "edged/box1/status") == b"offline")
    last = [
        (m.topic, m.payload) for m in sub.received() if m.topic.endswith(("/motion", "/status"))
    ]
    assert last[-2:] == [("edged/box1/cam1/motion", b"OFF"), ("edged/box1/status", b"offline")]
    assert mosquitto_sub_retained(mosquitto, "edged/box1/cam1/motion") == b"OFF"


def test_what_cameras_gone_from_the_config_left_retained_is_cleared_at_connect(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink]
) -> None:
    toml = CAMERAS + '[cameras.cam9]\nsource = "synthetic"\nprocessor = "motion"\n'
    before = parse_config(toml, str(tmp_path / "edged.toml")).cameras
    up = ("streaming", "")
    # The last runs: edged.service with every camera, then an edged@cam9 unit.
    for cams, instance in ((before, ""), ({"cam9": before["cam9"]}, "cam9")):
        old = start_sink(
            sinks,
            mosquitto,
            tmp_path,
            instance,
            cameras=cams,
            snapshots=[snap(n, *up) for n in cams],
            homeassistant=True,
        )
        status = old.status_topic  # 'online' goes out last
        wait_for("online", lambda t=status: mosquitto_sub_retained(mosquitto, t, 1) == b"online")
        old.stop()
    # Another box on the same broker and prefix, and a state of an older edged (no node).
    publish(mosquitto, "edged/cam8/state", '{"node":"box2","state":"streaming"}', retain=True)
    publish(mosquitto, "edged/cam7/state", '{"state":"streaming"}', retain=True)
    left = retained_topics(mosquitto)
    cam9 = {t for t in left if "cam9" in t}
    assert cam9 == {
        "edged/box1/cam9/state",
        "edged/box1/cam9/motion",
        "edged/box1/status/cam9",
        "homeassistant/binary_sensor/edged_box1/Status_cam9/config",
        *(t.replace("cam1", "cam9") for t in (EVENT, MOTION, STATUS["cam1"])),
    }

    # cam9 is gone from the config; this unit runs cam1 of the cameras left.
    start_sink(sinks, mosquitto, tmp_path, "cam1", cameras={"cam1": before["cam1"]},
               configured=["cam1", "cam2", "cam3"], homeassistant=True)  # fmt: skip
    wait_for("cam9 cleared", lambda: not any("cam9" in t for t in retained_topics(mosquitto)))
    now = retained_topics(mosquitto)
    # Everything else stays: the other cameras of the config, and what is not ours.
    assert set(left) - cam9 <= set(now)
    for kept in ("edged/box1/cam2/state", STATUS["cam2"], "edged/cam8/state", "edged/cam7/state"):
        assert kept in now


COUNTER = '[cameras.cam5]\nsource = "synthetic"\nprocessor = "plugins:ObjectCounter"\n'


def _object(camera: str, n: int, kind: str, label: str, count: int) -> dict[str, Any]:
    data = {"id": n, "label": label, "count": count}
    return {"schema": 1, "id": f"{camera}-{n}", "camera": camera, "type": kind, "data": data}


def test_a_count_sensor_per_counted_label(tmp_path: Path) -> None:
    cams = parse_config(COUNTER, str(tmp_path / "edged.toml")).cameras
    messages = ha.discovery_messages(MqttConfig(node="box1", homeassistant=True), "box1", cams)
    for level, label in (("person", "person"), ("traffic_light", "traffic light")):
        topic = f"homeassistant/sensor/edged_box1/cam5_{level}_count/config"
        sensor = json.loads(messages[topic])
        assert sensor["state_topic"] == f"edged/box1/cam5/{level}"
        assert sensor["name"] == f"{label} count"
        assert sensor["state_class"] == "measurement"
        assert sensor["availability_mode"] == "all"  # unknown while the camera is down
    assert ha.count_level("state") == "state_count"  # never the camera's own topics
    assert ha.count_level("Person/+#") == "person___"


def test_object_counts_are_retained_per_camera_and_label(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    cams = parse_config(COUNTER, str(tmp_path / "edged.toml")).cameras
    sub = Subscriber(mosquitto, "edged/box1/cam5/+", client_id="counts")
    subscribers.append(sub)
    sink = start_sink(sinks, mosquitto, tmp_path, cameras=cams, homeassistant=True)
    person = "edged/box1/cam5/person"
    wait_for("0 at start", lambda: last_payload(sub, person) == b"0")
    assert mosquitto_sub_retained(mosquitto, "edged/box1/cam5/traffic_light") == b"0"
    for n, (kind, count) in enumerate(
        [("object.start", 1), ("object.start", 2), ("object.update", 2), ("object.end", 1)]
    ):
        sink.submit(_object("cam5", n, kind, "person", count))
    sink.submit(_object("cam5", 9, "object.start", "dog", 1))  # counted, though no sensor
    wait_for("dog", lambda: last_payload(sub, "edged/box1/cam5/dog") == b"1")
    wait_for("1 person", lambda: last_payload(sub, person) == b"1")
    # A state, not a log: counts that change faster than they go out are coalesced.
    got = [m.payload for m in sub.received(person)]
    assert got[0] == b"0" and set(got) <= {b"0", b"1", b"2"}
    assert all(m.qos == 1 for m in sub.received(person))
    assert mosquitto_sub_retained(mosquitto, person) == b"1"
    # A camera that stops streaming sees nothing known: its counts go back to 0.
    sink.on_state(snap("cam5", "reconnecting", "connection refused"))
    wait_for("0 again", lambda: last_payload(sub, person) == b"0")
    assert mosquitto_sub_retained(mosquitto, "edged/box1/cam5/dog") == b"0"


def test_a_gone_cameras_counts_are_cleared_at_connect(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink]
) -> None:
    cams = parse_config(CAMERAS + COUNTER, str(tmp_path / "edged.toml")).cameras
    old = start_sink(sinks, mosquitto, tmp_path, cameras=cams, homeassistant=True)
    person = "edged/box1/cam5/person"
    wait_for("count", lambda: mosquitto_sub_retained(mosquitto, person, 1) == b"0")
    old.stop()
    start_sink(sinks, mosquitto, tmp_path, cameras={"cam1": cams["cam1"]},
               configured=["cam1", "cam2", "cam3"], homeassistant=True)  # fmt: skip
    wait_for("cam5 cleared", lambda: not any("cam5" in t for t in retained_topics(mosquitto)))
    assert STATUS["cam1"] in retained_topics(mosquitto)  # what is still configured stays


def test_a_processor_without_event_types_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = MqttConfig(node="box1", homeassistant=True)
    with caplog.at_level("INFO", logger="edged.sinks.mqtt"):
        MqttSink(cfg, tmp_path, "", cameras(tmp_path)).stop()
    said = [r.getMessage() for r in caplog.records if "event_types" in r.getMessage()]
    assert said == [
        "mqtt: camera cam2: processor null declares no event_types: Home Assistant gets no "
        "event entity for it (its events are on edged/box1/cam2/events)",
        "mqtt: camera cam3: processor plugins:SlowProcessor declares no event_types: Home "
        "Assistant gets no event entity for it (its events are on edged/box1/cam3/events)",
    ]


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
        wait_for("OFF again", lambda: [m.payload for m in sub.received("edged/box1/cam1/motion")]
                 == [b"OFF", b"ON", b"OFF"])  # fmt: skip
        assert d.stop() == 0
    finally:
        d.kill()
    live = [(m.topic, m.payload) for m in sub.received()]
    online = live.index(("edged/box1/status", b"online"))
    # The camera's own state, not the one a previous run left retained.
    first = json.loads(dict(live[:online])["edged/box1/cam1/state"])
    assert (first["node"], first["state"]) == ("box1", "starting")
    for topic in (EVENT, MOTION):
        retained = json.loads(mosquitto_sub_retained(mosquitto, topic) or b"{}")
        assert retained["device"]["identifiers"] == ["edged_box1_cam1"]
