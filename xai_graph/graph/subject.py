"""The one find step: what in a model a saliency head explains, with one precedence for every command.

A model is a single-stage detector (per-level class maps), else a transformer classifier (a last
block over patch tokens), else a CNN classifier (a spatial map before the class scores). `insert`,
`inspect` and `explain` all ask `find_subject`, so they never disagree on what a model is. Each kind
of subject says its `task`, which selects the method implementation (`methods.method_for`).
"""

from __future__ import annotations

from xai_graph.graph.detection import DetectorHeads, find_class_heads
from xai_graph.graph.targets import Target, find_target
from xai_graph.graph.transformer import TransformerBlock, find_transformer

Subject = DetectorHeads | TransformerBlock | Target

TASKS = {DetectorHeads: "detection", TransformerBlock: "transformer", Target: "classification"}


def task_of(subject: Subject) -> str:
    return TASKS[type(subject)]


def find_subject(model, *, target_layer: str | None = None, scores: str | None = None,
                 heads: list[str] | None = None, num_anchors: list[int] | None = None,
                 num_classes: int | None = None, need_scores: bool = True) -> Subject:
    """The detector's class maps, the transformer's last block, or the CNN's target map, in that order.

    A named `target_layer` is always a CNN-style target (and `scores` rules out detectors). `need_scores`
    is for the CNN case: class-agnostic methods accept a named map in a model without class scores.
    Raises XaiGraphError (one line, what to pass instead) when nothing is found.
    """
    if not target_layer and not scores:
        detector = find_class_heads(model, heads, num_anchors, num_classes)
        if detector is not None:
            return detector
    if not target_layer:
        block = find_transformer(model, scores)
        if block is not None:
            return block
    return find_target(model, target_layer, need_scores=need_scores, scores_name=scores)
