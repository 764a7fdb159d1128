"""The one find step: what in a model a saliency head explains, with one precedence for every command.

A model is a single-stage detector (per-level class maps), else a transformer classifier (a last
block over patch tokens), else a CNN classifier (a spatial map before the class scores). `insert`,
`inspect` and `explain` all ask `find_subject`, so they never disagree on what a model is. The graph
is indexed once; the subject keeps that index for the method that builds on it.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import onnx_ir as ir

from xai_graph.graph.analysis import GraphIndex
from xai_graph.graph.detection import find_class_maps
from xai_graph.graph.targets import find_target
from xai_graph.graph.transformer import find_transformer


class Subject(Protocol):
    """What every kind of subject offers: its task (which selects the method implementation,
    `methods.method_for`), its class count, why it was chosen, and what the metadata records of it."""

    task: ClassVar[str]
    reason: str
    index: GraphIndex | None

    @property
    def num_classes(self) -> int | None: ...

    def record(self) -> dict[str, str]: ...


def find_subject(
    model: ir.Model,
    *,
    target_layer: str | None = None,
    scores: str | None = None,
    class_maps: list[str] | None = None,
    num_anchors: list[int] | None = None,
    num_classes: int | None = None,
    need_scores: bool = True,
) -> Subject:
    """The detector's class maps, the transformer's last block, or the CNN's target map, in that order.

    A named `target_layer` is always a CNN-style target (and `scores` rules out detectors). `need_scores`
    is for the CNN case: class-agnostic methods accept a named map in a model without class scores.
    Raises XaiGraphError (one line, what to pass instead) when nothing is found.
    """
    index = GraphIndex(model.graph)
    found = None
    if not target_layer and not scores:
        found = find_class_maps(model, class_maps, num_anchors, num_classes, index)
    if found is None and not target_layer:
        found = find_transformer(model, scores, index)
    if found is None:
        found = find_target(model, target_layer, need_scores=need_scores, scores_name=scores, index=index)
    found.index = index
    return found
