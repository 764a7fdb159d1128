"""ActivationMap: S = mean over channels of F. Class-agnostic."""

from __future__ import annotations

from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.targets import Target
from xai_graph.methods.base import Saliency, SaliencyMethod, register_method


@register_method
class ActivationMap(SaliencyMethod):
    algo = "activationmap"
    task = "classification"
    title = "ActivationMap"
    class_wise = False

    def build(self, builder: GraphBuilder, target: Target) -> Saliency:
        return Saliency(builder.reduce("ReduceMean", target.value, [1], keepdims=False))
