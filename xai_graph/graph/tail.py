"""Clone the tail of a network (target map -> class scores) to run on a new input.

The clone runs at another batch size (B*h*w for Recipro-CAM), so:
- weights and other constants are shared with the original, never copied;
- a Reshape whose target shape does not come from the clone itself (a constant
  such as `[1, C]`, or a shape computed from the graph input's batch) gets the
  constant `[-1, d1, ...]` built from its inferred output shape, in the clone only;
- the original nodes are left untouched, so the original outputs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from xai_graph.errors import XaiGraphError, option_text
from xai_graph.graph.analysis import GraphIndex
from xai_graph.graph.builder import GraphBuilder


def clone_tail(
    builder: GraphBuilder,
    tail: Sequence[ir.Node],
    start: ir.Value,
    new_start: ir.Value,
    end: ir.Value,
    also: dict[ir.Value, ir.Value] | None = None,
    index: GraphIndex | None = None,
) -> ir.Value:
    """Append a copy of `tail` reading `new_start` where the original reads `start`; return the copy of `end`.

    `also` substitutes further values inside the tail (ViT Recipro-CAM masks a block's
    normalised tokens as well as its input); nodes whose outputs are all substituted
    are not cloned. `index` is the find step's (its facts about the original nodes still hold).
    """
    also = also or {}
    tail = [n for n in tail if not all(v in also for v in n.outputs)]
    index = index or GraphIndex(builder.graph)
    foreign = [v for v in index.foreign_inputs(start, tail) if v not in also]
    reshapes_only = all(
        all(use.node.op_type == "Reshape" and use.idx == 1 for use in v.uses() if use.node in tail) for v in foreign
    )
    if foreign and not reshapes_only:
        names = ", ".join(v.name for v in foreign)
        raise XaiGraphError(f"the layers after '{start.name}' also read {names}; it cannot be cloned alone")
    shaped = [v for v in _shape_derived_inputs(tail) if v not in index.data_dependent and v not in also]
    if shaped:
        raise XaiGraphError(
            f"the layers after '{start.name}' read '{shaped[0].name}', computed from the input's "
            "shape (as torch's dynamo exporter writes as_strided); it cannot run at another batch: "
            f"export with dynamo=False, or use {option_text('algo', 'activationmap')} or eigencam"
        )
    mapping = clone_nodes(builder, tail, {start: new_start, **also}, batch_free=True)
    return mapping[end]


def _shape_derived_inputs(tail: Sequence[ir.Node]) -> list[ir.Value]:
    """Values computed outside `tail` from a Shape or Size that its nodes read other than as a Reshape's target
    shape (which the clone frees): they may hold the original batch size."""
    produced = {v for node in tail for v in node.outputs}
    found = []
    for node in tail:
        for i, v in enumerate(node.inputs):
            if v is None or v in produced or (node.op_type == "Reshape" and i == 1):
                continue
            if v not in found and _computed_from_a_shape(v):
                found.append(v)
    return found


def _computed_from_a_shape(value: ir.Value) -> bool:
    stack, seen = [value], set()
    while stack:
        node = stack.pop().producer()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.op_type in ("Shape", "Size"):
            return True
        stack.extend(v for v in node.inputs if v is not None)
    return False


def clone_nodes(
    builder: GraphBuilder, nodes: Sequence[ir.Node], mapping: dict[ir.Value, ir.Value], batch_free: bool = False
) -> dict[ir.Value, ir.Value]:
    """Append copies of `nodes` (in order) reading `mapping[v]` wherever they read `v`; return the mapping
    extended with every copied output.

    `batch_free`: the copies run at another batch size, so Reshape shapes from outside
    the copy are freed (`_batch_free_shape`); otherwise the copies see the same shapes.
    """
    mapping = dict(mapping)
    for node in nodes:
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            raise XaiGraphError(f"'{node.name}' contains control flow ({node.op_type}); it cannot be cloned")
        inputs = [mapping.get(v, v) if v is not None else None for v in node.inputs]
        attrs = {name: _copy_attr(attr) for name, attr in node.attributes.items()}
        if batch_free and node.op_type == "Reshape" and node.inputs[1] not in mapping:
            inputs[1] = _batch_free_shape(builder, node)
            attrs.pop("allowzero", None)  # the runtime form copies the batch with 0
        outputs = (
            builder.op_multi(node.op_type, *inputs, num_outputs=len(node.outputs), **attrs)
            if node.domain == ""
            else _clone_custom(builder, node, inputs)
        )
        mapping.update(zip(node.outputs, outputs))
    return mapping


def _batch_free_shape(builder: GraphBuilder, node: ir.Node) -> ir.Value:
    """The Reshape's target shape with its batch entry freed.

    Static output: the constant [-1, d1, ...]. Otherwise the original shape tensor
    with entry 0 replaced by 0, which (allowzero=0) copies the clone's own batch
    and still lets a later -1 stand.
    """
    out = node.outputs[0]
    rest = list(out.shape)[1:] if out.shape is not None else None
    if rest is not None and all(isinstance(d, int) and d >= 0 for d in rest):
        return builder.ints([-1, *rest])
    batch = next((v.shape[0] for v in builder.graph.inputs if v.shape is not None and len(v.shape) > 0), None)
    if out.shape is None or batch is None or out.shape[0] != batch:
        # The shape is computed outside the tail and its first axis is not the batch (say, a
        # sequence-first attention layout): nothing here knows where the batch goes.
        raise XaiGraphError(
            f"cannot clone the layers after the map: Reshape '{node.name}' takes a shape computed "
            "outside them whose first axis is not the batch"
        )
    tail_of_shape = builder.op("Slice", node.inputs[1], builder.ints([1]), builder.ints([2**62]), builder.ints([0]))
    return builder.op("Concat", builder.ints([0]), tail_of_shape, axis=0)


def _copy_attr(attr: ir.Attr):
    return ir.Attr(attr.name, attr.type, attr.value)


def _clone_custom(builder: GraphBuilder, node: ir.Node, inputs) -> Sequence[ir.Value]:
    name = builder._name(node.op_type)
    clone = ir.Node(
        node.domain,
        node.op_type,
        inputs,
        attributes=[_copy_attr(a) for a in node.attributes.values()],
        num_outputs=len(node.outputs),
        name=name,
    )
    builder.graph.append(clone)
    return clone.outputs
