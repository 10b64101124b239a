"""The ``detect`` processor's options, and the model checks ``check-config`` runs.

Everything that can be known about a model without running it is checked
here, when the config is validated (``edged check-config``, start, reload):
the file, that it is ONNX, that its input and output fit a layout
(:mod:`.layout`), the input size, the labels and the class names. The model
is read by :mod:`.onnxinfo` (declarations only), so a check costs
milliseconds and never loads ONNX Runtime into the supervisor.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal, Self

from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

from edged.config.base import check_file, did_you_mean, invalid, resolve_path
from edged.processors.detect.labels import COCO80, model_labels, read_labels
from edged.processors.detect.layout import Layout, LayoutError, ModelSpec, classify
from edged.processors.detect.onnxinfo import NotOnnx, OnnxInfo, read_info
from edged.processors.detect.track import TrackOptions

RUNTIME = "onnxruntime"
INSTALL_HINT = "pip install 'edged[detect]' (ONNX Runtime)"
DEFAULT_INPUT_SIZE = 640
STRIDE = 32  # a model of free input size takes multiples of its largest stride


class DetectOptions(TrackOptions):
    """``[processors.NAME]`` (or ``[cameras.NAME.processor]``) with ``type = "detect"``."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(
        description="The ONNX file (a YOLO exported with `yolo export format=onnx`, say); "
        "relative to the config file's folder. Nothing is ever downloaded."
    )
    labels: str | None = Field(
        None,
        min_length=1,
        description='"coco" (the 80 COCO names), or a file with one label per line; '
        "default: the names stored in the model (Ultralytics exports), else COCO.",
    )
    classes: list[str] | None = Field(
        None, min_length=1, description="Report only these labels; default: all."
    )
    min_score: float = Field(0.5, ge=0, le=1, description="Drop detections scoring less.")
    iou: float = Field(
        0.45,
        gt=0,
        le=1,
        description="Non-maximum suppression: overlap above which the "
        "weaker of two boxes of one label is dropped.",
    )
    input_size: int | None = Field(
        None,
        ge=32,
        le=4096,
        description="Side of the square the frame is letterboxed into; default: the "
        f"model's fixed size, else {DEFAULT_INPUT_SIZE}.",
    )
    max_detections: int = Field(100, ge=1, le=1000, description="At most this many a frame.")
    layout: Literal["auto", "yolov8", "yolov5", "nms", "nms7"] = Field(
        "auto", description="How to read the model's output; auto: from its shape."
    )
    threads: int = Field(
        0, ge=0, le=64, description="ONNX Runtime's threads per model; 0: its default."
    )

    _spec: ModelSpec | None = PrivateAttr(None)
    _labels: tuple[str, ...] = PrivateAttr(())

    @model_validator(mode="after")
    def _check_model(self, info: ValidationInfo) -> Self:
        problems: list[tuple[str | tuple[str | int, ...], str]] = []
        if importlib.util.find_spec(RUNTIME) is None:
            problems.append(("type", f"the detect processor needs {INSTALL_HINT}"))
        try:
            self.model = resolve_path(self.model, info)
            check_file(self.model)
            declared = read_info(self.model)
            forced = None if self.layout == "auto" else Layout(self.layout)
            spec = classify(declared.inputs, declared.outputs, forced)
        except (NotOnnx, LayoutError) as exc:
            kind = "not an ONNX model: " if isinstance(exc, NotOnnx) else ""
            problems.append(("model", f"{self.model}: {kind}{exc}"))
            raise invalid(problems, type(self).__name__) from None
        except OSError as exc:
            problems.append(("model", f"cannot read {self.model}: {exc.strerror or exc}"))
            raise invalid(problems, type(self).__name__) from None
        except ValueError as exc:
            problems.append(("model", str(exc)))
            raise invalid(problems, type(self).__name__) from None
        problems += self._check_size(spec)
        labels, trouble = self._resolve_labels(spec, declared, info)
        problems += trouble
        if labels:
            problems += self._check_names(labels)
        if problems:
            raise invalid(problems, type(self).__name__)
        self._spec, self._labels = spec, labels
        return self

    def _check_size(self, spec: ModelSpec) -> list[tuple[str | tuple[str | int, ...], str]]:
        fixed = (spec.height, spec.width)
        if None in fixed and fixed != (None, None):
            return [("model", f"{self.model}: input {spec.input_name!r} fixes one side only")]
        if spec.height is not None and self.input_size not in (None, spec.height, spec.width):
            return [
                (
                    "input_size",
                    f"{self.input_size}, but {self.model} takes a fixed "
                    f"{spec.width}x{spec.height} input: remove input_size or make it "
                    f"{spec.height}",
                )
            ]
        if spec.height is None and self.input_size is not None and self.input_size % STRIDE:
            return [
                (
                    "input_size",
                    f"{self.input_size} is not a multiple of {STRIDE} (a YOLO's largest "
                    "stride): the model would fail on every frame",
                )
            ]
        if spec.height is not None and spec.height != spec.width:
            return [("model", f"{self.model}: a square input is expected, not {spec.width}x"
                              f"{spec.height}")]  # fmt: skip
        return []

    def _resolve_labels(
        self, spec: ModelSpec, declared: OnnxInfo, info: ValidationInfo
    ) -> tuple[tuple[str, ...], list[tuple[str | tuple[str | int, ...], str]]]:
        count = spec.classes
        if self.labels is None:
            own = model_labels(declared.metadata)
            if own is not None and count in (None, len(own)):
                return own, []
            if count in (None, len(COCO80)):
                return COCO80, []
            message = (
                f"{self.model} has {count} classes and no names in its metadata: "
                "give labels = a file with one label per line"
            )
            return (), [("labels", message)]
        if self.labels == "coco":
            labels = COCO80
            source = "COCO has"
        else:
            path = resolve_path(Path(self.labels), info)
            try:
                labels = read_labels(path)
            except ValueError as exc:
                return (), [("labels", f"{path}: {exc}")]
            self.labels = str(path)
            source = f"{path} has"
        if count is not None and count != len(labels):
            message = f"{source} {len(labels)} labels, but {self.model} has {count} classes"
            return (), [("labels", message)]
        return labels, []

    def _check_names(
        self, labels: tuple[str, ...]
    ) -> list[tuple[str | tuple[str | int, ...], str]]:
        problems: list[tuple[str | tuple[str | int, ...], str]] = []
        known = set(labels)
        for i, name in enumerate(self.classes or []):
            if name not in known:
                hint = did_you_mean(name, labels)
                problems.append((("classes", i), f"unknown label {name!r}{hint}"))
        for name in self.filters:
            if name not in known:
                hint = did_you_mean(name, labels)
                problems.append((("filters", name), f"unknown label {name!r}{hint}"))
        return problems

    @property
    def spec(self) -> ModelSpec:
        """How the model was found to be fed and read at validation."""
        assert self._spec is not None, "options not validated"
        return self._spec

    @property
    def names(self) -> tuple[str, ...]:
        """The label of each class index."""
        return self._labels

    def size(self, spec: ModelSpec) -> int:
        """The side of the square input, for a model of this spec."""
        return spec.height or self.input_size or DEFAULT_INPUT_SIZE
