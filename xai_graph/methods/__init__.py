"""Saliency methods; importing this package registers them all."""

from xai_graph.methods import (  # noqa: F401  (registration)
    activation_map,
    det_class_probability_map,
    eigencam,
    max_activation,
    recipro_cam,
    vit_recipro_cam,
)
from xai_graph.methods.base import (
    Options,
    SaliencyMethod,
    algorithms,
    method_for,
    methods_for_task,
    option_fields,
    register_method,
)

__all__ = [
    "Options",
    "SaliencyMethod",
    "algorithms",
    "method_for",
    "methods_for_task",
    "option_fields",
    "register_method",
]
