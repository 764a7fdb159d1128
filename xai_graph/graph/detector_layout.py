"""Where a detector's class scores sit: the walk from its outputs back to the class maps, and their layout.

Walking back from an output through ops that only move, slice or activate values
(Reshape, Transpose, Concat, Split, Slice, Sigmoid, ...) finds the spatial maps
[B, C, h, w] the scores come from. The walk carries a `Window` of the tensor it
follows, so that it knows which channels of a map reach the output and where:

- Split / Slice / Concat narrow the window (YOLOv8 concatenates box and class
  channels per level and splits them again: only the class channels are followed).
- A Reshape that splits the channel axis into (anchors, channels per anchor) turns
  the window into a per-anchor one (`period`): YOLOv5's [B, A*(5+K), h, w] ->
  [B, A, 5+K, h, w], or an SSD/RetinaNet [B, h, w, A*K] -> [B, h*w*A, K].
- `at` remembers where the window lands on the output's attribute axis (the short
  axis of [B, N, 5+K] or [B, 4+K, N]): YOLOX concatenates [box 4, objectness 1,
  classes K] per level, and for K = 1 only that place tells objectness from classes.

Layout rules (`read_layout`, `without_objectness`):

- Per-anchor blocks of P channels whose channel 4 onwards reach the scores while
  0..3 do not (the box is decoded apart) follow YOLOv3/5/7: [x, y, w, h,
  objectness, K classes], so the classes are channels 5.. of each block, K = P - 5.
- Per-anchor blocks read from their first channel are A anchors x K classes.
- At one level, a one-channel score map landing just before another score map on
  the output's attribute axis is objectness (YOLOX); without positions, a
  one-channel map beside a wider one is objectness or centerness (FCOS). Two
  one-channel maps that nothing tells apart are refused.
- Per-level class maps without a score activation (RetinaNet / EfficientDet
  exports whose outputs are the maps themselves) take A from the box map of the
  same level: 4A channels, A <= 9 (a wider box map, or 32 channels, is a DFL
  distribution branch, not 4 x anchors); K = class channels / A.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx_ir as ir

from xai_graph.graph.analysis import GraphIndex, constant_array, spatial_size
from xai_graph.graph.builder import static_dim


# Ops a score tensor passes through unchanged in value (only moved or sliced), plus score activations.
_PASSIVE = {
    "Reshape",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Cast",
    "Sigmoid",
    "Softmax",
}
_ACTIVATIONS = {"Sigmoid", "Softmax"}
# A spatial map made by these is the class map itself: they cut the class channels out of a shared conv.
_CUTS = {"Split", "Slice"}
# In-graph post-processing that picks scores without computing new ones (top-k, NMS, best class): the walk
# goes through every data input of these, so class maps behind final detections are found too.
_SELECTIONS = {
    "TopK",
    "Gather",
    "GatherElements",
    "GatherND",
    "NonMaxSuppression",
    "ReduceMax",
    "ArgMax",
    "Expand",
    "Tile",
}
# YOLOv3/5/7 anchor blocks: [x, y, w, h, objectness, classes...].
_YOLO_OBJECTNESS, _YOLO_CLASSES = 4, 5


@dataclass(frozen=True)
class Window:
    """Channels [start, stop) along `axis` of the followed tensor, in every block of `period` when set."""

    axis: int
    start: int
    stop: int
    period: int | None = None
    at: int | None = None  # where `start` lands on the output's attribute axis; None: unknown


@dataclass(frozen=True)
class Root:
    """A spatial map the scores come from: the activation met on the way and the window of it that is read."""

    activation: str | None
    window: Window | None


@dataclass
class ClassLayout:
    """How the class scores sit in a map's channels: `channels` (all when None) hold A blocks of `per_anchor`
    channels (K when None), with the K classes from `offset` in each block."""

    channels: tuple[int, int] | None = None
    anchors: int | None = None
    per_anchor: int | None = None
    offset: int = 0
    classes: int | None = None
    box: str = ""  # the box map that told A, where one did

    def describe(self, anchors: int, k: int, width: int | None, set_aside: list[str]) -> str:
        """One line for `inspect`, e.g. "3 anchors x (4 box + 1 objectness + 3 classes)"."""
        noun, classes = "anchor" if anchors == 1 else "anchors", f"{k} class{'es' if k != 1 else ''}"
        if self.per_anchor is not None and self.offset == _YOLO_CLASSES:
            rest = self.per_anchor - _YOLO_CLASSES - k
            text = f"{anchors} {noun} x (4 box + 1 objectness + {classes}{f' + {rest} other' if rest else ''})"
        elif self.per_anchor is not None:
            text = f"{anchors} {noun} x {self.per_anchor} channels, classes at {self.offset}..{self.offset + k - 1}"
        else:
            text = f"{anchors} {noun} x {classes}"
        if self.channels is not None:
            text += f", channels {self.channels[0]}..{self.channels[1] - 1} of {width}"
        if self.box:
            text += f"; box map '{self.box}' has 4 x {anchors} channels"
        return text + (f"; objectness '{', '.join(set_aside)}' set aside" if set_aside else "")


def walk_back(output: ir.Value, index: GraphIndex) -> tuple[dict[ir.Value, Root], bool]:
    """Spatial tensors an output is made of through passive ops; and whether the walk went through
    post-processing (then the output's shape says nothing of K)."""
    roots: dict[ir.Value, Root] = {}
    stack: list[tuple[ir.Value, str | None, Window | None]] = [(output, None, _attribute_window(output))]
    seen: set[tuple] = set()
    selected = False
    while stack:
        value, activation, window = stack.pop()
        if (value, window) in seen:
            continue
        seen.add((value, window))
        node = value.producer()
        computed = node is None or node.op_type not in _PASSIVE or node.op_type in _CUTS
        if spatial_size(value) is not None and value in index.data_dependent and computed:
            # the branch's conv, or the class part cut out of it; only a channel window says which channels
            roots.setdefault(value, Root(activation, window if window is not None and window.axis == 1 else None))
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


def _attribute_window(output: ir.Value) -> Window | None:
    """The whole attribute axis of a [B, N, W] / [B, W, N] / [N, W] output (the static, shorter one)."""
    dims = _known_dims(output)
    if dims is None or len(dims) not in (2, 3):
        return None
    axis = len(dims) - 1
    if len(dims) == 3 and dims[1] is not None and (dims[2] is None or dims[1] < dims[2]):
        axis = 1
    return Window(axis, 0, dims[axis], at=0) if dims[axis] is not None else None


def _known_dims(value: ir.Value) -> list[int | None] | None:
    """Static dims of a value; where an exporter declared an output's dims symbolic (torch's legacy exporter
    with dynamic axes names them all), those of the Transpose or element-wise op that made it."""
    if value.shape is None:
        return None
    dims = [static_dim(value, a) for a in range(len(value.shape))]
    node = value.producer()
    if None not in dims[1:] or node is None or node.op_type not in ("Transpose", *_ACTIVATIONS, "Identity", "Cast"):
        return dims
    source = _known_dims(node.inputs[0])
    if source is None or len(source) != len(dims):
        return dims
    if node.op_type == "Transpose":
        source = [source[a] for a in _perm(node, len(dims))]
    return [d if d is not None else s for d, s in zip(dims, source)]


def _inputs_with_windows(node: ir.Node, output: ir.Value, window: Window | None) -> list[tuple]:
    """The data inputs of a passive node that hold the windowed part of its output, with their windows."""
    source = node.inputs[0]
    if node.op_type == "Concat":
        return _concat_parts(node, output, window)
    if node.op_type in ("Split", "Slice"):
        cut = _split_part(node, output) if node.op_type == "Split" else _slice_part(node)
        return [(source, _through_cut(cut, window))]
    if node.op_type == "Transpose":
        if window is None or output.shape is None:
            return [(source, None)]
        return [(source, replace(window, axis=_perm(node, len(output.shape))[window.axis]))]
    if node.op_type == "Reshape":
        return [(source, _reshaped_window(source, output, window))]
    if node.op_type in ("Flatten", "Squeeze", "Unsqueeze"):
        return [(source, None)]  # windows across these are not followed: the whole input is taken
    return [(source, window)]  # element-wise: Sigmoid, Softmax, Identity, Cast


def _perm(node: ir.Node, rank: int) -> list[int]:
    """A Transpose's output axis i is its input's axis perm[i] (reversed axes when perm is not given)."""
    return list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else list(range(rank))[::-1]


def _concat_parts(node: ir.Node, output: ir.Value, window: Window | None) -> list[tuple]:
    axis = _axis(node, output)
    if window is None or window.axis != axis:
        return [(v, window) for v in node.inputs]
    parts, offset = [], 0
    for v in node.inputs:
        n = static_dim(v, axis) if v.shape is not None else None
        if n is None or offset is None or window.period is not None:
            parts.append((v, None))  # the offsets of the following parts are unknown: take them whole
            offset = None
            continue
        low, high = max(window.start, offset), min(window.stop, offset + n)
        if low < high:
            at = None if window.at is None else window.at + low - window.start
            parts.append((v, Window(axis, low - offset, high - offset, at=at)))
        offset += n
    return parts


def _through_cut(cut: tuple[int, int, int] | None, window: Window | None) -> Window | None:
    """The source window of a Split output or Slice: `cut` is (axis, start, stop) of the source."""
    if cut is None:
        return None
    axis, start, stop = cut
    if window is None:
        return Window(axis, start, stop)
    if window.axis != axis:
        return window  # the cut is along another axis: the followed channels are unchanged
    if window.period is not None:
        return None  # blocks cut at an offset: not followed, the whole source is taken
    return Window(axis, start + window.start, start + window.stop, at=window.at)


def _split_part(node: ir.Node, output: ir.Value) -> tuple[int, int, int] | None:
    source = node.inputs[0]
    axis = _axis(node, source)
    sizes = _split_sizes(node, source, axis)
    if sizes is None:
        return None
    i = list(node.outputs).index(output)
    return axis, sum(sizes[:i]), sum(sizes[: i + 1])


def _slice_part(node: ir.Node) -> tuple[int, int, int] | None:
    """(axis, start, stop) of a one-axis Slice with step 1 and constant bounds, else None."""
    source = node.inputs[0]
    if len(node.inputs) > 1:  # opset 10 on: starts, ends, axes, steps are inputs
        bounds = list(node.inputs[1:5]) + [None] * (5 - len(node.inputs))
        starts, ends, axes, steps = (constant_array(v) for v in bounds)
    else:  # before opset 10 they are attributes
        starts, ends, axes = (
            node.attributes[k].as_ints() if k in node.attributes else None for k in ("starts", "ends", "axes")
        )
        steps = None
    if starts is None or ends is None or len(starts) != 1 or (steps is not None and list(steps) != [1]):
        return None
    rank = len(source.shape) if source.shape is not None else None
    axis = int(axes[0]) if axes is not None else 0
    axis = axis % rank if rank else axis
    size = static_dim(source, axis) if rank else None
    start, stop = int(starts[0]), int(ends[0])
    if size is None:
        return (axis, start, stop) if 0 <= start < stop < 2**31 else None
    start, stop = (max(0, min(size, v + size if v < 0 else v)) for v in (start, stop))
    return (axis, start, stop) if start < stop else None


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


def _reshaped_window(source: ir.Value, output: ir.Value, window: Window | None) -> Window | None:
    """A window across a Reshape: on an axis whose size and leading dims are unchanged it stays; on an
    axis that is the inner factor of a source axis (same trailing dims, size dividing it) it becomes a
    per-block window of that source axis, as when [B, A*P, h, w] is viewed as [B, A, P, h, w]."""
    if window is None or source.shape is None or output.shape is None:
        return None
    src, out, axis = list(source.shape), list(output.shape), window.axis
    if axis < len(src) and _same_dims(src[: axis + 1], out[: axis + 1]):
        return window
    j = len(src) - len(out) + axis  # the source axis with the same stride
    inner, whole = static_dim(output, axis), static_dim(source, j) if 0 <= j < len(src) else None
    if whole is None or inner is None or whole % inner or not _same_dims(src[j + 1 :], out[axis + 1 :]):
        return None
    if window.period is not None:
        return replace(window, axis=j) if inner % window.period == 0 else None
    return replace(window, axis=j, period=inner if inner != whole else None)


def _same_dims(a: list, b: list) -> bool:
    """Dims known equal: the same static size, or the same named symbol (never two unknowns)."""

    def key(d):
        return d if isinstance(d, int) and d >= 0 else getattr(d, "value", None)

    return len(a) == len(b) and all(key(x) is not None and key(x) == key(y) for x, y in zip(a, b))


def read_layout(value: ir.Value, window: Window | None) -> ClassLayout:
    """The class layout of one map from the window of its channels that reaches the scores."""
    channels = static_dim(value, 1)
    if window is None or channels is None:
        return ClassLayout()
    if window.period is None or channels % window.period:
        whole = (window.start, window.stop) == (0, channels)
        return ClassLayout(channels=None if whole else (window.start, window.stop))
    per_anchor, anchors = window.period, channels // window.period
    if window.start == _YOLO_OBJECTNESS and per_anchor > _YOLO_CLASSES:
        return ClassLayout(None, anchors, per_anchor, _YOLO_CLASSES, window.stop - _YOLO_CLASSES)
    if window.start == 0 and window.stop == per_anchor:
        return ClassLayout(None, anchors, None, 0, per_anchor)  # plain anchor-major A x K
    return ClassLayout(None, anchors, per_anchor, window.start, window.stop - window.start)
