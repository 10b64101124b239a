"""The built-in ``detect`` processor: an ONNX object detector, tracked objects as events.

Per frame: letterbox into the model's square input, run the model (ONNX
Runtime), decode its output (:mod:`.layout`), drop what scores below
``min_score`` or is not in ``classes``, non-maximum suppression, then the
camera's :class:`~edged.processors.detect.track.ObjectTracker` turns the
detections into ``object.start`` / ``object.update`` / ``object.end``
events. A shared ``[processors.NAME]`` with ``batch_size`` over 1 runs one
model call for the frames of several cameras when the model's batch
dimension allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import BaseModel

from edged.errors import EX_CONFIG, EdgedError
from edged.processor import Event, Frame, Processor
from edged.processors.detect.layout import Candidates, Layout, ModelSpec, classify, decode, nms
from edged.processors.detect.onnxinfo import TensorInfo
from edged.processors.detect.options import INSTALL_HINT, DetectOptions
from edged.processors.detect.track import EVENT_TYPES, Detection, ObjectTracker
from edged.regions import Box

log = logging.getLogger(__name__)

PAD = 114  # the grey Ultralytics and YOLOv5 letterbox with


class ModelLoadError(EdgedError):
    """The model cannot be loaded at run time (gone, damaged, changed since the check)."""

    exit_code = EX_CONFIG


class Letterbox:
    """Where a frame went in the square input: scale and padding, to map boxes back."""

    __slots__ = ("height", "left", "new_h", "new_w", "scale", "top", "width")

    def __init__(self, image: np.ndarray, size: int) -> None:
        self.height, self.width = image.shape[:2]
        self.scale = min(size / self.height, size / self.width)
        self.new_w = min(size, round(self.width * self.scale))
        self.new_h = min(size, round(self.height * self.scale))
        # Centred, as Ultralytics pads: the model was trained on such squares.
        self.left = (size - self.new_w) // 2
        self.top = (size - self.new_h) // 2

    def fit(self, image: np.ndarray, size: int) -> np.ndarray:
        """The image resized and padded into a size x size BGR square."""
        w, h = self.new_w, self.new_h
        resized = image if (w, h) == (self.width, self.height) else cv2.resize(image, (w, h))
        if resized.ndim == 2:
            resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR)
        return cv2.copyMakeBorder(
            resized,
            self.top,
            size - h - self.top,
            self.left,
            size - w - self.left,
            cv2.BORDER_CONSTANT,
            value=(PAD, PAD, PAD),
        )

    def relative(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel boxes as frame-relative (0-1) boxes, clipped to the frame."""
        out = np.empty_like(boxes)
        out[:, 0::2] = (boxes[:, 0::2] - self.left) / self.new_w
        out[:, 1::2] = (boxes[:, 1::2] - self.top) / self.new_h
        np.clip(out, 0.0, 1.0, out=out)
        return out


def load_session(options: DetectOptions) -> Any:
    """An ONNX Runtime session for the model; :class:`ModelLoadError` saying why not."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from None
    settings = onnxruntime.SessionOptions()
    if options.threads:
        settings.intra_op_num_threads = options.threads
    settings.inter_op_num_threads = 1
    # Idle threads spinning for more work: no faster here, and 25% more CPU a frame
    # (bench/detect.py), taken from the readers decoding beside it.
    settings.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(
            str(options.model), settings, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        # ORT's messages name the file and the cause (no such file, protobuf parsing
        # failed); its exception types are not public API.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {options.model}: {first}") from None


def _declared(args: Sequence[Any]) -> list[TensorInfo]:
    types = {"tensor(float)": "float32", "tensor(float16)": "float16"}
    return [TensorInfo(a.name, tuple(a.shape), types.get(a.type, str(a.type))) for a in args]


class DetectProcessor(Processor):
    """Objects an ONNX detector sees, tracked across frames: see the README's
    "Detecting objects"."""

    Options = DetectOptions
    event_types: ClassVar[tuple[str, ...]] = EVENT_TYPES
    pixel_format = "bgr"

    @classmethod
    def counted_labels(cls, options: BaseModel) -> tuple[str, ...]:
        # Only the classes asked for: a sensor for each of COCO's 80 would bury the
        # ones that matter. Counts of any label still go out on their topics.
        return tuple(options.classes or ()) if isinstance(options, DetectOptions) else ()

    def setup(self) -> None:
        options = self.options
        assert isinstance(options, DetectOptions)
        self.opts = options
        self.session = load_session(options)
        forced = None if options.layout == "auto" else Layout(options.layout)
        try:
            # The model as loaded now: the file may have changed since the check.
            spec = classify(
                _declared(self.session.get_inputs()), _declared(self.session.get_outputs()), forced
            )
        except ValueError as exc:
            raise ModelLoadError(f"model {options.model}: {exc}") from None
        if spec != options.spec:
            raise ModelLoadError(
                f"model {options.model} changed since the config was checked: reload edged"
            )
        self.spec: ModelSpec = spec
        self.size = options.size(spec)
        self.dtype = np.float16 if spec.input_type == "float16" else np.float32
        names = options.names
        self.labels = names
        wanted = set(options.classes or names)
        self.wanted = np.array([name in wanted for name in names], dtype=bool)
        # Each label's own least score (its filter's, else min_score): a filter may
        # lower it for one label, so the model's output is read down to the least.
        rules = options.filters
        self.least = np.array(
            [
                rule.min_score
                if (rule := rules.get(name)) is not None and rule.min_score is not None
                else options.min_score
                for name in names
            ],
            dtype=np.float32,
        )
        self.floor = float(self.least[self.wanted].min()) if self.wanted.any() else 1.0
        self.trackers = {
            name: ObjectTracker(options, regions) for name, regions in self.cameras.items()
        }
        if not self.trackers:  # a processor driven outside a worker (bench, tests)
            from edged.regions import CameraRegions

            self.trackers = {self.camera: ObjectTracker(options, CameraRegions(self.camera))}

    # -- the model ---------------------------------------------------------------

    def infer(self, images: Sequence[np.ndarray]) -> list[tuple[Letterbox, Candidates]]:
        """Detections per image, in input pixels, after filters and NMS."""
        size = self.size
        boxes = [Letterbox(image, size) for image in images]
        squares = [lb.fit(image, size) for lb, image in zip(boxes, images, strict=True)]
        blob = cv2.dnn.blobFromImages(squares, 1 / 255.0, swapRB=True).astype(
            self.dtype, copy=False
        )
        found: list[Candidates] = []
        for output, count in self._run(blob):
            found += [self._candidates(output, i) for i in range(count)]
        return list(zip(boxes, found, strict=True))

    def _run(self, blob: np.ndarray) -> Iterable[tuple[np.ndarray, int]]:
        """Model calls over the blob: all at once when the batch is free, else in
        chunks of the fixed batch (the last padded)."""
        n, fixed = len(blob), self.spec.batch
        step = n if fixed is None else fixed
        for first in range(0, n, step):
            chunk = blob[first : first + step]
            count = len(chunk)
            if count < step:
                pad = np.zeros((step - count, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outputs = self.session.run([self.spec.output_name], {self.spec.input_name: chunk})
            yield np.asarray(outputs[0], dtype=np.float32), count

    def _candidates(self, output: np.ndarray, index: int) -> Candidates:
        opts = self.opts
        found = decode(self.spec.layout, output, index, self.floor)
        known = (found.classes >= 0) & (found.classes < len(self.labels))
        keep = np.flatnonzero(known)
        keep = keep[self.wanted[found.classes[keep]]]
        keep = keep[found.scores[keep] >= self.least[found.classes[keep]]]
        found = Candidates(found.boxes[keep], found.scores[keep], found.classes[keep])
        if self.spec.layout in (Layout.NMS, Layout.NMS7):
            order = np.argsort(-found.scores, kind="stable")[: opts.max_detections]
            return Candidates(found.boxes[order], found.scores[order], found.classes[order])
        return nms(found, opts.iou, opts.max_detections)

    def detections(self, letterbox: Letterbox, found: Candidates) -> list[Detection]:
        rel = letterbox.relative(found.boxes)
        return [
            Detection(
                self.labels[c], float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
            )
            for b, s, c in zip(rel, found.scores, found.classes, strict=True)
        ]

    # -- the processor API -------------------------------------------------------

    def _tracker(self, frame: Frame) -> ObjectTracker:
        return self.trackers[frame.camera or self.camera]

    def process(self, frame: Frame) -> Iterable[Event]:
        return self._detect([frame])[0]

    def process_batch(self, frames: list[Frame]) -> list[Iterable[Event] | None]:
        return list(self._detect(frames))

    def _detect(self, frames: list[Frame]) -> list[list[Event]]:
        results = self.infer([frame.image for frame in frames])
        return [
            self._tracker(frame).update(self.detections(lb, found), frame)
            for frame, (lb, found) in zip(frames, results, strict=True)
        ]

    def boxes(self, camera: str) -> Sequence[Box]:
        tracker = self.trackers.get(camera or self.camera)
        return tracker.boxes() if tracker is not None else ()
