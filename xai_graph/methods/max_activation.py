"""MaxActivation: S = max over channels of F. Class-agnostic.

Where ActivationMap averages the channels (a broad "how much fires here"), the maximum shows where
any one channel fires hardest: small objects that a few channels detect are not diluted by the many
that stay silent. This module is also the example of a new method: one subclass per kind of model,
registered under one CLI name, and nothing else in the code base changes (`methods/__init__.py` imports it).
"""

from __future__ import annotations

from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.detection import DetectorClassMaps
from xai_graph.graph.targets import Target
from xai_graph.graph.transformer import TransformerBlock
from xai_graph.methods.activation_map import DetectorActivationMap
from xai_graph.methods.base import Saliency, SaliencyMethod, register_method
from xai_graph.methods.vit_recipro_cam import ViTActivationMap


@register_method
class MaxActivation(SaliencyMethod):
    algo = "maxactivation"
    task = "classification"
    title = "MaxActivation"
    class_wise = False

    def build(self, b: GraphBuilder, target: Target) -> Saliency:
        f, layout = target.value, target.layout
        peak = b.reduce("ReduceMax", f, [layout.channel_axis], keepdims=False)
        return Saliency(b.reshape(peak, 0, *layout.sides(b, f)) if layout.is_tokens else peak)


@register_method
class ViTMaxActivation(ViTActivationMap):
    """The patch tokens entering the last block, their maximum over D as an h x w map."""

    algo, title = MaxActivation.algo, MaxActivation.title

    def build(self, b: GraphBuilder, target: TransformerBlock) -> Saliency:
        peak = b.reduce("ReduceMax", target.patch_tokens(b), [2], keepdims=False)
        return Saliency(b.reshape(peak, -1, *target.grid))


@register_method
class DetectorMaxActivation(DetectorActivationMap):
    """The neck level that feeds the middle-resolution class map, its maximum over channels."""

    algo, title = MaxActivation.algo, MaxActivation.title

    def build(self, b: GraphBuilder, target: DetectorClassMaps) -> Saliency:
        return Saliency(b.reduce("ReduceMax", target.neck, [1], keepdims=False))
