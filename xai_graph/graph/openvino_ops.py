"""The ONNX meaning of OpenVINO operations, for the mirror (`openvino_ir.Mirror`).

An operation whose meaning matches an ONNX op gets its name and attributes (Multiply -> Mul,
Convolution -> Conv, ShapeOf -> Shape, Transpose with `perm`, ...); the rest stay opaque in the
`ov` domain. Some translations need a constant input (a Transpose's order, a Gather's axis).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def _const(value: ir.Value) -> np.ndarray | None:
    return value.const_value.numpy() if value is not None and value.const_value is not None else None


_SAME_NAME = {
    "Add",
    "Relu",
    "Sigmoid",
    "Exp",
    "Erf",
    "Tanh",
    "Log",
    "Sqrt",
    "Abs",
    "Floor",
    "Concat",
    "Squeeze",
    "Unsqueeze",
    "Tile",
    "TopK",
    "Softmax",
    "LogSoftmax",
    "PRelu",
    "Elu",
    "Gelu",
    "Mish",
    "Sign",
}


_RENAMED = {
    "Multiply": "Mul",
    "Subtract": "Sub",
    "Divide": "Div",
    "Power": "Pow",
    "Negative": "Neg",
    "Maximum": "Max",
    "Minimum": "Min",
    "HSwish": "HardSwish",
    "HSigmoid": "HardSigmoid",
    "SoftPlus": "Softplus",
    "ShapeOf": "Shape",
    "Ceiling": "Ceil",
}


def translate(kind: str, attrs: dict, inputs: list[ir.Value]):
    """(ONNX op, inputs, attributes) for an OpenVINO operation of the same meaning, or None."""
    if kind in _SAME_NAME:
        keep = {k: attrs[k] for k in ("axis",) if k in attrs and isinstance(attrs[k], int)}
        return kind, inputs, keep
    if kind in _RENAMED:
        return _RENAMED[kind], inputs, {}
    if kind in {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2"}:
        return kind, inputs, {"keepdims": int(bool(attrs.get("keep_dims", False)))}
    translate = _TRANSLATIONS.get(kind)
    return translate(attrs, inputs) if translate else None


def _transpose(attrs, inputs):
    perm = _const(inputs[1])
    return ("Transpose", inputs[:1], {"perm": [int(p) for p in perm]}) if perm is not None else None


def _gather(attrs, inputs):
    axis = _const(inputs[2])
    return ("Gather", inputs[:2], {"axis": int(axis)}) if attrs.get("batch_dims", 0) == 0 and axis is not None else None


def _slice(attrs, inputs):  # OpenVINO: data, start, stop, step, axes
    return ("Slice", [inputs[0], inputs[1], inputs[2], inputs[4], inputs[3]], {}) if len(inputs) == 5 else None


def _group_convolution(attrs, inputs):
    return "Conv", inputs, {"group": int(inputs[1].shape[0]) if inputs[1].shape is not None else 1}


def _matmul(attrs, inputs):
    if not attrs.get("transpose_a") and not attrs.get("transpose_b"):
        return "MatMul", inputs, {}
    if not attrs.get("transpose_a") and inputs[0].shape is not None and len(inputs[0].shape) == 2:
        return "Gemm", inputs, {"transB": 1}
    return None


def _avg_pool(attrs, inputs):
    pads = [*attrs.get("pads_begin", []), *attrs.get("pads_end", [])]
    return (
        "AveragePool",
        inputs,
        {
            "kernel_shape": list(attrs["kernel"]),
            "strides": list(attrs["strides"]),
            "pads": pads,
            "count_include_pad": int(not attrs.get("exclude-pad", True)),
        },
    )


def _max_pool(attrs, inputs):
    if not all(d == 1 for d in attrs.get("dilations", [1])):
        return None
    pads = [*attrs.get("pads_begin", []), *attrs.get("pads_end", [])]
    same = str(attrs.get("auto_pad", "explicit")).lower().startswith("same")
    return (
        "MaxPool",
        inputs,
        {
            "kernel_shape": list(attrs["kernel"]),
            "strides": list(attrs["strides"]),
            "pads": pads,
            **({"auto_pad": "SAME_UPPER"} if same else {}),
        },
    )


def _variadic_split(attrs, inputs):
    axis = _const(inputs[1])
    return ("Split", [inputs[0], inputs[2]], {"axis": int(axis)}) if axis is not None else None


# OpenVINO operations whose ONNX form depends on their attributes or constant inputs (None: kept opaque).
_TRANSLATIONS = {
    "Reshape": lambda attrs, inputs: ("Reshape", inputs, {"allowzero": 0 if attrs.get("special_zero") else 1}),
    "Transpose": _transpose,
    "Gather": _gather,
    "Slice": _slice,
    "Convert": lambda attrs, inputs: ("Cast", inputs, {}),
    "Convolution": lambda attrs, inputs: ("Conv", inputs, {}),
    "GroupConvolution": _group_convolution,
    "MatMul": _matmul,
    "AvgPool": _avg_pool,
    "MaxPool": _max_pool,
    "VariadicSplit": _variadic_split,
    "Broadcast": lambda attrs, inputs: ("Expand", inputs, {}) if attrs.get("mode") == "bidirectional" else None,
}
