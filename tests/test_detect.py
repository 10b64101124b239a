"""The built-in ``detect`` processor (issue 19): ONNX detectors by configuration.

The models are built here (tests/detect_models.py) and really detect: a
bright square that tests/plugins.py's ``MovingSquareSource`` moves across a
dark scene. The end-to-end tests run the real daemon.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from components.rtsp import free_port
from daemon import readyz, start_daemon, wait_for
from detect_models import detector, misfit, write

from edged.config import parse_config
from edged.errors import ConfigError
from edged.processor import Frame
from edged.processors.detect.layout import classify
from edged.processors.detect.onnxinfo import read_info
from edged.processors.detect.options import DetectOptions
from edged.processors.detect.processor import DetectProcessor

LAYOUTS = [("yolov8", "batch"), ("yolov5", "batch"), ("nms", 1), ("nms7", 1), ("yolov8", 1)]


def _model(tmp_path: Path, layout: str = "yolov8", batch: int | str = "batch", **kw) -> Path:
    return write(tmp_path / f"{layout}-{batch}.onnx", detector(layout, batch, **kw))


def _processor(model: Path, **options: object) -> DetectProcessor:
    opts = DetectOptions.model_validate({"model": str(model), **options})
    proc = DetectProcessor(opts, "cam")
    proc.setup()
    return proc


def _scene(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


# -- detecting -----------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "batch"), LAYOUTS)
@pytest.mark.parametrize(("height", "width"), [(120, 160), (160, 120)])
def test_every_layout_finds_the_square_where_it_is(tmp_path, layout, batch, height, width) -> None:
    proc = _processor(_model(tmp_path, layout, batch), classes=["person"])
    box = (30, 40, 60, 70)
    images = [_scene(height, width, box), np.zeros((height, width, 3), np.uint8)]
    (lb, found), (_, none) = proc.infer(images)
    assert len(none.scores) == 0
    # One person: the weaker duplicate went to NMS, the car to `classes`.
    (det,) = proc.detections(lb, found)
    assert det.label == "person" and det.score > 0.9
    want = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    assert np.allclose(det.box, want, atol=0.02), (det.box, want)


def test_without_classes_every_label_is_reported_and_min_score_drops_the_weak(tmp_path) -> None:
    model = _model(tmp_path)
    image = _scene(120, 160, (30, 40, 60, 70))
    proc = _processor(model)
    assert sorted(d.label for d in proc.detections(*proc.infer([image])[0])) == ["car", "person"]
    proc = _processor(model, min_score=0.85)  # the car scores 0.8
    assert [d.label for d in proc.detections(*proc.infer([image])[0])] == ["person"]
    # A label's filter may ask for less than min_score (or more) for that label alone.
    car = {"car": {"min_score": 0.7}}
    proc = _processor(model, min_score=0.85, filters=car)
    assert sorted(d.label for d in proc.detections(*proc.infer([image])[0])) == ["car", "person"]
    proc = _processor(model, min_score=0.5, filters={"car": {"min_score": 0.85}})
    assert [d.label for d in proc.detections(*proc.infer([image])[0])] == ["person"]


class _Counting:
    """An ONNX Runtime session that counts its calls and their batch sizes."""

    def __init__(self, session) -> None:
        self.session, self.calls = session, []

    def run(self, names, feeds):
        self.calls.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


@pytest.mark.parametrize(("batch", "calls"), [("batch", [3]), (1, [1, 1, 1]), (2, [2, 2])])
def test_a_batch_is_one_call_when_the_model_takes_it(tmp_path, batch, calls) -> None:
    proc = _processor(_model(tmp_path, "yolov8", batch), classes=["person"], start_frames=1)
    proc.session = _Counting(proc.session)
    frames = [
        Frame(_scene(120, 160, (10 + 30 * i, 40, 40 + 30 * i, 70)), 1, 0.0, 1.0 + i, "cam")
        for i in range(3)
    ]
    results = proc.process_batch(frames)
    assert proc.session.calls == calls  # a fixed batch of 2 pads the last call
    assert len(results) == 3


# -- check-config ----------------------------------------------------------------------


def _problems(toml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml, "edged.toml")
    return info.value.problems


def _config(model: Path | str, extra: str = "") -> str:
    return (
        '[cameras.front]\nsource = "synthetic"\nprocessor = "people"\n'
        f'[processors.people]\ntype = "detect"\nmodel = "{model}"\n{extra}'
    )


def test_a_model_whose_output_fits_no_layout_is_a_config_error_at_its_line(tmp_path) -> None:
    model = write(tmp_path / "segmenter.onnx", misfit())
    (problem,) = _problems(_config(model))
    assert problem == (
        f"edged.toml:6: processors.people.model: {model}: output 'output0' "
        "[batch, 1, 64, 64] fits no layout edged reads; expected [batch, 4+classes, "
        "candidates] (YOLOv8/YOLO11), [batch, candidates, 5+classes] (YOLOv5), "
        "[batch, detections, 6] or [detections, 7] (NMS built in)"
    )
    config = tmp_path / "edged.toml"
    config.write_text(_config(model))
    r = subprocess.run(
        [sys.executable, "-m", "edged", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    assert f"edged.toml:6: processors.people.model: {model}: output 'output0'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("input_size = 320", "input_size", "320, but {model} takes a fixed 64x64 input"),
        ('classes = ["person", "persn"]', "classes[1]", "unknown label 'persn' (did you mean"),
        ('labels = "coco"', "labels", "COCO has 80 labels, but {model} has 2 classes"),
        ('labels = "three.txt"', "labels", "three.txt has 3 labels, but {model} has 2 classes"),
        ("layout = 'yolov5'", "model", "fits no layout edged reads; expected the yolov5 layout"),
        ("[processors.people.filters.dog]\nmin_score = 0.6", "filters.dog", "unknown label 'dog'"),
    ],
)
def test_options_that_do_not_fit_the_model_are_errors_at_their_key(
    tmp_path, extra, key, says
) -> None:
    model = _model(tmp_path, metadata=True)
    (tmp_path / "three.txt").write_text("person\ncar\ndog\n")
    toml = _config(model, extra).replace("three.txt", str(tmp_path / "three.txt"))
    (problem,) = _problems(toml)
    assert f": processors.people.{key}: " in problem
    assert says.format(model=model) in problem, problem
    assert problem.startswith("edged.toml:7:" if key != "model" else "edged.toml:6:")


def test_a_missing_unreadable_or_foreign_model_file_is_a_config_error(tmp_path) -> None:
    missing = tmp_path / "gone.onnx"
    (problem,) = _problems(_config(missing))
    assert problem == f"edged.toml:6: processors.people.model: file not found: {missing}"
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    (problem,) = _problems(_config(text))
    assert problem.startswith(f"edged.toml:6: processors.people.model: {text}: not an ONNX model")
    (problem,) = _problems(_config(tmp_path))
    assert "processors.people.model: not a file" in problem
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(detector("yolov8")[:200])  # a download that stopped half way
    (problem,) = _problems(_config(cut))
    assert problem.startswith(f"edged.toml:6: processors.people.model: {cut}: not an ONNX model")
    if os.geteuid() != 0:  # root reads anything
        locked = _model(tmp_path)
        locked.chmod(0)
        (problem,) = _problems(_config(locked))
        assert "cannot read" in problem


def test_a_free_input_size_must_suit_the_model_and_the_runtime_must_be_there(
    tmp_path, monkeypatch
) -> None:
    model = write(tmp_path / "free.onnx", detector("yolov8", size="size"))
    assert DetectOptions.model_validate({"model": model}).size(classify_of(model)) == 640
    (problem,) = _problems(_config(model, "input_size = 100"))
    assert problem == (
        "edged.toml:7: processors.people.input_size: 100 is not a multiple of 32 (a YOLO's "
        "largest stride): the model would fail on every frame"
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    (problem,) = _problems(_config(model))
    assert problem == (
        "edged.toml:5: processors.people.type: the detect processor needs "
        "pip install 'edged[detect]' (ONNX Runtime)"
    )


def classify_of(model: Path):
    info = read_info(model)
    return classify(info.inputs, info.outputs)


def test_labels_come_from_the_model_a_file_or_coco(tmp_path) -> None:
    with_names = _model(tmp_path, metadata=True)
    assert DetectOptions.model_validate({"model": with_names}).names == ("person", "car")
    labels = tmp_path / "labels.txt"
    labels.write_text("human\nvehicle\n")
    opts = DetectOptions.model_validate({"model": with_names, "labels": str(labels)})
    assert opts.names == ("human", "vehicle")
    nms = _model(tmp_path, "nms", 1, metadata=False)  # no class count in its output shape
    assert DetectOptions.model_validate({"model": nms}).names[:2] == ("person", "bicycle")
    nameless = _model(tmp_path, "yolov5", metadata=False)
    (problem,) = _problems(_config(nameless))
    assert problem == (
        f"edged.toml:4: processors.people.labels: {nameless} has 2 classes and no names in "
        "its metadata: give labels = a file with one label per line"
    )


# -- end to end: the real daemon -----------------------------------------------------

SQUARE = 'source = "plugins:MovingSquareSource"\nsource_options = {{ {options} }}\n'


def _camera(name: str, processor: str, options: str = "crossings = 1", extra: str = "") -> str:
    body = SQUARE.format(options=options)
    return f'[cameras.{name}]\n{body}processor = "{processor}"\n{extra}\n'


def _daemon_toml(model: Path, cameras: str, options: str = "", port: int | None = None) -> str:
    metrics = f'[metrics]\nlisten = "127.0.0.1:{port}"\n' if port else ""
    return (
        f'[events]\npath = "events.jsonl"\n{metrics}'
        f'[processors.people]\ntype = "detect"\nmodel = "{model}"\nclasses = ["person"]\n'
        f'end_after = "1s"\n{options}\n{cameras}'
    )


@pytest.mark.slow
def test_one_square_crossing_is_one_object_start_and_one_end(tmp_path, daemons) -> None:
    d = start_daemon(daemons, tmp_path, _daemon_toml(_model(tmp_path), _camera("front", "people")))
    (end,) = d.wait_events(1, "object.end", timeout=30)
    starts = d.events("object.start")
    assert len(starts) == 1, starts
    assert starts[0]["data"]["label"] == "person"
    assert end["data"]["id"] == starts[0]["data"]["id"]
    assert end["data"]["duration"] > 1.0
    assert all(e["camera"] == "front" for e in d.events())
    assert "Traceback" not in d.log
    assert d.stop() == 0


@pytest.mark.slow
def test_a_mask_hides_part_of_the_path_and_a_zone_names_where_it_is(tmp_path, daemons) -> None:
    regions = (
        "[cameras.front.masks.left]\npoints = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]\n"
        "[cameras.front.zones.right]\npoints = [[0.75, 0], [1, 0], [1, 1], [0.75, 1]]\n"
    )
    toml = _daemon_toml(_model(tmp_path), _camera("front", "people", extra=regions))
    d = start_daemon(daemons, tmp_path, toml)
    d.wait_events(1, "object.end", timeout=30)
    (start,) = d.events("object.start")
    # Seen only once its bottom-centre left the mask.
    box = start["data"]["box"]
    assert (box[0] + box[2]) / 2 >= 0.5, box
    zoned = [e for e in d.events() if "right" in e["data"].get("zones", [])]
    assert zoned, d.events()
    assert d.stop() == 0


@pytest.mark.slow
def test_a_shared_detector_serves_two_cameras_in_batches(tmp_path, daemons) -> None:
    cameras = _camera("a", "people") + _camera("b", "people", "crossings = 1, y = 0.1")
    toml = _daemon_toml(_model(tmp_path), cameras, "batch_size = 2\nbatch_wait = '20ms'")
    d = start_daemon(daemons, tmp_path, toml)
    wait_for(
        "an object.end of each camera",
        lambda: {e["camera"] for e in d.events("object.end")} == {"a", "b"},
        timeout=30,
    )
    for cam in ("a", "b"):
        assert len([e for e in d.events("object.start") if e["camera"] == cam]) == 1
    assert "Traceback" not in d.log
    assert d.stop() == 0


@pytest.mark.slow
def test_a_model_that_fails_to_load_at_run_time_is_a_failed_camera_retried_slowly(
    tmp_path, daemons
) -> None:
    model = _model(tmp_path)
    good = model.read_bytes()
    port = free_port()
    camera = _camera("front", "people", "crossings = 0", 'restart_max_delay = "2s"')
    d = start_daemon(daemons, tmp_path, _daemon_toml(model, camera, port=port))

    def state() -> tuple[str, str] | None:
        body = readyz(port)
        cam = body and body["cameras"].get("front")
        return (cam["state"], cam["reason"]) if cam else None

    wait_for("streaming", lambda: (state() or ("",))[0] == "streaming", timeout=30)
    # The file is damaged after the check; the worker dies and cannot come back.
    model.write_bytes(good[: len(good) // 2])
    (worker,) = d.children("worker")
    worker.kill()
    failed = wait_for("the failed state", lambda: (s := state()) and s[0] == "failed" and s)
    assert failed[1].startswith(
        f"processor people (instance 1) cannot set up: cannot load model {model}"
    )
    restarts = d.log.count("failed to set up (exit 78)")
    assert "Traceback" not in d.log
    # Retried at restart_max_delay, not in a loop; fixed, it comes back by itself.
    model.write_bytes(good)
    wait_for("streaming again", lambda: (state() or ("",))[0] == "streaming", timeout=30)
    assert restarts <= 2
    assert d.stop() == 0


def test_check_config_needs_no_runtime_in_the_supervisor(tmp_path) -> None:
    """The check reads declarations only: onnxruntime is not imported by it."""
    code = (
        "import sys; from edged.config import parse_config\n"
        f"parse_config(open({str(tmp_path / 'c.toml')!r}).read(), 'c.toml')\n"
        "print('onnxruntime' in sys.modules)"
    )
    (tmp_path / "c.toml").write_text(_config(_model(tmp_path)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
