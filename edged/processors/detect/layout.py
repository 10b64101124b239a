"""How a detector's input is fed and its output read: the layouts edged knows.

Input: one tensor ``[batch, 3, height, width]`` (NCHW), RGB, 0-1 floats
(float32 or float16): what Ultralytics, YOLOv5 and YOLOv7 exports take.

Outputs (the first output that fits one of these is read, in this order):

- ``yolov8``: ``[batch, 4 + C, N]``: per candidate, the box as centre x,
  centre y, width, height in input pixels, then C class scores (YOLOv8,
  YOLO11, YOLOv9/v10 exports of Ultralytics without NMS).
- ``yolov5``: ``[batch, N, 5 + C]``: centre x, centre y, width, height, an
  objectness score, then C class scores; a candidate's score is objectness
  times its best class score (YOLOv5, YOLOv7 without NMS).
- ``nms``: ``[batch, K, 6]``: x1, y1, x2, y2, score, class, already through
  NMS (Ultralytics ``export(format="onnx", nms=True)``; rows of score 0 pad).
- ``nms7``: ``[K, 7]``: batch index, x1, y1, x2, y2, class, score (YOLOv7's
  ``export.py --grid --end2end`` for ONNX Runtime).

``[batch, N, 6]`` is both a one-class yolov5 output and an nms one: a K of at
most :data:`NMS_MAX_ROWS` reads as nms, more as yolov5; ``layout = "..."``
in the config settles it. Symbolic dimensions (``"batch"``, ``"anchors"``)
are fine where a number is not needed to tell the layouts apart.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import cv2
import numpy as np

from edged.processors.detect.onnxinfo import Dim, TensorInfo

NMS_MAX_ROWS = 1000  # Ultralytics keeps at most 300 (max_det), YOLOv7 100


class Layout(enum.StrEnum):
    YOLOV8 = "yolov8"
    YOLOV5 = "yolov5"
    NMS = "nms"
    NMS7 = "nms7"


EXPECTED_OUTPUT = (
    "[batch, 4+classes, candidates] (YOLOv8/YOLO11), [batch, candidates, 5+classes] "
    "(YOLOv5), [batch, detections, 6] or [detections, 7] (NMS built in)"
)
EXPECTED_INPUT = "one input [batch, 3, height, width] of float32 or float16"


class LayoutError(ValueError):
    """The model's inputs or outputs fit no layout edged reads."""


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSpec:
    """How to feed a model and read what it says."""

    input_name: str
    input_type: str  # "float32" or "float16"
    batch: int | None  # fixed batch size, or None: any
    height: int | None  # fixed input size, or None: any (input_size decides)
    width: int | None
    output_name: str
    output_index: int
    layout: Layout
    classes: int | None  # the number of classes, None when the layout does not say


def _fixed(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _input(inputs: Sequence[TensorInfo]) -> TensorInfo:
    if len(inputs) != 1:
        names = ", ".join(f"{t.name} {t.shape_text()}" for t in inputs) or "none"
        raise LayoutError(f"has {len(inputs)} inputs ({names}); expected {EXPECTED_INPUT}")
    tensor = inputs[0]
    shape = tensor.shape
    if shape is None or len(shape) != 4 or _fixed(shape[1]) not in (3, None):
        raise LayoutError(
            f"input {tensor.name!r} has shape {tensor.shape_text()}; expected {EXPECTED_INPUT}"
        )
    if tensor.elem_type not in ("float32", "float16"):
        raise LayoutError(
            f"input {tensor.name!r} takes {tensor.elem_type}; expected {EXPECTED_INPUT}"
        )
    return tensor


def _fits(shape: tuple[Dim, ...] | None, forced: Layout | None) -> tuple[Layout, int | None] | None:
    """The layout an output of this shape has, and its class count, if any."""
    if shape is None:
        return None
    dims = [_fixed(d) for d in shape]
    candidates: list[tuple[Layout, int | None]] = []
    if len(dims) == 2 and dims[1] == 7:
        candidates.append((Layout.NMS7, None))
    if len(dims) == 3:
        _, a, b = dims
        if a is not None and a > 4 and (b is None or b > a):
            candidates.append((Layout.YOLOV8, a - 4))
        if b == 6 and (a is None or a <= NMS_MAX_ROWS):
            candidates.append((Layout.NMS, None))
        if b is not None and b > 5 and (a is None or a > b):
            candidates.append((Layout.YOLOV5, b - 5))
    for layout, classes in candidates:
        if forced is None or layout == forced:
            return layout, classes
    return None


def classify(
    inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], forced: Layout | None = None
) -> ModelSpec:
    """The :class:`ModelSpec` of a model with these declarations, or :class:`LayoutError`
    naming the tensor, its shape and what was expected."""
    tensor = _input(inputs)
    assert tensor.shape is not None
    batch, _, height, width = tensor.shape
    for index, out in enumerate(outputs):
        fit = _fits(out.shape, forced)
        if fit is not None:
            return ModelSpec(
                input_name=tensor.name,
                input_type=tensor.elem_type,
                batch=_fixed(batch),
                height=_fixed(height),
                width=_fixed(width),
                output_name=out.name,
                output_index=index,
                layout=fit[0],
                classes=fit[1],
            )
    shown = ", ".join(f"{t.name!r} {t.shape_text()}" for t in outputs) or "none"
    wanted = f"the {forced} layout" if forced else EXPECTED_OUTPUT
    what = "output" if len(outputs) == 1 else "outputs"
    verb = "fits" if len(outputs) == 1 else "fit"
    raise LayoutError(f"{what} {shown} {verb} no layout edged reads; expected {wanted}")


# --- decoding -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Candidates:
    """One image's detections in input pixels, before NMS (or after, for nms layouts)."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int


def _empty() -> Candidates:
    return Candidates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int))


def _xyxy(cxcywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(cxcywh)
    half = cxcywh[:, 2:4] / 2
    out[:, 0:2] = cxcywh[:, 0:2] - half
    out[:, 2:4] = cxcywh[:, 0:2] + half
    return out


def decode(layout: Layout, output: np.ndarray, index: int, min_score: float) -> Candidates:
    """The candidates of image ``index`` of a batch's ``output`` scoring at least
    ``min_score``."""
    if layout == Layout.NMS7:
        rows = output[output[:, 0].astype(int) == index]
        keep = rows[:, 6] >= min_score
        rows = rows[keep]
        return Candidates(
            rows[:, 1:5].astype(np.float32), rows[:, 6].astype(np.float32), rows[:, 5].astype(int)
        )
    out = output[index]
    if layout == Layout.NMS:
        rows = out[out[:, 4] >= min_score]
        return Candidates(
            rows[:, 0:4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(int)
        )
    if layout == Layout.YOLOV8:
        # [4 + C, N]: the class scores are a view, the box rows are copied only
        # for the few candidates above the threshold.
        cls = out[4:]
        best = cls.argmax(axis=0)
        scores = cls[best, np.arange(cls.shape[1])]
        keep = np.flatnonzero(scores >= min_score)
        if not keep.size:
            return _empty()
        boxes = out[0:4, keep].T.astype(np.float32)
        return Candidates(_xyxy(boxes), scores[keep].astype(np.float32), best[keep])
    # YOLOV5: [N, 5 + C]; objectness first filters most candidates cheaply.
    rows = out[out[:, 4] >= min_score]
    if not rows.size:
        return _empty()
    cls = rows[:, 5:] * rows[:, 4:5]
    best = cls.argmax(axis=1)
    scores = cls[np.arange(len(rows)), best]
    keep = scores >= min_score
    return Candidates(
        _xyxy(rows[keep, 0:4].astype(np.float32)), scores[keep].astype(np.float32), best[keep]
    )


def nms(found: Candidates, iou: float, limit: int) -> Candidates:
    """Per class, drop boxes that overlap a better one by more than ``iou``; keep at
    most ``limit``, best first."""
    if not len(found.scores):
        return found
    xywh = found.boxes.copy()
    xywh[:, 2:4] -= xywh[:, 0:2]
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), found.scores.tolist(), found.classes.tolist(), 0.0, iou
    )
    order = np.asarray(keep, dtype=int).reshape(-1)
    order = order[np.argsort(-found.scores[order], kind="stable")][:limit]
    return Candidates(found.boxes[order], found.scores[order], found.classes[order])
