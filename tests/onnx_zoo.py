"""ONNX Model Zoo classics as real files: the `light_*` graphs that ship in the onnx wheel, with weights.

The onnx package keeps small copies of the zoo's classic models (ResNet-50, VGG-19,
Inception, SqueezeNet, DenseNet-121, ShuffleNet, ...) in which every weight is replaced
by a ConstantOfShape node. Rebuilding them with seeded random weights gives files laid
out exactly as the zoo's: IR version 3, opset 9, every initializer also a graph input,
scores after a Softmax, shaped [B, K] or [B, K, 1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CLASSICS = (
    "resnet50",
    "vgg19",
    "inception_v1",
    "inception_v2",
    "squeezenet",
    "densenet121",
    "shufflenet",
    "bvlc_alexnet",
    "zfnet512",
)


def _weight(shape: tuple[int, ...], role: str, rng: np.random.Generator) -> np.ndarray:
    """Weights that keep activations in a sane range through a deep random network."""
    if role in ("bn_scale", "bn_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[-1]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (rng.standard_normal(shape) * 0.05).astype(np.float32)


def _role(graph: onnx.GraphProto, name: str) -> str:
    for node in graph.node:
        if node.op_type == "BatchNormalization" and name in node.input:
            return {1: "bn_scale", 4: "bn_var"}.get(list(node.input).index(name), "other")
    return "other"


def rebuild(name: str, out: Path, seed: int = 0) -> Path:
    """Write `light_{name}` with seeded random weights to `out`, keeping IR version, opset and layout."""
    model = onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    kept, weights = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            weights.append(numpy_helper.from_array(_weight(shape, _role(graph, node.output[0]), rng), node.output[0]))
        else:
            kept.append(node)
    used = {i for n in kept for i in n.input}
    shape_inits = {t.name for t in graph.initializer if t.name not in used}
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name not in shape_inits] + weights
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    # IR 3: every initializer is also a graph input.
    data_inputs = [i for i in graph.input if i.name not in shapes]
    del graph.input[:]
    graph.input.extend(data_inputs)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "zoo")
    for classic in CLASSICS:
        print(rebuild(classic, target / f"{classic}.onnx"), os.path.getsize(target / f"{classic}.onnx"))
