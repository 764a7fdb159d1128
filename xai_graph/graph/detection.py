"""Find the per-level class-score maps of a single-stage detector.

Exported detectors rarely output their class maps: each level's class branch
ends in a Conv whose [B, A*K, h, w] output goes through Split, Transpose,
Reshape, Concat and a Sigmoid or Softmax before reaching a graph output. Walking
back from the outputs through such shape-only ops finds the spatial tensors
they come from; those reached through a score activation are the class maps.
Which of their channels are classes, and how they group into anchors, is read
from the walk (`detector_layout`): YOLOv8's split of box and class channels,
YOLOv5's per-anchor [4 box, objectness, K classes] blocks, YOLOX's and FCOS's
objectness / centerness maps beside the class map. Selection ops of in-graph
post-processing (TopK, Gather, NonMaxSuppression, ReduceMax/ArgMax) are walked
through, so class maps behind final detections are found as well.

Where no score activation is found, per-level class and box maps that are
themselves the graph's outputs (RetinaNet, EfficientDet) are recognised in
pairs: the box map's 4A channels give the anchors A (`detector_layout`).
K is, in this order: --num-classes; what the layouts tell (YOLOv5 blocks,
anchor-major reshapes); the last axis of [B, N, K] score outputs; the box maps
beside the class maps; the class maps' common width (1 anchor each).

Levels are told apart and ordered (finest first) by their sizes. Exports with a
free input size (Ultralytics `dynamic=True`) have none: the analysis then runs on
a static twin (`twin.py`); what it finds is mapped back by name, and the saliency
head reads the sizes at run time.
"""

from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass, field, replace

import onnx_ir as ir

from xai_graph.errors import XaiGraphError, option_text
from xai_graph.graph.analysis import GraphIndex, shape_text, spatial_size
from xai_graph.graph.builder import static_dim
from xai_graph.graph.detector_layout import ClassLayout, Root, read_layout, walk_back
from xai_graph.graph.detector_levels import box_anchors, raw_level_maps, without_objectness
from xai_graph.graph.twin import static_twin


@dataclass
class Level:
    value: ir.Value  # [B, C, h, w] the class scores are read from, before the activation
    anchors: int
    channels: tuple[int, int] | None = None  # where the anchor blocks are only part of `value`'s channels
    per_anchor: int | None = None  # P: channels per anchor block where a block holds more than the K classes
    class_offset: int = 0  # where the K classes start in each block (YOLOv5: 5, after box and objectness)
    layout: str = ""  # how the channels were read, for `inspect`

    @property
    def size(self) -> tuple[int | None, int | None]:
        return spatial_size(self.value)


@dataclass
class DetectorClassMaps:
    """Where a detector's class maps are: one `Level` per resolution, finest first."""

    levels: list[Level]
    num_classes: int
    activation: str | None  # the score activation the outputs apply (Sigmoid or Softmax), if any
    outputs: list[ir.Value] = field(default_factory=list)  # graph outputs the class maps reach
    reason: str = ""
    neck: ir.Value | None = None  # the neck feature feeding the middle level (activationmap's target)
    index: GraphIndex | None = field(default=None, repr=False, compare=False)  # of the graph it was found in

    task: ClassVar[str] = "detection"

    def record(self) -> dict[str, str]:
        """What the model's metadata records about it (beyond the values a method explains)."""
        return {
            "xai_graph.num_anchors": ",".join(str(level.anchors) for level in self.levels),
            "xai_graph.num_classes": str(self.num_classes),
            "xai_graph.class_layout": "; ".join(level.layout for level in self.levels),  # e.g. YOLOv5 anchor blocks
            "xai_graph.scores": ",".join(o.name for o in self.outputs),
            "xai_graph.scores_activation": self.activation or "none",
        }

    @property
    def middle(self) -> Level:
        return self.levels[len(self.levels) // 2]


def find_class_maps(
    model: ir.Model,
    class_maps: list[str] | None = None,
    num_anchors: list[int] | None = None,
    num_classes: int | None = None,
    index: GraphIndex | None = None,
) -> DetectorClassMaps | None:
    """The detector's class maps, or None when the model does not look like a single-stage detector.

    Where the maps' sizes are not static, levels are told apart on a static twin of the model (a copy
    with its own index), and what was found there is mapped back to this model's values.
    """
    index = index or GraphIndex(model.graph)
    twin = static_twin(model) if _sizes_unknown(model, class_maps, index) else None
    if twin is None:
        return _find(model, class_maps, num_anchors, num_classes, index)
    found = _find(twin, class_maps, num_anchors, num_classes, GraphIndex(twin.graph))
    if found is None:
        return None
    image = next(v for v in twin.graph.inputs if not v.is_initializer())
    found.reason += f"; levels told apart with the input at {shape_text(image)}, sizes read at run time"
    return _mapped_back(found, model)


def _find(model: ir.Model, class_maps, num_anchors, num_classes, index: GraphIndex) -> DetectorClassMaps | None:
    graph = model.graph
    found, outputs, scored, named, layouts = _candidates(graph, index, class_maps)
    kept = without_objectness(found, spatial_size)
    if not class_maps and len({spatial_size(v) for v in kept}) < 2:
        return None
    levels = sorted([*kept, *named], key=lambda v: -((spatial_size(v)[0] or 0) * (spatial_size(v)[1] or 0)))
    layouts = {v: layouts.get(v) or (read_layout(v, kept[v].window) if v in kept else ClassLayout()) for v in levels}
    k = _num_classes(levels, layouts, num_classes, scored, _box_candidates(graph, levels))
    anchors = _anchors(levels, layouts, k, num_anchors)
    activations = {root.activation for root in kept.values()}
    activation = activations.pop() if len(activations) == 1 else None
    set_aside = [v for v in found if v not in kept]
    result = DetectorClassMaps(
        [_level(v, layouts[v], a, k, set_aside) for v, a in zip(levels, anchors)],
        k,
        activation,
        outputs,
        _reason(class_maps, levels, activation, outputs),
    )
    try:
        result.neck = neck_feature(result, index)
    except XaiGraphError:
        result.neck = None  # only activationmap needs it, and says so
    return result


def _candidates(graph: ir.Graph, index: GraphIndex, class_maps: list[str] | None) -> tuple:
    """Maps that may be class maps, the outputs they reach, those outputs that are plain score tensors,
    maps named directly (`class_maps`), and layouts already known (per-level output pairs)."""
    if class_maps:
        return (*_walked([_named(graph, name) for name in class_maps], index, named=True), {})
    found, outputs, scored, _ = _walked(list(graph.outputs), index, named=False)
    if found:
        return found, outputs, scored, [], {}
    layouts = raw_level_maps(graph, spatial_size) or {}  # no score activation: per-level output pairs?
    return {v: Root(None, None) for v in layouts}, list(layouts), [], [], layouts


def _reason(class_maps, levels, activation, outputs) -> str:
    if class_maps:
        return "named with --class-map"
    if activation is None and all(o in levels for o in outputs):
        return f"{len(levels)} per-level class maps output beside their box maps, without a score activation"
    return (
        f"{len(levels)} class maps found behind {activation or 'score activations'} of "
        f"{', '.join(o.name for o in outputs)}"
    )


def _walked(values: list[ir.Value], index: GraphIndex, named: bool) -> tuple[dict[ir.Value, Root], list, list, list]:
    """The maps behind each value: reached through a score activation, or any for a value named as a class map
    (TFLite BlazeFace leaves the sigmoid to its post-processing); the values reached; those of them that are
    score tensors as they are (no post-processing), whose shape may tell K; and named maps taken as they are."""
    found: dict[ir.Value, Root] = {}
    reached, scored, direct = [], [], []
    for value in values:
        if named and spatial_size(value) is not None:
            direct.append(value)
            continue
        roots, selected = walk_back(value, index)
        roots = roots if named else {v: root for v, root in roots.items() if root.activation is not None}
        if named and not roots:
            named_as = option_text("class_maps", repr(value.name))
            raise XaiGraphError(
                f"{named_as} is {shape_text(value)}, and no [B, A*K, h, w] maps reach it "
                "through Reshape/Transpose/Concat/Split/Slice"
            )
        if roots:
            reached.append(value)
            found.update((v, root) for v, root in roots.items() if v not in found)
            if not selected:
                scored.append(value)
    return found, reached, scored, direct


def _named(graph: ir.Graph, name: str) -> ir.Value:
    for node in graph:
        for v in node.outputs:
            if v.name == name or node.name == name:
                return v
    raise XaiGraphError(f"{option_text('class_maps', repr(name))} is neither a value nor a node of the model")


def _num_classes(levels, layouts, num_classes, scored, box_candidates) -> int:
    """K: --num-classes; else the layout of the maps (YOLOv5 blocks, anchor-major reshapes, box branches);
    else the [B, N, K] score outputs; else the maps' common width."""
    told = {layout.classes for layout in layouts.values() if layout.classes}
    if len(told) > 1:
        raise XaiGraphError(
            f"the levels' layouts disagree on the number of classes ({sorted(told)}); "
            f"pass {option_text('num_classes', 'K')}"
        )
    if num_classes and told and told != {num_classes}:
        raise XaiGraphError(
            f"{option_text('num_classes', str(num_classes))}, but the class maps' layout gives {told.pop()}"
        )
    widths = [_class_channels(v, layouts[v]) for v in levels]
    widths = [w for w in widths if w is not None]
    k = num_classes or (told.pop() if told else None) or _classes_from_outputs(scored, widths)
    if not k:
        k = _classes_from_box_branches(levels, layouts, box_candidates)
    k = k or (widths[0] if widths and len(set(widths)) == 1 else None)  # the maps' common width
    if not k:
        raise XaiGraphError(
            f"cannot tell the number of classes of the detector; pass {option_text('num_classes', 'K')}"
        )
    return k


def _class_channels(value: ir.Value, layout: ClassLayout) -> int | None:
    if layout.channels is not None:
        return layout.channels[1] - layout.channels[0]
    return static_dim(value, 1)


def _classes_from_outputs(outputs: list[ir.Value], widths: list[int]) -> int | None:
    """K from outputs shaped [B, N, K] (the common export of class scores), where the maps' channels agree."""
    sizes = {o.shape[-1] for o in outputs if o.shape is not None and len(o.shape) == 3}
    sizes = {d for d in sizes if isinstance(d, int) and d > 0}
    k = sizes.pop() if len(sizes) == 1 else None
    return k if k and widths and all(w % k == 0 for w in widths) else None


def _box_candidates(graph: ir.Graph, levels: list[ir.Value]) -> list[ir.Value]:
    """Graph outputs that could be a level's box map: spatial, not a class map."""
    return [v for v in graph.outputs if spatial_size(v) is not None and v not in levels]


def _classes_from_box_branches(levels, layouts, candidates) -> int | None:
    """K from the box map beside each class map (4A channels at the same level), where every level has one
    and they agree; the layouts then record A and the box map."""
    readings = {}
    for v in levels:
        partners = box_anchors(v, candidates, spatial_size)
        if len(partners) != 1:
            return None
        box, anchors = partners[0]
        readings[v] = replace(layouts[v], anchors=anchors, classes=static_dim(v, 1) // anchors, box=box.name)
    if len({layout.classes for layout in readings.values()}) != 1:
        return None
    layouts.update(readings)
    return next(iter(readings.values())).classes


def _anchors(levels, layouts, k: int, num_anchors: list[int] | None) -> list[int]:
    if num_anchors is not None:
        anchors = num_anchors * len(levels) if len(num_anchors) == 1 else list(num_anchors)
        if len(anchors) != len(levels):
            raise XaiGraphError(
                f"{option_text('num_anchors', 'A,...')} gives {len(num_anchors)} values for {len(levels)} levels"
            )
        for v, a in zip(levels, anchors):
            if layouts[v].anchors not in (None, a):
                raise XaiGraphError(
                    f"{option_text('num_anchors', str(a))}, but class map '{v.name}' has {layouts[v].anchors} anchors"
                )
        return anchors
    return [layouts[v].anchors or _anchors_from_width(v, layouts[v], k) for v in levels]


def _anchors_from_width(value: ir.Value, layout: ClassLayout, k: int) -> int:
    width = _class_channels(value, layout)
    if width is None or width % k:
        raise XaiGraphError(
            f"class map '{value.name}' has {width} channels, not a multiple of {k} classes; "
            f"pass {option_text('num_classes', 'K')} or {option_text('num_anchors', 'A')}"
        )
    return width // k


def _level(value: ir.Value, layout: ClassLayout, anchors: int, k: int, set_aside: list[ir.Value]) -> Level:
    if layout.per_anchor == k and layout.offset == 0:  # blocks of exactly the K classes: plain anchor-major
        layout = replace(layout, per_anchor=None)
    beside = [v.name for v in set_aside if spatial_size(v) == spatial_size(value)]
    return Level(
        value,
        anchors,
        layout.channels,
        layout.per_anchor,
        layout.offset if layout.per_anchor else 0,
        layout.describe(anchors, k, static_dim(value, 1), beside),
    )


def neck_feature(detector: DetectorClassMaps, index: GraphIndex) -> ir.Value:
    """The neck's feature map at the middle level: what its class (and box) branch starts from.

    Walking back from the middle class map along data inputs, the first spatial map
    read by two or more convolutions is where branches part: the class and box towers,
    or this level's head and the path to the next level. (Counting any two readers
    would stop inside activations such as hard-swish, written as x * relu6(x + 3) / 6.)
    """
    value = detector.middle.value
    for _ in range(256):
        node = value.producer()
        inputs = [v for v in node.inputs if v is not None and v in index.data_dependent] if node else []
        if not inputs:
            break
        value = inputs[0]
        convolutions = {c for c in value.consumers() if c.op_type == "Conv"}
        if spatial_size(value) is not None and len(convolutions) >= 2:
            return value
    raise XaiGraphError(
        f"no neck feature map found behind '{detector.middle.value.name}'; pass {option_text('target_layer', 'NAME')}"
    )


# -- the static twin of a model with a free input size -------------------------------------------------------


def _sizes_unknown(model: ir.Model, class_maps: list[str] | None, index: GraphIndex) -> bool:
    """Whether the maps the outputs (or the named class maps) come from lack static sizes."""
    for value in [_named(model.graph, n) for n in class_maps] if class_maps else model.graph.outputs:
        maps = [value] if spatial_size(value) is not None else list(walk_back(value, index)[0])
        if any(None in spatial_size(v) for v in maps):
            return True
    return False


def _mapped_back(detector: DetectorClassMaps, model: ir.Model) -> DetectorClassMaps:
    """What was found on the static twin, as the original model's values (the same names)."""
    values = {v.name: v for node in model.graph for v in node.outputs}
    values.update((v.name, v) for v in model.graph.inputs)
    for level in detector.levels:
        level.value = values[level.value.name]
    detector.outputs = [values[o.name] for o in detector.outputs]
    detector.neck = values.get(detector.neck.name) if detector.neck is not None else None
    return detector
