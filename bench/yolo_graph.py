"""A YOLO-sized ONNX graph, built with onnx's helpers, for bench/detect.py.

Not a detector: random weights. What it shares with a YOLOv8n export is what
the runtime comparison and the decoding cost depend on: a 640x640 NCHW float
input named ``images``, strided 3x3 convolutions down to three scales (80x80,
40x40, 20x20) with a 1x1 head each, and one output ``output0`` of
``[batch, 84, 8400]`` (4 box values + 80 class scores for 8400 candidates).
About 2.6 GFLOPs a frame at the default width (YOLOv8n: 8.7).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def yolo_graph(size: int = 640, width: int = 32, classes: int = 80, batch: int | str = 1) -> bytes:
    """The serialised model; ``batch`` a number, or a name for a dynamic batch."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    count = 0

    def conv(x: str, cin: int, cout: int, k: int, stride: int, act: bool = True) -> str:
        nonlocal count
        count += 1
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{count}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{count}"))
        y = f"c{count}"
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"w{count}", f"b{count}"],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        if act:
            nodes.append(helper.make_node("Relu", [y], [y + "r"]))
            y += "r"
        return y

    x = conv("images", 3, width // 2, 3, 2)  # 320
    x = conv(x, width // 2, width, 3, 2)  # 160
    x = conv(x, width, width * 2, 3, 2)  # 80
    heads = []
    channels = width * 2
    for scale in range(3):
        if scale:
            x = conv(x, channels, channels * 2, 3, 2)  # 40, 20
            channels *= 2
        x = conv(x, channels, channels, 3, 1)
        head = conv(x, channels, 4 + classes, 1, 1, act=False)
        flat = f"flat{scale}"
        inits.append(numpy_helper.from_array(np.array([0, 4 + classes, -1], np.int64), f"s{scale}"))
        nodes.append(helper.make_node("Reshape", [head, f"s{scale}"], [flat]))
        heads.append(flat)
    nodes.append(helper.make_node("Concat", heads, ["cat"], axis=2))
    nodes.append(helper.make_node("Sigmoid", ["cat"], ["output0"]))
    n = sum((size // s) ** 2 for s in (8, 16, 32))
    graph = helper.make_graph(
        nodes,
        "yolo_sized",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + classes, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
