"""Snapshots: the config, the writer (names, retention, failures), and a daemon end to end
with the synthetic camera, the motion processor and a real Mosquitto (marked slow)."""

from __future__ import annotations

import json
import logging
import os
import re
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from components.mqtt import Mosquitto, Subscriber, mosquitto_sub_retained
from daemon import Daemon, wait_for

from edged.config import SnapshotsConfig, parse_config
from edged.errors import ConfigError
from edged.snapshots import SnapshotWriter, snapshot_name

REPO = Path(__file__).resolve().parent.parent
CAM = '[cameras.cam1]\nsource = "synthetic"\n'


# -- config -------------------------------------------------------------------------


def test_snapshots_are_off_by_default_and_inherit_defaults_key_by_key(tmp_path: Path) -> None:
    plain = parse_config(CAM, str(tmp_path / "edged.toml")).cameras["cam1"].snapshots
    assert plain == SnapshotsConfig()
    assert (plain.enabled, plain.types, plain.quality, plain.max_count, plain.max_age) == (
        False,
        [],
        85,
        1000,
        7 * 86400,
    )
    assert not plain.mqtt
    text = textwrap.dedent(
        """
        [defaults.snapshots]
        enabled = true
        quality = 70
        max_age = "1h"
        [cameras.cam1]
        source = "synthetic"
        [cameras.cam2]
        source = "synthetic"
        [cameras.cam2.snapshots]
        types = ["motion"]
        mqtt = true
        """
    )
    cams = parse_config(text, str(tmp_path / "edged.toml")).cameras
    assert cams["cam1"].snapshots == SnapshotsConfig(enabled=True, quality=70, max_age=3600)
    assert cams["cam2"].snapshots == SnapshotsConfig(
        enabled=True, quality=70, max_age=3600, types=["motion"], mqtt=True
    )


def test_snapshot_config_mistakes_are_all_reported(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """
        [defaults.snapshots]
        quality = 0
        [cameras.cam1]
        source = "synthetic"
        [cameras.cam1.snapshots]
        types = ["motion start"]
        max_age = "soon"
        max_cuont = 3
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, str(tmp_path / "edged.toml"))
    got = "\n".join(info.value.problems)
    assert "defaults.snapshots.quality: Input should be greater than or equal to 1" in got
    assert "cameras.cam1.snapshots.types: an event type or prefix uses letters" in got
    assert "cameras.cam1.snapshots.max_age: invalid duration" in got
    assert "cameras.cam1.snapshots.max_cuont: unknown key (did you mean 'max_count'?)" in got


def test_types_match_whole_names_and_dotted_prefixes() -> None:
    cfg = SnapshotsConfig(types=["motion", "person.seen"])
    assert [cfg.matches(t) for t in ("motion.start", "motion", "motion.end")] == [True] * 3
    assert [cfg.matches(t) for t in ("person.seen", "person.seen.near")] == [True, True]
    assert not any(cfg.matches(t) for t in ("motionless", "person", "frame"))
    assert SnapshotsConfig().matches("anything.at.all")


def test_example_config_documents_every_snapshot_option_with_its_default() -> None:
    text = (REPO / "config/example.toml").read_text()
    start = text.index("\n[defaults.snapshots]\n")
    section = text[start : text.index("\n\n", start)]
    for key in SnapshotsConfig.model_fields:
        assert f"\n{key} = " in section, key
    shown = tomllib.loads(section)["defaults"]["snapshots"]
    assert SnapshotsConfig.model_validate(shown) == SnapshotsConfig()


# -- the writer -----------------------------------------------------------------------


def picture(h: int = 360, w: int = 640) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    cv2.rectangle(image, (w // 4, h // 4), (w // 2, h // 2), (0, 230, 255), -1)
    return image


def snapshot_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.jpg")) if folder.is_dir() else []


def test_one_jpeg_per_frame_named_in_the_events_that_match(tmp_path: Path) -> None:
    writer = SnapshotWriter("cam1", SnapshotsConfig(enabled=True, types=["motion"]), tmp_path)
    records: list[dict[str, Any]] = [{"type": "motion.start"}, {"type": "frame"}]
    assert writer.wants(records) and not writer.wants([{"type": "frame"}])
    jpeg = writer.encode(picture())
    assert jpeg is not None
    writer.save(jpeg, 1.8e9, 42, records)
    assert records[0]["snapshot"] == "snapshots/cam1/20270115T080000.000000Z_42.jpg"
    assert "snapshot" not in records[1]
    image = cv2.imread(str(tmp_path / records[0]["snapshot"]))
    assert image is not None and image.shape == (360, 640, 3)
    assert os.listdir(tmp_path / "snapshots/cam1") == ["20270115T080000.000000Z_42.jpg"]
    assert (writer.saved, writer.failures) == (1, 0)


def test_quality_sets_the_jpeg_size(tmp_path: Path) -> None:
    noisy = np.random.default_rng(1).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    sizes = []
    for quality in (20, 95):
        writer = SnapshotWriter("c", SnapshotsConfig(quality=quality), tmp_path / str(quality))
        jpeg = writer.encode(noisy)
        assert jpeg is not None
        sizes.append(len(jpeg))
    assert sizes[0] < sizes[1] / 2


def test_retention_by_count_and_age_oldest_first_with_a_scan_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots/cam1"
    folder.mkdir(parents=True)
    start = time.time() - 100
    names = [snapshot_name(start + i, i) for i in range(4)]
    for name in names:
        (folder / name).write_bytes(b"jpeg")
    os.utime(folder / names[0], (1000.0, 1000.0))  # far older than max_age
    (folder / f".{snapshot_name(start, 99)}.tmp").write_bytes(b"half")  # a killed write
    (folder / "notes.txt").write_text("not ours")
    cfg = SnapshotsConfig(enabled=True, max_count=2, max_age=86400)
    writer = SnapshotWriter("cam1", cfg, tmp_path)
    # Scanned at start: the stale one and the leftover go, then all but the newest two.
    assert snapshot_files(folder) == names[2:]
    assert sorted(os.listdir(folder)) == sorted([*names[2:], "notes.txt"])
    for seq in (10, 11, 12):
        records: list[dict[str, Any]] = [{"type": "motion.start"}]
        writer.save(b"jpeg", time.time() + seq, seq, records)
        assert (folder / Path(records[0]["snapshot"]).name).exists()
        assert len(snapshot_files(folder)) == 2
    assert [n.split("_")[1] for n in snapshot_files(folder)] == ["11.jpg", "12.jpg"]


def test_a_snapshot_that_cannot_be_written_costs_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "edged.snapshots")
    (tmp_path / "snapshots").write_text("a file where the folder should be")
    writer = SnapshotWriter("cam1", SnapshotsConfig(enabled=True), tmp_path)
    batches = [[{"type": "motion.start", "n": n}] for n in range(3)]
    for n, records in enumerate(batches):
        writer.save(b"jpeg", 1.8e9 + n, n, records)
    assert all("snapshot" not in r for records in batches for r in records)
    assert (writer.saved, writer.failures) == (0, 3)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text  # once per run of failures
    assert "camera cam1: cannot write" in errors[0].getMessage()
    (tmp_path / "snapshots").unlink()
    records: list[dict[str, Any]] = [{"type": "motion.start"}]
    writer.save(b"jpeg", 1.8e9 + 9, 9, records)
    assert "snapshot" in records[0] and writer.saved == 1
    assert "camera cam1: snapshots are saved again (3 could not be)" in caplog.text


# -- the daemon -----------------------------------------------------------------------


def by_camera(d: Daemon, camera: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e["camera"] == camera]


@pytest.mark.slow
def test_daemon_snapshots_with_retention_a_type_filter_mqtt_and_an_unwritable_folder(
    tmp_path: Path, mosquitto: Mosquitto, daemons: list[Daemon], subscribers: list[Subscriber]
) -> None:
    state = tmp_path / "state"
    blocked = state / "snapshots/cam3"
    if os.geteuid() == 0:  # root writes to read-only folders: a file in the way instead
        blocked.parent.mkdir(parents=True)
        blocked.write_text("")
    else:
        blocked.mkdir(parents=True)
        blocked.chmod(0o500)
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
        reconnect_max_delay = "1s"
        [defaults]
        width = 640
        height = 360
        fps = 15
        [defaults.processor]
        type = "motion"
        [defaults.snapshots]
        enabled = true
        [cameras.cam1]
        source = "synthetic"
        [cameras.cam1.snapshots]
        max_count = 2
        mqtt = true
        [cameras.cam2]
        source = "synthetic"
        [cameras.cam2.snapshots]
        types = ["person"]
        [cameras.cam3]
        source = "synthetic"
        """
    )
    sub = Subscriber(mosquitto, "edged/#")
    subscribers.append(sub)
    d = Daemon(tmp_path, toml).start()
    daemons.append(d)
    # start, end, start: one more snapshot than max_count keeps.
    wait_for("3 cam1 events", lambda: len(by_camera(d, "cam1")) >= 3, timeout=40)
    wait_for("2 cam3 events", lambda: len(by_camera(d, "cam3")) >= 2, timeout=20)
    assert d.stop() == 0
    if os.geteuid() != 0:
        blocked.chmod(0o700)

    cam1 = by_camera(d, "cam1")
    assert [e["type"] for e in cam1[:3]] == ["motion.start", "motion.end", "motion.start"]
    paths = [e["snapshot"] for e in cam1]
    assert all(re.fullmatch(r"snapshots/cam1/\d{8}T\d{6}\.\d{6}Z_\d+\.jpg", p) for p in paths)
    assert len(set(paths)) == len(paths)  # one per frame, and each event its own frame
    kept = snapshot_files(state / "snapshots/cam1")
    assert kept == sorted(Path(p).name for p in paths[-2:])  # the newest two
    for name in kept:
        image = cv2.imread(str(state / "snapshots/cam1" / name))
        assert image is not None and image.shape == (360, 640, 3)
    assert all("snapshot" not in e for e in by_camera(d, "cam2"))  # types match nothing
    assert not (state / "snapshots/cam2").exists()
    cam3 = by_camera(d, "cam3")
    assert len(cam3) >= 2 and all("snapshot" not in e for e in cam3)
    assert d.log.count("camera cam3: cannot write") == 1, d.log
    assert "Traceback" not in d.log

    # On MQTT: the events name their snapshots; the newest JPEG is retained.
    newest = (state / paths[-1]).read_bytes()
    wait_for("the newest snapshot", lambda: any(
        m.payload == newest for m in sub.received("edged/box1/cam1/snapshot")))  # fmt: skip
    assert sub.received("edged/box1/cam1/snapshot")[-1].payload == newest
    published = {json.loads(m.payload)["id"]: m for m in sub.received("edged/box1/cam1/events")}
    assert json.loads(published[cam1[-1]["id"]].payload)["snapshot"] == paths[-1]
    assert mosquitto_sub_retained(mosquitto, "edged/box1/cam1/snapshot") == newest
    assert not sub.received("edged/box1/cam2/snapshot") + sub.received("edged/box1/cam3/snapshot")
