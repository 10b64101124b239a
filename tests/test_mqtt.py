"""MQTT delivery against a real Mosquitto: topics, QoS, retained availability and state,
broker outages, restarts, SIGKILL, the outbox bound, a damaged outbox, passwords, TLS.

The sink tests drive ``MqttSink`` in this process; the daemon tests (marked slow)
run ``edged run`` and compare what a subscriber receives with the JSONL file.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import socket
import sqlite3
import textwrap
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from components.mqtt import (
    Message,
    Mosquitto,
    Subscriber,
    make_tls_files,
    mosquitto_sub_retained,
    start_sink,
)
from daemon import Daemon, start_daemon, wait_for
from helpers import daemon_toml

from edged.config import MqttConfig, parse_config
from edged.errors import ConfigError
from edged.event import encode_event
from edged.sinks import mqtt as mqtt_sink
from edged.sinks.mqtt import MqttSink, outbox_path

REPO = Path(__file__).resolve().parent.parent
CAM = '[cameras.cam1]\nsource = "synthetic"\n'


# -- config -------------------------------------------------------------------------


def test_mqtt_is_off_without_a_table(tmp_path: Path) -> None:
    assert parse_config(CAM, str(tmp_path / "edged.toml")).mqtt is None


def test_mqtt_defaults_and_password_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pw").write_text("s3cret-pw\n")
    text = '[mqtt]\nusername = "edged"\npassword_file = "mqtt.pw"\n' + CAM
    cfg = parse_config(text, str(tmp_path / "edged.toml")).mqtt
    assert cfg is not None
    assert (cfg.host, cfg.broker_port, cfg.protocol, cfg.topic_prefix) == (
        "localhost",
        1883,
        "3.1.1",
        "edged",
    )
    assert cfg.password_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(cfg) and "s3cret-pw" not in cfg.model_dump_json()
    assert cfg.node_name and "/" not in cfg.node_name
    assert (cfg.outbox_max_bytes, cfg.outbox_max_age, cfg.max_inflight) == (64 << 20, 604800, 20)


def test_mqtt_password_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mqtt.password").write_text("cred-pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    text = '[mqtt]\nusername = "u"\npassword_credential = "mqtt.password"\nprotocol = 5\n' + CAM
    cfg = parse_config(text, str(tmp_path / "edged.toml")).mqtt
    assert cfg is not None and cfg.password_value() == "cred-pw" and cfg.protocol == "5"


def test_mqtt_config_mistakes_are_all_reported(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        [mqtt]
        topic_prefix = "a/#"
        password = "hunter2"
        keyfile = "nope.key"
        outbox_max_bytes = "1k"
        protocol = "4"
        keepalive_s = 3
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text + CAM, str(tmp_path / "edged.toml"))
    got = "\n".join(info.value.problems)
    assert "mqtt.topic_prefix: a topic prefix is" in got
    assert "mqtt.keyfile: file not found" in got
    assert "mqtt.outbox_max_bytes: Input should be greater than or equal to 4096" in got
    assert "mqtt.protocol: Input should be '3.1.1' or '5'" in got
    assert "mqtt.keepalive_s: unknown key (did you mean 'keepalive'?)" in got
    assert "hunter2" not in got
    with pytest.raises(ConfigError, match=r"mqtt\.password: a password needs a username"):
        parse_config('[mqtt]\npassword = "x"\n' + CAM, str(tmp_path / "edged.toml"))


def test_example_config_documents_every_mqtt_option() -> None:
    text = (REPO / "config/example.toml").read_text()
    start = text.index("# [mqtt]")
    section = text[start : text.index("\n\n", start)]
    for key in MqttConfig.model_fields:
        assert f"\n# {key} = " in section, key
    # Uncommented, the table is valid and shows the defaults.
    table = "\n".join(
        line[2:] for line in section.splitlines() if re.match(r"# (\[mqtt\]|[a-z_]+ = )", line)
    )
    table = re.sub(r"(?m)^(password|password_file|password_credential|ca_file|certfile|keyfile)"
                   r" = .*\n?", "", table)  # fmt: skip
    shown = MqttConfig.model_validate(
        {
            k: v
            for k, v in tomllib.loads(table)["mqtt"].items()
            if k not in ("node", "client_id", "port")
        }
    )
    assert shown == MqttConfig(username="edged") and shown.broker_port == 1883


# -- the sink, against a real broker ------------------------------------------------------


def wait_for_more_tries(broker: Mosquitto, n: int) -> None:
    """Until ``n`` more TLS connections have failed at ``broker``: time enough for
    a sink that would log each failure to have logged them."""
    tries = broker.log.count("Client connection from")
    wait_for(f"{n} more tries", lambda: broker.log.count("Client connection from") >= tries + n, 40)


def subscribe(subscribers: list[Subscriber], broker: Mosquitto, **kw: Any) -> Subscriber:
    sub = Subscriber(broker, "edged/#", **kw)
    subscribers.append(sub)
    return sub


def record(camera: str, n: int) -> dict[str, Any]:
    return {"schema": 1, "id": f"{camera}-{n}", "camera": camera, "type": "t", "data": {"n": n}}


def events(sub: Subscriber, camera: str) -> list[Message]:
    return sub.received(f"edged/box1/{camera}/events")


def all_events(sub: Subscriber) -> list[Message]:
    return [m for m in sub.received() if m.topic.endswith("/events")]


def first_ids(messages: list[Message]) -> list[str]:
    """Event ids in arrival order, each kept at its first arrival (QoS 1 may repeat)."""
    seen: dict[str, None] = {}
    for m in messages:
        seen.setdefault(json.loads(m.payload)["id"], None)
    return list(seen)


class Snap:
    """The fields of a CameraSnapshot that on_state reads."""

    def __init__(self, name: str, state: str, reason: str = "") -> None:
        self.name, self.state, self.reason, self.state_since = name, state, reason, 1.8e9


def test_events_state_and_availability_reach_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mosquitto)
    sink = start_sink(sinks, mosquitto, tmp_path)
    recs = [record("cam1", n) for n in range(30)]
    recs[3]["data"] = {"text": "Grüße ☃", "nan": float("nan")}  # same bytes as JSONL
    for r in recs:
        sink.submit(r)
    sink.on_state(Snap("cam1", "stalled", "no frame for 5.0s"))  # type: ignore[arg-type]
    wait_for("30 events", lambda: len(events(sub, "cam1")) >= 30)
    got = events(sub, "cam1")
    assert [m.payload for m in got] == [encode_event(r)[:-1] for r in recs]
    assert all(m.qos == 1 and not m.retain for m in got)
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"online"
    state = wait_for("state", lambda: mosquitto_sub_retained(mosquitto, "edged/box1/cam1/state"))
    assert json.loads(state) == {
        "node": "box1",
        "session": sink.session,  # which process wrote it: see the fleet tests
        "state": "stalled",
        "reason": "no frame for 5.0s",
        "since": "2027-01-15T08:00:00.000000Z",
    }
    wait_for("an empty outbox", lambda: sink.stats().outbox.depth == 0)
    stats = sink.stats()
    assert (stats.delivered_total, stats.outbox.dropped_total, stats.connected) == (30, 0, 1)
    sink.stop()
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"offline"
    assert "Client edged-box1 disconnected." in mosquitto.log  # a clean DISCONNECT


def test_broker_outage_events_wait_in_the_outbox_and_arrive_in_order(
    tmp_path: Path,
    mosquitto: Mosquitto,
    sinks: list[MqttSink],
    subscribers: list[Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "edged.sinks")
    sub = subscribe(subscribers, mosquitto)
    sink = start_sink(sinks, mosquitto, tmp_path)
    wait_for("connected", lambda: sink.connected)
    mosquitto.stop()
    wait_for("disconnected", lambda: not sink.connected)
    for n in range(40):
        sink.submit(record("cam1" if n % 3 else "cam2", n))
    assert sink.stats().outbox.depth == 40
    wait_for("retries", lambda: "cannot connect to" in caplog.text, timeout=5)
    mosquitto.start()
    wait_for("the outbox to drain", lambda: sink.stats().outbox.depth == 0, timeout=20)
    wait_for("every event", lambda: len(first_ids(all_events(sub))) >= 40, timeout=20)
    assert first_ids(events(sub, "cam1")) == [f"cam1-{n}" for n in range(40) if n % 3]
    assert first_ids(events(sub, "cam2")) == [f"cam2-{n}" for n in range(40) if not n % 3]
    # One line per change of state, however many retries there were.
    lines = [r.getMessage() for r in caplog.records if r.name == "edged.sinks.mqtt"]
    assert sum("disconnected from" in line for line in lines) == 1, lines
    assert sum("cannot connect to" in line for line in lines) == 1, lines
    assert sum("connected to" in line for line in lines) == 2, lines


def test_outbox_bound_drops_the_oldest_counts_and_delivers_the_newest(
    tmp_path: Path,
    mosquitto: Mosquitto,
    sinks: list[MqttSink],
    subscribers: list[Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = subscribe(subscribers, mosquitto)
    mosquitto.stop()
    sink = start_sink(sinks, mosquitto, tmp_path, outbox_max_bytes=4096)
    recs = [record("cam1", n) for n in range(200)]
    for r in recs:
        sink.submit(r)
    stats = sink.stats()
    assert stats.outbox.bytes <= 4096 and stats.outbox.dropped_total == 200 - stats.outbox.depth > 0
    kept = int(stats.outbox.depth)
    assert "dropped the" in caplog.text and "outbox_max_bytes" in caplog.text
    assert caplog.text.count("dropped the") <= 2  # one line per burst (and its summary)
    mosquitto.start()
    wait_for("the newest events", lambda: len(first_ids(events(sub, "cam1"))) >= kept, 20)
    assert first_ids(events(sub, "cam1")) == [r["id"] for r in recs[-kept:]]


def test_wrong_password_is_a_clear_error_and_events_stay_in_the_outbox(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    sinks: list[MqttSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(users={"edged": "right-pw"})
    (tmp_path / "pw").write_text("wrong-pw-77\n")
    sink = start_sink(sinks, broker, tmp_path, username="edged", password_file=str(tmp_path / "pw"))
    for n in range(5):
        sink.submit(record("cam1", n))
    # Several attempts (backoff of 1 s), one log line.
    wait_for("retries", lambda: broker.log.count("not authorised") >= 3, timeout=15)
    refused = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert "check username and password" in refused[0].getMessage()
    assert "wrong-pw-77" not in caplog.text
    assert sink.stats().outbox.depth == 5 and not sink.connected


# paho leaves the socket of a failed TLS handshake for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_with_a_generated_ca_and_a_password(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    sinks: list[MqttSink],
    subscribers: list[Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    broker = mosquitto_factory(users={"edged": "tls-pw"}, tls=tls)
    sub = subscribe(subscribers, broker, username="edged", password="tls-pw")
    # Verification is on by default: the system CAs do not know this broker.
    untrusting = start_sink(
        sinks, broker, tmp_path / "a", tls=True, username="edged", password="tls-pw"
    )
    untrusting.submit(record("cam1", 0))
    sink = start_sink(
        sinks, broker, tmp_path / "b", ca_file=str(tls.ca), username="edged", password="tls-pw"
    )
    sink.submit(record("cam2", 1))
    insecure = start_sink(
        sinks, broker, tmp_path / "c", tls_insecure=True, username="edged", password="tls-pw"
    )
    insecure.submit(record("cam3", 2))
    wait_for("the event over TLS", lambda: first_ids(events(sub, "cam2")) == ["cam2-1"])
    wait_for("tls_insecure", lambda: first_ids(events(sub, "cam3")) == ["cam3-2"])
    wait_for("the failure logged", lambda: "cannot connect to" in caplog.text)
    assert untrusting.stats().outbox.depth == 1 and not untrusting.connected
    assert events(sub, "cam1") == []
    # Collect paho's leftover sockets now, while the warning is ignored, not in
    # whichever later test the garbage collector happens to run.
    for s in (untrusting, sink, insecure):
        s.stop()
    gc.collect()


def sink_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name.startswith("edged.sinks") and text in r.getMessage()
    ]


def big_record(camera: str, n: int, size: int) -> dict[str, Any]:
    return {**record(camera, n), "data": {"n": n, "blob": "x" * size}}


def test_mqtt5_event_over_the_brokers_packet_limit_is_dropped_and_the_rest_delivered(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    sinks: list[MqttSink],
    subscribers: list[Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(max_packet_size=10000)  # announced in the MQTT 5 CONNACK
    sub = subscribe(subscribers, broker)
    sink = start_sink(sinks, broker, tmp_path, protocol=5)
    wait_for("connected", lambda: sink.connected)
    sink.submit(big_record("cam1", 0, 20000))
    for n in range(1, 4):
        sink.submit(record("cam1", n))
    wait_for("the small events", lambda: first_ids(events(sub, "cam1")) == ["cam1-1", "cam1-2",
             "cam1-3"])  # fmt: skip
    stats = sink.stats()
    assert (
        stats.outbox.depth,
        stats.outbox.dropped_total,
        stats.outbox.dropped_by["oversize"],
    ) == (0, 1, 1)
    [line] = sink_lines(caplog, "over the limit")
    assert "event 1 of camera cam1" in line.getMessage() and "limit of 10000" in line.getMessage()
    assert broker.log.count("New client connected") == 2  # the subscriber and the sink, once
    assert "oversize" not in broker.log


def test_event_over_max_payload_is_dropped_counted_and_logged_once(
    tmp_path: Path,
    mosquitto: Mosquitto,
    sinks: list[MqttSink],
    subscribers: list[Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = subscribe(subscribers, mosquitto)
    sink = start_sink(sinks, mosquitto, tmp_path, max_payload="5000")
    assert sink.max_payload == 5000
    for n in range(6):
        sink.submit(big_record("cam1", n, 6000) if n % 2 else record("cam1", n))
    wait_for("the small events", lambda: first_ids(events(sub, "cam1")) == ["cam1-0", "cam1-2",
             "cam1-4"])  # fmt: skip
    wait_for("an empty outbox", lambda: sink.stats().outbox.depth == 0)
    assert sink.stats().outbox.dropped_by["oversize"] == 3 == sink.stats().outbox.dropped_total
    errors = [r for r in sink_lines(caplog, "over the limit") if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "limit of 5000 (max_payload)" in errors[0].getMessage()
    assert "oldest" not in " ".join(r.getMessage() for r in sink_lines(caplog, "dropped the"))


def test_mqtt311_broker_closing_on_the_same_event_drops_it_as_undeliverable(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    sinks: list[MqttSink],
    subscribers: list[Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # MQTT 3.1.1 has no way to announce the limit: the broker just hangs up.
    broker = mosquitto_factory(max_packet_size=10000)
    sub = subscribe(subscribers, broker)
    sink = start_sink(sinks, broker, tmp_path)
    wait_for("connected", lambda: sink.connected)
    sink.submit(big_record("cam1", 0, 20000))
    sink.submit(record("cam1", 1))
    wait_for("the event behind it", lambda: first_ids(events(sub, "cam1")) == ["cam1-1"], 30)
    wait_for("an empty outbox", lambda: sink.stats().outbox.depth == 0)
    assert sink.stats().outbox.dropped_by["undeliverable"] == 1 == sink.stats().outbox.dropped_total
    [line] = sink_lines(caplog, "undeliverable")
    assert line.levelno == logging.ERROR and "event 1 " in line.getMessage()
    drops = broker.log.count("disconnected due to oversize packet")
    assert drops == mqtt_sink.POISON_STRIKES
    sink.submit(record("cam1", 2))  # and it stays connected
    wait_for("a later event", lambda: "cam1-2" in first_ids(events(sub, "cam1")), 30)
    assert sink.connected and broker.log.count("disconnected due to oversize packet") == drops


def test_per_camera_instances_have_their_own_availability_and_client_id(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink]
) -> None:
    # One config shared by edged@cam1 and edged@cam2, with an explicit client_id.
    one = start_sink(sinks, mosquitto, tmp_path, "cam1", client_id="edged-gate")
    two = start_sink(sinks, mosquitto, tmp_path, "cam2", client_id="edged-gate")
    assert (one.client_id, two.client_id) == ("edged-gate-cam1", "edged-gate-cam2")
    assert one.status_topic == "edged/box1/status/cam1"
    wait_for("both online", lambda: [mosquitto_sub_retained(mosquitto, f"edged/box1/status/{c}")
             for c in ("cam1", "cam2")] == [b"online", b"online"])  # fmt: skip
    # Not an event to wait for, an absence to watch: two sessions with one id
    # take each other over at every reconnect, 1 s apart (reconnect_max_delay).
    time.sleep(2)
    assert "already connected" not in mosquitto.log  # no session taken over
    assert one.connected and two.connected
    one.stop()
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status/cam1") == b"offline"
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status/cam2") == b"online"
    # The process running every camera keeps the topic it always had.
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status", timeout=1) is None


def test_plain_mqtt_to_a_tls_listener_is_one_clear_error(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    sinks: list[MqttSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(tls=make_tls_files(tmp_path / "tls"))
    sink = start_sink(sinks, broker, tmp_path)
    sink.submit(record("cam1", 0))
    wait_for("the error", lambda: sink_lines(caplog, "before accepting it"))
    wait_for_more_tries(broker, 3)
    [line] = sink_lines(caplog, "closed the connection before accepting it")
    assert line.levelno == logging.ERROR and "TLS listener" in line.getMessage()
    assert sink.stats().outbox.depth == 1 and not sink.connected


# paho leaves the socket of a failed TLS handshake for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_failures_say_why_once_and_never_the_password(
    tmp_path: Path,
    mosquitto_factory: Callable[..., Mosquitto],
    sinks: list[MqttSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls_broker = mosquitto_factory(users={"edged": "pw-9x7"}, tls=make_tls_files(tmp_path / "t"))
    plain_broker = mosquitto_factory(users={"edged": "pw-9x7"})
    login = {"username": "edged", "password": "pw-9x7"}
    untrusted = start_sink(sinks, tls_broker, tmp_path / "a", tls=True, **login)
    wrong_port = start_sink(sinks, plain_broker, tmp_path / "b", tls=True, **login)
    wait_for("both errors", lambda: len(sink_lines(caplog, "cannot connect to")) >= 2, 15)
    wait_for_more_tries(tls_broker, 2)
    failed = sink_lines(caplog, "cannot connect to")
    assert len(failed) == 2, [r.getMessage() for r in failed]
    by_port = {r.getMessage().split()[4].rstrip(":"): r.getMessage() for r in failed}
    assert "certificate verify failed" in by_port[untrusted.where]
    assert "check ca_file" in by_port[untrusted.where]
    assert "TLS listener" in by_port[wrong_port.where]
    assert "pw-9x7" not in caplog.text
    for s in (untrusted, wrong_port):
        s.stop()
    gc.collect()


def test_undelivered_events_of_another_outbox_file_are_reported_at_start(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto.stop()
    every = start_sink(sinks, mosquitto, tmp_path)  # edged.service
    for n, cam in enumerate(("cam1", "cam2", "cam2")):
        every.submit(record(cam, n))
    running = start_sink(sinks, mosquitto, tmp_path, "cam3")  # edged@cam3, still running
    running.submit(record("cam3", 9))
    every.stop()
    caplog.clear()
    start_sink(sinks, mosquitto, tmp_path, "cam1")  # now edged@cam1
    [line] = sink_lines(caplog, "undelivered events")
    assert line.levelno == logging.WARNING
    assert f"{outbox_path(tmp_path)} holds 3 undelivered events (cam1: 1, cam2: 2)" in (
        line.getMessage()
    )
    assert running.outbox.path == outbox_path(tmp_path, "cam3")  # its lock was not taken


# -- the daemon ---------------------------------------------------------------------------


def mqtt_daemon_toml(port: int, cameras: tuple[str, ...] = ("cam1", "cam2"), mqtt: str = "") -> str:
    """A daemon of node box1 publishing to the broker at ``port`` (``mqtt``: more
    keys of ``[mqtt]``), its ``cameras`` small synthetic ones with a slow processor."""
    broker = f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nnode = "box1"\nreconnect_max_delay = "1s"'
    return daemon_toml(
        dict.fromkeys(cameras, 'source = "synthetic"\nwidth = 160\nheight = 120\nfps = 20'),
        processors=dict.fromkeys(cameras, 'type = "plugins:SlowProcessor"\ndelay = 0.05'),
        metrics="enabled = false",
        sections=f"{broker}\n{mqtt}",
    )


def jsonl_lines(d: Daemon) -> dict[str, bytes]:
    """Event id -> its line in the JSONL file (without the newline), in file order."""
    try:
        raw = d.events_path.read_bytes()
    except FileNotFoundError:
        return {}
    out = {}
    for line in raw.split(b"\n"):
        if line.endswith(b"}"):
            out[json.loads(line)["id"]] = line
    return out


def outbox_depth(d: Daemon) -> int:
    path = outbox_path(d.dir / "state")
    if not path.exists():
        return 0
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # the daemon has not created the table yet
        return 0
    finally:
        db.close()


def assert_all_delivered_in_order(d: Daemon, sub: Subscriber, timeout: float = 30) -> None:
    lines = jsonl_lines(d)
    wanted = set(lines)
    wait_for(
        f"all {len(wanted)} events on MQTT",
        lambda: wanted <= set(first_ids(all_events(sub))),
        timeout,
    )
    for cam in ("cam1", "cam2"):
        in_file = [i for i, line in lines.items() if json.loads(line)["camera"] == cam]
        arrived = [i for i in first_ids(events(sub, cam)) if i in wanted]
        assert arrived == in_file, cam
    # QoS 1 repeats only what was in flight when the connection dropped.
    repeats = len(all_events(sub)) - len(first_ids(all_events(sub)))
    assert repeats <= 2 * 20 * 2, repeats


@pytest.mark.slow
def test_daemon_events_match_the_jsonl_lines_and_availability_follows_the_daemon(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mosquitto)
    d = start_daemon(daemons, tmp_path, mqtt_daemon_toml(mosquitto.port))
    wait_for("20 events per camera", lambda: min(len(events(sub, c)) for c in ("cam1", "cam2"))
             >= 20, timeout=30)  # fmt: skip
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"online"
    state = json.loads(mosquitto_sub_retained(mosquitto, "edged/box1/cam1/state") or b"{}")
    assert state["state"] == "streaming" and state["since"].endswith("Z")
    assert d.stop() == 0
    assert mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"offline"
    lines = jsonl_lines(d)
    got = sub.received()
    assert all(m.qos == 1 for m in got if m.topic.endswith("/events"))
    by_id = {json.loads(m.payload)["id"]: m.payload for m in got if m.topic.endswith("/events")}
    assert by_id == lines  # every event, byte for byte the JSONL line
    assert outbox_depth(d) == 0
    assert "mqtt: connected to" in d.log and "mqtt: stopped" in d.log


@pytest.mark.slow
def test_daemon_sigkill_fires_the_last_will(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    d = start_daemon(daemons, tmp_path, mqtt_daemon_toml(mosquitto.port, ("cam1",)))
    wait_for("online", lambda: mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"online")
    d.kill()
    wait_for(
        "the Last Will",
        lambda: mosquitto_sub_retained(mosquitto, "edged/box1/status") == b"offline",
    )


@pytest.mark.slow
def test_daemon_broker_outage_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mosquitto)
    d = start_daemon(daemons, tmp_path, mqtt_daemon_toml(mosquitto.port))
    wait_for("events on MQTT", lambda: len(events(sub, "cam1")) >= 10, timeout=30)
    mosquitto.stop()
    stopped = time.monotonic()
    # Events keep coming for 20 s; the outbox holds them.
    wait_for("a deep outbox", lambda: outbox_depth(d) >= 100, timeout=30)
    wait_for("20 s", lambda: time.monotonic() - stopped >= 20, timeout=30)
    assert outbox_depth(d) >= 200
    mosquitto.start()
    wait_for("the outbox to drain", lambda: outbox_depth(d) == 0, timeout=30)
    assert d.stop() == 0
    assert_all_delivered_in_order(d, sub)
    assert "mqtt: disconnected from" in d.log
    assert d.log.count("mqtt: disconnected from") == 1


@pytest.mark.slow
def test_daemon_sigkill_with_undelivered_events_delivers_them_after_restart(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mosquitto)
    mosquitto.stop()
    toml = mqtt_daemon_toml(mosquitto.port)
    d = start_daemon(daemons, tmp_path, toml)
    wait_for("undelivered events", lambda: outbox_depth(d) >= 50, timeout=30)
    d.kill()
    first = jsonl_lines(d)
    assert len(first) >= 50
    mosquitto.start()
    again = start_daemon(daemons, tmp_path, toml)
    again.wait_log("from an earlier run will be sent")
    wait_for(
        "the first run's events",
        lambda: set(first) <= set(first_ids(all_events(sub))),
        timeout=30,
    )
    assert again.stop() == 0
    assert_all_delivered_in_order(again, sub)


@pytest.mark.slow
def test_daemon_recovers_a_damaged_outbox(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    sub = subscribe(subscribers, mosquitto)
    state = tmp_path / "state"
    state.mkdir()
    outbox_path(state).write_bytes(b"\x00garbage\xff" * 1000)
    d = start_daemon(daemons, tmp_path, mqtt_daemon_toml(mosquitto.port, ("cam1",)))
    d.wait_log("is damaged")
    wait_for("events on MQTT", lambda: len(events(sub, "cam1")) >= 5, timeout=30)
    assert d.stop() == 0
    assert [p for p in state.iterdir() if ".corrupt-" in p.name]
    assert "Traceback" not in d.log


# paho leaves the socket of a failed TLS handshake for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_broker_that_never_answers_is_reported_as_silence_not_a_tls_mistake(
    tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    # A plain TCP listener that never accepts: the kernel completes the TCP
    # handshake for it (the backlog), and then nothing ever answers.
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent, mosquitto.frozen():
        fast = {"keepalive": 5}  # paho waits one keepalive for the CONNACK
        mute = {"port": silent.getsockname()[1], **fast}
        stopped = start_sink(sinks, mosquitto, tmp_path / "a", **fast)
        listener = start_sink(sinks, mosquitto, tmp_path / "b", **mute)
        tls = start_sink(sinks, mosquitto, tmp_path / "c", tls=True, tls_insecure=True, **mute)
        for s in (stopped, listener, tls):
            s.submit(record("cam1", 0))
        wait_for("three reports", lambda: len(sink_lines(caplog, "within 5s")) >= 3, 20)
        no_connack = sink_lines(caplog, "sent no CONNACK within 5s")
        assert sorted(r.getMessage().split()[1] for r in no_connack) == sorted(
            [stopped.where, listener.where]
        )
        [handshake] = sink_lines(caplog, "no answer to the TLS handshake within 5s")
        assert tls.where in handshake.getMessage()
        assert not sink_lines(caplog, "closed the connection before accepting it")
        assert not sink_lines(caplog, "TLS listener")
    # The broker, woken, takes the next try: the report was about silence, not settings.
    wait_for("the thawed broker", lambda: stopped.connected, 15)
    wait_for("the event", lambda: stopped.stats().outbox.depth == 0)
