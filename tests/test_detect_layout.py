"""Reading ONNX detectors: declarations without a runtime, and their layouts (issue 19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detect_models import detector, write

from edged.processors.detect.layout import Candidates, Layout, classify, decode, nms
from edged.processors.detect.onnxinfo import NotOnnx, TensorInfo, parse, read_info

# -- reading models ------------------------------------------------------------------


def test_the_declarations_are_read_without_loading_the_model(tmp_path: Path) -> None:
    info = read_info(write(tmp_path / "m.onnx", detector("yolov8")))
    assert info.inputs == (TensorInfo("images", ("batch", 3, 64, 64), "float32"),)
    assert info.outputs == (TensorInfo("output0", ("batch", 6, 16), "float32"),)
    assert info.metadata == {"names": "{0: 'person', 1: 'car'}"}
    with pytest.raises(NotOnnx):
        parse(memoryview(b"name,score\nperson,0.9\n"))
    with pytest.raises(NotOnnx):
        parse(memoryview(b"\x08\x08"))  # an IR version and nothing else


@pytest.mark.parametrize(
    ("shape", "layout", "classes"),
    [
        ((1, 84, 8400), Layout.YOLOV8, 80),
        (("batch", 84, "anchors"), Layout.YOLOV8, 80),
        ((1, 25200, 85), Layout.YOLOV5, 80),
        ((1, 300, 6), Layout.NMS, None),
        ((1, 25200, 6), Layout.YOLOV5, 1),  # too many rows for NMS output
        (("n", 7), Layout.NMS7, None),
    ],
)
def test_layouts_are_told_apart_by_shape(shape, layout, classes) -> None:
    spec = classify(
        [TensorInfo("images", (1, 3, 640, 640), "float32")], [TensorInfo("out", shape, "float32")]
    )
    assert (spec.layout, spec.classes) == (layout, classes)


def test_a_model_with_several_outputs_is_read_from_the_first_that_fits() -> None:
    spec = classify(
        [TensorInfo("images", ("b", 3, 640, 640), "float32")],
        [
            TensorInfo("proto", (1, 32, 160, 160), "float32"),
            TensorInfo("out", (1, 84, 8400), "float32"),
        ],
    )
    assert (spec.output_name, spec.output_index, spec.batch, spec.height) == ("out", 1, None, 640)


def test_an_input_that_is_not_an_nchw_image_is_named_with_its_shape() -> None:
    with pytest.raises(ValueError, match=r"input 'x' has shape \[1, 640, 640, 3\]; expected one"):
        classify([TensorInfo("x", (1, 640, 640, 3), "float32")], [])
    with pytest.raises(ValueError, match=r"input 'x' takes uint8"):
        classify([TensorInfo("x", (1, 3, 640, 640), "uint8")], [])


def test_decoding_each_layout_and_nms_per_label() -> None:
    # yolov8: [1, 4+2, 3]: two overlapping "class 0" boxes and one of class 1.
    v8 = np.array([[[50, 52, 50], [50, 50, 50], [20, 20, 20], [20, 20, 20],
                    [0.9, 0.8, 0.1], [0.0, 0.1, 0.7]]], np.float32)  # fmt: skip
    found = decode(Layout.YOLOV8, v8, 0, 0.5)
    assert found.classes.tolist() == [0, 0, 1]
    assert found.boxes[0].tolist() == [40, 40, 60, 60]
    kept = nms(found, 0.45, 10)
    assert kept.classes.tolist() == [0, 1] and kept.scores.tolist() == pytest.approx([0.9, 0.7])
    assert nms(found, 0.45, 1).scores.tolist() == pytest.approx([0.9])
    # yolov5: the score is objectness times the class score.
    v5 = np.array([[[50, 50, 20, 20, 0.8, 0.5, 1.0], [50, 50, 20, 20, 0.4, 1.0, 0.0]]], np.float32)
    found = decode(Layout.YOLOV5, v5, 0, 0.5)
    assert found.classes.tolist() == [1] and found.scores.tolist() == pytest.approx([0.8])
    rows = np.array([[[1, 2, 3, 4, 0.9, 2], [0, 0, 0, 0, 0.0, 0]]], np.float32)
    found = decode(Layout.NMS, rows, 0, 0.5)
    assert found.boxes.tolist() == [[1, 2, 3, 4]] and found.classes.tolist() == [2]
    rows7 = np.array([[0, 1, 2, 3, 4, 5, 0.9], [1, 1, 2, 3, 4, 6, 0.8]], np.float32)
    assert decode(Layout.NMS7, rows7, 1, 0.5).classes.tolist() == [6]
    empty = Candidates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int))
    assert len(nms(empty, 0.5, 5).scores) == 0
