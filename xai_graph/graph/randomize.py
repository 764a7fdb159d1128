"""Cascading model randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps").

A copy of the model whose last N weighted layers (Conv, ConvTranspose, Gemm, MatMul with
a constant weight, counted back from the outputs in graph order) get new random weights,
drawn from a normal distribution with the mean and standard deviation of the weights they
replace. A saliency method whose maps barely change when the layers that decide the class
are re-drawn does not explain the model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError

WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def weighted_layers(model: ir.Model) -> list[ir.Node]:
    """Nodes with a constant float weight (their second input), in graph (topological) order."""
    return [
        node
        for node in model.graph
        if node.op_type in WEIGHTED_OPS
        and len(node.inputs) > 1
        and node.inputs[1] is not None
        and node.inputs[1].const_value is not None
        and node.inputs[1].dtype == ir.DataType.FLOAT
    ]


def randomize_last_layers(model: ir.Model, layers: int, seed: int = 0) -> list[str]:
    """Re-draw, in place, the weights (and biases) of the last `layers` weighted layers; returns their names."""
    chosen = weighted_layers(model)[-layers:]
    if len(chosen) < layers:
        raise XaiGraphError(f"the model has {len(chosen)} weighted layers; cannot randomise the last {layers}")
    rng = np.random.default_rng(seed)
    for node in chosen:
        for value in node.inputs[1:3]:  # the weight, and a Conv/Gemm bias where there is one
            if value is not None and value.const_value is not None and value.dtype == ir.DataType.FLOAT:
                _redraw(value, rng)
    return [node.name for node in chosen]


def _redraw(value: ir.Value, rng: np.random.Generator) -> None:
    old = value.const_value.numpy()
    new = rng.normal(float(old.mean()), float(old.std()) or 1e-2, size=old.shape).astype(np.float32)
    value.const_value = ir.Tensor(new, name=value.name)  # the graph's initializer is this value: updated in place
