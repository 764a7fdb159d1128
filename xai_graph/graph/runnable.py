"""Refuse, at load time, models the runtimes would refuse later, and mend the one flaw that is only a name.

The ONNX checker accepts files that ONNX Runtime or OpenVINO then refuse, or that
run but cannot take an image: an opset newer than any runtime here knows, operators
of a custom domain, an input with a dimension of 0, an input so large that one image
would need gigabytes. `insert`, `inspect` and `explain` all load through this check,
so each of them answers the same, before any work is done.
"""

from __future__ import annotations

import warnings
from collections import Counter

import onnx

from xai_graph.errors import XaiGraphError

# One input image at most 4096 x 4096 with 3 channels (float32: 200 MB per image).
MAX_INPUT_ELEMENTS = 3 * 4096 * 4096
# Domains ONNX Runtime implements without a custom-op library.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}


def check_runnable(proto: onnx.ModelProto) -> None:
    """Raise XaiGraphError for what no runtime here could load or feed an image to; rename duplicate nodes."""
    _check_opset(proto)
    _check_domains(proto)
    for graph_input in proto.graph.input:
        _check_input(graph_input, {t.name for t in proto.graph.initializer})
    _rename_duplicate_nodes(proto.graph)


def _check_opset(proto: onnx.ModelProto) -> None:
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise XaiGraphError(
                f"the model is stamped opset {opset.version}, newer than the {newest} that onnx "
                f"{onnx.__version__} and the runtimes here know; export it at opset {newest} or older"
            )


def _check_domains(proto: onnx.ModelProto) -> None:
    local = {f.domain for f in proto.functions}
    unknown = Counter(f"{n.domain}.{n.op_type}" for n in proto.graph.node if n.domain not in KNOWN_DOMAINS | local)
    if unknown:
        ops = ", ".join(name for name, _ in unknown.most_common(3))
        raise XaiGraphError(
            f"the model uses operators of a custom domain ({ops}) that ONNX Runtime and OpenVINO "
            "cannot run without their plug-in; export it with standard ONNX operators"
        )


def _check_input(value: onnx.ValueInfoProto, initializers: set[str]) -> None:
    if value.name in initializers or not value.type.HasField("tensor_type"):
        return
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    if 0 in dims:
        raise XaiGraphError(f"input '{value.name}' has a dimension of size 0 {_shape(dims)}: no image fits it")
    elements = 1
    for dim in dims[1:]:  # per image: the batch axis does not count
        elements *= dim or 1
    if elements > MAX_INPUT_ELEMENTS:
        raise XaiGraphError(
            f"input '{value.name}' {_shape(dims)} takes {elements / 1e6:.0f} M values per image, "
            f"more than the {MAX_INPUT_ELEMENTS / 1e6:.0f} M (3 x 4096 x 4096) xai-graph accepts"
        )


def _rename_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """ONNX Runtime refuses two nodes with one name; names carry no meaning, so the later ones get a suffix."""
    counts = Counter(n.name for n in graph.node if n.name)
    repeated = {name for name, count in counts.items() if count > 1}
    if not repeated:
        return
    taken = set(counts)
    seen: set[str] = set()
    for node in graph.node:
        if node.name in repeated and node.name in seen:
            suffix = 1
            while f"{node.name}__{suffix}" in taken:
                suffix += 1
            node.name = f"{node.name}__{suffix}"
            taken.add(node.name)
        seen.add(node.name)
    warnings.warn(
        f"{len(repeated)} node name(s) used more than once (ONNX Runtime refuses that): renamed the "
        "repeats with a __N suffix",
        stacklevel=4,
    )


def check_input_dims(name: str, dims: list[int | None]) -> None:
    """The same input checks for an OpenVINO IR's inputs (None: a dynamic dimension)."""
    shape = [d if d is not None else "d" for d in dims]
    value = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
    _check_input(value, set())


def _shape(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
