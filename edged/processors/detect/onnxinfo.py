"""What an ONNX file declares (inputs, outputs, metadata), read without loading it.

``check-config`` runs in the supervisor and on every reload: it must not load
a runtime (ONNX Runtime costs the process about 80 MiB) nor a model's weights
to say that the model's outputs fit no layout. An ONNX file is a protobuf
``ModelProto``; this module walks its wire format and keeps only the graph's
input and output declarations and the model's ``metadata_props`` (where
Ultralytics exports store the class names), skipping the weights by their
length prefix. The file is memory-mapped, so a 200 MB model costs no read.

Field numbers are those of onnx.proto (stable since IR version 3).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

Dim = int | str | None
"""A dimension: its size, the name of a symbolic one (``"batch"``), or None (unknown)."""

# ModelProto
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_METADATA = 1, 7, 14
# GraphProto
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
# ValueInfoProto / TypeProto / TypeProto.Tensor / TensorShapeProto / Dimension
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
# TensorProto (an initializer): only its name
_INIT_NAME = 8
# StringStringEntryProto
_ENTRY_KEY, _ENTRY_VALUE = 1, 2

ELEM_TYPES = {1: "float32", 10: "float16", 11: "float64", 2: "uint8", 7: "int64", 6: "int32"}


class NotOnnx(ValueError):
    """The file is not an ONNX model (or is damaged)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TensorInfo:
    """One declared input or output of a graph."""

    name: str
    shape: tuple[Dim, ...] | None  # None: no shape declared
    elem_type: str  # "float32", ..., or "type N"

    def shape_text(self) -> str:
        if self.shape is None:
            return "[?]"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclasses.dataclass(frozen=True, slots=True)
class OnnxInfo:
    """The declarations of an ONNX file that decide how to feed and read it."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict[str, str]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise NotOnnx("truncated or not protobuf")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one message: an int for varints, a view for
    length-delimited fields; fixed-width fields are skipped."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NotOnnx("not protobuf (field 0)")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise NotOnnx("truncated (a field runs past the end)")
            yield number, buf[pos : pos + size]
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise NotOnnx(f"not protobuf (wire type {wire})")
    if pos != end:
        raise NotOnnx("truncated")


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise NotOnnx("a string field holds a number")
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise NotOnnx("a name is not UTF-8") from None


def _message(value: int | memoryview) -> memoryview:
    if not isinstance(value, memoryview):
        raise NotOnnx("a message field holds a number")
    return value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(buf: memoryview) -> TensorInfo:
    name, shape, elem = "", None, 0
    for number, value in _fields(buf):
        if number == _VALUE_NAME:
            name = _text(value)
        elif number == _VALUE_TYPE:
            for tnum, tval in _fields(_message(value)):
                if tnum != _TYPE_TENSOR:
                    continue
                for fnum, fval in _fields(_message(tval)):
                    if fnum == _TENSOR_ELEM_TYPE and isinstance(fval, int):
                        elem = fval
                    elif fnum == _TENSOR_SHAPE:
                        shape = tuple(
                            _dim(_message(d))
                            for snum, d in _fields(_message(fval))
                            if snum == _SHAPE_DIM
                        )
    return TensorInfo(name, shape, ELEM_TYPES.get(elem, f"type {elem}"))


def _dim(buf: memoryview) -> Dim:
    for number, value in _fields(buf):
        if number == _DIM_VALUE and isinstance(value, int):
            return _signed(value)
        if number == _DIM_PARAM:
            return _text(value) or None
    return None


def parse(buf: memoryview) -> OnnxInfo:
    """The declarations in a serialised ModelProto; :class:`NotOnnx` if it is none."""
    ir_version, graph = 0, None
    metadata: dict[str, str] = {}
    for number, value in _fields(buf):
        if number == _MODEL_IR_VERSION and isinstance(value, int):
            ir_version = value
        elif number == _MODEL_GRAPH:
            graph = _message(value)
        elif number == _MODEL_METADATA:
            entry = {n: _text(v) for n, v in _fields(_message(value))}
            metadata[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
    if not ir_version or graph is None:
        raise NotOnnx("no ONNX model in it (no IR version or no graph)")
    inputs, outputs, weights = [], [], set()
    for number, value in _fields(graph):
        if number == _GRAPH_INPUT:
            inputs.append(_tensor(_message(value)))
        elif number == _GRAPH_OUTPUT:
            outputs.append(_tensor(_message(value)))
        elif number == _GRAPH_INITIALIZER:
            for inum, ival in _fields(_message(value)):
                if inum == _INIT_NAME:
                    weights.add(_text(ival))
    # Before IR version 4, weights were listed among the inputs too.
    real = tuple(t for t in inputs if t.name not in weights)
    return OnnxInfo(real, tuple(outputs), metadata)


def read_info(path: Path) -> OnnxInfo:
    """The declarations of the ONNX file at ``path``.

    Raises OSError when it cannot be read and :class:`NotOnnx` when it is not
    an ONNX model."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise NotOnnx("the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return parse(view)
            finally:
                view.release()
