"""Event latency per sink, MQTT included: from the frame's grab to the broker's PUBACK."""

from __future__ import annotations

import pytest
from components.rtsp import free_port
from daemon import Daemon, wait_for
from test_metrics import scrape

pytestmark = pytest.mark.slow


def test_event_latency_is_measured_for_jsonl_and_mqtt(tmp_path, mosquitto):
    port = free_port()
    toml = (
        '[events]\npath = "events.jsonl"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        '[daemon]\nstate_dir = "state"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
        '[cameras.cam1]\nsource = "synthetic"\nwidth = 160\nheight = 120\nfps = 20\n'
        '[cameras.cam1.processor]\ntype = "plugins:SlowProcessor"\ndelay = 0.05\n'
    )
    d = Daemon(tmp_path, toml).start()
    try:
        d.wait_events(20, "frame")
        base = f"http://127.0.0.1:{port}"

        def counts() -> dict[str, float]:
            samples = scrape(base)
            out = {}
            for (name, labels), value in samples.items():
                if name == "edged_event_latency_seconds_count":
                    out[dict(labels)["sink"]] = value
            return out

        got = wait_for("latency for both sinks", lambda: len(counts()) == 2 and counts())
        assert got["jsonl"] >= 20 and got["mqtt"] >= 1
        assert d.stop() == 0
    finally:
        d.kill()
