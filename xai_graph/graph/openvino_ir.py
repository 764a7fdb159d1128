"""OpenVINO IR as a second graph back-end, driven by the same analysis and method recipes.

Reading: the `ov.Model` is mirrored into an onnx-ir model, one node per OpenVINO
operation. Operations whose meaning matches an ONNX op get its name and attributes
(Multiply -> Mul, Convolution -> Conv, ShapeOf -> Shape, ReduceMean with its axes
input, Transpose with `perm`, ...), which is all the target search reads; the rest
keep their OpenVINO type in the `ov` domain and count as opaque data operations.
Constants become initializers; weight decompression (Convert, and the Subtract /
Multiply of INT8 weights) is folded so that head weights read as constants.

Writing: `insert` then runs on the mirror unchanged and appends nodes under
`xai_graph/`; `openvino_lowering.lower` turns them into OpenVINO operations on the
original model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.runnable import check_input_dims
from xai_graph.runtime import runtime_message
from xai_graph.graph.openvino_ops import translate

MIRROR_OPSET = 21  # recipes then emit the axes-as-input forms, which map directly onto OpenVINO
OV_ATTR = "_ov"  # JSON of the mirrored operation's type, opset and attributes, for re-creating copies
_FOLD_LIMIT = 1 << 26  # elements: folding bigger weight chains would double a large model's memory

_DTYPES = {
    "f32": np.float32,
    "f16": np.float16,
    "f64": np.float64,
    "i64": np.int64,
    "i32": np.int32,
    "i8": np.int8,
    "u8": np.uint8,
    "boolean": np.bool_,
    "u1": np.bool_,
    "i16": np.int16,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
    "bf16": np.float32,
}


# -- reading -------------------------------------------------------------------------------------------
MAX_XML_BYTES = 512 * 2**20  # a network description: real ones are a few MB, weights live in the .bin


def read_ir(path: str | os.PathLike):
    """Read an IR after checking what OpenVINO itself would report badly or not at all."""
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise XaiGraphError(f"{path}: an OpenVINO IR path ends with .xml")
    if not path.is_file():
        raise XaiGraphError(f"{path}: no such file")
    if path.stat().st_size > MAX_XML_BYTES:
        raise XaiGraphError(
            f"{path}: {path.stat().st_size >> 20} MiB of XML; an IR's .xml is at most "
            f"{MAX_XML_BYTES >> 20} MiB (its weights are in the .bin)"
        )
    _check_xml(path)
    weights = path.with_suffix(".bin")
    needed = _weights_extent(path)
    if needed and not weights.is_file():
        raise XaiGraphError(f"{path}: its weights file {weights.name} is missing")
    if needed and weights.stat().st_size < needed:
        raise XaiGraphError(
            f"{weights}: {weights.stat().st_size} bytes, but the IR reads up to byte {needed} "
            "(truncated, or the .bin of another model)"
        )
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        hint = f"; is {weights.name} this model's weights file?" if needed else ""
        raise XaiGraphError(f"{path}: not a readable OpenVINO IR ({runtime_message(exc)}){hint}") from None
    for port in model.inputs:
        check_input_dims(
            port.get_any_name(), [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        )
    return model


def _check_xml(path: Path) -> None:
    """Well-formed XML whose root is <net>, without a DTD: OpenVINO would otherwise hand a damaged file to
    another frontend (which logs to stderr) and entity declarations are never part of an IR."""
    from xml.parsers import expat

    parser = expat.ParserCreate()
    root = []

    def refuse_doctype(*_):
        raise XaiGraphError(f"{path}: not an OpenVINO IR (an XML document type or entity declaration)")

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    parser.StartElementHandler = lambda name, attrs: root.append(name) if not root else None
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
    except expat.ExpatError as exc:
        raise XaiGraphError(
            f"{path}: not an OpenVINO IR (malformed XML: {expat.ErrorString(exc.code)}, line {exc.lineno})"
        ) from None
    if root[:1] != ["net"]:
        raise XaiGraphError(f"{path}: not an OpenVINO IR (no <net> element)")


def _weights_extent(path: Path) -> int:
    """The end of the furthest constant the .xml reads from its .bin."""
    extent = 0
    for match in re.finditer(rb"<data\b[^>]*>", path.read_bytes()):
        tag = match.group(0)
        offset, size = re.search(rb'\boffset="(\d+)"', tag), re.search(rb'\bsize="(\d+)"', tag)
        if offset and size:
            extent = max(extent, int(offset.group(1)) + int(size.group(1)))
    return extent


def make_batch_dynamic(model) -> bool:
    """Give every input a dynamic first axis; False (model unchanged) where OpenVINO cannot, or where an
    output that had the batch keeps a fixed size (a batch baked into a Reshape, say)."""
    import openvino as ov

    original = {port: port.get_partial_shape() for port in model.inputs}
    if any(shape.rank.is_dynamic or len(shape) == 0 for shape in original.values()):
        return False
    batch = {shape[0].get_length() for shape in original.values() if shape[0].is_static}
    if not batch:
        return True
    fixed_before = [o.get_partial_shape() for o in model.outputs]
    try:
        model.reshape({port: ov.PartialShape([ov.Dimension(-1), *list(shape)[1:]]) for port, shape in original.items()})
    except Exception:
        return False
    for before, port in zip(fixed_before, model.outputs):
        after = port.get_partial_shape()
        if (
            before.rank.is_static
            and len(before)
            and before[0].is_static
            and before[0].get_length() in batch
            and after[0].is_static
        ):
            model.reshape(original)
            return False
    return True


MIRRORED = "xai_graph.openvino_model"  # meta key of a mirror's ir.Model: the `ov.Model` it mirrors


def static_mirror(ir_model: ir.Model, free: int) -> ir.Model | None:
    """For a mirror: the mirror of a copy of its `ov.Model` reshaped to static input sizes (batch 1, every other
    free axis `free`), whose values have the same names; None for a model that is not a mirror."""
    model = ir_model.meta.get(MIRRORED)
    if model is None:
        return None
    twin = model.clone()
    shapes = {}
    for port in twin.inputs:
        dims = [
            d.get_length() if d.is_static else (1 if axis == 0 else free)
            for axis, d in enumerate(port.get_partial_shape())
        ]
        shapes[port] = dims
    twin.reshape(shapes)
    return Mirror(twin).ir_model


class Mirror:
    """An onnx-ir model mirroring an `ov.Model`, and the OpenVINO output behind each mirrored value."""

    def __init__(self, model):
        self.model = model
        self.ports: dict[ir.Value, object] = {}  # mirror value -> ov.Output
        self._names: set[str] = set()
        self.graph = ir.Graph([], [], nodes=[], opset_imports={"": MIRROR_OPSET, "ov": 1}, name="mirror")
        self._mirror()
        self.ir_model = ir.Model(self.graph, ir_version=10)
        self.ir_model.meta[MIRRORED] = model  # analyses that need OpenVINO's own shape inference reach it here
        self.original_outputs = len(self.graph.outputs)

    def _name(self, port) -> str:
        names = sorted(port.get_names())
        base = names[0] if names else f"{port.get_node().get_friendly_name()}:{port.get_index()}"
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}#{i}", i + 1
        self._names.add(name)
        return name

    def _value(self, port, const: np.ndarray | None = None) -> ir.Value:
        shape = port.get_partial_shape()
        dims = None if shape.rank.is_dynamic else ir.Shape([d.get_length() if d.is_static else None for d in shape])
        dtype = ir.DataType.from_numpy(np.dtype(_DTYPES.get(port.get_element_type().get_type_name(), np.float32)))
        value = ir.Value(name=self._name(port), shape=dims, type=ir.TensorType(dtype))
        if const is not None:
            value.const_value = ir.tensor(const, name=value.name)
            self.graph.register_initializer(value)
        self.ports[value] = port
        return value

    def _mirror(self) -> None:
        by_port: dict[tuple[int, int], ir.Value] = {}

        def source(inp) -> ir.Value:
            out = inp.get_source_output()
            return by_port[(out.get_node().get_instance_id(), out.get_index())]

        for node in self.model.get_ordered_ops():
            kind = node.get_type_name()
            key = node.get_instance_id()
            if kind == "Parameter":
                value = self._value(node.output(0))
                self.graph.inputs.append(value)
                by_port[(key, 0)] = value
                continue
            if kind == "Result":
                self.graph.outputs.append(source(node.input(0)))
                continue
            inputs = [source(i) for i in node.inputs()]
            folded = self._fold(node, inputs)
            if folded is not None:
                by_port[(key, 0)] = self._value(node.output(0), folded)
                continue
            outputs = [self._value(port) for port in node.outputs()]
            for i, value in enumerate(outputs):
                by_port[(key, i)] = value
            self.graph.append(_mirrored_node(node, inputs, outputs))

    def _fold(self, node, inputs: list[ir.Value]) -> np.ndarray | None:
        """Constants, and operations on constants only that decompress weights (f16, INT8)."""
        kind = node.get_type_name()
        if kind == "Constant":
            return np.array(node.get_data(), copy=True)
        arrays = [v.const_value.numpy() if v.const_value is not None else None for v in inputs]
        if not arrays or any(a is None for a in arrays) or sum(a.size for a in arrays) > _FOLD_LIMIT:
            return None
        if kind == "Convert":
            return arrays[0].astype(_DTYPES.get(node.get_output_element_type(0).get_type_name(), np.float32))
        operations = {"Multiply": np.multiply, "Subtract": np.subtract, "Add": np.add}
        if kind in operations and len(arrays) == 2:
            return operations[kind](*arrays).astype(arrays[0].dtype)
        return None


def _attrs_json(node) -> str:
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    return json.dumps(
        {
            "type": node.get_type_name(),
            "opset": node.get_type_info().version_id,
            "attributes": {k: plain(v) for k, v in node.get_attributes().items()},
        }
    )


def _mirrored_node(node, inputs: list[ir.Value], outputs: list[ir.Value]) -> ir.Node:
    """One mirror node: the ONNX equivalent where the meaning matches, else the OpenVINO type in domain `ov`."""
    kind, attrs = node.get_type_name(), node.get_attributes()
    translated = translate(kind, attrs, inputs)
    if translated is None:  # opaque; its plain attributes stay readable (MatMul's transpose_b, MVN's eps)
        op_type, domain, onnx_inputs = kind, "ov", inputs
        onnx_attrs = {
            k: int(v) if isinstance(v, bool) else v
            for k, v in attrs.items()
            if isinstance(v, (bool, int, float)) and not isinstance(v, np.generic)
        }
    else:
        op_type, onnx_inputs, onnx_attrs = translated
        domain = ""
    attributes = ir.convenience.convert_attributes(onnx_attrs) if onnx_attrs else []
    attributes = [*attributes, ir.AttrString(OV_ATTR, _attrs_json(node))]
    return ir.Node(domain, op_type, onnx_inputs, attributes=attributes, outputs=outputs, name=node.get_friendly_name())
