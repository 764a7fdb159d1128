"""Layer norms as exporters write them: LayerNormalization, its decomposition (mean, centre, variance, sqrt,
divide, then the affine Mul and Add), or OpenVINO's MVN over the last axis. The transformer search
(`transformer.py`) finds the last block by its norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from xai_graph.graph.analysis import constant_array


@dataclass
class LayerNorm:
    input: ir.Value
    output: ir.Value
    nodes: list[ir.Node]  # one LayerNormalization node, or its decomposition in graph order


def producer(value: ir.Value | None, *ops: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type in ops else None


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    others = [v for v in node.inputs if v is not value]
    return others[0] if len(others) == 1 else None


def _with_affine(nodes: list[ir.Node]) -> LayerNorm:
    """The norm extended through the Mul (weight) and Add (bias) that follow it, where they are constants."""
    out = nodes[-1].outputs[0]
    for op in ("Mul", "Add"):
        users = out.consumers()
        if len(users) == 1 and users[0].op_type == op and constant_array(other_input(users[0], out)) is not None:
            nodes.append(users[0])
            out = users[0].outputs[0]
    return LayerNorm(nodes[0].inputs[0], out, nodes)


def _decomposed_norm(div: ir.Node) -> LayerNorm | None:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* weight] [+ bias], from its Div."""
    centred = producer(div.inputs[0], "Sub")
    root = producer(div.inputs[1], "Sqrt")
    mean = producer(centred.inputs[1], "ReduceMean") if centred else None
    if mean is None or root is None or mean.inputs[0] is not centred.inputs[0]:
        return None
    plus_eps = producer(root.inputs[0], "Add")
    variance = next((p for v in plus_eps.inputs if (p := producer(v, "ReduceMean"))), None) if plus_eps else None
    square = producer(variance.inputs[0], "Pow", "Mul") if variance else None
    if square is None or centred.outputs[0] not in square.inputs:
        return None
    return _with_affine([mean, centred, square, variance, plus_eps, root, div])


def is_last_axis_mvn(node: ir.Node) -> bool:
    """OpenVINO's MVN over the last axis with variance: a layer norm without its affine part."""
    if node.domain != "ov" or node.op_type != "MVN" or not node.attributes.get_int("normalize_variance", 0):
        return False
    return reduces_last_axis(node)


def layer_norms(graph: ir.Graph) -> list[LayerNorm]:
    norms = []
    for node in graph:
        if node.op_type == "LayerNormalization" or is_last_axis_mvn(node):
            norms.append(
                _with_affine([node]) if node.op_type == "MVN" else LayerNorm(node.inputs[0], node.outputs[0], [node])
            )
        elif node.op_type == "Div" and (norm := _decomposed_norm(node)) is not None:
            norms.append(norm)
    return norms


def reduces_last_axis(node: ir.Node) -> bool:
    axes = (
        node.attributes["axes"].value
        if "axes" in node.attributes
        else constant_array(node.inputs[1] if len(node.inputs) > 1 else None)
    )
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    return axes is not None and len(list(axes)) == 1 and int(list(axes)[0]) in (-1, (rank or 0) - 1)
