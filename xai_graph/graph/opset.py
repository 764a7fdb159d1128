"""Keep a rewritten file valid for the ONNX version it was written in.

ONNX Model Zoo classics are IR version 3 at opset 7-9. Heads use ops that appeared
later (Round, GatherElements, float Equal: opset 11; Resize with sizes: 11), so an
older model is first raised to opset 11 with onnx's own version converter, which
rewrites only op versions and attribute forms (the original outputs stay
bit-identical; the tests check it). Below IR version 4 every initializer must also be
a graph input, which `list_initializers_as_inputs` restores after the head is built.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import external_data as ir_external_data

from xai_graph.errors import XaiGraphError

MIN_OPSET = 11  # the oldest opset the heads are written for (graph/builder.py covers 11..21)
_SMALL = 4096  # elements: shape constants and the like stay in the graph the converter sees


def with_opset_at_least(model: ir.Model, minimum: int = MIN_OPSET) -> ir.Model:
    """`model` itself where its opset is recent enough, else a converted copy (with a note)."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if opset >= minimum:
        return model
    # The converter rewrites op versions, never weights: it gets the graph without them (as in shape inference,
    # serialising 100 MB of weights through it cost most of a second), and they are put back by name.
    weights = {
        name: value.const_value
        for name, value in model.graph.initializers.items()
        if value.const_value is not None and value.const_value.size > _SMALL
    }
    proto = ir.serde.serialize_model(_without(model, weights))
    try:
        converted = onnx.version_converter.convert_version(proto, minimum)
    except Exception as exc:  # the converter raises RuntimeError and ValueError alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise XaiGraphError(
            f"the model is at opset {opset}, older than the {minimum} the heads are written for, "
            f"and onnx's version converter could not raise it ({first})"
        ) from None
    result = ir.serde.deserialize_model(converted)
    for name, tensor in weights.items():
        result.graph.initializers[name].const_value = tensor
    result.meta.update(model.meta)
    source = model.meta.get("xai_graph.source")
    if source:
        ir_external_data.set_base_dir(result.graph, str(Path(source).parent))
    warnings.warn(
        f"opset {opset} raised to {minimum} with onnx.version_converter, so that the head's ops exist; "
        "the original outputs are unchanged",
        stacklevel=3,
    )
    return result


def _without(model: ir.Model, weights: dict) -> ir.Model:
    """A shallow copy of `model` whose large initializers hold empty placeholders of the same type and shape."""
    copy = model.clone()
    for name, tensor in weights.items():
        placeholder = ir.ExternalTensor(
            "weights.placeholder", offset=0, length=0, dtype=tensor.dtype, shape=tensor.shape, name=name
        )
        copy.graph.initializers[name].const_value = placeholder
    return copy


def list_initializers_as_inputs(model: ir.Model) -> None:
    """IR version < 4 requires every initializer to be a graph input too."""
    if model.ir_version >= 4:
        return
    listed = set(model.graph.inputs)
    for value in model.graph.initializers.values():
        if value not in listed:
            model.graph.inputs.append(value)
