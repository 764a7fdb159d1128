"""Emit ONNX ops into an existing graph, in a form valid for the graph's opset.

Several ops changed signature between opset 11 and 21 (the reduce family and
Squeeze/Unsqueeze moved `axes` from an attribute to an input); the helpers here
hide that so a saliency method is written once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

# Opset from which each op takes `axes` as an input instead of an attribute.
_AXES_AS_INPUT_SINCE = {
    "ReduceSum": 13,
    "Squeeze": 13,
    "Unsqueeze": 13,
    "ReduceMean": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceL2": 18,
    "ReduceSumSquare": 18,
}

NAME_PREFIX = "xai_graph/"


class GraphBuilder:
    """Appends new nodes and initializers to `graph`, all named under `xai_graph/`.

    The prefix is what lets `--replace` find and remove an earlier head.
    """

    def __init__(self, graph: ir.Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{NAME_PREFIX}{kind}_{self._count}"

    # -- node creation -------------------------------------------------------
    def op(self, op_type: str, *inputs: ir.Value | None, **attributes) -> ir.Value:
        return self.op_multi(op_type, *inputs, num_outputs=1, **attributes)[0]

    def op_multi(self, op_type: str, *inputs: ir.Value | None, num_outputs: int, **attributes) -> Sequence[ir.Value]:
        attrs = ir.convenience.convert_attributes(attributes) if attributes else ()
        name = self._name(op_type)
        outputs = [ir.Value(name=f"{name}_out{i}" if num_outputs > 1 else name) for i in range(num_outputs)]
        node = ir.Node("", op_type, list(inputs), attributes=attrs, outputs=outputs, name=name)
        self.graph.append(node)
        return node.outputs

    def const(self, array, dtype=None) -> ir.Value:
        """An initializer holding `array` (small constants only: never anything of size hw*hw*C)."""
        tensor = ir.tensor(np.asarray(array, dtype=dtype), name=self._name("const"))
        value = ir.Value(name=tensor.name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.const(np.asarray(values, dtype=np.int64))

    def scalar(self, value: float) -> ir.Value:
        return self.const(np.asarray(value, dtype=np.float32))

    # -- opset-dependent helpers ---------------------------------------------
    def _with_axes(self, op_type: str, x: ir.Value, axes: Sequence[int], **attrs) -> ir.Value:
        if self.opset >= _AXES_AS_INPUT_SINCE[op_type]:
            return self.op(op_type, x, self.ints(axes), **attrs)
        return self.op(op_type, x, axes=list(axes), **attrs)

    def reduce(self, op_type: str, x: ir.Value, axes: Sequence[int], keepdims: bool) -> ir.Value:
        return self._with_axes(op_type, x, axes, keepdims=int(keepdims))

    def unsqueeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self._with_axes("Unsqueeze", x, axes)

    def squeeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self._with_axes("Squeeze", x, axes)

    def softmax(self, x: ir.Value, axis: int, rank: int) -> ir.Value:
        """Softmax over one axis; before opset 13 Softmax normalises over every axis from `axis` on."""
        axis %= rank
        if self.opset >= 13 or axis == rank - 1:
            return self.op("Softmax", x, axis=axis)
        perm = [a for a in range(rank) if a != axis] + [axis]
        inverse = [perm.index(a) for a in range(rank)]
        moved = self.op("Softmax", self.op("Transpose", x, perm=perm), axis=rank - 1)
        return self.op("Transpose", moved, perm=inverse)

    def resize_bilinear(self, x: ir.Value, height, width) -> ir.Value:
        """[B, C, h, w] -> [B, C, height, width], bilinear with half-pixel centres (torch align_corners=False)."""
        sizes = self.shape_from(self.dim(x, 0), self.dim(x, 1), height, width)
        empty = self.const(np.zeros(0, dtype=np.float32))
        roi, scales = (empty, empty) if self.opset < 13 else (None, None)
        return self.op("Resize", x, roi, scales, sizes, mode="linear", coordinate_transformation_mode="half_pixel")

    # -- shapes ----------------------------------------------------------------
    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """Dimension `axis` of `x` as a 1-element int64 tensor: a constant where it is static."""
        size = static_dim(x, axis)
        if size is not None:
            return self.ints([size])
        return self.op("Gather", self.op("Shape", x), self.ints([axis]), axis=0)

    def shape_from(self, *parts: ir.Value | int) -> ir.Value:
        """A shape tensor from 1-element int64 tensors and plain ints (-1 and 0 allowed)."""
        if all(isinstance(p, int) for p in parts):
            return self.ints(list(parts))
        values = [self.ints([p]) if isinstance(p, int) else p for p in parts]
        return self.op("Concat", *values, axis=0)

    def reshape(self, x: ir.Value, *parts: ir.Value | int) -> ir.Value:
        return self.op("Reshape", x, self.shape_from(*parts))

    def eye(self, n: ir.Value | int) -> ir.Value:
        """An n x n float32 identity, built at run time: stored, it would grow the model by n^2 floats."""
        n = self.ints([n]) if isinstance(n, int) else n
        zeros = self.op(
            "ConstantOfShape", self.op("Concat", n, n, axis=0), value=ir.tensor(np.zeros(1, dtype=np.float32))
        )
        return self.op("EyeLike", zeros)


def static_dim(value: ir.Value, axis: int) -> int | None:
    """The static size of one axis, or None where it is symbolic or unknown."""
    if value.shape is None:
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) and dim >= 0 else None
