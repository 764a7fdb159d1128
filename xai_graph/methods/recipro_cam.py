"""Recipro-CAM (Byun & Lee, arXiv 2209.14074) for CNN classifiers.

For each position p of the h x w map, F is masked to keep p only (one-hot) or a
3x3 Gaussian neighbourhood of p, clipped at the borders; the network's tail
(target -> class scores) runs on the hw masked maps, and S[k, p] is class k's
score for the map masked at p.

Two forms, equal up to float rounding:
- fused (where the tail starts by averaging F: GlobalAveragePool, ReduceMean over
  the map, or an AveragePool covering it): the average of F masked at p is F[:, p]
  (one-hot) or a depthwise 3x3 convolution of F at p (Gaussian), divided by hw; the
  rest of the tail then runs on these B*hw vectors, never on masked maps.
- cloned tail (any other tail, or on request): the masked maps are built and the
  whole tail is cloned to run on them at batch B*hw.
Masks are generated in the graph (EyeLike, then a 3x3 convolution), never stored.

Top-k: with `top_k`, maps are computed only for each image's k best classes (TopK
on the model's own logits); where the tail ends with a linear layer, only those k
rows of its weight are used (Gather), which keeps 1000-class classifiers cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError, option_text
from xai_graph.graph.analysis import GraphIndex, constant_array
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.tail import clone_tail
from xai_graph.graph.targets import Target, is_global_pool
from xai_graph.methods.base import Options, Saliency, SaliencyMethod, option, register_method

GAUSSIAN_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16
MASKS = ("gaussian", "onehot")
SCORES = ("logits", "softmax", "sigmoid")
_AVERAGING_POOLS = ("GlobalAveragePool", "ReduceMean", "AveragePool")
# Ops that only reshape a [N, C(, 1, 1)] vector batch (Dropout is the identity at inference).
_SHAPE_ONLY = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout")


@dataclass(frozen=True)
class ReciproCamOptions(Options):
    mask: str = option(
        "gaussian", "Recipro-CAM mask: 3x3 Gaussian neighbourhood or one position.", "--mask", choices=MASKS
    )
    score: str = option("logits", "Recipro-CAM score read per class.", "--score", choices=SCORES)
    brute_force: bool = option(
        False,
        "Recipro-CAM: clone the whole tail on masked maps even where the fused form "
        "applies; also accepts a form that costs more than 3x the model.",
        "--brute-force",
    )


def check_mask_and_score(options: ReciproCamOptions) -> None:
    if options.mask not in MASKS:
        raise XaiGraphError(f"unknown mask {options.mask!r}; choose one of {', '.join(MASKS)}")
    if options.score not in SCORES:
        raise XaiGraphError(f"unknown score {options.score!r}; choose one of {', '.join(SCORES)}")


def class_score(b: GraphBuilder, logits: ir.Value, score: str, axis: int = -1) -> ir.Value:
    """The per-class score read from the logits; `axis` is the class axis (Softmax needs it)."""
    if score == "softmax":
        return b.op("Softmax", logits, axis=-1) if axis == -1 else b.softmax(logits, axis, rank=3)
    if score == "sigmoid":
        return b.op("Sigmoid", logits)
    return logits


@register_method
class ReciproCAM(SaliencyMethod):
    algo = "classwisesaliencymap"
    task = "classification"
    title = "Recipro-CAM"
    class_wise = True
    Options = ReciproCamOptions

    def check(self, target: Target) -> None:
        super().check(target)
        check_mask_and_score(self.options)
        k = self.options.top_k
        if k is not None:
            if self.options.score == "softmax":
                raise XaiGraphError(
                    f"top-k maps need every class for a softmax score; use {option_text('score', 'logits')} or sigmoid"
                )
            if k < 1 or (target.num_classes is not None and k > target.num_classes):
                raise XaiGraphError(f"top-k must be between 1 and the number of classes ({target.num_classes})")

    def form(self, target: Target) -> str:
        return "fused" if self._pool(target) is not None else "cloned tail"

    def repeated_nodes(self, target: Target) -> list[ir.Node]:
        pool = self._pool(target)
        return target.tail if pool is None else [n for n in target.tail if n is not pool]

    def _pool(self, target: Target) -> ir.Node | None:
        return None if self.options.brute_force else _averaging_pool(target)

    def build(self, b: GraphBuilder, target: Target) -> Saliency:
        index = target.index or GraphIndex(b.graph)  # the find step's, taken before any head node
        f, layout = target.value, target.layout
        h, w = layout.sides(b, f)
        static_h, static_w = layout.static_grid(f)
        positions = static_h * static_w if static_h and static_w else b.op("Mul", h, w)
        logits = flat_logits(b, target.logits)  # [B, K]
        classes = None
        if self.options.top_k is not None:
            _, classes = b.op_multi(
                "TopK", logits, b.ints([self.options.top_k]), num_outputs=2, axis=-1, largest=1, sorted=1
            )
        final = _final_linear(b, target, index)
        pool = self._pool(target)
        if pool is not None and final is not None and self._only_reshapes(target, index, pool, final):
            scores = self._linear_head(b, target, pool, final, classes, positions)  # [B, K or k, hw]
            return Saliency(b.reshape(scores, 0, 0, h, w), classes, self.form(target))
        final = final if classes is not None else None
        outputs = self._per_position(b, target, index, final.input if final else target.logits, positions, h, w)
        if final is not None:
            scores = self._selected_rows(b, final, outputs, classes, positions)
        else:
            scores = self.score(b, b.reshape(outputs, -1, positions, b.dim(logits, 1)))  # [B, hw, K]
            if classes is not None:  # the tail does not end linearly: all maps, then the k selected
                picked = b.op(
                    "Expand", b.unsqueeze(classes, [1]), b.shape_from(b.dim(scores, 0), positions, self.options.top_k)
                )
                scores = b.op("GatherElements", scores, picked, axis=2)  # [B, hw, k]
        per_image = b.op("Transpose", scores, perm=[0, 2, 1])
        return Saliency(b.reshape(per_image, 0, 0, h, w), classes, self.form(target))  # [B, K or k, h, w]

    @staticmethod
    def _only_reshapes(target: Target, index: GraphIndex, pool: ir.Node, final: _Linear) -> bool:
        between = index.descendants(pool.outputs[0]) & index.ancestors(final.input)
        return all(n.op_type in _SHAPE_ONLY for n in target.tail if n in between)

    def _linear_head(self, b: GraphBuilder, target: Target, pool: ir.Node, final: _Linear, classes, positions):
        """Pool -> (reshapes) -> linear layer, the commonest classifier: S = W @ pooled + bias as one MatMul.

        The pooled vectors stay in F's own [B, C, hw] layout, so no transposes are needed;
        with top-k only the k selected rows of W take part.
        """
        x = b.reshape(self._masked_average(b, target, positions), 0, 0, -1)  # [B, C, hw]
        if classes is None:
            weights, bias = final.weight, final.bias  # [K, C], [K]
        else:
            weights = b.op("Gather", final.weight, classes, axis=0)  # [B, k, C]
            bias = b.op("Gather", final.bias, classes, axis=0) if final.bias is not None else None  # [B, k]
        scores = b.op("MatMul", weights, x)  # [B, K or k, hw]
        if bias is not None:
            scores = b.op("Add", scores, b.unsqueeze(bias, [-1]))
        return self.score(b, scores, axis=1)

    def _per_position(
        self, b: GraphBuilder, target: Target, index: GraphIndex, end: ir.Value, positions, h, w
    ) -> ir.Value:
        """`end` (the logits, or the last linear layer's input) for F masked at each position: [B*hw, ...]."""
        f = target.value
        pool = self._pool(target)
        if pool is not None:
            start, batch = pool.outputs[0], self._pooled_vectors(b, target, pool, positions)
        else:
            start, batch = f, self._masked_maps(b, target, positions, h, w)
        between = index.descendants(start) & index.ancestors(end)
        nodes = [n for n in target.tail if n in between]
        if end is start or (end is not target.logits and all(n.op_type in _SHAPE_ONLY for n in nodes)):
            return batch  # nothing but reshaping between the pool and the last layer: no clone needed
        return clone_tail(b, nodes, start, batch, end, index=index)

    def _selected_rows(
        self, b: GraphBuilder, final: _Linear, hidden: ir.Value, classes: ir.Value, positions
    ) -> ir.Value:
        """Scores of the k selected classes only, from their rows of the last layer: [B, hw, k]."""
        hidden = b.reshape(hidden, -1, positions, b.dim(final.input, -1))  # [B, hw, D]
        weights = b.op("Gather", final.weight, classes, axis=0)  # [B, k, D]
        scores = b.op("MatMul", hidden, b.op("Transpose", weights, perm=[0, 2, 1]))
        if final.bias is not None:
            scores = b.op("Add", scores, b.unsqueeze(b.op("Gather", final.bias, classes, axis=0), [1]))
        return self.score(b, scores)

    def _masked_maps(self, b: GraphBuilder, target: Target, positions, h, w) -> ir.Value:
        """F masked at every position, as one batch [B*hw, ...] in F's own layout."""
        f = target.value
        one_hot = b.reshape(b.eye(positions), -1, 1, h, w)
        masks = (
            one_hot
            if self.options.mask == "onehot"
            else b.op("Conv", one_hot, b.const(GAUSSIAN_KERNEL.reshape(1, 1, 3, 3)), pads=[1, 1, 1, 1])
        )
        masks = target.layout.masks(b, masks, f)
        masked = b.op("Mul", b.unsqueeze(f, [1]), b.unsqueeze(masks, [0]))  # [B, hw, ...]
        return b.reshape(masked, -1, *(b.dim(f, axis) for axis in range(1, len(f.shape))))

    def _pooled_vectors(self, b: GraphBuilder, target: Target, pool: ir.Node, positions) -> ir.Value:
        """What the pool outputs for F masked at every position: [B*hw, C] in the pool's own layout."""
        channels = target.layout.channels(target.value)
        x = self._masked_average(b, target, positions)
        vectors = b.op("Transpose", b.reshape(x, 0, 0, -1), perm=[0, 2, 1])  # [B, hw, C]
        pooled = pool.outputs[0].shape
        rest = list(pooled)[1:] if pooled is not None else None
        if rest is not None and all(isinstance(d, int) and d >= 0 for d in rest):  # C and ones, any order
            return b.reshape(vectors, -1, *rest)
        keeps_dims = pool.op_type != "ReduceMean" or _keepdims(pool)
        return b.reshape(vectors, -1, channels, 1, 1) if keeps_dims else b.reshape(vectors, -1, channels)

    def _masked_average(self, b: GraphBuilder, target: Target, positions) -> ir.Value:
        """[B, C, h, w]: at each position p, the spatial average of F masked at p."""
        f = target.layout.to_nchw(b, target.value)
        channels = target.layout.channels(target.value)
        # The pool divides by all hw positions, masked or not; a static hw goes into the kernel.
        scale = 1.0 / positions if isinstance(positions, int) else 1.0
        if self.options.mask == "gaussian":  # sum of F over the Gaussian neighbourhood of each position
            kernel = b.const(np.tile(GAUSSIAN_KERNEL * np.float32(scale), (channels, 1, 1, 1)))
            x = b.op("Conv", f, kernel, pads=[1, 1, 1, 1], group=channels)
        else:
            x = b.op("Mul", f, b.scalar(scale)) if isinstance(positions, int) else f
        if not isinstance(positions, int):
            x = b.op("Div", x, b.op("Cast", positions, to=ir.DataType.FLOAT))
        return x

    def score(self, b: GraphBuilder, logits: ir.Value, axis: int = -1) -> ir.Value:
        return class_score(b, logits, self.options.score, axis)


def flat_logits(b: GraphBuilder, logits: ir.Value) -> ir.Value:
    """Class scores as [B, K] (classifiers ending in a 1x1 convolution output [B, K, 1, 1])."""
    return logits if logits.shape is not None and len(logits.shape) == 2 else b.reshape(logits, 0, -1)


def _keepdims(node: ir.Node) -> bool:
    return node.attributes["keepdims"].as_int() != 0 if "keepdims" in node.attributes else True


def _averaging_pool(target: Target) -> ir.Node | None:
    """The pool that starts the tail, where averaging makes the fused form exact; else None."""
    readers = [n for n in target.tail if target.value in n.inputs]
    if len(readers) != 1:
        return None
    pool = readers[0]
    if pool.op_type not in _AVERAGING_POOLS or not is_global_pool(pool) or target.layout.channels(target.value) is None:
        return None
    return pool


class _Linear:
    """logits = input @ weight^T + bias, with weight [K, D] and bias [K] (or None)."""

    def __init__(self, input: ir.Value, weight: ir.Value, bias: ir.Value | None):
        self.input, self.weight, self.bias = input, weight, bias


def _final_linear(b: GraphBuilder, target: Target, index: GraphIndex) -> _Linear | None:
    """The tail's last layer where it is linear with constant weights (Gemm, or MatMul [+ Add]); else None."""
    node = target.logits.producer()
    if node is None or node not in target.tail:
        return None

    def constant(v: ir.Value | None, ndim: int) -> bool:
        array = constant_array(v) if v is not None and v not in index.data_dependent else None
        return array is not None and array.ndim == ndim

    if node.op_type == "Gemm":
        return _gemm_linear(b, node, constant)
    bias = None
    if node.op_type == "Add":
        products = [v for v in node.inputs if v.producer() is not None and v.producer().op_type == "MatMul"]
        others = [v for v in node.inputs if v not in products]
        if len(products) != 1 or len(others) != 1 or not constant(others[0], 1):
            return None
        bias, node = others[0], products[0].producer()
    if node.op_type == "MatMul" and constant(node.inputs[1], 2):
        return _Linear(node.inputs[0], b.op("Transpose", node.inputs[1], perm=[1, 0]), bias)
    return None


def _gemm_linear(b: GraphBuilder, node: ir.Node, constant) -> _Linear | None:
    """A Gemm as y = x @ W^T + bias, where it is plain (no transA, alpha = beta = 1) with constant weights."""
    attrs = {k: a.value for k, a in node.attributes.items()}
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if (
        attrs.get("transA", 0)
        or attrs.get("alpha", 1.0) != 1.0
        or attrs.get("beta", 1.0) != 1.0
        or not constant(node.inputs[1], 2)
        or (bias is not None and not constant(bias, 1))
    ):
        return None
    weight = node.inputs[1] if attrs.get("transB", 0) else b.op("Transpose", node.inputs[1], perm=[1, 0])
    return _Linear(node.inputs[0], weight, bias)
