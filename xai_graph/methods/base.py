"""The interface every saliency method implements, and the registry of CLI names.

A method only builds the raw float32 map from the target; everything shared
(uint8 scaling, outputs, feature vector, metadata) lives once in `xai_graph.insert`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.targets import Target


@dataclass(frozen=True)
class MethodOptions:
    mask: str = "gaussian"  # Recipro-CAM: "gaussian" or "onehot"
    score: str = "logits"  # Recipro-CAM: "logits", "softmax" or "sigmoid"
    top_k: int | None = None  # class-wise methods: maps only for each image's k best classes
    brute_force: bool = False  # Recipro-CAM: clone the whole tail even where the fused form applies
    det_score: str = "softmax"  # DetClassProbabilityMap: "softmax" over classes, "sigmoid" or "none"
    map_size: tuple[int, int] | None = None  # DetClassProbabilityMap: (h, w); default the middle level's
    background: str = "auto"  # DetClassProbabilityMap: background channel "first", "last", "none"; auto: last
    #                           for softmax heads (OTX / mmdet convention), none for sigmoid heads


@dataclass
class Saliency:
    """What a method builds: the raw float map, and for top-k heads the classes of its rows ([B, k] int64)."""

    map: ir.Value
    classes: ir.Value | None = None
    form: str = ""  # how it was computed, recorded in the metadata (e.g. "fused", "cloned tail")
    class_scores: ir.Value | None = None  # detectors: each class's best score over all positions, [B, K]


class SaliencyMethod:
    """Builds a raw saliency map: [B, K, h, w] if `class_wise`, else [B, h, w]."""

    algo: ClassVar[str]  # CLI name
    task: ClassVar[str]  # kind of model it explains
    title: ClassVar[str]  # what the docs and `inspect` call it
    class_wise: ClassVar[bool]

    def __init__(self, options: MethodOptions):
        self.options = options

    def check(self, target: Target) -> None:
        """Raise XaiGraphError where this method cannot explain `target`."""
        if self.options.top_k is not None and not self.class_wise:
            raise XaiGraphError(f"{self.algo} maps are class-agnostic: top-k classes do not apply")

    def output_dims(self, target: Target) -> list:
        """Declared dims of `saliency_map`: static sizes and named symbols where known, else None."""
        batch = known_dim(target.value.shape[0]) if target.value.shape is not None else None
        height, width = target.layout.grid(target.value)
        if not self.class_wise:
            return [batch, height, width]
        return [batch, self.options.top_k or target.num_classes, height, width]

    def form(self, target: Target) -> str:
        """How the map will be computed for `target`, where a method has several forms ("" otherwise)."""
        return ""

    def repeated_nodes(self, target: Target) -> list[ir.Node]:
        """Nodes of the model that this form runs once per map position (their cost is multiplied by h*w)."""
        return []

    def positions(self, target: Target) -> int | None:
        """h*w of the map, where static."""
        height, width = self.output_dims(target)[-2:]
        return height * width if isinstance(height, int) and isinstance(width, int) else None

    def build(self, builder: GraphBuilder, target: Target) -> Saliency:
        raise NotImplementedError


# (algo, task) -> method class; one CLI name may have one implementation per task.
_REGISTRY: dict[tuple[str, str], type[SaliencyMethod]] = {}


def register_method(cls: type[SaliencyMethod]) -> type[SaliencyMethod]:
    key = (cls.algo, cls.task)
    if key in _REGISTRY:
        raise ValueError(f"{key} registered twice")
    _REGISTRY[key] = cls
    return cls


def algorithms() -> list[str]:
    """CLI names of the registered algorithms, in registration order."""
    return list(dict.fromkeys(algo for algo, _ in _REGISTRY))


def method_for(algo: str, task: str) -> type[SaliencyMethod]:
    if (algo, task) in _REGISTRY:
        return _REGISTRY[(algo, task)]
    if algo not in algorithms():
        raise XaiGraphError(f"unknown algorithm {algo!r}; choose one of {', '.join(algorithms())}")
    raise XaiGraphError(f"algorithm {algo!r} does not support {task} models")


def methods_for_task(task: str) -> list[type[SaliencyMethod]]:
    return [cls for (_, t), cls in _REGISTRY.items() if t == task]
