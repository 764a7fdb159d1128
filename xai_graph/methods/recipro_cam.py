"""Recipro-CAM (Byun & Lee, arXiv 2209.14074) by cloning the tail.

For each position p of the h x w map, F is masked to keep p only (one-hot) or
a 3x3 Gaussian neighbourhood of p, clipped at the borders; the network's tail
runs on all hw masked maps as one batch of B*hw, and S[k, p] is class k's score
for the map masked at p.

The masks are generated in the graph (EyeLike, then a 3x3 convolution for the
Gaussian form) rather than stored: a stored [hw, 1, h, w] mask would grow the
model by (hw)^2 floats and fix the map size.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.builder import GraphBuilder, static_dim
from xai_graph.graph.tail import clone_tail
from xai_graph.graph.targets import Target
from xai_graph.methods.base import SaliencyMethod, register_method

GAUSSIAN_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16
MASKS = ("gaussian", "onehot")
SCORES = ("logits", "softmax", "sigmoid")


@register_method
class ReciproCAM(SaliencyMethod):
    algo = "classwisesaliencymap"
    task = "classification"
    title = "Recipro-CAM"
    class_wise = True

    def check(self, target: Target) -> None:
        if self.options.mask not in MASKS:
            raise XaiGraphError(f"unknown mask {self.options.mask!r}; choose one of {', '.join(MASKS)}")
        if self.options.score not in SCORES:
            raise XaiGraphError(f"unknown score {self.options.score!r}; choose one of {', '.join(SCORES)}")

    def build(self, b: GraphBuilder, target: Target) -> ir.Value:
        f = target.value
        channels, h, w = b.dim(f, 1), b.dim(f, 2), b.dim(f, 3)
        positions = b.op("Mul", h, w)
        static_h, static_w = static_dim(f, 2), static_dim(f, 3)
        static_positions = static_h * static_w if static_h and static_w else None
        masks = self.position_masks(b, static_positions or positions, h, w)  # [hw, 1, h, w]
        masked = b.op("Mul", b.unsqueeze(f, [1]), b.unsqueeze(masks, [0]))  # [B, hw, C, h, w]
        batch = b.reshape(masked, -1, channels, h, w)  # [B*hw, C, h, w]
        scores = clone_tail(b, target.tail, f, batch, target.logits)  # [B*hw, K]
        scores = self.score(b, scores)
        per_image = b.op("Transpose", b.reshape(scores, -1, positions, b.dim(target.logits, 1)), perm=[0, 2, 1])
        return b.reshape(per_image, 0, 0, h, w)  # [B, K, h, w]

    def position_masks(self, b: GraphBuilder, positions, h, w) -> ir.Value:
        one_hot = b.reshape(b.eye(positions), -1, 1, h, w)
        if self.options.mask == "onehot":
            return one_hot
        kernel = b.const(GAUSSIAN_KERNEL.reshape(1, 1, 3, 3))
        return b.op("Conv", one_hot, kernel, pads=[1, 1, 1, 1])

    def score(self, b: GraphBuilder, logits: ir.Value) -> ir.Value:
        if self.options.score == "softmax":
            return b.op("Softmax", logits, axis=-1)
        if self.options.score == "sigmoid":
            return b.op("Sigmoid", logits)
        return logits
