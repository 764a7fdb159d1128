"""Load ONNX models defensively and save them atomically, never over their source.

Loading validates the file (exists, parses, passes the ONNX checker, external
data present) so that every later step can trust the graph, and runs shape
inference so that targets and tails have shapes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir import external_data as ir_external_data

from xai_graph.errors import XaiGraphError
from xai_graph.graph.runnable import check_runnable
from xai_graph.files import check_writes_spare_reads, files_read_by_model, root_cause, scratch_folder
from xai_graph.formats import is_ir

# Names of the intermediate values whose shapes the source file declared (its value_info).
SOURCE_ANNOTATIONS = "xai_graph.source_annotations"

# The files a loaded model was read from: its .onnx and its external data files.
READS = "xai_graph.reads"

# A protobuf cannot exceed 2 GiB; beyond this, weights must go to a .data file.
_PROTO_LIMIT_BYTES = 2**31 - 2**24


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read, check and shape-infer an ONNX model; external data is read lazily from its folder."""
    path = Path(path)
    if not path.exists():
        raise XaiGraphError(f"{path}: no such file")
    if not path.is_file():
        raise XaiGraphError(f"{path}: not a file")
    if path.stat().st_size > 2**31:  # protobuf's own limit: larger weights live in external data files
        raise XaiGraphError(
            f"{path}: {path.stat().st_size / 2**30:.1f} GiB, over the 2 GiB an ONNX file can hold "
            "(weights that large belong in external data)"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise XaiGraphError(f"{path}: not a readable ONNX model ({_one_line(exc)})") from None
    if proto.ir_version <= 0 or not proto.graph.node or not proto.graph.output:
        raise XaiGraphError(f"{path}: not an ONNX model (no graph in the file, or it is truncated)")
    external = uses_external_data(proto)
    if external:
        _check_external_data(proto, path)
    try:  # the checker reads external data from the path; otherwise the parsed proto saves a second read
        onnx.checker.check_model(str(path) if external else proto)
    except Exception as exc:
        raise XaiGraphError(f"{path}: invalid ONNX model ({_one_line(exc)})") from None
    check_runnable(proto)
    model = ir.serde.deserialize_model(_with_inferred_shapes(proto))
    model.meta[SOURCE_ANNOTATIONS] = frozenset(v.name for v in proto.graph.value_info)
    ir_external_data.set_base_dir(model.graph, str(path.parent))
    model.meta["xai_graph.source"] = str(path.resolve())
    model.meta[READS] = files_read_by_model(path)  # a later save must not write over any of them
    model.meta["xai_graph.external_data"] = external
    return model


def uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(
        onnx.external_data_helper.uses_external_data(t) for t in onnx.external_data_helper._get_all_tensors(proto)
    )


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        data_file = path.parent / info.location
        if not data_file.is_file():
            raise XaiGraphError(f"{path}: external data file {info.location!r} is missing")
        size = data_file.stat().st_size
        offset, length = int(info.offset or 0), info.length
        if offset < 0 or offset > size or (length is not None and (int(length) < 0 or offset + int(length) > size)):
            raise XaiGraphError(
                f"{path}: '{tensor.name}' is stored at bytes {offset}..{offset + int(length or 0)} "
                f"of {info.location!r}, which has {size} (truncated, or another model's data file)"
            )


def _with_inferred_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the graph only: external weights are not needed to infer shapes.

    ONNX's data propagation stops at small constant computations that exporters
    emit for padding and reshaping (ConstantOfShape -> Concat -> Reshape -> Slice ->
    Pad, as in TF-"same" padding), leaving every later map without a size. Those
    computations are folded in a scratch copy first; the inferred shapes are then
    copied onto the original graph, which is left as it was.

    Data propagation also stops at a symbolic batch: a Reshape to [x.size(0), 197, 3, 64]
    (transformers' attention, Swin's windows) leaves every later axis unknown. Two
    scratch inferences at batch 2 and 3 settle them: an axis that has the same size
    in both does not depend on the batch, and takes that size.
    """
    try:
        folded = _fold_small_constants(_skeleton(proto))
        inferred = onnx.shape_inference.infer_shapes(folded, strict_mode=False, data_prop=True)
        _settle_batch_independent_dims(folded, inferred)
    except Exception:
        return proto  # partial shapes are still usable; steps that need a missing shape say so
    names = {v for node in proto.graph.node for v in node.output} | {i.name for i in proto.graph.input}
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    del result.graph.value_info[:]
    result.graph.value_info.extend(v for v in inferred.graph.value_info if v.name in names)
    return result


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large tensors keep their type and dims but not their data (marked external): shape
    inference needs no weights, and serialising 100 MB of them for every inference pass cost seconds."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)
    for tensor in onnx.external_data_helper._get_all_tensors(skeleton):
        if onnx.external_data_helper.uses_external_data(tensor) or _elements(tensor.dims) <= _FOLD_LIMIT:
            continue
        for field in (
            "raw_data",
            "float_data",
            "int32_data",
            "int64_data",
            "double_data",
            "uint64_data",
            "string_data",
        ):
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value="skeleton.data")
    return skeleton


def _settle_batch_independent_dims(folded: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Dims shape inference left unknown that are the same at batch 2 and 3 do not depend on the batch:
    they are set to that value."""
    unknown = [v for v in inferred.graph.value_info if any(_unknown(d) for d in v.type.tensor_type.shape.dim)]
    batched = {
        i.name
        for i in folded.graph.input
        if i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].dim_value
    }
    if not unknown or not batched:
        return
    first, second = (_dims_at_batch(folded, batched, batch) for batch in (2, 3))
    for value in unknown:
        dims = value.type.tensor_type.shape.dim
        at_2, at_3 = first.get(value.name), second.get(value.name)
        if at_2 is None or at_3 is None or not len(at_2) == len(at_3) == len(dims):
            continue
        for dim, a, b in zip(dims, at_2, at_3):
            if not dim.dim_value and a and a == b:
                dim.dim_value = a  # (setting the value clears the unknown symbol)


def _unknown(dim) -> bool:
    return (not dim.dim_value and dim.dim_param.startswith("unk__")) or not (dim.dim_value or dim.dim_param)


def _dims_at_batch(model: onnx.ModelProto, batched: set[str], batch: int) -> dict[str, list[int]]:
    """Each value's dims (0 where unknown) when the batched inputs are fixed at `batch`."""
    scratch = onnx.ModelProto()
    scratch.CopyFrom(model)
    for graph_input in scratch.graph.input:
        if graph_input.name in batched:
            graph_input.type.tensor_type.shape.dim[0].dim_value = batch
    probe = onnx.shape_inference.infer_shapes(scratch, strict_mode=False, data_prop=True)
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in probe.graph.value_info}


_FOLD_LIMIT = 4096  # elements: shape and padding arithmetic, never weights


def _fold_small_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnx.reference import ReferenceEvaluator

    known: dict[str, object] = {}
    for tensor in proto.graph.initializer:
        if not onnx.external_data_helper.uses_external_data(tensor) and _elements(tensor.dims) <= _FOLD_LIMIT:
            known[tensor.name] = onnx.numpy_helper.to_array(tensor)
    scratch = onnx.ModelProto()
    scratch.CopyFrom(proto)
    kept = []
    for node in scratch.graph.node:
        inputs = [name for name in node.input if name]
        if (
            node.domain in ("", "ai.onnx")
            and all(name in known for name in inputs)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        ):
            try:
                values = ReferenceEvaluator(node).run(None, {name: known[name] for name in inputs})
            except Exception:
                values = None
            if values is not None and all(getattr(v, "size", _FOLD_LIMIT + 1) <= _FOLD_LIMIT for v in values):
                known.update(zip(node.output, values))
                folded = (onnx.numpy_helper.from_array(v, n) for n, v in zip(node.output, values))
                scratch.graph.initializer.extend(folded)
                continue
        kept.append(node)
    del scratch.graph.node[:]
    scratch.graph.node.extend(kept)
    return scratch


def _elements(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def to_ir(model: ir.Model | onnx.ModelProto | str | os.PathLike) -> ir.Model:
    """Accept a path, an onnx ModelProto or an ir.Model; an ir.Model is copied, not modified."""
    if isinstance(model, ir.Model):
        copy = model.clone()
        copy.meta.update(model.meta)
        return copy
    if isinstance(model, onnx.ModelProto):
        result = ir.serde.deserialize_model(_with_inferred_shapes(model))
        result.meta[SOURCE_ANNOTATIONS] = frozenset(v.name for v in model.graph.value_info)
        return result
    return load_model(model)


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None, verify=None) -> Path:
    """Write `model` to `path` atomically and check the written file (an `openvino.Model`: as IR, `save_ir`).

    Weights go to `<name>.data` beside the model when the source had external data,
    when asked, or when the model would exceed the protobuf limit. The data file is
    always a fresh one named after the output: links back into the source's data
    file would make a model that loads nowhere else. Neither may be a file the
    model was read from. `verify(staged_path)` may refuse the written file (raise)
    before it is moved into place.
    """
    if is_ir(model):  # an openvino.Model, from `insert` on IR
        return save_ir(model, path, verify=verify)
    path = Path(path)
    data_name = path.name + ".data"
    check_writes_spare_reads([path, path.parent / data_name], model.meta.get(READS, []))
    if external_data is None:
        external_data = bool(model.meta.get("xai_graph.external_data")) or _estimated_bytes(model) > _PROTO_LIMIT_BYTES
    with _staging(path, "the model") as staging, _source_annotations_only(model):
        staged = staging / path.name
        ir.save(model, staged, external_data=data_name if external_data else None)
        onnx.checker.check_model(str(staged))
        if verify:
            verify(staged)
        if external_data:
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged, path)
    return path


@contextlib.contextmanager
def _source_annotations_only(model: ir.Model):
    """Write only the intermediate shapes the source declared, not the ones inferred on loading.

    Runtimes optimise with what a file declares: ONNX Runtime fuses Add + LayerNormalization
    into SkipLayerNormalization only where the shapes are declared, and the fused kernel
    rounds differently. Declaring more than the source would change the original outputs.
    """
    annotated = model.meta.get(SOURCE_ANNOTATIONS)
    boundary = {*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()}
    hidden = (
        []
        if annotated is None
        else [
            (v, v.type, v.shape)
            for node in model.graph
            for v in node.outputs
            if v not in boundary and v.name not in annotated and (v.type is not None or v.shape is not None)
        ]
    )
    for value, _, _ in hidden:
        value.type, value.shape = None, None
    try:
        yield
    finally:
        for value, kind, shape in hidden:
            value.type, value.shape = kind, shape


@contextlib.contextmanager
def _staging(path: Path, what: str):
    """A scratch folder beside `path` to write into before files are moved into place; always removed
    (a killed run's, by the next run).

    Any failure inside becomes one XaiGraphError naming `path` and the root cause (a full disk, a read-only
    file system), and leaves nothing behind.
    """
    if not path.parent.is_dir():
        raise XaiGraphError(f"{path.parent}: output folder does not exist")
    try:
        with scratch_folder(path.parent) as staging:
            yield staging
    except XaiGraphError:
        raise
    except Exception as exc:
        raise XaiGraphError(f"{path}: could not write {what} ({root_cause(exc)})") from None


def _estimated_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_ir(model, path: str | os.PathLike, *, compress_fp16: bool = False, verify=None) -> Path:
    """Write `model` (onnx-ir, or an `openvino.Model`) as OpenVINO IR (`.xml` + `.bin`) atomically;
    onnx-ir models are converted with `openvino.convert_model`.

    Weights stay f32 unless `compress_fp16` (OpenVINO's own default would halve them);
    `verify(staged_xml)` may refuse the written IR before it is moved into place.
    Model API entries (`model_info <key>` in the ONNX metadata) become `rt_info` under
    `model_info`, where Model API reads them; OpenVINO keeps all ONNX metadata, the
    `xai_graph.*` record included, under `rt_info/framework`.
    """
    import openvino as ov

    path = Path(path)
    if not is_ir(path):
        raise XaiGraphError(f"{path}: an OpenVINO IR path ends with .xml")
    if isinstance(model, ir.Model):
        check_writes_spare_reads([path, path.with_suffix(".bin")], model.meta.get(READS, []))
    with _staging(path, "OpenVINO IR") as staging:
        if isinstance(model, ir.Model):
            converted = ov.convert_model(str(save_model(model, staging / "model.onnx")))
            for key, value in model.metadata_props.items():
                if key.startswith("model_info "):
                    converted.set_rt_info(value, ["model_info", key.split(" ", 1)[1]])
        else:
            converted = model
        staged = staging / path.name
        ov.save_model(converted, str(staged), compress_to_fp16=compress_fp16)
        if verify:
            verify(staged)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    return path
