"""Find the feature map to explain by graph pattern, not by shape alone.

Rules, in order:
1. `--target-layer` names a value or a node (its first output).
2. The input of the global pooling that feeds the class scores: GlobalAveragePool,
   GlobalMaxPool, ReduceMean/ReduceMax over every position, AveragePool/MaxPool
   whose kernel covers the map. Positions may be NCHW, channels-last [B, H, W, C]
   or a square token grid ([B, H*W, C] or [B, C, H*W]); see `layout.py`. A pool
   counts only if everything between it and the scores is a function of the pool
   alone; that rejects squeeze-excitation pools, whose output gates the map it was
   computed from.
3. Heads without global pooling (Flatten + Gemm, as VGG): the last spatial map that
   the scores are a function of.
"""

from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass, field

import onnx_ir as ir

from xai_graph.errors import XaiGraphError, option_text
from xai_graph.graph.analysis import GraphIndex, constant_array, known_dim, shape_text, spatial_size, work_fraction
from xai_graph.graph.layout import Layout, square_grid

_SCORE_ACTIVATIONS = {"Softmax", "Sigmoid", "LogSoftmax"}
_PASS_THROUGH = {"Identity"}
# Ops that make channels-first maps, and ops a map keeps its layout through: a rank-4 value counts as an
# NCHW map (a fallback target) only when made by the first kind, so a channels-last [B, H, W, C] value of a
# transformer is never read as NCHW.
_CHANNELS_FIRST_OPS = {
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "LRN",
    "InstanceNormalization",
    "Resize",
    "Upsample",
}
_LAYOUT_KEEPING_OPS = {
    "Relu",
    "Clip",
    "Sigmoid",
    "Mul",
    "Add",
    "Div",
    "Sub",
    "HardSwish",
    "HardSigmoid",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Tanh",
    "Identity",
    "Dropout",
    "Pad",
    "Concat",
    "Sum",
    "Max",
    "Min",
    "Softplus",
    "Mish",
    "Gelu",
    "Erf",
}
_MAX_CANDIDATES = 8
# A fallback map (no global pooling) is refused when the tail after it holds more of the network than this.
_MAX_TAIL_SHARE = 0.5


@dataclass
class Pool:
    node: ir.Node
    input: ir.Value
    feeds_scores: bool  # False: a squeeze-excitation (or otherwise side) pool
    layout: Layout = Layout()


@dataclass
class Target:
    """Where the saliency head attaches: the map F, and the class scores it explains."""

    value: ir.Value  # F, [B, C, h, w]
    scores: ir.Value | None  # the model's class-score output, [B, K] (None: a named map in a model without one)
    logits: ir.Value | None  # the scores before a final Softmax/Sigmoid
    final_activation: str | None  # op type stripped between logits and scores
    reason: str
    tail: list[ir.Node] = field(default_factory=list)  # nodes from F to logits
    pools: list[Pool] = field(default_factory=list)
    candidates: list[ir.Value] = field(default_factory=list)  # maps the scores are a function of
    layout: Layout = Layout()
    index: GraphIndex | None = field(default=None, repr=False, compare=False)  # of the graph it was found in

    task: ClassVar[str] = "classification"

    @property
    def num_classes(self) -> int | None:
        return classes_of(self.logits)

    def record(self) -> dict[str, str]:
        """What the model's metadata records about it (beyond the values a method explains)."""
        found = {
            "xai_graph.scores": self.scores.name if self.scores is not None else "",
            "xai_graph.scores_activation": self.final_activation or "none",
        }
        return found if self.layout.kind == "NCHW" else {**found, "xai_graph.layout": self.layout.kind}


def classes_of(logits: ir.Value | None) -> int | None:
    """K of class scores shaped [B, K], [B, K, 1, 1] or [B, 1, 1, K]."""
    if logits is None or logits.shape is None:
        return None
    k = known_dim(logits.shape[class_axis(logits)])
    return k if isinstance(k, int) and k > 0 else None


def class_axis(scores: ir.Value) -> int:
    """Where the classes are in a score tensor: 1, or 3 for [B, 1, 1, K] (channels-last exports)."""
    dims = list(scores.shape) if scores.shape is not None else []
    return 3 if len(dims) == 4 and dims[1] == 1 and dims[2] == 1 and dims[3] != 1 else 1


def _is_score_shaped(value: ir.Value) -> bool:
    """[B, K], or [B, K, 1, 1] / [B, 1, 1, K] (classifiers ending in a 1x1 convolution), float."""
    if value.shape is None or value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, None):
        return False
    dims = list(value.shape)
    if len(dims) == 2:
        return True
    return len(dims) == 4 and (dims[2:] == [1, 1] or dims[1:3] == [1, 1])


def _role_rank(value: ir.Value, index: GraphIndex) -> tuple:
    """Class scores end in a score activation, or in a linear layer; an embedding beside them is
    upstream of them (fewer ancestors). The name breaks ties, so the choice never depends on output order."""
    logits, activation = strip_score_activation(value)
    node = logits.producer()
    linear = node is not None and node.op_type in ("Gemm", "MatMul", "Add", "Conv")
    return activation is not None, linear, len(index.ancestors(logits)), value.name


def find_scores(graph: ir.Graph, name: str | None = None, index: GraphIndex | None = None) -> ir.Value:
    """The class-score output: the one named, or among the score-shaped outputs the one whose role is
    class scores (the same for an ONNX model and its IR, whose outputs may be listed in another order)."""
    shapes = ", ".join(f"{o.name} {shape_text(o)}" for o in graph.outputs)
    if name is not None:
        named = next((o for o in graph.outputs if o.name == name), None)
        if named is None:
            raise XaiGraphError(f"{option_text('scores', repr(name))} is not an output of the model; outputs: {shapes}")
        if not _is_score_shaped(named):
            raise XaiGraphError(f"{option_text('scores', repr(name))} is {shape_text(named)}, not class scores [B, K]")
        return named
    candidates = [o for o in graph.outputs if _is_score_shaped(o)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        index = index or GraphIndex(graph)
        return max(candidates, key=lambda o: _role_rank(o, index))
    raise XaiGraphError(
        f"no class-score output [B, K] among the outputs ({shapes}), and no single-stage detector class maps "
        "(spatial maps reaching an output through Reshape/Transpose/Concat/Split/Slice and a Sigmoid or Softmax); "
        f"for a detector (two-stage included) name the class maps with {option_text('class_maps', 'VALUE')}, or "
        f"explain a feature map with {option_text('algo', 'activationmap')} {option_text('target_layer', 'NAME')}"
    )


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
    return pool_layout(node) is not None


def _reduced_axes(node: ir.Node, rank: int) -> set[int] | None:
    if "axes" in node.attributes:
        axes = node.attributes["axes"].as_ints()
    else:
        axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return {int(a) % rank for a in list(axes)} if axes is not None else None


# Reduced axes of a global pooling -> the layout of the map it pools.
_REDUCE_LAYOUTS = {(4, (2, 3)): "NCHW", (4, (1, 2)): "NHWC", (3, (1,)): "NLC", (3, (2,)): "NCL"}


def pool_layout(node: ir.Node) -> Layout | None:
    """The layout of the map `node` pools over every position, or None when it is not a global pooling."""
    x = node.inputs[0] if node.inputs else None
    rank = len(x.shape) if x is not None and x.shape is not None else None
    kind = _pooled_layout(node, x, rank) if rank in (3, 4) else None
    if kind is None:
        return None
    if rank == 3:  # a token sequence: its grid must be square to be told from the sequence length
        length = known_dim(x.shape[1 if kind == "NLC" else 2])
        if not isinstance(length, int):
            return Layout(kind)  # unknown here (Swin's computed padding hides it): square, sized at run time
        grid = square_grid(length)
        return Layout(kind, grid) if grid is not None else None
    return Layout(kind)


def _pooled_layout(node: ir.Node, x: ir.Value, rank: int) -> str | None:
    """The layout kind `node` pools over every position of (rank 3 or 4), or None."""
    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return "NCHW" if rank == 4 else "NCL"
    if node.op_type in ("ReduceMean", "ReduceMax"):
        axes = _reduced_axes(node, rank)
        return _REDUCE_LAYOUTS.get((rank, tuple(sorted(axes)))) if axes else None
    if node.op_type in ("AveragePool", "MaxPool") and rank == 4:
        kernel = node.attributes["kernel_shape"].as_ints() if "kernel_shape" in node.attributes else None
        pads = node.attributes["pads"].as_ints() if "pads" in node.attributes else [0]
        auto_pad = node.attributes["auto_pad"].as_string() if "auto_pad" in node.attributes else "NOTSET"
        covers = kernel is not None and tuple(kernel) == spatial_size(x) and None not in spatial_size(x)
        return "NCHW" if covers and not any(pads) and auto_pad in ("NOTSET", "VALID") else None
    return None


def _made_channels_first(value: ir.Value, index: GraphIndex) -> bool:
    for _ in range(32):
        node = value.producer()
        if node is None or node.op_type not in _LAYOUT_KEEPING_OPS:
            return node is not None and node.op_type in _CHANNELS_FIRST_OPS
        value = next((v for v in node.inputs if v is not None and v in index.data_dependent), None)
        if value is None:
            return False
    return False


def _has_spatial_extent(value: ir.Value, layout: Layout = Layout()) -> bool:
    if layout.kind == "NCHW" and spatial_size(value) is None:
        return False
    return layout.static_grid(value) != (1, 1)


def find_target(
    model: ir.Model,
    target_layer: str | None = None,
    need_scores: bool = True,
    scores_name: str | None = None,
    index: GraphIndex | None = None,
) -> Target:
    """The map to explain; `need_scores=False` (class-agnostic methods) accepts a named map in any model."""
    graph = model.graph
    index = index or GraphIndex(graph)
    try:
        scores = find_scores(graph, scores_name, index)
    except XaiGraphError:
        if need_scores or target_layer is None:
            raise
        value = _named_value(graph, target_layer)
        if value is None or spatial_size(value) is None:
            named_as = option_text("target_layer", repr(target_layer))
            raise XaiGraphError(f"{named_as} is not a [B, C, h, w] map of the model") from None
        return Target(value, None, None, None, "named with --target-layer")
    search = _TargetSearch(graph, index, scores)
    return search.named(target_layer) if target_layer is not None else search.chosen()


class _TargetSearch:
    """The maps near the scores that the scores are a function of alone, and the target among them."""

    def __init__(self, graph: ir.Graph, index: GraphIndex, scores: ir.Value):
        self.graph, self.index, self.scores = graph, index, scores
        self.logits, self.activation = strip_score_activation(scores)
        self.ancestors = index.ancestors(self.logits)
        self.pools = [
            Pool(node, node.inputs[0], False, layout)
            for node in index.nodes
            if node in self.ancestors and (layout := pool_layout(node)) is not None
        ]
        for pool in self.pools:
            pool.feeds_scores = self.is_sole_source(pool.node.outputs[0])
        self.candidates = self._candidates()

    def is_sole_source(self, value: ir.Value) -> bool:
        return not self.index.foreign_inputs(value, self.index.path_nodes(value, self.logits))

    def is_candidate(self, v: ir.Value) -> bool:  # (a node's other outputs, such as MaxPool's indices, may not feed it)
        feeds_scores = any(user in self.ancestors for user in v.consumers())
        return (
            feeds_scores
            and _has_spatial_extent(v)
            and v in self.index.data_dependent
            and _made_channels_first(v, self.index)
            and self.is_sole_source(v)
        )

    def _candidates(self) -> list[ir.Value]:
        """The last few maps, in graph order; checking every value of a deep network would cost O(nodes^2)."""
        candidates: list[ir.Value] = []
        for node in reversed(self.index.nodes):
            if node in self.ancestors:
                candidates[:0] = [v for v in node.outputs if self.is_candidate(v)]
            if len(candidates) >= _MAX_CANDIDATES:
                break
        return candidates

    def target(self, value: ir.Value, reason: str, layout: Layout = Layout()) -> Target:
        return Target(
            value,
            self.scores,
            self.logits,
            self.activation,
            reason,
            self.index.path_nodes(value, self.logits),
            self.pools,
            self.candidates,
            layout,
        )

    def named(self, target_layer: str) -> Target:
        value = _named_value(self.graph, target_layer)
        named_as = option_text("target_layer", repr(target_layer))
        maps = ", ".join(v.name for v in self.candidates) or "none"
        if value is None:
            raise XaiGraphError(f"{named_as} is neither a value nor a node of the model; candidate maps: {maps}")
        if spatial_size(value) is None:
            raise XaiGraphError(f"{named_as} is {shape_text(value)}, not a [B, C, h, w] map")
        if not self.is_candidate(value):
            raise XaiGraphError(
                f"the scores are not a function of {target_layer!r} alone (other activations join "
                f"after it); candidate maps: {maps}"
            )
        return self.target(value, "named with --target-layer")

    def chosen(self) -> Target:
        """The input of the pooling that feeds the scores, else the last spatial map before them."""
        scores = self.scores
        head_pools = [p for p in self.pools if p.feeds_scores and _has_spatial_extent(p.input, p.layout)]
        if head_pools:
            pool = head_pools[-1]
            where = "" if pool.layout.kind == "NCHW" else f" ({pool.layout.kind} layout)"
            return self.target(
                pool.input,
                f"input of {pool.node.op_type} '{pool.node.name}', the pooling that feeds '{scores.name}'{where}",
                pool.layout,
            )
        if self.candidates:
            chosen = self.target(
                self.candidates[-1], f"last spatial map before the classifier of '{scores.name}' (no global pooling)"
            )
            share = work_fraction(self.graph, chosen.tail)
            if share is not None and share > _MAX_TAIL_SHARE:
                raise XaiGraphError(
                    f"the last spatial map the scores depend on, '{chosen.value.name}', comes before "
                    f"{100 * share:.0f}% of the network (a transformer's patch embedding, say): its map would not "
                    f"explain the scores; name a map with {option_text('target_layer', 'NAME')}"
                )
            return chosen
        raise XaiGraphError(
            f"'{scores.name}' is fed by no spatial map [B, C, h, w] (CNN) and by no recognised "
            "transformer block (tokens [B, E + h*w, D], E <= 8 extra tokens, through pre-norm blocks "
            "and a final layer norm); this is neither a CNN nor a ViT-style classifier: name a map "
            f"with {option_text('target_layer', 'NAME')}"
        )


def _named_value(graph: ir.Graph, name: str) -> ir.Value | None:
    for node in graph:
        if node.name == name:
            return node.outputs[0]
        for v in node.outputs:
            if v.name == name:
                return v
    return None
