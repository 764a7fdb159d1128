"""Insert a saliency head: find the target, build the method's map, add the outputs.

The shared part of every head lives here: per-image per-class uint8 scaling,
the `saliency_map` / `feature_vector` outputs, metadata, and `--replace`.
"""

from __future__ import annotations

import json
import os
import warnings
import dataclasses
from dataclasses import asdict, dataclass

import onnx
import onnx_ir as ir

from xai_graph.version import __version__
from xai_graph.errors import XaiGraphError, option_text
from xai_graph.formats import is_ir
from xai_graph.graph.analysis import known_dim, shape_text, work_fraction
from xai_graph.graph.builder import NAME_PREFIX, GraphBuilder
from xai_graph.graph.io import to_ir, uses_external_data
from xai_graph.graph.openvino_ir import Mirror, make_batch_dynamic, read_ir
from xai_graph.graph.openvino_lowering import lower
from xai_graph.graph.opset import list_initializers_as_inputs, with_opset_at_least
from xai_graph.graph.subject import Subject, find_subject
from xai_graph.methods import SaliencyMethod, method_for
from xai_graph.methods.base import Saliency

SALIENCY_MAP = "saliency_map"
SALIENCY_CLASSES = "saliency_classes"
FEATURE_VECTOR = "feature_vector"
DETECTION_CLASS_SCORES = "detection_class_scores"
HEAD_OUTPUTS = (SALIENCY_MAP, SALIENCY_CLASSES, FEATURE_VECTOR, DETECTION_CLASS_SCORES)
_EPSILON = 1e-12


@dataclass(frozen=True)
class HeadRequest:
    """What `insert` is asked for beyond the method's own options: where, how, and what to record."""

    target_layer: str | None = None
    scores: str | None = None
    class_maps: list[str] | None = None
    num_anchors: list[int] | None = None
    num_classes: int | None = None
    raw: bool = False
    feature_vector: bool = False
    replace: bool = False
    metadata: dict[str, str] | None = None
    check: bool = True


def insert(
    model: ir.Model | onnx.ModelProto | str | os.PathLike,
    algo: str = "classwisesaliencymap",
    *,
    target_layer: str | None = None,
    scores: str | None = None,
    class_maps: list[str] | None = None,
    num_anchors: list[int] | None = None,
    num_classes: int | None = None,
    raw: bool = False,
    feature_vector: bool = False,
    replace: bool = False,
    metadata: dict[str, str] | None = None,
    check: bool = True,
    **method_options,
) -> ir.Model:
    """Return a copy of `model` with a `saliency_map` output (and `feature_vector` on request).

    The original outputs come first and are unchanged; `saliency_map` is uint8
    [B, K, h, w] for class-wise methods and [B, h, w] otherwise, scaled per image
    and per class to 0..255, or the raw float32 map with `raw=True`. `metadata`
    entries (labels, preprocessing) are added to the model's metadata.

    `method_options` are the chosen method's own (its `Options` dataclass; None means the default):
    `top_k` (class-wise methods: maps only for each image's k best classes, plus an int64 output
    `saliency_classes [B, k]`), Recipro-CAM's `mask`, `score`, `brute_force` (clone the whole tail even
    where the fused form applies), DetClassProbabilityMap's `det_score`, `map_size`, `background`.
    An option the method does not take is refused. `check=False` skips the ONNX checker on the
    in-memory result, for callers that save it with `save_model`, which checks the written file.

    Single-stage detectors are recognised by their per-level class maps (or named
    with `class_maps`, with `num_anchors` / `num_classes` where they cannot be inferred);
    `classwisesaliencymap` is then DetClassProbabilityMap. ViT-style classifiers get ViT Recipro-CAM.
    `scores` names the class-score output where the model has several score-shaped outputs (default:
    chosen by its role).
    """
    request = HeadRequest(
        target_layer=target_layer,
        scores=scores,
        class_maps=class_maps,
        num_anchors=num_anchors,
        num_classes=num_classes,
        raw=raw,
        feature_vector=feature_vector,
        replace=replace,
        metadata=metadata,
        check=check,
    )
    if is_ir(model):
        return _insert_openvino(model, algo, request, method_options)
    return _insert_into(to_ir(model), algo, request, method_options)


def _insert_openvino(model, algo: str, request: HeadRequest, method_options: dict):
    """`insert` on OpenVINO IR: the same analysis and recipes on the model's mirror, lowered back."""
    ov_model = read_ir(model) if isinstance(model, (str, os.PathLike)) else model.clone()
    if any(SALIENCY_MAP in port.get_names() for port in ov_model.outputs):
        raise XaiGraphError("the IR already has a saliency_map output; insert into the model without it")
    dynamic = make_batch_dynamic(ov_model)
    mirror = Mirror(ov_model)
    result = _insert_into(mirror.ir_model, algo, dataclasses.replace(request, check=False), method_options)
    metadata = dict(result.metadata_props)
    if not dynamic:
        metadata["xai_graph.batch"] = "static: OpenVINO could not make the batch dynamic"
        warnings.warn(
            "OpenVINO could not make this IR's batch dynamic: the head works at the model's own batch", stacklevel=3
        )
    return lower(mirror, metadata)


def head_summary(model) -> dict[str, str]:
    """What `insert` built, for one line of output: method, target, saliency_map shape and dtype."""
    if isinstance(model, ir.Model):
        saliency = next(o for o in model.graph.outputs if o.name == SALIENCY_MAP)
        return {
            "method": model.metadata_props["xai_graph.method"],
            "target": model.metadata_props["xai_graph.target"],
            "shape": shape_text(saliency),
            "dtype": saliency.dtype.name.lower(),
            "cost": model.metadata_props.get("xai_graph.cost", ""),
        }
    port = next(o for o in model.outputs if SALIENCY_MAP in o.get_names())
    keys = [
        key
        for key in ("xai_graph.method", "xai_graph.target", "xai_graph.cost")
        if model.has_rt_info(["xai_graph", key])
    ]
    record = {key: model.get_rt_info(["xai_graph", key]).astype(str) for key in keys}
    dims = ", ".join(str(d.get_length()) if d.is_static else "?" for d in port.get_partial_shape())
    return {
        "method": record["xai_graph.method"],
        "target": record["xai_graph.target"],
        "shape": f"[{dims}]",
        "cost": record.get("xai_graph.cost", ""),
        "dtype": {"u8": "uint8", "f32": "float"}.get(
            port.get_element_type().get_type_name(), port.get_element_type().get_type_name()
        ),
    }


def _insert_into(model: ir.Model, algo: str, request: HeadRequest, method_options: dict) -> ir.Model:
    """`insert` on an onnx-ir model, in place (a model older than opset 11 is converted first)."""
    model = with_opset_at_least(model)
    graph = model.graph
    if any(out.name in HEAD_OUTPUTS for out in graph.outputs):
        if not request.replace:
            raise XaiGraphError(
                f"the model already has a saliency_map output; pass {option_text('replace')} to rebuild it"
            )
        remove_head(model)
    target = find_subject(
        model,
        target_layer=request.target_layer,
        scores=request.scores,
        class_maps=request.class_maps,
        num_anchors=request.num_anchors,
        num_classes=request.num_classes,
        need_scores=method_for(algo, "classification").class_wise,
    )
    task = target.task
    method_class = method_for(algo, task)
    method = method_class(method_class.options_from(method_options))
    method.check(target)
    cost = rerun_cost(model, method, target)
    if cost is not None and cost.factor > MAX_COST and not getattr(method.options, "brute_force", False):
        why = getattr(target, "why_cloned", "") or "no cheaper form applies"
        raise XaiGraphError(
            f"{method.title} ({method.form(target)}) would {cost}: {why}; use "
            f"{option_text('algo', 'activationmap')} or eigencam, name a later map with "
            f"{option_text('target_layer', 'NAME')}, or pass {option_text('brute_force')} to accept it"
        )
    if request.feature_vector and task != "classification":
        raise XaiGraphError(f"{option_text('feature_vector')} is not available for {task} models yet")

    builder = GraphBuilder(graph, opset=model.opset_imports.get("", 1))
    built = method.build(builder, target)
    saliency = built.map if request.raw else scale_to_uint8(builder, built.map, class_wise=method.class_wise)
    map_dims = method.output_dims(target)
    _add_output(graph, saliency, SALIENCY_MAP, ir.DataType.FLOAT if request.raw else ir.DataType.UINT8, map_dims)
    if built.classes is not None:
        _add_output(graph, built.classes, SALIENCY_CLASSES, ir.DataType.INT64, [map_dims[0], method.options.top_k])
    if built.class_scores is not None:
        _add_output(graph, built.class_scores, DETECTION_CLASS_SCORES, ir.DataType.FLOAT, map_dims[:2])
    if request.feature_vector:
        layout = target.layout
        _add_output(
            graph,
            builder.reduce("ReduceMean", target.value, layout.position_axes, keepdims=False),
            FEATURE_VECTOR,
            ir.DataType.FLOAT,
            _dims(target.value, [0, layout.channel_axis]),
        )

    model.metadata_props.update(request.metadata or {})
    options_used = {**asdict(method.options), "raw": request.raw, "feature_vector": request.feature_vector}
    model.metadata_props.update(_record(algo, method, built, target, options_used))
    if cost is not None:
        model.metadata_props["xai_graph.cost"] = str(cost)
    _drop_unused_constants(graph)
    list_initializers_as_inputs(model)
    if request.check:
        _check(model)
    return model


MAX_COST = 3.0  # times the model's own cost, above which insert asks for --brute-force


@dataclass(frozen=True)
class RerunCost:
    """How much of the model a head re-runs once per map position."""

    fraction: float  # of the model's estimated multiply-adds
    positions: int

    @property
    def factor(self) -> float:
        return 1.0 + self.fraction * self.positions

    def __str__(self) -> str:
        share = (
            f"{100 * self.fraction:.0f}"
            if self.fraction >= 0.1
            else f"{100 * self.fraction:.1f}"
            if self.fraction >= 0.001
            else "<0.1"
        )
        return (
            f"re-run {share}% of the graph per position ({self.positions} positions), "
            f"about {self.factor:.1f}x the model's cost"
        )


def rerun_cost(model: ir.Model, method: SaliencyMethod, target) -> RerunCost | None:
    """The cost of the form `method` takes on `target`, where it re-runs a measurable part of the graph."""
    repeated = method.repeated_nodes(target)
    positions = method.positions(target) if repeated else None
    fraction = work_fraction(model.graph, repeated) if positions is not None else None
    return RerunCost(fraction, positions) if fraction is not None else None


def _drop_unused_constants(graph: ir.Graph) -> None:
    """Builders make shape constants eagerly; those no node ended up reading are removed."""
    for name in [n for n, v in graph.initializers.items() if n.startswith(NAME_PREFIX) and not v.uses()]:
        graph.initializers.pop(name)


def _record(algo: str, method: SaliencyMethod, built: Saliency, subject: Subject, options: dict) -> dict[str, str]:
    """What the rewrite did, for the model's metadata: the method, the values it read, the subject's own record."""
    return {
        "xai_graph.version": __version__,
        "xai_graph.algorithm": algo,
        "xai_graph.method": method.title + (f" ({built.form})" if built.form else ""),
        "xai_graph.task": subject.task,
        "xai_graph.target": ",".join(value.name for value in method.explained(subject)),
        **subject.record(),
        "xai_graph.options": json.dumps(options, sort_keys=True),
    }


def scale_to_uint8(b: GraphBuilder, saliency: ir.Value, class_wise: bool) -> ir.Value:
    """255 * (s - min) / (max - min + eps) per image and class over the map, rounded, as uint8."""
    flat = b.reshape(saliency, 0, 0, -1) if class_wise else b.reshape(saliency, 0, -1)  # [B, (K,) hw]
    low = b.reduce("ReduceMin", flat, [-1], keepdims=True)
    high = b.reduce("ReduceMax", flat, [-1], keepdims=True)
    # The factor is computed per map ([B, (K,) 1]), so the full-size work is one Sub and one Mul.
    factor = b.op("Div", b.scalar(255.0), b.op("Add", b.op("Sub", high, low), b.scalar(_EPSILON)))
    scaled = b.op("Mul", b.op("Sub", flat, low), factor)
    # 0 <= scaled <= 255 * span / (span + eps) (+ float rounding) < 255.5: rounding stays in range, no Clip.
    rounded = b.op("Round", scaled)
    return b.op("Reshape", b.op("Cast", rounded, to=ir.DataType.UINT8), b.op("Shape", saliency))


def _add_output(graph: ir.Graph, value: ir.Value, name: str, dtype: ir.DataType, dims: list) -> None:
    value.name = name
    value.dtype = dtype
    value.shape = ir.Shape(dims)
    graph.outputs.append(value)


def _dims(value: ir.Value, axes: list[int]) -> list:
    """Dims of `value` to declare on an output: static sizes and named symbols kept, others left unknown."""
    dims = list(value.shape) if value.shape is not None else [None] * 4
    return [known_dim(dims[a]) for a in axes]


def remove_head(model: ir.Model) -> None:
    """Remove outputs and nodes an earlier `insert` added (all named under `xai_graph/`)."""
    graph = model.graph
    for out in [o for o in graph.outputs if o.name in HEAD_OUTPUTS]:
        graph.outputs.remove(out)
    head_nodes = [node for node in graph if (node.name or "").startswith(NAME_PREFIX)]
    graph.remove(head_nodes, safe=False)
    for name in [n for n in graph.initializers if n.startswith(NAME_PREFIX)]:
        graph.initializers.pop(name)
    for key in [k for k in model.metadata_props if k.startswith("xai_graph.")]:
        del model.metadata_props[key]


def _check(model: ir.Model) -> None:
    """Run the ONNX checker on the result: onnx-ir's own passes only log failures."""
    proto = ir.serde.serialize_model(model)
    if uses_external_data(proto):
        return  # the checker cannot read relative data files from memory; save_model checks the file
    try:
        onnx.checker.check_model(proto)
    except ValueError:
        pass  # over 2 GB in memory: save_model checks the written file instead
    except onnx.checker.ValidationError as exc:
        raise XaiGraphError(f"internal error: the rewritten model is invalid ({str(exc).splitlines()[0]})") from None
