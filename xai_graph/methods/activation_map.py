"""ActivationMap: S = mean over channels of F. Class-agnostic."""

from __future__ import annotations

from xai_graph.errors import XaiGraphError, option_text
from xai_graph.graph.analysis import known_dim
from xai_graph.graph.builder import GraphBuilder
from xai_graph.graph.detection import DetectorClassMaps
from xai_graph.graph.targets import Target
from xai_graph.methods.base import Saliency, SaliencyMethod, register_method


@register_method
class ActivationMap(SaliencyMethod):
    algo = "activationmap"
    task = "classification"
    title = "ActivationMap"
    class_wise = False

    def build(self, builder: GraphBuilder, target: Target) -> Saliency:
        return Saliency(target.layout.channel_mean(builder, target.value))


@register_method
class DetectorActivationMap(ActivationMap):
    """For detectors: the neck level that feeds the middle-resolution class map."""

    task = "detection"

    def check(self, target: DetectorClassMaps) -> None:
        super().check(target)
        if target.neck is None:
            raise XaiGraphError(
                f"no neck feature map found behind '{target.middle.value.name}'; "
                f"pass {option_text('target_layer', 'NAME')} to explain a map of your choice"
            )

    def explained(self, target: DetectorClassMaps) -> list:
        return [target.neck]

    def output_dims(self, target: DetectorClassMaps) -> list:
        neck = target.neck
        dims = list(neck.shape) if neck.shape is not None else [None] * 4
        return [known_dim(dims[i]) for i in (0, 2, 3)]

    def build(self, builder: GraphBuilder, target: DetectorClassMaps) -> Saliency:
        return Saliency(builder.reduce("ReduceMean", target.neck, [1], keepdims=False))
