"""Find the feature map to explain by graph pattern, not by shape alone.

Rules, in order:
1. `--target-layer` names a value or a node (its first output).
2. The input of the global pooling that feeds the class scores: GlobalAveragePool,
   GlobalMaxPool, ReduceMean/ReduceMax over both spatial axes, AveragePool/MaxPool
   whose kernel covers the map. A pool counts only if everything between it and
   the scores is a function of the pool alone; that rejects squeeze-excitation
   pools, whose output gates the map it was computed from.
3. Heads without global pooling (Flatten + Gemm, as VGG): the last spatial map that
   the scores are a function of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import GraphIndex, constant_array, shape_text, spatial_size

_SCORE_ACTIVATIONS = {"Softmax", "Sigmoid", "LogSoftmax"}
_PASS_THROUGH = {"Identity"}
_MAX_CANDIDATES = 8


@dataclass
class Pool:
    node: ir.Node
    input: ir.Value
    feeds_scores: bool  # False: a squeeze-excitation (or otherwise side) pool


@dataclass
class Target:
    """Where the head attaches: the map F, and the class scores it explains."""

    value: ir.Value  # F, [B, C, h, w]
    scores: ir.Value | None  # the model's class-score output, [B, K] (None: a named map in a model without one)
    logits: ir.Value | None  # the scores before a final Softmax/Sigmoid
    final_activation: str | None  # op type stripped between logits and scores
    reason: str
    tail: list[ir.Node] = field(default_factory=list)  # nodes from F to logits
    pools: list[Pool] = field(default_factory=list)
    candidates: list[ir.Value] = field(default_factory=list)  # maps the scores are a function of

    @property
    def num_classes(self) -> int | None:
        k = self.logits.shape[-1] if self.logits is not None and self.logits.shape is not None else None
        return k if isinstance(k, int) and k > 0 else None


def find_scores(graph: ir.Graph) -> ir.Value:
    """The class-score output: the first float output of shape [B, K]."""
    for out in graph.outputs:
        if out.shape is not None and len(out.shape) == 2 and out.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, None):
            return out
    shapes = ", ".join(f"{o.name} {shape_text(o)}" for o in graph.outputs)
    raise XaiGraphError(
        f"no class-score output [B, K] among the outputs ({shapes}), and no single-stage detector class maps "
        "(spatial maps reaching an output through Reshape/Transpose/Concat/Split/Slice and a Sigmoid or Softmax); "
        "for a detector (two-stage included) name the class maps with --head, or explain a feature map with "
        "--algo activationmap --target-layer NAME")


def strip_score_activation(scores: ir.Value) -> tuple[ir.Value, str | None]:
    """Walk back from the scores through Identity to the pre-Softmax/Sigmoid logits."""
    value, activation = scores, None
    while (node := value.producer()) is not None:
        if node.op_type in _PASS_THROUGH:
            value = node.inputs[0]
        elif node.op_type in _SCORE_ACTIVATIONS and activation is None:
            activation, value = node.op_type, node.inputs[0]
        else:
            break
    return value, activation


def is_global_pool(node: ir.Node) -> bool:
    x = node.inputs[0] if node.inputs else None
    if x is None or spatial_size(x) is None:
        return False
    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return True
    if node.op_type in ("ReduceMean", "ReduceMax"):
        if "axes" in node.attributes:
            axes = node.attributes["axes"].as_ints()
        else:
            axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        return axes is not None and {int(a) % 4 for a in list(axes)} == {2, 3}
    if node.op_type in ("AveragePool", "MaxPool"):
        kernel = node.attributes["kernel_shape"].as_ints() if "kernel_shape" in node.attributes else None
        pads = node.attributes["pads"].as_ints() if "pads" in node.attributes else [0]
        auto_pad = node.attributes["auto_pad"].as_string() if "auto_pad" in node.attributes else "NOTSET"
        return (kernel is not None and tuple(kernel) == spatial_size(x)
                and not any(pads) and auto_pad in ("NOTSET", "VALID"))
    return False


def _has_spatial_extent(value: ir.Value) -> bool:
    size = spatial_size(value)
    return size is not None and size != (1, 1)


def find_target(model: ir.Model, target_layer: str | None = None, need_scores: bool = True) -> Target:
    """The map to explain; `need_scores=False` (class-agnostic methods) accepts a named map in any model."""
    graph = model.graph
    index = GraphIndex(graph)
    try:
        scores = find_scores(graph)
    except XaiGraphError:
        if need_scores or target_layer is None:
            raise
        value = _named_value(graph, target_layer)
        if value is None or spatial_size(value) is None:
            raise XaiGraphError(f"--target-layer {target_layer!r} is not a [B, C, h, w] map of the model") from None
        return Target(value, None, None, None, "named with --target-layer")
    logits, activation = strip_score_activation(scores)
    ancestors = index.ancestors(logits)

    def is_sole_source(value: ir.Value) -> bool:
        return not index.foreign_inputs(value, index.path_nodes(value, logits))

    pools = [Pool(node, node.inputs[0], False) for node in index.nodes
             if node in ancestors and is_global_pool(node)]
    for pool in pools:
        pool.feeds_scores = is_sole_source(pool.node.outputs[0])

    def is_candidate(v: ir.Value) -> bool:  # (a node's other outputs, such as MaxPool's indices, may not feed it)
        feeds_scores = any(user in ancestors for user in v.consumers())
        return feeds_scores and _has_spatial_extent(v) and v in index.data_dependent and is_sole_source(v)

    # The last few maps, nearest the scores first in the search; checking every
    # value of a deep network would cost O(nodes^2).
    candidates: list[ir.Value] = []
    for node in reversed(index.nodes):
        if node in ancestors:
            candidates[:0] = [v for v in node.outputs if is_candidate(v)]
        if len(candidates) >= _MAX_CANDIDATES:
            break

    def target(value: ir.Value, reason: str) -> Target:
        return Target(value, scores, logits, activation, reason, index.path_nodes(value, logits),
                      pools, candidates)

    if target_layer is not None:
        value = _named_value(graph, target_layer)
        if value is None:
            names = ", ".join(v.name for v in candidates) or "none"
            raise XaiGraphError(f"--target-layer {target_layer!r} is neither a value nor a node of the model; "
                                f"candidate maps: {names}")
        if spatial_size(value) is None:
            raise XaiGraphError(f"--target-layer {target_layer!r} is {shape_text(value)}, not a [B, C, h, w] map")
        if not is_candidate(value):
            raise XaiGraphError(f"the scores are not a function of {target_layer!r} alone (other activations join "
                                f"after it); candidate maps: {', '.join(v.name for v in candidates) or 'none'}")
        return target(value, "named with --target-layer")

    head_pools = [p for p in pools if p.feeds_scores and _has_spatial_extent(p.input)]
    if head_pools:
        pool = head_pools[-1]
        return target(pool.input, f"input of {pool.node.op_type} '{pool.node.name}', the pooling that feeds "
                                  f"'{scores.name}'")
    if candidates:
        return target(candidates[-1], f"last spatial map before the head of '{scores.name}' (no global pooling)")
    raise XaiGraphError(f"'{scores.name}' is fed by no spatial map [B, C, h, w] (CNN) and by no recognised "
                        "transformer block (tokens [B, 1 or 2 + h*w, D] through pre-norm blocks and a final "
                        "layer norm); this is neither a CNN nor a ViT-style classifier: name a map with "
                        "--target-layer")


def _named_value(graph: ir.Graph, name: str) -> ir.Value | None:
    for node in graph:
        if node.name == name:
            return node.outputs[0]
        for v in node.outputs:
            if v.name == name:
                return v
    return None
