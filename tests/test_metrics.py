"""Metrics, health and `edged status` (issue 6).

Unit tests drive the collector and the HTTP endpoint over a real, unstarted
`Supervisor` whose cameras have real shared-memory status records; the
end-to-end tests (marked slow) scrape a live daemon with a real HTTP client,
a real RTSP server and a real Prometheus server, and check the contrib rules
with promtool.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from components.rtsp import free_port
from daemon import Daemon, start_daemon, wait_for
from helpers import daemon_toml
from prometheus_client.parser import text_string_to_metric_families

from edged.camera import CameraRuntime, CameraSnapshot
from edged.config import parse_config
from edged.errors import ConfigError
from edged.metrics import (
    Metrics,
    MetricsError,
    MetricsSources,
    event_latency,
    listen_address,
    url_for,
)
from edged.reader import ReaderState
from edged.sinks.mqtt import MqttStats
from edged.sinks.outbox import OutboxStats
from edged.status import quantile, run_status_command, status_url
from edged.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "contrib" / "prometheus-alerts.yml"
DASHBOARD = REPO / "contrib" / "grafana-dashboard.json"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
SETUP_HINT = "run `scripts/setup --test` (it installs Debian's prometheus package)"


def require(binary: str) -> str:
    """Fail (never skip) when a Prometheus binary is missing."""
    found = binary if os.access(binary, os.X_OK) else shutil.which(Path(binary).name)
    if not found:
        pytest.fail(f"{binary} not found: {SETUP_HINT}", pytrace=False)
    return found


# --- HTTP and exposition helpers ---------------------------------------------------------


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


class Samples(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """Samples of one scrape, by (name, sorted labels)."""

    def value(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and want <= set(ls))


def parse(text: str) -> Samples:
    out = Samples()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(base: str) -> Samples:
    """The daemon's samples, or empty while it is not listening yet."""
    try:
        code, text = get(base + "/metrics")
    except (urllib.error.URLError, OSError):
        return Samples()
    assert code == 200, text
    return parse(text)


def promtool_check_metrics(text: str) -> None:
    r = subprocess.run(
        [require(PROMTOOL), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


# --- unit: the collector, the hooks, the endpoint --------------------------------------

TOML = """
[events]
path = "events.jsonl"
[metrics]
listen = "127.0.0.1:0"
[cameras.cam1]
source = "synthetic"
[cameras.cam2]
source = "synthetic"
stale_after = "2s"
"""


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """A real Supervisor, not running, with its cameras' shared status records."""
    config = parse_config(TOML, tmp_path / "edged.toml")
    sup = Supervisor(config)
    for name in config.cameras:
        sup.cams[name] = CameraRuntime(config.cameras[name])
    yield sup
    for cam in sup.cams.values():
        cam.slot.close()
        cam.events_r.close()
        cam.events_w.close()
    sup.events.close()


@dataclasses.dataclass
class Feeds:
    """What a test hands the metrics beside the supervisor's own: the MQTT sink's stats."""

    mqtt: MqttStats | None = None


@pytest.fixture
def feeds() -> Feeds:
    return Feeds()


def sources_of(sup: Supervisor, feeds: Feeds | None = None) -> MetricsSources:
    """What the running supervisor hands its metrics, and the test's MQTT stats."""
    return MetricsSources(
        cameras=sup.snapshot,
        event_file=sup.events.stats,
        mqtt=lambda: feeds.mqtt if feeds is not None else None,
    )


@pytest.fixture
def metrics(supervisor: Supervisor, feeds: Feeds) -> Iterator[Metrics]:
    m = Metrics(sources_of(supervisor, feeds), supervisor.config, list(supervisor.cams))
    yield m
    m.stop()


def mqtt_stats(connected: bool = True, **outbox: Any) -> MqttStats:
    box = {"depth": 0, "bytes": 0, "dropped_total": 0, "oldest_age_s": 0.0, "held_in_memory": 0}
    box.update(outbox)
    box.setdefault("dropped_by", {})
    return MqttStats(
        outbox=OutboxStats(**box),
        delivered_total=100,
        inflight=1,
        connected=connected,
        snapshots_published=4,
        snapshots_missing=1,
        collisions={},
    )


def streaming(cam: CameraRuntime, age: float = 0.0) -> None:
    """Make the camera look like its reader publishes frames (the last ``age`` s ago)."""
    rs = cam.slot.reader
    rs["state"] = ReaderState.STREAMING
    rs["last_frame"] = time.monotonic() - age
    rs["last_frame_wall"] = time.time() - age
    rs["fps"] = 25.0
    rs["width"], rs["height"] = 640, 360
    cam.state = "streaming"


PER_CAMERA = [
    "edged_camera_up",
    "edged_camera_last_frame_timestamp_seconds",
    "edged_camera_fps",
    "edged_frames_decoded_total",
    "edged_frames_processed_total",
    "edged_frames_skipped_total",
    "edged_processor_exceptions_total",
    "edged_camera_reconnects_total",
    "edged_camera_open_failures_total",
    "edged_camera_probes_total",
    "edged_camera_stalls_total",
    "edged_frame_age_seconds_count",
    "edged_processing_duration_seconds_count",
]


def test_every_series_exists_and_reads_zero_at_start(metrics: Metrics) -> None:
    text = metrics.render().decode()
    s = parse(text)
    for cam in ("cam1", "cam2"):
        for name in PER_CAMERA:
            assert s.value(name, camera=cam) == 0, (name, cam)
        for role in ("reader", "worker"):
            assert s.value("edged_child_restarts_total", camera=cam, role=role) == 0
        for reason in ("crash", "killed", "hung", "setup"):
            assert s.value("edged_child_restart_reasons_total", camera=cam, reason=reason) == 0
        assert s.value("edged_event_latency_seconds_count", camera=cam, sink="jsonl") == 0
        assert s.value("edged_camera_state", camera=cam, state="starting") == 1
    assert s.value("edged_outbox_events") == 0
    for reason in ("size", "age", "memory", "rejected", "oversize", "undeliverable"):
        assert s.value("edged_outbox_dropped_events_total", reason=reason) == 0
    assert s.value("edged_sink_errors_total", sink="jsonl") == 0
    assert s.value("edged_build_info", version=metrics_version()) == 1
    # No _created series; the process collector exported once; nothing else unprefixed.
    assert not [k for k in s if k[0].endswith("_created")]
    assert text.count("# TYPE process_resident_memory_bytes gauge") == 1
    names = {k[0] for k in s}
    assert all(n.startswith(("edged_", "process_", "python_")) for n in names), names
    # Only the camera label for per-camera series: no pids, URLs or ids.
    labels = {label for _, ls in s for label, _ in ls}
    assert labels <= {"camera", "role", "reason", "state", "sink", "type", "le", "version"} | {
        "implementation",
        "major",
        "minor",
        "patchlevel",
    }, labels
    promtool_check_metrics(text)


def metrics_version() -> str:
    import edged

    return edged.__version__


def test_collector_reads_the_supervisor_at_scrape_time(
    supervisor: Supervisor, metrics: Metrics
) -> None:
    cam = supervisor.cams["cam1"]
    streaming(cam)
    cam.slot.reader.add("frames", 100)
    cam.slot.reader.add("opens", 3)
    cam.slot.reader.add("open_failures", 7)
    cam.slot.worker.add("frames", 20)
    cam.slot.worker.add("skipped", 80)
    cam.slot.worker.add("errors", 2)
    cam.stalls = 1
    cam.reader.restarts = 2
    cam.restart_reasons = {"hung": 1, "crash": 1}
    supervisor.events.dropped = 5
    supervisor.events.pending.extend([b"{}\n", b"{}\n"])
    s = parse(metrics.render().decode())
    one = {"camera": "cam1"}
    assert s.value("edged_camera_up", **one) == 1
    assert s.value("edged_camera_up", camera="cam2") == 0
    assert s.value("edged_camera_state", camera="cam1", state="streaming") == 1
    assert s.value("edged_camera_fps", **one) == 25
    assert s.value("edged_camera_frame_width_pixels", **one) == 640
    assert abs(s.value("edged_camera_last_frame_timestamp_seconds", **one) - time.time()) < 5
    assert s.value("edged_frames_decoded_total", **one) == 100
    assert s.value("edged_frames_processed_total", **one) == 20
    assert s.value("edged_frames_skipped_total", **one) == 80
    assert s.value("edged_processor_exceptions_total", **one) == 2
    assert s.value("edged_camera_reconnects_total", **one) == 2  # opens - 1
    assert s.value("edged_camera_open_failures_total", **one) == 7
    assert s.value("edged_camera_stalls_total", **one) == 1
    assert s.value("edged_child_restarts_total", camera="cam1", role="reader") == 2
    assert s.value("edged_child_restart_reasons_total", camera="cam1", reason="hung") == 1
    assert s.value("edged_sink_dropped_events_total", sink="jsonl") == 5
    assert s.value("edged_sink_pending_events", sink="jsonl") == 2

    # A reader restart banks its counters: totals never go backwards.
    cam.bank_counters("reader")
    s = parse(metrics.render().decode())
    assert s.value("edged_frames_decoded_total", **one) == 100

    # A fresh-looking state with an old frame is not up.
    streaming(cam, age=30)
    assert parse(metrics.render().decode()).value("edged_camera_up", **one) == 0


def test_outbox_series_read_an_mqtt_sinks_stats(metrics: Metrics, feeds: Feeds) -> None:
    assert parse(metrics.render().decode()).value("edged_mqtt_connected") is None
    feeds.mqtt = mqtt_stats(
        connected=False,
        depth=12,
        bytes=4096,
        dropped_total=3,
        dropped_by={"size": 2, "oversize": 1},
        oldest_age_s=42.5,
        held_in_memory=2,
    )
    text = metrics.render().decode()
    s = parse(text)
    assert s.value("edged_outbox_events") == 12
    assert s.value("edged_outbox_bytes") == 4096
    assert s.value("edged_outbox_oldest_age_seconds") == 42.5
    assert s.total("edged_outbox_dropped_events_total") == 3
    assert s.value("edged_outbox_dropped_events_total", reason="size") == 2
    assert s.value("edged_outbox_dropped_events_total", reason="oversize") == 1
    assert s.value("edged_sink_pending_events", sink="mqtt") == 2
    assert s.value("edged_mqtt_connected") == 0
    # every field of the sink's stats is exported
    assert s.value("edged_mqtt_delivered_events_total") == 100
    assert s.value("edged_mqtt_inflight_events") == 1
    assert s.value("edged_mqtt_snapshots_published_total") == 4
    assert s.value("edged_mqtt_snapshots_missing_total") == 1
    promtool_check_metrics(text)


def test_hooks_feed_the_histograms(metrics: Metrics) -> None:
    for _ in range(9):
        metrics.observe_frame("cam1", 0.003, 0.3)
    metrics.observe_frame("cam1", 2.0, 0.004)
    now = time.time()
    record = {
        "camera": "cam1",
        "type": "motion.start",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 1.5)) + ".000000Z",
    }
    metrics.observe_event(record)
    metrics.observe_event({**record, "type": "motion.end"})
    metrics.event_acknowledged("jsonl", record)
    metrics.event_acknowledged("jsonl", {"camera": "cam1", "time": "garbage"})
    s = parse(metrics.render().decode())
    one = {"camera": "cam1"}
    assert s.value("edged_frame_age_seconds_count", **one) == 10
    assert s.value("edged_frame_age_seconds_bucket", camera="cam1", le="0.005") == 9
    assert s.value("edged_frame_age_seconds_bucket", camera="cam1", le="2.5") == 10
    assert s.value("edged_processing_duration_seconds_bucket", camera="cam1", le="0.005") == 1
    assert s.value("edged_processing_duration_seconds_bucket", camera="cam1", le="0.32") == 10
    assert s.value("edged_processing_duration_seconds_count", camera="cam2") == 0
    assert s.value("edged_events_total", camera="cam1", type="motion.start") == 1
    assert s.value("edged_events_total", camera="cam1", type="motion.end") == 1
    # 1.5 s (and a fraction of the second dropped by strftime) after the frame.
    lat = {"camera": "cam1", "sink": "jsonl"}
    assert s.value("edged_event_latency_seconds_count", **lat) == 1
    assert s.value("edged_event_latency_seconds_bucket", **lat, le="1.25") == 0
    assert s.value("edged_event_latency_seconds_bucket", **lat, le="5.0") == 1
    assert 1.4 < event_latency(record, now) < 2.6  # type: ignore[operator]


def test_endpoints_metrics_healthz_readyz(supervisor: Supervisor, metrics: Metrics) -> None:
    metrics.start()
    host, port = metrics.address
    assert host == "127.0.0.1" and port != 0
    base = f"http://{host}:{port}"

    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert b"edged_camera_up" in resp.read()

    assert get(base + "/healthz") == (200, "ok\n")
    metrics._last_tick -= 11  # the supervisor loop stopped turning 11 s ago
    code, text = get(base + "/healthz")
    assert code == 503 and "silent" in text
    metrics.loop_alive()
    assert get(base + "/healthz")[0] == 200

    code, text = get(base + "/readyz")
    assert code == 503
    body = json.loads(text)
    assert body["ready"] is False
    assert body["cameras"]["cam1"]["state"] == "starting"
    assert body["cameras"]["cam1"]["frame_age_s"] is None
    assert body["cameras"]["cam1"]["reason"] == "no frame yet"

    streaming(supervisor.cams["cam1"])
    streaming(supervisor.cams["cam2"], age=3)  # past its 2 s staleness budget
    code, text = get(base + "/readyz")
    body = json.loads(text)
    assert code == 503 and body["cameras"]["cam1"]["ready"] is True
    assert body["cameras"]["cam2"] == {
        **body["cameras"]["cam2"],
        "ready": False,
        "state": "streaming",
        "stale_after_s": 2.0,
    }
    assert body["cameras"]["cam2"]["reason"].startswith("no frame for 3.")

    streaming(supervisor.cams["cam2"])
    code, text = get(base + "/readyz")
    assert code == 200 and json.loads(text)["ready"] is True
    assert get(base + "/nope")[0] == 404


def test_a_failing_scrape_answers_500_and_the_endpoint_survives(
    supervisor: Supervisor, caplog
) -> None:
    broken = False  # the registry describes its collectors once at the start

    def cameras() -> Mapping[str, CameraSnapshot]:
        if broken:
            raise RuntimeError("snapshot blew up")
        return supervisor.snapshot()

    sources = dataclasses.replace(sources_of(supervisor), cameras=cameras)
    metrics = Metrics(sources, supervisor.config, list(supervisor.cams))
    metrics.start()
    try:
        base = "http://{}:{}".format(*metrics.address)
        broken = True
        assert get(base + "/metrics")[0] == 500
        assert get(base + "/readyz")[0] == 500
        assert "snapshot blew up" in caplog.text
        broken = False
        assert get(base + "/metrics")[0] == 200
    finally:
        metrics.stop()


def test_an_address_in_use_is_a_clear_error(supervisor: Supervisor) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = supervisor.config.model_copy(
            update={
                "metrics": supervisor.config.metrics.model_copy(
                    update={"listen": f"127.0.0.1:{port}"}
                )
            }
        )
        m = Metrics(sources_of(supervisor), config, list(supervisor.cams))
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}: "):
            m.start()


def test_status_reads_a_running_endpoint(supervisor: Supervisor, metrics: Metrics) -> None:
    metrics.start()
    url = "http://{}:{}".format(*metrics.address)
    out = io.StringIO()
    assert run_status_command(url, as_json=False, out=out) == 1
    assert "UNHEALTHY" in out.getvalue() and "starting" in out.getvalue()

    for cam in supervisor.cams.values():
        streaming(cam)
    supervisor.cams["cam1"].slot.worker.add("frames", 25)
    supervisor.cams["cam1"].slot.worker.add("skipped", 75)
    for age in (0.003, 0.003, 0.003, 0.05):
        metrics.observe_frame("cam1", age, 0.3)
    metrics.observe_event({"camera": "cam1", "type": "x"})
    out = io.StringIO()
    assert run_status_command(url, as_json=False, out=out) == 0
    text = out.getvalue()
    assert text.splitlines()[0] == f"edged at {url}: healthy"
    row = next(line for line in text.splitlines() if line.startswith("cam1"))
    assert row.split() == ["cam1", "streaming", "25.0", "4.2ms", "72.0ms", "75.0%", "1", "0", "-"]

    out = io.StringIO()
    assert run_status_command(url, as_json=True, out=out) == 0
    cam1 = json.loads(out.getvalue())["cameras"]["cam1"]
    assert cam1["skipped_ratio"] == 0.75 and cam1["events"] == 1 and cam1["restarts"] == 0
    assert cam1["frame_age_p95_s"] == pytest.approx(0.072)


def test_status_exits_2_naming_the_url_when_nothing_listens(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert run_status_command(url, as_json=False, out=io.StringIO()) == 2
    assert f"cannot reach edged at {url}" in capsys.readouterr().err


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.95, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile(0.99, [(1.0, 1.0), (float("inf"), 2.0)]) == 1.0
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None


# --- unit: per-camera addresses -----------------------------------------------------------


def _cameras_toml(**listen: str) -> str:
    out = '[metrics]\nlisten = "127.0.0.1:9850"\n'
    for name, address in listen.items():
        out += f'[cameras.{name}]\nsource = "synthetic"\n'
        out += f'metrics_listen = "{address}"\n' if address else ""
    return out


def test_per_camera_listen_address_rule(tmp_path: Path) -> None:
    config = parse_config(
        _cameras_toml(cam1="127.0.0.1:9851", cam2="[::1]:9852", cam3=""), tmp_path / "e.toml"
    )
    assert listen_address(config, ["cam1"]) == "127.0.0.1:9851"
    assert listen_address(config, ["cam2"]) == "[::1]:9852"
    assert listen_address(config, ["cam3"]) == "127.0.0.1:9850"
    assert listen_address(config, ["cam1", "cam2"]) == "127.0.0.1:9850"
    assert listen_address(config) == "127.0.0.1:9850"
    assert url_for("[::1]:9852") == "http://[::1]:9852"
    assert url_for("0.0.0.0:9850") == "http://127.0.0.1:9850"


def test_status_finds_the_daemon_from_the_toml_alone(tmp_path: Path) -> None:
    # Secrets only systemd provides and plugins only the daemon's environment
    # imports must not stop `edged status` from finding the address.
    path = tmp_path / "e.toml"
    path.write_text(
        _cameras_toml(cam1="127.0.0.1:9851", cam2="")
        + 'password_credential = "cam2.password"\n'
        + '[cameras.cam2.processor]\ntype = "not_installed.module:Processor"\n'
    )
    assert status_url(path) == "http://127.0.0.1:9850"
    assert status_url(path, "cam1") == "http://127.0.0.1:9851"
    assert status_url(path, "cam2") == "http://127.0.0.1:9850"
    with pytest.raises(ConfigError, match="--camera cam9: no such camera"):
        status_url(path, "cam9")
    path.write_text('[cameras.solo]\nsource = "x"\nmetrics_listen = "[::1]:9860"\n')
    assert status_url(path) == "http://[::1]:9860"
    path.write_text("[metrics]\nlisten = 'bad'\n")
    with pytest.raises(ConfigError, match=r"metrics\.listen: expected 'host:port'"):
        status_url(path)


def test_check_config_reports_metrics_address_clashes(tmp_path: Path) -> None:
    path = tmp_path / "e.toml"
    with pytest.raises(ConfigError, match=r"cameras\.cam1\.metrics_listen: expected 'host:port'"):
        parse_config(_cameras_toml(cam1="nope"), path)
    toml = _cameras_toml(cam1="127.0.0.1:9851", cam2="127.0.0.1:9851", cam3="0.0.0.0:9850")
    with pytest.raises(ConfigError) as info:
        parse_config(toml, path)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "cameras.cam2.metrics_listen: address 127.0.0.1:9851 is already used by camera cam1",
        "cameras.cam3.metrics_listen: address 0.0.0.0:9850 is already used by [metrics] listen",
    ]
    assert info.value.problems[0].startswith(f"{path}:")
    with pytest.raises(ConfigError, match="each camera needs its own"):
        parse_config(
            '[defaults]\nmetrics_listen = "127.0.0.1:9851"\n[cameras.a]\nsource = "synthetic"\n',
            path,
        )
    # With metrics off nothing listens, so nothing clashes.
    parse_config(toml.replace("[metrics]\n", "[metrics]\nenabled = false\n"), path)


# --- unit: contrib ---------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_fire_on_a_down_camera(tmp_path: Path) -> None:
    promtool = require(PROMTOOL)
    r = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    labels = 'instance="box:9850", job="edged", camera="cam1"'
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(
        f"""
rule_files: [{json.dumps(str(ALERTS))}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'edged_camera_up{{{labels}}}'
        values: '1 1 0 0 0 0 0'
      - series: 'edged_child_restarts_total{{{labels}, role="reader"}}'
        values: '0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 3m
        alertname: EdgedCameraDown
        exp_alerts: []
      - eval_time: 6m
        alertname: EdgedCameraDown
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "box:9850", job: edged, camera: cam1}}
            exp_annotations:
              summary: "camera cam1 on box:9850 is down"
              description: "No fresh frames for 2 minutes; `edged status` or /readyz says why."
      - eval_time: 6m
        alertname: EdgedRestartsFlapping
        exp_alerts: []
"""
    )
    r = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_and_rules_use_only_exported_metrics(metrics: Metrics, feeds: Feeds) -> None:
    metrics.observe_event({"camera": "cam1", "type": "x"})
    feeds.mqtt = mqtt_stats()
    exported = {k[0] for k in parse(metrics.render().decode())}
    exported |= {n.removesuffix("_bucket") for n in exported}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set(re.findall(r"\bedged_[a-z_]+", " ".join(exprs) + ALERTS.read_text()))
    assert used, "no edged_ metric in the dashboard or the rules"
    assert used - exported == set()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("frames per second", "frame age", "processing", "events", "reconnects", "outbox"):
        assert topic in titles, topic


# --- end to end: a live daemon ----------------------------------------------------------------


def edged_status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", "status", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_scrape(base: str, what: str, check: Any, timeout: float = 20) -> Samples:
    def probe() -> Samples | None:
        s = scrape(base)
        return s if s and check(s) else None

    result: Samples = wait_for(what, probe, timeout, every=0.2)
    return result


def readyz(base: str) -> tuple[int, dict[str, Any]]:
    code, text = get(base + "/readyz")
    return code, json.loads(text)


@pytest.mark.slow
def test_stopped_rtsp_server_drives_camera_down_then_up(tmp_path, daemons, rtsp_server_factory):
    server = rtsp_server_factory(width=640, height=360, fps=25, pattern="moving")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    camera = (
        f'source = "{server.url}"\nopen_timeout = "2s"\nread_timeout = "2s"\n'
        'stale_after = "1s"\nrestart_delay = "0.2s"\nrestart_max_delay = "1s"'
    )
    d = start_daemon(
        daemons,
        tmp_path,
        daemon_toml({"cam1": camera}, processors={"cam1": 'type = "null"'}, metrics=port),
    )
    up = wait_scrape(base, "camera up", lambda s: s.value("edged_camera_up", camera="cam1") == 1)
    assert up.value("edged_camera_reconnects_total", camera="cam1") == 0
    assert get(base + "/healthz") == (200, "ok\n")
    r = edged_status(d.config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cam1" in r.stdout and "streaming" in r.stdout

    server.stop()
    down = wait_scrape(
        base,
        "camera down, open failures counted",
        lambda s: (
            s.value("edged_camera_up", camera="cam1") == 0
            and s.value("edged_camera_open_failures_total", camera="cam1") >= 1
        ),
    )
    assert down.value("edged_camera_fps", camera="cam1") == 0
    code, body = readyz(base)
    assert code == 503 and body["ready"] is False
    assert body["cameras"]["cam1"]["state"] in ("stalled", "reconnecting", "restarting")
    r = edged_status(d.config)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "UNHEALTHY" in r.stdout

    server.start()  # the same port: the camera is back
    back = wait_scrape(
        base,
        "camera back, reconnect counted",
        lambda s: (
            s.value("edged_camera_up", camera="cam1") == 1
            and s.value("edged_camera_reconnects_total", camera="cam1") >= 1
        ),
        timeout=30,
    )
    assert back.value("edged_frames_decoded_total", camera="cam1") > up.value(
        "edged_frames_decoded_total", camera="cam1"
    )
    assert readyz(base)[0] == 200
    r = edged_status(d.config, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["cameras"]["cam1"]["reconnects"] >= 1

    assert d.stop() == 0
    r = edged_status(d.config)
    assert r.returncode == 2
    assert f"cannot reach edged at {base}" in r.stderr


@pytest.mark.slow
def test_readyz_follows_a_stalled_camera(tmp_path, daemons, rtsp_server_factory):
    server = rtsp_server_factory(width=640, height=360, fps=25, pattern="moving")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # A camera that freezes with its connection open: no frames, no error, until
    # the read timeout; stale_after says when that counts.
    camera = f'source = "{server.url}"\nstale_after = "1s"\nread_timeout = "8s"'
    d = start_daemon(
        daemons,
        tmp_path,
        daemon_toml({"cam1": camera}, processors={"cam1": 'type = "null"'}, metrics=port),
    )
    wait_for("ready", lambda: readyz(base)[0] == 200 if scrape(base) else False, 20)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        # /readyz turns 503 the moment the frame is older than stale_after; the
        # state turns "stalled" at the supervisor's next tick: wait for both.
        code, body = wait_for(
            "readyz 503 with the camera stalled",
            lambda: (
                (r := readyz(base))[0] == 503
                and r[1]["cameras"]["cam1"]["state"] == "stalled"
                and r
            ),
            timeout=15,
            every=0.1,
        )
        cam = body["cameras"]["cam1"]
        assert cam["ready"] is False
        assert cam["reason"].startswith("no frame for")
        assert cam["frame_age_s"] > 1
        r = edged_status(d.config)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "stalled" in r.stdout
        wait_scrape(
            base, "a stall counted", lambda s: s.value("edged_camera_stalls_total", camera="cam1")
        )
    finally:
        os.kill(server.pid, signal.SIGCONT)
    wait_for("readyz 200 again", lambda: readyz(base)[0] == 200, timeout=30, every=0.1)
    assert edged_status(d.config).returncode == 0
    assert d.stop() == 0


@pytest.mark.slow
def test_slow_processor_drives_skipped_frames_and_fills_histograms(tmp_path, daemons):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    d = start_daemon(
        daemons,
        tmp_path,
        daemon_toml(
            {"cam1": 'source = "synthetic"\nfps = 25'},
            processors={"cam1": 'type = "plugins:SlowProcessor"\ndelay = 0.3'},
            metrics=port,
        ),
    )
    s = wait_scrape(
        base,
        "skipped frames and processed frames",
        lambda s: (
            s.value("edged_frames_skipped_total", camera="cam1") >= 40
            and s.value("edged_event_latency_seconds_count", camera="cam1", sink="jsonl") >= 5
        ),
        timeout=30,
    )
    one = {"camera": "cam1"}
    processed = s.value("edged_frames_processed_total", **one)
    skipped = s.value("edged_frames_skipped_total", **one)
    # ~7 frames arrive per 300 ms of processing: most are skipped, none queue.
    assert skipped > 3 * processed
    took = s.value("edged_processing_duration_seconds_count", **one)
    assert took >= 5
    assert s.value("edged_processing_duration_seconds_bucket", camera="cam1", le="0.16") == 0
    assert s.value("edged_processing_duration_seconds_bucket", camera="cam1", le="0.64") == took
    # The processor starts on the newest frame: about a frame interval old at most.
    ages = s.value("edged_frame_age_seconds_count", **one)
    assert s.value("edged_frame_age_seconds_bucket", camera="cam1", le="0.08") >= 0.9 * ages
    assert s.value("edged_events_total", camera="cam1", type="frame") >= 5
    lat = {"camera": "cam1", "sink": "jsonl"}
    n = s.value("edged_event_latency_seconds_count", **lat)
    assert s.value("edged_event_latency_seconds_bucket", **lat, le="0.16") == 0  # >= 0.3 s
    assert s.value("edged_event_latency_seconds_bucket", **lat, le="1.25") == n
    r = edged_status(d.config, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    cam = json.loads(r.stdout)["cameras"]["cam1"]
    assert cam["skipped_ratio"] > 0.75 and cam["events"] >= 5
    assert cam["frame_age_p95_s"] < 0.08
    code, text = get(base + "/metrics")
    promtool_check_metrics(text)
    assert d.stop() == 0


@pytest.mark.slow
def test_a_real_prometheus_scrapes_edged(tmp_path, daemons):
    prometheus = require(PROMETHEUS)
    port, prom_port = free_port(), free_port()
    d = start_daemon(
        daemons,
        tmp_path,
        daemon_toml(
            {"cam1": 'source = "synthetic"\nfps = 10'},
            processors={"cam1": 'type = "null"'},
            metrics=port,
        ),
    )
    wait_scrape(
        f"http://127.0.0.1:{port}",
        "camera up",
        lambda s: s.value("edged_camera_up", camera="cam1") == 1,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(ALERTS))}]\n"
        "scrape_configs:\n  - job_name: edged\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(promql: str) -> list[dict[str, Any]] | None:
        try:
            code, text = get(f"{api}/query?" + urllib.parse.urlencode({"query": promql}))
        except (urllib.error.URLError, OSError):
            return None
        body = json.loads(text)
        assert code == 200 and body["status"] == "success", text
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    try:
        up = wait_for("edged_camera_up in Prometheus", lambda: query("edged_camera_up"), 60, 0.5)
        assert len(up) == 1
        assert up[0]["metric"] == {
            "__name__": "edged_camera_up",
            "camera": "cam1",
            "instance": f"127.0.0.1:{port}",
            "job": "edged",
        }
        assert up[0]["value"][1] == "1"

        # A few scrapes later, rates and quantiles over the histograms work.
        def decode_rate() -> float | None:
            found = query("rate(edged_frames_decoded_total[5s])")
            rate = float(found[0]["value"][1]) if found else 0.0
            return rate if 8 < rate < 12 else None

        wait_for("a decode rate of about 10/s (a 10 fps camera)", decode_rate, 30, 0.5)
        p95 = query(
            "histogram_quantile(0.95, sum by (camera, le) "
            "(rate(edged_frame_age_seconds_bucket[5s])))"
        )
        assert p95 and float(p95[0]["value"][1]) < 0.08
        code, text = get(f"{api}/targets")
        (target,) = json.loads(text)["data"]["activeTargets"]
        assert target["health"] == "up" and target["lastError"] == "", target
        code, text = get(f"{api}/rules")
        groups = json.loads(text)["data"]["groups"]
        assert [g["name"] for g in groups] == ["edged"]
        assert {r["health"] for r in groups[0]["rules"]} <= {"ok", "unknown"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert d.stop() == 0


@pytest.mark.slow
def test_per_camera_units_listen_side_by_side_from_one_config(tmp_path, daemons):
    global_port, port1, port2 = free_port(), free_port(), free_port()
    toml = (
        '[events]\npath = "events.jsonl"\n'
        f'[metrics]\nlisten = "127.0.0.1:{global_port}"\n'
        f'[cameras.cam1]\nsource = "synthetic"\nfps = 10\nmetrics_listen = "127.0.0.1:{port1}"\n'
        f'[cameras.cam2]\nsource = "synthetic"\nfps = 10\nmetrics_listen = "127.0.0.1:{port2}"\n'
    )
    (tmp_path / "cam1").mkdir()
    (tmp_path / "cam2").mkdir()
    d1 = start_daemon(daemons, tmp_path / "cam1", toml, "--camera", "cam1")
    d2 = Daemon(tmp_path / "cam2", toml, "--camera", "cam2")
    d2.config = d1.config  # edged@cam1 and edged@cam2: one config file
    daemons.append(d2.start())
    for port, name, other in ((port1, "cam1", "cam2"), (port2, "cam2", "cam1")):
        s = wait_scrape(
            f"http://127.0.0.1:{port}",
            f"{name} up on its own port",
            lambda s, name=name: s.value("edged_camera_up", camera=name) == 1,
        )
        assert s.value("edged_camera_up", camera=other) is None
        r = edged_status(d1.config, "--camera", name)
        assert r.returncode == 0, r.stdout + r.stderr
        assert name in r.stdout and other not in r.stdout
    # [metrics] listen: nobody there, but each camera's own address answers (issue 18)
    r = edged_status(d1.config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"http://127.0.0.1:{global_port}" not in r.stdout + r.stderr
    assert d1.stop() == 0 and d2.stop() == 0


@pytest.mark.slow
def test_metrics_address_in_use_stops_startup_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "edged.toml"
        config.write_text(
            daemon_toml(
                {"cam1": 'source = "synthetic"'}, processors={"cam1": 'type = "null"'}, metrics=port
            )
        )
        r = subprocess.run(
            [sys.executable, "-m", "edged", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 70, r.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in r.stderr


def test_readyz_is_not_ready_without_any_camera(supervisor: Supervisor, metrics: Metrics) -> None:
    # An edged@NAME whose camera a reload took away runs nothing: not ready.
    assert metrics.readiness()["cameras"]
    cams = dict(supervisor.cams)
    supervisor.cams.clear()
    try:
        body = metrics.readiness()
        assert body["cameras"] == {} and body["ready"] is False
    finally:
        supervisor.cams.update(cams)


def wait_for_state(base: str, state: str, what: str) -> tuple[int, dict[str, Any]]:
    """/readyz once it shows cam1 in ``state``: (status code, body)."""
    result: tuple[int, dict[str, Any]] = wait_for(
        f"readyz: {what}",
        lambda: scrape(base) and (r := readyz(base))[1]["cameras"]["cam1"]["state"] == state and r,
        timeout=20,
        every=0.1,
    )
    return result


@pytest.mark.slow
def test_a_stuck_processor_is_killed_restarted_and_reported(tmp_path, daemons):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    camera = (
        'source = "synthetic"\nfps = 25\nprocess_timeout = "1s"\n'
        'restart_delay = "3s"\nrestart_max_delay = "3s"'
    )
    processor = 'type = "plugins:StuckProcessor"\nafter = 2'
    d = start_daemon(
        daemons,
        tmp_path,
        daemon_toml({"cam1": camera}, processors={"cam1": processor}, metrics=port),
    )
    # Two frames, then process() never returns: the worker's heartbeat stops
    # with it, so only the process() deadline can tell.
    d.wait_events(2, "frame", timeout=20)
    code, body = wait_for_state(base, "restarting", "the stuck worker killed, a new one due")
    assert code == 503
    assert body["cameras"]["cam1"]["reason"].startswith("worker")
    assert "camera cam1: processor plugins:StuckProcessor stuck in process() for" in d.log
    assert "(process_timeout 1s): killing the worker" in d.log
    s = wait_scrape(
        base,
        "the restart counted as hung",
        lambda s: s.value("edged_child_restart_reasons_total", camera="cam1", reason="hung") == 1,
    )
    assert s.value("edged_camera_up", camera="cam1") == 0
    wait_for("a new worker", lambda: d.children("worker"), timeout=15)
    d.wait_events(4, "frame", timeout=20)  # the new worker's two frames
    assert d.stop() == 0


@pytest.mark.slow
def test_a_worker_that_cannot_set_up_is_failed_with_its_reason_while_it_waits(tmp_path, daemons):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    camera = 'source = "synthetic"\nfps = 25\nrestart_delay = "0.2s"'
    processor = 'type = "plugins:BrokenSetupProcessor"'
    d = start_daemon(
        daemons,
        tmp_path,
        daemon_toml({"cam1": camera}, processors={"cam1": processor}, metrics=port),
    )
    code, body = wait_for_state(base, "failed", "the worker unable to set up")
    # Frames decode, but nothing processes them: failed, and /readyz says why in the
    # processor's own words (it will not fix itself: retried at restart_max_delay).
    assert code == 503
    reason = "worker cannot set up: RuntimeError: model file /nonexistent/model.onnx is missing"
    assert body["cameras"]["cam1"]["reason"] == reason
    assert "model file /nonexistent/model.onnx is missing" in d.log
    r = edged_status(d.config)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "worker cannot set up: RuntimeError: model file" in r.stdout
    assert d.stop() == 0


def test_status_says_what_is_wrong_with_a_bad_url_or_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_status_command("garbage", as_json=False) == 2
    assert "cannot reach edged at garbage: not an http:// URL" in capsys.readouterr().err
    cfg = tmp_path / "edged.toml"
    cfg.write_bytes(b'[cameras.a]\nsource = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        status_url(cfg)


def _handler_threads() -> int:
    """Threads serving one HTTP connection each (socketserver names them by target)."""
    import threading

    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0)  # else recv() first waits for data, MSG_DONTWAIT or not
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except ConnectionResetError:
        return True


def test_idle_connections_are_bounded_timed_out_and_never_lock_healthz_out(
    metrics: Metrics, capfd: pytest.CaptureFixture[str]
) -> None:
    metrics.idle_timeout = 1.5  # 10 s in the daemon
    metrics.max_connections = 8
    metrics.start()
    host, port = metrics.address
    # Slowloris: connections that send half a request line, then nothing.
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(40)]
    try:
        for sock in idle:
            sock.sendall(b"GET /metr")
        # The oldest idle ones were closed to make room for the newer.
        wait_for("room made", lambda: sum(map(_closed_by_peer, idle)) >= 40 - 8)
        assert _handler_threads() <= 8 + 1, _handler_threads()  # +1: one ending now
        assert get(f"http://{host}:{port}/healthz") == (200, "ok\n")
        started = time.monotonic()
        wait_for("idle connections closed", lambda: all(map(_closed_by_peer, idle)), 5)
        assert time.monotonic() - started >= 0.5  # by the timeout, not at once
        wait_for("their threads gone", lambda: _handler_threads() == 0, 5)
    finally:
        for sock in idle:
            sock.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_camera_added_by_a_reload_has_its_series_from_the_start(
    supervisor: Supervisor, feeds: Feeds
) -> None:
    # The metrics were made when only cam1 ran; a reload then added cam2 to the
    # supervisor's cameras (the one view of what runs): cam2's histograms read
    # 0 before its first frame, as cam1's did, rather than being absent.
    m = Metrics(sources_of(supervisor, feeds), supervisor.config, ["cam1"])
    s = parse(m.render().decode())
    for name in ("cam1", "cam2"):
        assert s.value("edged_frame_age_seconds_count", camera=name) == 0
        assert s.value("edged_processing_duration_seconds_count", camera=name) == 0
        assert s.value("edged_event_latency_seconds_count", camera=name, sink="jsonl") == 0
