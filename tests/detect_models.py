"""Small ONNX detectors built with onnx's helpers, for tests/test_detect.py.

They really detect: a bright object on a dark frame. Each graph takes the
letterboxed input ``images`` ``[batch, 3, 64, 64]``, keeps what is brighter
than 0.6 (the letterbox's grey, 0.45, is not), and finds its centroid and
size: one box, scored by its brightness. It emits three candidates in the
layout asked for: that box as "person", the same box shifted by a pixel as a
weaker "person" (which non-maximum suppression must remove, or a test sees
two objects), and the box as a weaker "car" (``classes`` must filter it);
the rest of the candidates are zero padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 64
CLASSES = ("person", "car")
CANDIDATES = 16  # yolov5/yolov8 layouts: more candidates than values per candidate
NMS_ROWS = 8


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: object, dtype: type = np.float32) -> str:
        self.n += 1
        name = f"k{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *inputs: str, **attrs: object) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out


def _features(g: _Graph) -> tuple[str, str, str, str, str]:
    """cx, cy, side, score ([batch, 1] each, input pixels) and a [batch, 1] zero."""
    gray = g.op("ReduceMean", "images", axes=[1], keepdims=1)
    bright = g.op("Mul", g.op("Relu", g.op("Sub", gray, g.const(0.6))), g.const(2.5))
    axes = g.const([1, 2, 3], np.int64)
    area = g.op("ReduceSum", bright, axes, keepdims=0)
    area = g.op("Unsqueeze", area, g.const([1], np.int64))
    denom = g.op("Add", area, g.const(1e-6))
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    xs = g.const(np.broadcast_to(grid, (1, 1, SIZE, SIZE)))
    ys = g.const(np.broadcast_to(grid[:, None], (1, 1, SIZE, SIZE)))
    sx = g.op("Unsqueeze", g.op("ReduceSum", g.op("Mul", bright, xs), axes, keepdims=0),
              g.const([1], np.int64))  # fmt: skip
    sy = g.op("Unsqueeze", g.op("ReduceSum", g.op("Mul", bright, ys), axes, keepdims=0),
              g.const([1], np.int64))  # fmt: skip
    cx, cy = g.op("Div", sx, denom), g.op("Div", sy, denom)
    side = g.op("Sqrt", area)
    score = g.op("ReduceMax", bright, axes=[1, 2, 3], keepdims=0)
    score = g.op("Unsqueeze", score, g.const([1], np.int64))
    zero = g.op("Mul", score, g.const(0.0))
    return cx, cy, side, score, zero


def _rows(g: _Graph, layout: str) -> list[str]:
    """The three candidates, each [batch, 1, values], in the layout's order of values."""
    cx, cy, side, score, zero = _features(g)
    half = g.op("Mul", side, g.const(0.5))
    rows = []
    # (x shift, person score factor, car score factor)
    candidates = [(0.0, 1.0, 0.0), (1.0, 0.9, 0.0), (0.0, 0.0, 0.8)]
    if layout in ("nms", "nms7"):
        del candidates[1]  # the model's own NMS removed it
    for shift, person, car in candidates:
        x = g.op("Add", cx, g.const(shift))
        p = g.op("Mul", score, g.const(person))
        c = g.op("Mul", score, g.const(car))
        if layout == "yolov8":
            values = [x, cy, side, side, p, c]
        elif layout == "yolov5":
            # objectness times the class score: objectness = the score, classes 0/1
            best = max(person, car)
            obj = g.op("Mul", score, g.const(best))
            values = [x, cy, side, side, obj, g.op("Add", zero, g.const(person / best)),
                      g.op("Add", zero, g.const(car / best))]  # fmt: skip
        else:
            x1, y1 = g.op("Sub", x, half), g.op("Sub", cy, half)
            x2, y2 = g.op("Add", x, half), g.op("Add", cy, half)
            cls = g.op("Add", zero, g.const(0.0 if car == 0 else 1.0))
            sc = p if car == 0 else c
            if layout == "nms":
                values = [x1, y1, x2, y2, sc, cls]
            else:  # nms7
                values = [zero, x1, y1, x2, y2, cls, sc]
        row = g.op("Concat", *values, axis=1)
        rows.append(g.op("Unsqueeze", row, g.const([1], np.int64)))
    return rows


def detector(
    layout: str, batch: int | str = "batch", metadata: bool = True, size: int | str = SIZE
) -> bytes:
    """A detector of bright objects whose output is in ``layout`` ("yolov8",
    "yolov5", "nms" or "nms7"); ``batch``: fixed size or a symbolic name; ``size``
    a symbolic name declares a free input size (for checks only: it runs at 64)."""
    g = _Graph()
    rows = _rows(g, layout)
    cat = g.op("Concat", *rows, axis=1)  # [batch, 3, values]
    total = NMS_ROWS if layout in ("nms", "nms7") else CANDIDATES
    pads = g.const([0, 0, 0, 0, total - len(rows), 0], np.int64)
    padded = g.op("Pad", cat, pads)
    values = {"yolov8": 4 + len(CLASSES), "yolov5": 5 + len(CLASSES), "nms": 6, "nms7": 7}[layout]
    if layout == "yolov8":
        out = g.op("Transpose", padded, perm=[0, 2, 1])
        shape: list[int | str] = [batch, values, total]
    elif layout == "nms7":
        out = g.op("Reshape", padded, g.const([-1, 7], np.int64))
        shape = ["rows", 7]
    else:
        out = padded
        shape = [batch, total, values]
    g.nodes.append(helper.make_node("Identity", [out], ["output0"]))
    meta = {"names": str(dict(enumerate(CLASSES)))} if metadata else {}
    return _model(g, batch, shape, meta, size)


def misfit(batch: int | str = "batch") -> bytes:
    """A model whose output is an image ([batch, 1, 64, 64]): no detector layout."""
    g = _Graph()
    g.nodes.append(helper.make_node("ReduceMean", ["images"], ["output0"], axes=[1], keepdims=1))
    return _model(g, batch, [batch, 1, SIZE, SIZE], {})


def _model(
    g: _Graph,
    batch: int | str,
    shape: list[int | str],
    meta: dict[str, str],
    size: int | str = SIZE,
) -> bytes:
    graph = helper.make_graph(
        g.nodes,
        "bright_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
