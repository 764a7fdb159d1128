"""Find the per-level class-score maps of a single-stage detector.

Exported detectors rarely output their class maps: each level's class branch
ends in a Conv whose [B, A*K, h, w] output goes through Split, Transpose,
Reshape, Concat and a Sigmoid or Softmax before reaching a graph output. Walking
back from the outputs through such shape-only ops finds the spatial tensors
they come from; those reached through a score activation are the class maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import GraphIndex, known_dim, shape_text, spatial_size
from xai_graph.graph.builder import static_dim

# Ops a score tensor passes through unchanged in value (only moved or sliced), plus score activations.
_PASSIVE = {"Reshape", "Transpose", "Concat", "Split", "Slice", "Flatten", "Squeeze", "Unsqueeze", "Identity",
            "Cast", "Sigmoid", "Softmax"}
_ACTIVATIONS = {"Sigmoid", "Softmax"}
# A spatial map made by these is the class map itself: they cut the class channels out of a shared conv.
_CUTS = {"Split", "Slice"}


@dataclass
class Level:
    value: ir.Value  # [B, A*K, h, w] class scores before the activation
    anchors: int

    @property
    def size(self) -> tuple[int | None, int | None]:
        return spatial_size(self.value)


@dataclass
class DetectorHeads:
    """Where a detector's class maps are: one `Level` per resolution, finest first."""

    levels: list[Level]
    num_classes: int
    activation: str | None  # the score activation the outputs apply (Sigmoid or Softmax), if any
    outputs: list[ir.Value] = field(default_factory=list)  # graph outputs the class maps reach
    reason: str = ""
    neck: ir.Value | None = None  # the neck feature feeding the middle level (activationmap's target)

    @property
    def middle(self) -> Level:
        return self.levels[len(self.levels) // 2]


def _walk_back(output: ir.Value, index: GraphIndex) -> dict[ir.Value, str | None]:
    """Spatial tensors an output is made of through passive ops, with the activation met on the way."""
    roots: dict[ir.Value, str | None] = {}
    stack: list[tuple[ir.Value, str | None]] = [(output, None)]
    seen: set[ir.Value] = set()
    while stack:
        value, activation = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        size = spatial_size(value)
        node = value.producer()
        computed = node is None or node.op_type not in _PASSIVE or node.op_type in _CUTS
        if size is not None and size != (1, 1) and value in index.data_dependent and computed:
            roots.setdefault(value, activation)  # the branch's conv output, or the class part cut out of it
            continue
        if node is None or node.op_type not in _PASSIVE:
            continue
        met = activation or (node.op_type if node.op_type in _ACTIVATIONS else None)
        inputs = node.inputs if node.op_type == "Concat" else node.inputs[:1]
        stack.extend((v, met) for v in inputs if v is not None)
    return roots


def find_class_heads(model: ir.Model, heads: list[str] | None = None, num_anchors: list[int] | None = None,
                     num_classes: int | None = None) -> DetectorHeads | None:
    """The detector's class maps, or None when the model does not look like a single-stage detector."""
    graph = model.graph
    index = GraphIndex(graph)
    if heads:
        levels = [_named(graph, name) for name in heads]
        activation, outputs = None, []
        reason = "named with --head"
    else:
        found: dict[ir.Value, str | None] = {}
        outputs = []
        for out in graph.outputs:
            roots = {v: a for v, a in _walk_back(out, index).items() if a is not None}
            if roots:
                outputs.append(out)
                found.update(roots)
        sizes = {spatial_size(v) for v in found}
        if len(sizes) < 2:
            return None
        levels = list(found)
        activations = set(found.values())
        activation = activations.pop() if len(activations) == 1 else None
        reason = (f"{len(levels)} class maps found behind {activation or 'score activations'} of "
                  f"{', '.join(o.name for o in outputs)}")
    levels.sort(key=lambda v: -((spatial_size(v)[0] or 0) * (spatial_size(v)[1] or 0)))
    k = num_classes or _classes_from_outputs(outputs) or _common_channels(levels)
    if not k:
        raise XaiGraphError("cannot tell the number of classes of the detector; pass --num-classes")
    anchors = num_anchors or [_anchors(v, k) for v in levels]
    if len(anchors) == 1:
        anchors = anchors * len(levels)
    if len(anchors) != len(levels):
        raise XaiGraphError(f"--num-anchors gives {len(anchors)} values for {len(levels)} levels")
    heads = DetectorHeads([Level(v, a) for v, a in zip(levels, anchors)], k, activation, outputs, reason)
    try:
        heads.neck = neck_feature(heads, model)
    except XaiGraphError:
        heads.neck = None  # only activationmap needs it, and says so
    return heads


def _named(graph: ir.Graph, name: str) -> ir.Value:
    for node in graph:
        for v in node.outputs:
            if v.name == name or node.name == name:
                if spatial_size(v) is None:
                    raise XaiGraphError(f"--head {name!r} is {shape_text(v)}, not a [B, A*K, h, w] map")
                return v
    raise XaiGraphError(f"--head {name!r} is neither a value nor a node of the model")


def _classes_from_outputs(outputs: list[ir.Value]) -> int | None:
    """K from outputs shaped [B, N, K] (the common export of class scores)."""
    sizes = {known_dim(o.shape[-1]) for o in outputs if o.shape is not None and len(o.shape) == 3}
    sizes.discard(None)
    return sizes.pop() if len(sizes) == 1 else None


def _common_channels(levels: list[ir.Value]) -> int | None:
    channels = {static_dim(v, 1) for v in levels}
    return channels.pop() if len(channels) == 1 and None not in channels else None


def _anchors(value: ir.Value, k: int) -> int:
    channels = static_dim(value, 1)
    if channels is None or channels % k:
        raise XaiGraphError(f"class map '{value.name}' has {channels} channels, not a multiple of {k} classes; "
                            "pass --num-classes or --num-anchors")
    return channels // k


def neck_feature(heads: DetectorHeads, model: ir.Model) -> ir.Value:
    """The neck's feature map at the middle level: what its class (and box) branch starts from.

    Walking back from the middle class map along data inputs, the first spatial map
    read by two or more convolutions is where branches part: the class and box towers,
    or this level's head and the path to the next level. (Counting any two readers
    would stop inside activations such as hard-swish, written as x * relu6(x + 3) / 6.)
    """
    index = GraphIndex(model.graph)
    value = heads.middle.value
    for _ in range(256):
        node = value.producer()
        inputs = [v for v in node.inputs if v is not None and v in index.data_dependent] if node else []
        if not inputs:
            break
        value = inputs[0]
        convolutions = {c for c in value.consumers() if c.op_type == "Conv"}
        if spatial_size(value) is not None and len(convolutions) >= 2:
            return value
    raise XaiGraphError(f"no neck feature map found behind '{heads.middle.value.name}'; pass --target-layer")
