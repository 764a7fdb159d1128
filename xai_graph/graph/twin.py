"""The static twin of a model with free input sizes: a copy with the input fixed, and every shape that follows.

Ultralytics' `dynamic=True` exports, DINOv2's interpolated position embeddings and
Swin's computed padding leave sizes that ONNX's shape inference cannot follow
(Shape -> Gather -> Concat -> Reshape chains, float arithmetic on sizes). A copy
whose input is fixed (batch 1, free sizes 640) has its shape arithmetic folded
into constants between rounds of shape inference until every size is known; for
an OpenVINO IR, OpenVINO's own reshape does it. Analyses read sizes from the twin
and map what they find back to the model by value name; the model itself is never
changed, and heads read sizes at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from xai_graph.graph.openvino_ir import static_mirror

TWIN_SIZE = 640  # free input sizes in the twin: a multiple of every usual stride (8 ... 128)
_FOLD_LIMIT = 4096  # elements: shape arithmetic is folded, weights never are


def static_twin(model: ir.Model) -> ir.Model | None:
    """A copy of `model` with fixed input sizes (batch 1, free sizes 640) and the static shapes that follow;
    None where shape inference fails."""
    mirrored = static_mirror(model, TWIN_SIZE)  # an IR: OpenVINO's own reshape gives the static shapes
    if mirrored is not None:
        return mirrored
    twin = model.clone()
    for value in twin.graph.inputs:
        if value.shape is not None and not value.is_initializer():
            value.shape = ir.Shape(
                [
                    d if isinstance(d, int) and d >= 0 else 1 if axis == 0 else TWIN_SIZE
                    for axis, d in enumerate(value.shape)
                ]
            )
    try:
        shapes = _inferred_shapes(twin)
    except Exception:  # noqa: BLE001 - onnx's inference raises many kinds; without a twin the analysis still runs
        return None
    for value in (v for node in twin.graph for v in node.outputs if v.name in shapes):
        value.shape = ir.Shape(shapes[value.name])
    return twin


def _inferred_shapes(model: ir.Model) -> dict[str, list[int]]:
    """Static shapes of every value, by ONNX shape inference alternating with folding of shape arithmetic
    (Shape -> Gather -> Concat -> Reshape, which ONNX's data propagation does not always follow)."""
    skeleton = model.clone()
    graph = skeleton.graph
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is not None and tensor.size > _FOLD_LIMIT:  # weights: only their shape matters here
            graph.initializers.pop(name)
            value.const_value = None
            value.shape, value.dtype = ir.Shape(tensor.shape), tensor.dtype
            if not value.is_graph_input():
                graph.inputs.append(value)
    for node in graph:
        for value in node.outputs:
            value.shape = None
    proto = ir.serde.serialize_model(skeleton)
    opset = model.opset_imports.get("", 1)
    for _ in range(8):
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        if not _fold_shape_arithmetic(proto, opset):
            break
    infos = [*proto.graph.value_info, *proto.graph.output]
    return {info.name: dims for info in infos if (dims := _static_dims(info)) is not None}


def _static_dims(info: onnx.ValueInfoProto) -> list[int] | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    return [d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None


def _fold_shape_arithmetic(proto: onnx.ModelProto, opset: int) -> int:
    """Replace nodes computable from static shapes and small constants by initializers; how many were."""
    graph = proto.graph
    shapes = {info.name: _static_dims(info) for info in [*graph.input, *graph.value_info]}
    known = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if np.prod(t.dims) <= _FOLD_LIMIT}
    outputs = {o.name for o in graph.output}
    kept, folded = [], []
    for node in graph.node:
        values = None if outputs & set(node.output) else _evaluated(node, known, shapes, opset)
        if values is None:
            kept.append(node)
            continue
        known.update(zip(node.output, values))
        folded += [onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in zip(node.output, values)]
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(folded)
    return len(folded)


def _evaluated(node: onnx.NodeProto, known: dict, shapes: dict, opset: int) -> list | None:
    from onnx.reference import ReferenceEvaluator

    if node.domain not in ("", "ai.onnx") or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    if node.op_type in ("Shape", "Size") and shapes.get(node.input[0]) is not None:
        dims = np.array(shapes[node.input[0]], np.int64)
        if node.op_type == "Size":
            return [np.array(dims.prod(), np.int64)]
        bounds = {a.name: a.i for a in node.attribute}
        return [dims[bounds.get("start", 0) : bounds.get("end", len(dims))]]
    inputs = [name for name in node.input if name]
    if node.op_type.startswith("Random") or not all(name in known for name in inputs):
        return None  # (Constant has no inputs and folds)
    helper = onnx.helper
    graph = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(known[name]).dtype), None)
            for name in inputs
        ],
        [helper.make_empty_tensor_value_info(name) for name in node.output if name],
    )
    try:  # a model, not the bare node: the reference runtime reads the node at the model's opset
        program = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        values = program.run(None, {name: known[name] for name in inputs})
    except Exception:  # noqa: BLE001 - an op the reference runtime does not cover: left to shape inference
        return None
    return values if all(np.asarray(v).size <= _FOLD_LIMIT for v in values) else None
