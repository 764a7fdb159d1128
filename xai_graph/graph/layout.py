"""Where the channels and the positions of a feature map are.

CNN maps are NCHW, but real exports also end in channels-last maps (timm's Swin:
[B, H, W, C], normalised over C and averaged over H and W) and token grids
(transformers' Swin: [B, H*W, C], or its transpose [B, C, H*W] entering a 1-D
pooling). A saliency map is over positions, so every method reads the map through
its `Layout`: channels are averaged or projected, positions masked, never mixed up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from xai_graph.graph.analysis import known_dim
from xai_graph.graph.builder import GraphBuilder, static_dim

# Axes of the channels and of the positions, per layout.
_AXES = {"NCHW": (1, (2, 3)), "NHWC": (3, (1, 2)), "NLC": (2, (1,)), "NCL": (1, (2,))}


@dataclass(frozen=True)
class Layout:
    kind: str = "NCHW"
    tokens_grid: tuple[int, int] | None = None  # (h, w) of a token sequence (NLC, NCL); None: square, at run time

    @property
    def channel_axis(self) -> int:
        return _AXES[self.kind][0]

    @property
    def position_axes(self) -> tuple[int, ...]:
        return _AXES[self.kind][1]

    @property
    def is_tokens(self) -> bool:
        return self.kind in ("NLC", "NCL")

    def grid(self, value: ir.Value) -> tuple:
        """(h, w) as declared dims: ints, named symbols, or None where unknown."""
        if self.is_tokens:
            return self.tokens_grid or (None, None)
        dims = list(value.shape) if value.shape is not None else [None] * 4
        return tuple(known_dim(dims[a]) for a in self.position_axes)

    def static_grid(self, value: ir.Value) -> tuple[int | None, int | None]:
        return tuple(d if isinstance(d, int) else None for d in self.grid(value))

    def sides(self, b: GraphBuilder, value: ir.Value) -> tuple[ir.Value, ir.Value]:
        """h and w as 1-element int64 tensors (constants where static)."""
        if self.tokens_grid is not None:
            return b.ints([self.tokens_grid[0]]), b.ints([self.tokens_grid[1]])
        if self.is_tokens:  # a sequence whose length shape inference lost: a square grid, sized at run time
            length = b.op("Cast", b.dim(value, self.position_axes[0]), to=ir.DataType.FLOAT)
            side = b.op("Cast", b.op("Round", b.op("Sqrt", length)), to=ir.DataType.INT64)
            return side, side
        return b.dim(value, self.position_axes[0]), b.dim(value, self.position_axes[1])

    def channels(self, value: ir.Value) -> int | None:
        return static_dim(value, self.channel_axis)

    def channel_mean(self, b: GraphBuilder, value: ir.Value) -> ir.Value:
        """Mean over channels, [B, h, w]."""
        mean = b.reduce("ReduceMean", value, [self.channel_axis], keepdims=False)
        return b.reshape(mean, 0, *self.sides(b, value)) if self.is_tokens else mean

    def by_position(self, b: GraphBuilder, value: ir.Value) -> ir.Value:
        """[B, h*w, C]: one row per position, positions in row-major order."""
        if self.kind == "NLC":
            return value
        if self.kind == "NHWC":
            return b.reshape(value, 0, -1, b.dim(value, 3))
        return b.op("Transpose", b.reshape(value, 0, 0, -1), perm=[0, 2, 1])  # NCHW, NCL

    def to_nchw(self, b: GraphBuilder, value: ir.Value) -> ir.Value:
        """[B, C, h, w]."""
        if self.kind == "NCHW":
            return value
        if self.kind == "NHWC":
            return b.op("Transpose", value, perm=[0, 3, 1, 2])
        channels_first = value if self.kind == "NCL" else b.op("Transpose", value, perm=[0, 2, 1])
        return b.reshape(channels_first, 0, 0, *self.sides(b, value))

    def masks(self, b: GraphBuilder, masks: ir.Value, value: ir.Value) -> ir.Value:
        """Position masks [N, h, w] shaped to broadcast against one map of this layout (without its batch)."""
        h, w = self.sides(b, value)
        shapes = {
            "NCHW": (-1, 1, h, w),
            "NHWC": (-1, h, w, 1),
            "NLC": (-1, b.op("Mul", h, w), 1),
            "NCL": (-1, 1, b.op("Mul", h, w)),
        }
        return b.reshape(masks, *shapes[self.kind])


def square_grid(positions) -> tuple[int, int] | None:
    """The grid of a token sequence of `positions` tokens, where it is square (Swin's, at any input size
    a multiple of its window); None otherwise."""
    if not isinstance(positions, int) or positions < 1:
        return None
    side = math.isqrt(positions)
    return (side, side) if side * side == positions else None
