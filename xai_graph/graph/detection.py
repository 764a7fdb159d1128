"""Find the per-level class-score maps of a single-stage detector.

Exported detectors rarely output their class maps: each level's class branch
ends in a Conv whose [B, A*K, h, w] output goes through Split, Transpose,
Reshape, Concat and a Sigmoid or Softmax before reaching a graph output. Walking
back from the outputs through such shape-only ops finds the spatial tensors
they come from; those reached through a score activation are the class maps.

The walk carries a window (axis, start, stop) of the tensor it follows, so that
after `Split` (YOLOv8 concatenates box and class channels per level, then splits
them again) it follows only the class channels back to the class convolution.
Objectness and centerness branches (YOLOX, FCOS: one channel beside a K-channel
class map at the same level) are set aside. Selection ops of in-graph
post-processing (TopK, Gather, NonMaxSuppression, ReduceMax/ArgMax) are walked
through, so class maps behind final detections are found as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import GraphIndex, constant_array, shape_text, spatial_size
from xai_graph.graph.builder import static_dim

# Ops a score tensor passes through unchanged in value (only moved or sliced), plus score activations.
_PASSIVE = {"Reshape", "Transpose", "Concat", "Split", "Slice", "Flatten", "Squeeze", "Unsqueeze", "Identity",
            "Cast", "Sigmoid", "Softmax"}
_ACTIVATIONS = {"Sigmoid", "Softmax"}
# A spatial map made by these is the class map itself: they cut the class channels out of a shared conv.
_CUTS = {"Split", "Slice"}
# In-graph post-processing that picks scores without computing new ones (top-k, NMS, best class): the walk
# goes through every data input of these, so class maps behind final detections are found too.
_SELECTIONS = {"TopK", "Gather", "GatherElements", "GatherND", "NonMaxSuppression", "ReduceMax", "ArgMax", "Expand",
               "Tile"}


Window = tuple[int, int, int] | None  # (axis, start, stop) of the followed tensor; None: all of it


@dataclass
class Level:
    value: ir.Value  # [B, A*K, h, w] class scores before the activation
    anchors: int
    channels: tuple[int, int] | None = None  # where the class maps are only part of `value`'s channels

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


def _walk_back(output: ir.Value, index: GraphIndex) -> tuple[dict[ir.Value, tuple[str | None, Window]], bool]:
    """Spatial tensors an output is made of through passive ops: the activation met and the window used;
    and whether the walk went through post-processing (then the output's shape says nothing of K)."""
    roots: dict[ir.Value, tuple[str | None, Window]] = {}
    stack: list[tuple[ir.Value, str | None, Window]] = [(output, None, None)]
    seen: set[tuple] = set()
    selected = False
    while stack:
        value, activation, window = stack.pop()
        if (value, window) in seen:
            continue
        seen.add((value, window))
        size = spatial_size(value)
        node = value.producer()
        computed = node is None or node.op_type not in _PASSIVE or node.op_type in _CUTS
        if size is not None and value in index.data_dependent and computed:
            roots.setdefault(value, (activation, window))  # the branch's conv, or the class part cut out of it
            continue
        if node is not None and node.op_type in _SELECTIONS:
            selected = True
            stack.extend((v, activation, None) for v in node.inputs if v is not None and v in index.data_dependent)
            continue
        if node is None or node.op_type not in _PASSIVE:
            continue
        met = activation or (node.op_type if node.op_type in _ACTIVATIONS else None)
        stack.extend((v, met, w) for v, w in _inputs_with_windows(node, value, window))
    return roots, selected


def _inputs_with_windows(node: ir.Node, output: ir.Value, window: Window) -> list[tuple[ir.Value, Window]]:
    """The data inputs of a passive node that hold the windowed part of its output, with their windows."""
    source = node.inputs[0]
    if node.op_type == "Concat":
        axis = _axis(node, output)
        parts, offset = [], 0
        for v in node.inputs:
            n = static_dim(v, axis) if v.shape is not None else None
            if window is None or window[0] != axis or n is None:
                parts.append((v, window if (window is None or window[0] != axis) else None))
            elif window[1] < offset + n and window[2] > offset:
                parts.append((v, (axis, max(window[1], offset) - offset, min(window[2], offset + n) - offset)))
            offset += n or 0
        return parts
    if node.op_type == "Split":
        axis = _axis(node, source)
        sizes = _split_sizes(node, source, axis)
        if sizes is None:
            return [(source, None)]
        i = list(node.outputs).index(output)
        start = sum(sizes[:i])
        if window is not None and window[0] == axis:
            return [(source, (axis, start + window[1], start + window[2]))]
        return [(source, (axis, start, start + sizes[i]))]
    if node.op_type == "Transpose":
        perm = node.attributes["perm"].as_ints() if "perm" in node.attributes else None
        if window is None or perm is None:
            return [(source, window)]
        return [(source, (perm[window[0]], window[1], window[2]))]
    if node.op_type == "Reshape":
        return [(source, _reshaped_window(source, output, window))]
    if node.op_type in ("Flatten", "Squeeze", "Unsqueeze", "Slice"):
        return [(source, None)]  # windows across these are not followed: the whole input is taken
    return [(source, window)]  # element-wise: Sigmoid, Softmax, Identity, Cast


def _axis(node: ir.Node, value: ir.Value) -> int:
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    return axis % len(value.shape) if value.shape is not None else axis


def _split_sizes(node: ir.Node, source: ir.Value, axis: int) -> list[int] | None:
    if "split" in node.attributes:
        return list(node.attributes["split"].as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = constant_array(node.inputs[1])
        return [int(v) for v in sizes] if sizes is not None else None
    total = static_dim(source, axis)
    parts = len(node.outputs)
    return [total // parts] * parts if total is not None and total % parts == 0 else None


def _reshaped_window(source: ir.Value, output: ir.Value, window: Window) -> Window:
    """A window survives a Reshape on an axis whose size and leading dims are unchanged."""
    if window is None or source.shape is None or output.shape is None:
        return None
    axis = window[0]
    src, out = list(source.shape), list(output.shape)
    if axis < len(src) and src[: axis + 1] == out[: axis + 1]:
        return window
    if axis == len(out) - 1 and src[-1] == out[-1]:
        return (len(src) - 1, window[1], window[2])
    return None


def find_class_heads(model: ir.Model, heads: list[str] | None = None, num_anchors: list[int] | None = None,
                     num_classes: int | None = None) -> DetectorHeads | None:
    """The detector's class maps, or None when the model does not look like a single-stage detector."""
    graph = model.graph
    index = GraphIndex(graph)
    if heads:
        levels, outputs, shaped_like_scores = [], [], []
        found = {}
        for name in heads:
            value = _named(graph, name)
            if spatial_size(value) is not None:
                levels.append(value)
                continue
            # A score output: its class maps are the spatial tensors behind it, with or without an activation
            # (TFLite BlazeFace leaves the sigmoid to its post-processing).
            roots, selected = _walk_back(value, index)
            if not any(spatial_size(v) for v in roots):
                raise XaiGraphError(f"--head {name!r} is {shape_text(value)}, and no [B, A*K, h, w] maps reach it "
                                    "through Reshape/Transpose/Concat/Split/Slice")
            found.update(roots)
            outputs.append(value)
            if not selected:
                shaped_like_scores.append(value)
        found = _without_objectness(found)
        levels += list(found)
        windows = {v: w for v, (_, w) in found.items()}
        activations = {a for a, _ in found.values()}
        activation = activations.pop() if len(activations) == 1 else None
        reason = "named with --head"
    else:
        found: dict[ir.Value, tuple[str, Window]] = {}
        outputs, shaped_like_scores = [], []
        for out in graph.outputs:
            roots, selected = _walk_back(out, index)
            roots = {v: aw for v, aw in roots.items() if aw[0] is not None}
            if roots:
                outputs.append(out)
                found.update(roots)
                if not selected:
                    shaped_like_scores.append(out)
        found = _without_objectness(found)
        sizes = {spatial_size(v) for v in found}
        if len(sizes) < 2:
            return None
        levels = list(found)
        windows = {v: w for v, (_, w) in found.items()}
        activations = {a for a, _ in found.values()}
        activation = activations.pop() if len(activations) == 1 else None
        reason = (f"{len(levels)} class maps found behind {activation or 'score activations'} of "
                  f"{', '.join(o.name for o in outputs)}")
    levels.sort(key=lambda v: -((spatial_size(v)[0] or 0) * (spatial_size(v)[1] or 0)))
    channels = {v: _channel_range(v, windows.get(v)) for v in levels}
    widths = [c[1] - c[0] for c in channels.values() if c is not None]
    k = num_classes or _classes_from_outputs(shaped_like_scores, widths) or _common(widths)
    if not k:
        raise XaiGraphError("cannot tell the number of classes of the detector; pass --num-classes")
    anchors = num_anchors or [_anchors(v, channels[v], k) for v in levels]
    if len(anchors) == 1:
        anchors = anchors * len(levels)
    if len(anchors) != len(levels):
        raise XaiGraphError(f"--num-anchors gives {len(anchors)} values for {len(levels)} levels")
    partial = {v: c if c is not None and (c[0], c[1]) != (0, static_dim(v, 1)) else None for v, c in channels.items()}
    heads = DetectorHeads([Level(v, a, partial[v]) for v, a in zip(levels, anchors)], k, activation, outputs, reason)
    try:
        heads.neck = neck_feature(heads, model)
    except XaiGraphError:
        heads.neck = None  # only activationmap needs it, and says so
    return heads


def _named(graph: ir.Graph, name: str) -> ir.Value:
    for node in graph:
        for v in node.outputs:
            if v.name == name or node.name == name:
                return v
    raise XaiGraphError(f"--head {name!r} is neither a value nor a node of the model")


def _classes_from_outputs(outputs: list[ir.Value], widths: list[int]) -> int | None:
    """K from outputs shaped [B, N, K] (the common export of class scores), where the maps' channels agree."""
    sizes = {o.shape[-1] for o in outputs if o.shape is not None and len(o.shape) == 3}
    sizes = {d for d in sizes if isinstance(d, int) and d > 0}
    k = sizes.pop() if len(sizes) == 1 else None
    return k if k and widths and all(w % k == 0 for w in widths) else None


def _common(widths: list[int]) -> int | None:
    return widths[0] if widths and len(set(widths)) == 1 else None


def _channel_range(value: ir.Value, window: Window) -> tuple[int, int] | None:
    if window is not None and window[0] == 1:
        return window[1], window[2]
    channels = static_dim(value, 1)
    return (0, channels) if channels is not None else None


def _without_objectness(found: dict) -> dict:
    """Drop one-channel maps (objectness, centerness) where a wider class map sits at the same level."""
    widest: dict = {}
    for v in found:
        widest[spatial_size(v)] = max(widest.get(spatial_size(v), 0), static_dim(v, 1) or 0)
    return {v: aw for v, aw in found.items() if not (static_dim(v, 1) == 1 and widest[spatial_size(v)] > 1)}


def _anchors(value: ir.Value, channels: tuple[int, int] | None, k: int) -> int:
    width = channels[1] - channels[0] if channels is not None else None
    if width is None or width % k:
        raise XaiGraphError(f"class map '{value.name}' has {width} channels, not a multiple of {k} classes; "
                            "pass --num-classes or --num-anchors")
    return width // k


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
