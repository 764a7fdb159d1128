"""Read-only questions about a graph: who depends on whom, and what is constant.

A value is *data-dependent* when it changes with the pixel values of a graph
input. Shape and Size cut that dependence: their outputs only carry shapes, which
is what lets a tail that reshapes with `x.size(0)` still count as a function of
its target alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import onnx_ir as ir

_SHAPE_ONLY_OPS = {"Shape", "Size"}


class GraphIndex:
    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.nodes = list(graph)
        self.position = {node: i for i, node in enumerate(self.nodes)}
        self.data_dependent = self._data_dependent_values()

    def _data_dependent_values(self) -> set[ir.Value]:
        dependent = {v for v in self.graph.inputs if not v.is_initializer()}
        for node in self.nodes:
            if node.op_type in _SHAPE_ONLY_OPS:
                continue
            if any(v in dependent for v in node.inputs if v is not None):
                dependent.update(node.outputs)
        return dependent

    def ancestors(self, value: ir.Value) -> set[ir.Node]:
        seen: set[ir.Node] = set()
        stack = [value.producer()]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            stack.extend(v.producer() for v in node.inputs if v is not None)
        return seen

    def descendants(self, value: ir.Value) -> set[ir.Node]:
        seen: set[ir.Node] = set()
        stack = list(value.consumers())
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for out in node.outputs:
                stack.extend(out.consumers())
        return seen

    def path_nodes(self, start: ir.Value, end: ir.Value) -> list[ir.Node]:
        """Nodes on some path from `start` to `end`, in graph (topological) order."""
        nodes = self.descendants(start) & self.ancestors(end)
        return sorted(nodes, key=self.position.__getitem__)

    def foreign_inputs(self, start: ir.Value, nodes: Iterable[ir.Node]) -> list[ir.Value]:
        """Data-dependent values that `nodes` read besides `start` and their own outputs.

        Empty means the nodes compute a function of `start` alone (plus constants
        and shapes), so they can be cloned and fed anything shaped like `start`.
        """
        nodes = list(nodes)
        produced = {v for node in nodes for v in node.outputs}
        foreign = []
        for node in nodes:
            for v in node.inputs:
                if v is None or v is start or v in produced:
                    continue
                if v in self.data_dependent and v not in foreign:
                    foreign.append(v)
        return foreign


def spatial_size(value: ir.Value) -> tuple[int | None, int | None] | None:
    """(h, w) of a rank-4 NCHW value (None for a dynamic axis), or None when not rank 4."""
    if value.shape is None or len(value.shape) != 4:
        return None
    dims = [d if isinstance(d, int) and d >= 0 else None for d in value.shape]
    return dims[2], dims[3]


def known_dim(dim):
    """A static size or a meaningful symbol; None for unknown (including shape inference's `unk__N`)."""
    if isinstance(dim, int):
        return dim if dim >= 0 else None
    name = getattr(dim, "value", None)
    return dim if name and not name.startswith("unk__") else None


def shape_text(value: ir.Value) -> str:
    if value.shape is None:
        return "[?]"
    dims = [known_dim(d) for d in value.shape]
    return "[" + ", ".join("?" if d is None else str(d if isinstance(d, int) else d.value) for d in dims) + "]"


def constant_array(value: ir.Value | None):
    """The numpy value of an initializer or Constant-node output (also through Identity nodes, which torch's
    exporter writes for weights it deduplicated), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Identity" and node.domain == "":
        return constant_array(node.inputs[0])
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].as_tensor().numpy()
    return None


# Ops whose multiply-adds dominate a network's cost; everything else is counted as free.
_WORK_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def estimated_work(nodes: Iterable[ir.Node]) -> tuple[float, float, bool]:
    """(multiply-adds per image, weight elements, whether every output size was known) of `nodes`.

    Conv: output elements x (weight elements / output channels); MatMul and Gemm: output
    elements x the contracted size. Where shape inference lost a size (transformers whose
    token count comes from computed shapes), multiply-adds are unreliable and the weights
    are the better measure. Rough figures, used only to say how much of a graph a form
    re-runs per position.
    """
    flops, weights, exact = 0.0, 0.0, True
    for node in nodes:
        if node.op_type not in _WORK_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        out, weight = node.outputs[0].shape, node.inputs[1].shape
        if out is None or weight is None:
            exact = False
            continue
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in weight]
        known = [d for d in list(out)[1:] if isinstance(d, int) and d > 0]
        exact = exact and len(known) == len(out) - 1
        if node.op_type in ("Conv", "ConvTranspose"):
            per_output = math.prod(dims) / max(dims[0], 1)
        elif node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            per_output = dims[-1]
        else:
            per_output = dims[-2] if len(dims) >= 2 else dims[0]
        flops += math.prod(known) * per_output
        if node.inputs[1].const_value is not None or node.inputs[1].is_initializer():
            weights += math.prod(dims)
    return flops, weights, exact


def work_fraction(graph: ir.Graph, nodes: Iterable[ir.Node]) -> float | None:
    """The share of the graph's estimated cost that `nodes` carry (by weights where sizes are unknown)."""
    flops, weights, exact = estimated_work(graph)
    part_flops, part_weights, _ = estimated_work(nodes)
    if exact and flops > 0:
        return part_flops / flops
    return part_weights / weights if weights > 0 else None
