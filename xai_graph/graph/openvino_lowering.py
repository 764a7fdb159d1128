"""Writing OpenVINO IR: the nodes `insert` appended to a mirror, lowered onto the original `ov.Model`.

Ops of the recipes' vocabulary go through `_LOWERINGS` (ONNX meaning -> `openvino.opset13`);
copies of mirrored operations (cloned tails) are re-created with the original's type, opset and
attributes by `NodeFactory`. The new outputs become `Result`s named like the ONNX ones, and the
rewrite's record goes to rt_info. Reading and mirroring live in `openvino_ir`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.openvino_ir import OV_ATTR, Mirror


def lower(mirror: Mirror, metadata: dict[str, str]):
    """The original `ov.Model` with every node appended to the mirror lowered, its outputs added as Results."""
    import openvino as ov

    ports = dict(mirror.ports)

    def port(value: ir.Value | None):
        if value is None:
            return None
        if value not in ports:  # a constant a recipe made
            ports[value] = _ops().constant(value.const_value.numpy()).output(0)
        return ports[value]

    for node in mirror.graph:
        if any(v in ports for v in node.outputs):
            continue  # mirrored, not appended
        created = _lower_node(node, [port(v) for v in node.inputs])
        if len(created) != len(node.outputs):
            raise XaiGraphError(f"internal: lowering {node.op_type} gave {len(created)} outputs")
        for value, output in zip(node.outputs, created):
            output.get_node().set_friendly_name(node.name)
            ports[value] = output
    results = []
    for value in mirror.graph.outputs[mirror.original_outputs :]:
        output = ports[value]
        output.get_tensor().set_names({value.name})
        result = ov.opset13.result(output)
        result.set_friendly_name(value.name)
        results.append(result)
    model = mirror.model
    model.add_results(results)
    for key, value in metadata.items():
        if key.startswith("model_info "):
            model.set_rt_info(value, ["model_info", key.split(" ", 1)[1]])
        else:
            model.set_rt_info(value, ["xai_graph", key])
    model.validate_nodes_and_infer_types()
    return model


def _lower_node(node: ir.Node, inputs: list) -> list:
    recorded = node.attributes.get(OV_ATTR)
    if node.op_type in _LOWERINGS and (recorded is None or node.op_type in _RECREATE_BY_MEANING):
        attrs = {k: a.value for k, a in node.attributes.items() if k != OV_ATTR}
        out = _LOWERINGS[node.op_type](inputs, attrs)
        return [o for o in (out if isinstance(out, (list, tuple)) else [out])]
    if recorded is None:
        raise XaiGraphError(f"cannot write {node.op_type} into OpenVINO IR")
    from openvino.utils.node_factory import NodeFactory

    spec = json.loads(recorded.value)
    try:
        created = NodeFactory(spec["opset"]).create(spec["type"], list(inputs), spec["attributes"])
    except Exception as exc:
        raise XaiGraphError(
            f"cannot copy OpenVINO operation {spec['type']} ({spec['opset']}): {str(exc).strip().splitlines()[0][:160]}"
        ) from None
    return list(created.outputs())


# Mirrored operations whose copies are rebuilt from the ONNX meaning, not the recorded operation: their
# mirror inputs differ from OpenVINO's (Transpose/Gather/Slice/Split take constants as attributes or in
# another order), or a recipe changes what the copy means (a cloned Reshape gets a batch-free shape).
_RECREATE_BY_MEANING = {"Reshape", "Transpose", "Gather", "Slice", "Split"}


def _ops():
    import openvino.opset13 as ops

    return ops


def _i64(values) -> object:
    return _ops().constant(np.asarray(values, dtype=np.int64))


def _reduce(name: str):
    def lower(inputs, attrs):
        axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else _i64(attrs["axes"])
        return getattr(_ops(), name)(inputs[0], axes, bool(attrs.get("keepdims", 1))).output(0)

    return lower


def _slice(inputs, attrs):
    data, starts, ends = inputs[:3]
    axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
    steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else None
    if steps is None:
        steps = _ops().broadcast(_i64(1), _ops().shape_of(starts))
    return _ops().slice(data, starts, ends, steps, axes).output(0)


def _resize(inputs, attrs):
    ops = _ops()
    sizes = inputs[3]
    return ops.interpolate(
        inputs[0],
        sizes,
        mode="linear",
        shape_calculation_mode="sizes",
        coordinate_transformation_mode=attrs.get("coordinate_transformation_mode", "half_pixel"),
        axes=_i64([0, 1, 2, 3]),
    ).output(0)


def _conv(inputs, attrs):
    ops = _ops()
    group = attrs.get("group", 1)
    pads = attrs.get("pads", [0, 0, 0, 0])
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    weights = inputs[1]
    if group == 1:
        out = ops.convolution(inputs[0], weights, strides, pads[:2], pads[2:], dilations)
    else:  # ONNX [O, I/G, kh, kw] -> OpenVINO [G, O/G, I/G, kh, kw]
        shape = weights.get_partial_shape()
        grouped = ops.reshape(weights, _i64([group, -1, *[shape[i].get_length() for i in range(1, 4)]]), False)
        out = ops.group_convolution(inputs[0], grouped, strides, pads[:2], pads[2:], dilations)
    if len(inputs) > 2 and inputs[2] is not None:
        out = ops.add(out, ops.reshape(inputs[2], _i64([1, -1, 1, 1]), False))
    return out.output(0)


def _cast(inputs, attrs):
    return _ops().convert(inputs[0], np.dtype(ir.DataType(attrs["to"]).numpy()).type).output(0)


def _gemm(inputs, attrs):
    ops = _ops()
    out = ops.matmul(inputs[0], inputs[1], bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0)))
    if attrs.get("alpha", 1.0) != 1.0:
        out = ops.multiply(out, ops.constant(np.float32(attrs["alpha"])))
    if len(inputs) > 2 and inputs[2] is not None:
        bias = (
            inputs[2]
            if attrs.get("beta", 1.0) == 1.0
            else ops.multiply(inputs[2], ops.constant(np.float32(attrs["beta"])))
        )
        out = ops.add(out, bias)
    return out.output(0)


def _topk(inputs, attrs):
    ops = _ops()
    k = ops.squeeze(inputs[1], _i64([0])) if inputs[1].get_partial_shape().rank.get_length() == 1 else inputs[1]
    node = ops.topk(
        inputs[0],
        k,
        attrs.get("axis", -1),
        "max" if attrs.get("largest", 1) else "min",
        "value" if attrs.get("sorted", 1) else "none",
        "i64",
    )
    return list(node.outputs())


def _constant_of_shape(inputs, attrs):
    value = attrs["value"].numpy().reshape(()) if "value" in attrs else np.float32(0)
    return _ops().broadcast(_ops().constant(value), inputs[0]).output(0)


def _eye_like(inputs, attrs):
    ops = _ops()
    shape = ops.shape_of(inputs[0])
    rows = ops.gather(shape, _i64(0), _i64(0))
    cols = ops.gather(shape, _i64(1), _i64(0))
    return ops.eye(rows, cols, _i64(0), "f32").output(0)


def _layer_norm(inputs, attrs):
    ops = _ops()
    axis = attrs.get("axis", -1)
    out = ops.mvn(inputs[0], _i64([axis]), True, attrs.get("epsilon", 1e-5), "inside_sqrt")
    out = ops.multiply(out, inputs[1])
    return (ops.add(out, inputs[2]) if len(inputs) > 2 and inputs[2] is not None else out).output(0)


def _binary(name: str):
    return lambda inputs, attrs: getattr(_ops(), name)(inputs[0], inputs[1]).output(0)


def _variadic(name: str):  # ONNX Max / Min / Sum take any number of inputs, OpenVINO's two
    def lower(inputs, attrs):
        out = inputs[0]
        for other in inputs[1:]:
            out = getattr(_ops(), name)(out, other).output(0)
        return out

    return lower


def _unary(name: str):
    return lambda inputs, attrs: getattr(_ops(), name)(inputs[0]).output(0)


_LOWERINGS: dict[str, Callable] = {
    "Add": _binary("add"),
    "Sub": _binary("subtract"),
    "Mul": _binary("multiply"),
    "Div": _binary("divide"),
    "Pow": _binary("power"),
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Less": _binary("less"),
    "Equal": _binary("equal"),
    "Sigmoid": _unary("sigmoid"),
    "Exp": _unary("exp"),
    "Sqrt": _unary("sqrt"),
    "Relu": _unary("relu"),
    "Abs": _unary("abs"),
    "Neg": _unary("negative"),
    "Erf": _unary("erf"),
    "Tanh": _unary("tanh"),
    "Round": lambda i, a: _ops().round(i[0], "half_to_even").output(0),
    "Identity": lambda i, a: i[0],
    "MatMul": lambda i, a: _ops().matmul(i[0], i[1], False, False).output(0),
    "Gemm": _gemm,
    "Reshape": lambda i, a: _ops().reshape(i[0], i[1], not a.get("allowzero", 0)).output(0),
    "Transpose": lambda i, a: _ops().transpose(i[0], _i64(a["perm"])).output(0),
    "Concat": lambda i, a: _ops().concat(i, a["axis"]).output(0),
    "Unsqueeze": lambda i, a: _ops().unsqueeze(i[0], i[1] if len(i) > 1 else _i64(a["axes"])).output(0),
    "Squeeze": lambda i, a: (
        _ops().squeeze(i[0], i[1] if len(i) > 1 else _i64(a["axes"]))
        if len(i) > 1 or "axes" in a
        else _ops().squeeze(i[0])
    ).output(0),
    "Slice": _slice,
    "Gather": lambda i, a: _ops().gather(i[0], i[1], _i64(a.get("axis", 0))).output(0),
    "GatherElements": lambda i, a: _ops().gather_elements(i[0], i[1], a.get("axis", 0)).output(0),
    "Shape": lambda i, a: _ops().shape_of(i[0], "i64").output(0),
    "Softmax": lambda i, a: _ops().softmax(i[0], a.get("axis", -1)).output(0),
    "ReduceMean": _reduce("reduce_mean"),
    "ReduceMax": _reduce("reduce_max"),
    "ReduceSum": _reduce("reduce_sum"),
    "ReduceMin": _reduce("reduce_min"),
    "ReduceL2": _reduce("reduce_l2"),
    "Cast": _cast,
    "Expand": lambda i, a: _ops().broadcast(i[0], i[1], "bidirectional").output(0),
    "Where": lambda i, a: _ops().select(i[0], i[1], i[2]).output(0),
    "Conv": _conv,
    "Resize": _resize,
    "TopK": _topk,
    "ConstantOfShape": _constant_of_shape,
    "EyeLike": _eye_like,
    "LayerNormalization": _layer_norm,
    "Split": lambda i, a: list(_ops().variadic_split(i[0], _i64(a["axis"]), i[1]).outputs()),
}
