"""A detector's levels told apart: objectness and centerness set aside from the class maps, and per-level
outputs without a score activation read as (class map, box map) pairs, their anchors from the box map.
(The layout rules are written out in `detector_layout`'s docstring.)
"""

from __future__ import annotations

import onnx_ir as ir

from xai_graph.errors import XaiGraphError, option_text
from xai_graph.graph.analysis import constant_array, spatial_size
from xai_graph.graph.builder import static_dim
from xai_graph.graph.detector_layout import ClassLayout, Root


_MAX_ANCHORS = 9  # RetinaNet / EfficientDet; box maps wider than 4 x 9 are distribution (DFL) branches


_DFL_ONLY = {8}  # 32 box channels: 8 DFL bins per side (PicoDet, NanoDet), not 8 anchors


def without_objectness(found: dict[ir.Value, Root], size_of) -> dict[ir.Value, Root]:
    """Set aside objectness and centerness maps: per level (maps of one size), a one-channel map landing just
    before another score map on the output's attribute axis, else a one-channel map beside a wider one."""
    levels: dict = {}
    for value in found:
        levels.setdefault(size_of(value), []).append(value)
    kept = {}
    for size, maps in levels.items():
        single = [v for v in maps if static_dim(v, 1) == 1]
        starts = {found[v].window.at for v in maps if found[v].window is not None}
        before = [
            v
            for v in single
            if found[v].window is not None and found[v].window.at is not None and found[v].window.at + 1 in starts
        ]
        if before:
            dropped = set(before)
        elif any((static_dim(v, 1) or 0) > 1 for v in maps):
            dropped = set(single)
        elif len(single) > 1:
            raise XaiGraphError(
                f"{len(single)} one-channel score maps at level {size[0]}x{size[1]} "
                f"({', '.join(v.name for v in single)}): cannot tell objectness from the class map; "
                f"name the class maps with {option_text('class_maps', 'VALUE')}"
            )
        else:
            dropped = set()
        kept.update((v, found[v]) for v in maps if v not in dropped)
    return kept


def box_anchors(classes: ir.Value, candidates: list[ir.Value], size_of) -> list[tuple[ir.Value, int]]:
    """(box map, A) for each candidate at the class map's level that could be its box branch: 4A channels."""
    width = static_dim(classes, 1)
    found = []
    for box in candidates:
        channels = static_dim(box, 1)
        if box is classes or channels is None or width is None or size_of(box) != size_of(classes):
            continue
        anchors, rest = divmod(channels, 4)
        if not rest and 1 <= anchors <= _MAX_ANCHORS and anchors not in _DFL_ONLY and width % anchors == 0:
            found.append((box, anchors))
    return found


def raw_level_maps(graph: ir.Graph, size_of) -> dict[ir.Value, ClassLayout] | None:
    """Per-level class and box maps as the graph's outputs, without a score activation (RetinaNet,
    EfficientDet): each level's class map and its layout; None where the outputs are not such pairs."""
    levels = _output_pairs(graph, size_of)
    if levels is None:
        return None
    readings = [_pair_readings(pair, size_of) for pair in levels.values()]
    common = set.intersection(*({layout.classes for layout in r.values()} for r in readings))
    if not common:
        return None
    chosen = [{cls: layout for cls, layout in r.items() if layout.classes in common} for r in readings]
    if len(common) > 1 or any(len(level) != 1 for level in chosen):
        names = "; ".join(", ".join(f"{v.name} ({static_dim(v, 1)})" for v in pair) for pair in levels.values())
        raise XaiGraphError(
            f"per-level outputs {names}: cannot tell the class maps from the box maps by their "
            f"channels; name the class maps with {option_text('class_maps', 'VALUE')} (and "
            f"{option_text('num_classes', 'K')})"
        )
    return {cls: layout for level in chosen for cls, layout in level.items()}


def _output_pairs(graph: ir.Graph, size_of) -> dict[tuple, list[ir.Value]] | None:
    """Convolution outputs grouped by map size, where there are two sizes or more, two maps each; else None."""
    levels: dict = {}
    for v in graph.outputs:
        if spatial_size(v) is not None and _made_by_conv(v):
            levels.setdefault(size_of(v), []).append(v)
    if len(levels) < 2 or any(len(pair) != 2 for pair in levels.values()) or any(None in s for s in levels):
        return None
    return levels


def _pair_readings(pair: list[ir.Value], size_of) -> dict[ir.Value, ClassLayout]:
    """Each way one level's two maps read as (class map, box map): the class map and its layout."""
    readings = {}
    for cls, box in (pair, pair[::-1]):
        for _, anchors in box_anchors(cls, [box], size_of):
            readings[cls] = ClassLayout(anchors=anchors, classes=static_dim(cls, 1) // anchors, box=box.name)
    return readings


def _made_by_conv(value: ir.Value) -> bool:
    """A Conv's output, also through Identity and a bias Add (OpenVINO keeps a convolution's bias apart)."""
    node = value.producer()
    while node is not None and node.op_type in ("Identity", "Add"):
        data = [v for v in node.inputs if v is not None and constant_array(v) is None]
        if node.op_type == "Add" and len(data) != 1:
            return False
        node = data[0].producer() if data else None
    return node is not None and node.op_type == "Conv"
