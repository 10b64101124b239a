"""A fleet: several edged boxes (daemons with their own node names and the same camera
names) against one real Mosquitto and one real Prometheus, both started here.

Every event arrives once, on its own node's topics, naming its node; each box's
retained state stays its own; Prometheus scrapes every box (listed through
``file_sd``, as the README says); stopping one box marks only that one offline.
With the old topic layout the same fleet collides, and both boxes say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from components.mqtt import Mosquitto, Subscriber, mosquitto_sub_retained
from components.prometheus import Prometheus, check_prometheus
from components.rtsp import free_port
from daemon import Daemon, start_daemon, wait_for

CAMERAS = ("front-door", "yard")


def box_toml(broker: Mosquitto, node: str, listen: str, mqtt: str = "") -> str:
    toml = textwrap.dedent(
        f"""
        [events]
        path = "events.jsonl"
        [metrics]
        listen = "{listen}"
        [daemon]
        state_dir = "state"
        node = "{node}"
        [mqtt]
        host = "127.0.0.1"
        port = {broker.port}
        reconnect_max_delay = "1s"
        {mqtt}
        [defaults]
        width = 160
        height = 120
        fps = 5
        [defaults.processor]
        type = "plugins:SlowProcessor"
        delay = 0.0
        """
    )
    return toml + "".join(f'[cameras.{cam}]\nsource = "synthetic"\n' for cam in CAMERAS)


def start_box(
    daemons: list[Daemon], tmp: Path, broker: Mosquitto, node: str, mqtt: str = ""
) -> tuple[Daemon, str]:
    listen = f"127.0.0.1:{free_port()}"
    folder = tmp / node
    folder.mkdir()
    return start_daemon(daemons, folder, box_toml(broker, node, listen, mqtt)), listen


@pytest.fixture
def prometheus_servers() -> Iterator[list[Prometheus]]:
    made: list[Prometheus] = []
    yield made
    for server in made:
        server.stop()


@pytest.mark.slow
def test_a_fleet_shares_one_broker_and_one_prometheus_without_collisions(
    tmp_path: Path,
    mosquitto: Mosquitto,
    daemons: list[Daemon],
    subscribers: list[Subscriber],
    prometheus_servers: list[Prometheus],
) -> None:
    if (problem := check_prometheus()) is not None:
        pytest.fail(problem, pytrace=False)
    sub = Subscriber(mosquitto, "edged/#", client_id="fleet")
    subscribers.append(sub)
    nodes = ("edge1", "edge2", "edge3")
    boxes = {node: start_box(daemons, tmp_path, mosquitto, node) for node in nodes}
    prom = Prometheus(
        tmp_path / "prometheus", [(listen, {"node": node}) for node, (_, listen) in boxes.items()]
    )
    prometheus_servers.append(prom.start())

    def online(node: str) -> bool:
        return bool(sub.received(f"edged/{node}/status")) and (
            sub.received(f"edged/{node}/status")[-1].payload == b"online"
        )

    wait_for("every box online", lambda: all(online(n) for n in nodes), timeout=20)
    for d, _ in boxes.values():
        d.wait_events(10)

    # Prometheus sees every box, and every camera of every box.
    def scraped() -> bool:
        up = prom.query('up{job="edged"}')
        cams = prom.query("edged_camera_up == 1")
        return len(up) == 3 and set(up.values()) == {1.0} and len(cams) == 3 * len(CAMERAS)

    wait_for("every box and camera up in Prometheus", scraped, timeout=20)
    cams = prom.query("edged_camera_up")
    assert sorted(cams) == sorted(
        f"camera={cam},instance={listen},job=edged,node={node}"
        for node, (_, listen) in boxes.items()
        for cam in CAMERAS
    )

    # Stopping one box marks only that box offline: on MQTT and in Prometheus.
    gone, _ = boxes["edge3"]
    assert gone.stop() == 0
    assert mosquitto_sub_retained(mosquitto, "edged/edge3/status") == b"offline"
    assert online("edge1") and online("edge2")
    want = {
        f"instance={listen},job=edged,node={node}": float(node != "edge3")
        for node, (_, listen) in boxes.items()
    }
    wait_for("edge3 down in Prometheus", lambda: prom.query('up{job="edged"}') == want, 10)
    for d, _ in boxes.values():
        assert d.stop() == 0  # a clean stop delivers what is waiting

    # Each box's retained state is its own, on its own topic.
    for node in nodes:
        for cam in CAMERAS:
            state = json.loads(
                mosquitto_sub_retained(mosquitto, f"edged/{node}/{cam}/state") or b"{}"
            )
            assert state["node"] == node, (node, cam, state)
    # Every event arrives once, on its node's topic, naming its node and camera.
    arrived = Counter(
        (m.topic, json.loads(m.payload)["id"])
        for m in sub.received()
        if m.topic.endswith("/events")
    )
    expected = Counter()
    for node, (d, _) in boxes.items():
        events = d.events()
        assert events and all(e["node"] == node for e in events)
        expected.update((f"edged/{node}/{e['camera']}/events", e["id"]) for e in events)
    assert arrived == expected
    payloads = [json.loads(m.payload) for m in sub.received() if m.topic.endswith("/events")]
    assert {(p["node"], p["camera"]) for p in payloads} == {(n, c) for n in nodes for c in CAMERAS}
    for d, _ in boxes.values():
        assert "publishes on this box's topic" not in d.log


@pytest.mark.slow
def test_the_old_topic_layout_collides_loudly(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon]
) -> None:
    layout = 'topic_layout = "camera"'
    one, one_listen = start_box(daemons, tmp_path, mosquitto, "edge1", layout)
    one.wait_events(3)
    two, two_listen = start_box(daemons, tmp_path, mosquitto, "edge2", layout)
    # The newcomer finds edge1's retained states; edge1 sees edge2's as they come.
    for d, other in ((two, "edge1"), (one, "edge2")):
        d.wait_log(f"node '{other}' publishes on this box's topic edged/front-door/state")
    assert 'topic_layout = "node"' in two.log
    status = subprocess.run(
        [sys.executable, "-m", "edged", "status", "--config", str(one.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 1, status.stdout + status.stderr
    assert "MQTT topics shared with another box" in status.stdout
    assert "Traceback" not in status.stderr


def test_the_node_comes_from_daemon_then_the_old_mqtt_key_then_the_host_name(
    tmp_path: Path,
) -> None:
    import socket

    from edged.config import parse_config
    from edged.errors import ConfigError

    cams = '[cameras.front-door]\nsource = "synthetic"\n'
    path = str(tmp_path / "edged.toml")
    assert parse_config(cams, path).node == socket.gethostname().split(".")[0]
    old = parse_config('[mqtt]\nnode = "edge1"\n' + cams, path)  # an older config works
    assert old.node == old.mqtt.node_name == "edge1"  # type: ignore[union-attr]
    new = parse_config('[daemon]\nnode = "edge2"\n[mqtt]\n' + cams, path)
    assert new.node == new.mqtt.node_name == "edge2"  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as exc:
        parse_config('[daemon]\nnode = "a"\n[mqtt]\nnode = "b"\n' + cams, path)
    assert "mqtt.node: differs from [daemon] node" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config('[daemon]\nnode = "a/b"\n' + cams, path)
    assert "daemon.node" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config('[mqtt]\n[cameras.status]\nsource = "synthetic"\n', path)
    assert "cameras.status: a camera cannot be named 'status'" in str(exc.value)
    layout = '[mqtt]\ntopic_layout = "camera"\n[cameras.status]\nsource = "synthetic"\n'
    assert parse_config(layout, path).mqtt.camera_topic("n", "status", "state") == (  # type: ignore[union-attr]
        "edged/status/state"
    )


def test_an_upgraded_box_clears_what_it_left_in_the_old_layout() -> None:
    from edged.config import MqttConfig
    from edged.sinks import retained

    cfg = MqttConfig(node="edge1")
    found = {
        "edged/front-door/state": b'{"node":"edge1","state":"streaming"}',  # ours, before
        "edged/yard/state": b'{"node":"edge2","state":"streaming"}',  # another box's
        "edged/edge1/front-door/state": b'{"node":"edge1","state":"streaming"}',  # now
    }
    assert "edged/+/state" in retained.sweep_topics(cfg, "edge1")
    clear, gone = retained.stale_topics(cfg, "edge1", ["front-door"], ["front-door"], [], found)
    assert clear == [f"edged/front-door/{what}" for what in ("motion", "snapshot", "state")]
    assert gone == []


def test_one_node_name_on_two_boxes_is_reported(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list, caplog: pytest.LogCaptureFixture
) -> None:
    from edged.config import MqttConfig, parse_config
    from edged.sinks.mqtt import MqttSink

    cams = parse_config('[cameras.front-door]\nsource = "synthetic"\n', str(tmp_path / "e.toml"))
    made = []
    for box in ("a", "b"):  # one node name, two boxes (their own client ids and disks)
        cfg = MqttConfig(host="127.0.0.1", port=mosquitto.port, node="edge1", client_id=box)
        (tmp_path / box).mkdir()
        sink = MqttSink(cfg, tmp_path / box, cameras=cams.cameras)
        sinks.append(sink)
        sink.start()
        wait_for(f"box {box} connected", lambda s=sink: s.connected)
        made.append(sink)
    first, second = made

    class Snap:  # the fields of a CameraSnapshot that on_state reads
        name, state, reason, state_since = "front-door", "streaming", "", 1.8e9

    second.on_state(Snap())  # type: ignore[arg-type]
    wait_for("the collision seen", lambda: first.stats().collisions == {"front-door": "edge1"})
    assert "another box also calls itself node 'edge1'" in caplog.text
    assert len(first.stats().collisions) == 1
