"""Class names: the built-in COCO-80 list, a labels file, or the model's own.

Ultralytics exports store their names in the ONNX metadata (``names``: a
Python dict literal, ``{0: 'person', 1: 'bicycle', ...}``); edged reads them
with :func:`ast.literal_eval`, which evaluates literals only.
"""

from __future__ import annotations

import ast
from pathlib import Path

from edged.config.base import read_bounded

MAX_LABELS_BYTES = 1024**2

COCO80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line (blank lines at the end ignored); ValueError saying why not."""
    raw = read_bounded(path, MAX_LABELS_BYTES)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    labels = tuple(line.strip() for line in text.rstrip().splitlines())
    if not labels or not all(labels):
        raise ValueError("expected one label per line, none empty")
    return labels


def model_labels(metadata: dict[str, str]) -> tuple[str, ...] | None:
    """The class names an Ultralytics export stores in its metadata, if any."""
    text = metadata.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        values = [names[i] for i in range(len(names))]
    elif isinstance(names, list):
        values = names
    else:
        return None
    if values and all(isinstance(v, str) and v for v in values):
        return tuple(values)
    return None
