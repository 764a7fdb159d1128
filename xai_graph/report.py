"""`inspect`: what a model looks like to xai-graph, as plain data."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field

import onnx_ir as ir

from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import shape_text
from xai_graph.graph.opset import MIN_OPSET, with_opset_at_least
from xai_graph.graph.detection import DetectorClassMaps
from xai_graph.graph.model_file import ModelFile
from xai_graph.graph.subject import find_subject
from xai_graph.graph.transformer import TransformerBlock
from xai_graph.head import MAX_COST, rerun_cost
from xai_graph.methods import methods_for_task


@dataclass
class ModelReport:
    path: str
    opset: int  # 0 for OpenVINO IR
    inputs: list[dict]
    outputs: list[dict]
    metadata: dict[str, str]
    scores: str | None = None
    final_activation: str | None = None
    pools: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    target: str | None = None
    target_shape: str | None = None
    reason: str | None = None
    algorithms: dict[str, str] = field(default_factory=dict)  # algo -> "yes" or why not
    task: str = "classification"
    detector_levels: list[dict] = field(default_factory=list)  # detectors: class map, anchors per level

    def to_dict(self) -> dict:
        return asdict(self)


def _describe_value(v: ir.Value) -> dict:
    return {"name": v.name, "shape": shape_text(v), "dtype": v.dtype.name if v.dtype is not None else "?"}


def describe(
    path: str | os.PathLike,
    target_layer: str | None = None,
    class_maps: list[str] | None = None,
    scores: str | None = None,
) -> ModelReport:
    model_file = ModelFile(path)
    model = model_file.graph
    graph = model.graph
    report = ModelReport(
        path=str(path),
        opset=model_file.opset or 0,
        inputs=[_describe_value(v) for v in graph.inputs if not v.is_initializer()],
        outputs=[_describe_value(v) for v in graph.outputs],
        metadata=dict(model.metadata_props),
    )
    try:  # insert raises an old opset first: where that fails, so does every method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = with_opset_at_least(model)
    except XaiGraphError as exc:
        report.reason = str(exc)
        report.algorithms = {cls.algo: f"no: {exc}" for cls in methods_for_task("classification")}
        return report
    try:
        subject = find_subject(model, target_layer=target_layer, scores=scores, class_maps=class_maps)
    except XaiGraphError as exc:
        report.reason = str(exc)
        report.algorithms = {cls.algo: "no: no target map" for cls in methods_for_task("classification")}
        return report
    task = subject.task
    if task == "detection":
        return _detector_report(report, subject)
    if task == "transformer":
        return _transformer_report(report, model, subject)
    target = subject
    report.scores = target.scores.name
    report.final_activation = target.final_activation
    report.pools = [
        {
            "node": p.node.name,
            "op": p.node.op_type,
            "input": p.input.name,
            "shape": shape_text(p.input),
            "role": "classifier" if p.feeds_scores else "side (squeeze-excitation)",
        }
        for p in target.pools
    ]
    report.candidates = [_describe_value(v) for v in target.candidates]
    report.target, report.target_shape, report.reason = target.value.name, shape_text(target.value), target.reason
    for cls in methods_for_task("classification"):
        try:
            method = cls()
            method.check(target)
            report.algorithms[cls.algo] = _verdict(model, method, target, method.form(target))
        except XaiGraphError as exc:
            report.algorithms[cls.algo] = f"no: {exc}"
    return report


def _detector_report(report: ModelReport, detector: DetectorClassMaps) -> ModelReport:
    report.task, report.reason = "detection", detector.reason
    report.scores, report.final_activation = ", ".join(o.name for o in detector.outputs), detector.activation
    report.detector_levels = [
        {
            "value": lv.value.name,
            "shape": shape_text(lv.value),
            "anchors": lv.anchors,
            "classes": detector.num_classes,
            "layout": lv.layout,
        }
        for lv in detector.levels
    ]
    report.target = detector.middle.value.name
    report.target_shape = shape_text(detector.middle.value)
    detection_methods = {m.algo: m for m in methods_for_task("detection")}
    for cls in methods_for_task("classification"):
        report.algorithms[cls.algo] = (
            f"yes ({detection_methods[cls.algo].title})" if cls.algo in detection_methods else "not for detectors yet"
        )
    return report


def _transformer_report(report: ModelReport, model: ir.Model, block: TransformerBlock) -> ModelReport:
    report.task, report.reason = "transformer", block.reason
    report.scores, report.final_activation = block.scores.name, block.final_activation
    report.target, report.target_shape = block.tokens.name, shape_text(block.tokens)
    transformer_methods = {m.algo: m() for m in methods_for_task("transformer")}
    for cls in methods_for_task("classification"):
        method = transformer_methods.get(cls.algo)
        form = method.form(block) if method else ""
        why = f"; {block.why_cloned}" if form == "cloned block" and block.why_cloned else ""
        report.algorithms[cls.algo] = (
            _verdict(model, method, block, f"{method.title}{', ' + form if form else ''}{why}")
            if method
            else "not for transformers yet"
        )
    return report


def _verdict(model: ir.Model, method, target, form: str) -> str:
    """What `insert` would do with this method: its form and cost, or why it asks for --brute-force."""
    cost = rerun_cost(model, method, target)
    detail = "; ".join(part for part in (form, str(cost) if cost else "") if part)
    if cost is not None and cost.factor > MAX_COST:
        return f"only with --brute-force ({detail})"
    return f"yes ({detail})" if detail else "yes"


def format_report(report: ModelReport) -> str:
    """`inspect`'s text: one line per fact, a fixed-width key first."""
    opset = f"opset {report.opset}" + (f", insert raises it to {MIN_OPSET}" if report.opset < MIN_OPSET else "")
    lines = [f"model   {report.path} ({opset if report.opset else 'OpenVINO IR'})"]
    for kind, values in (("input ", report.inputs), ("output", report.outputs)):
        lines += [f"{kind}  {v['name']} {v['shape']} {v['dtype']}" for v in values]
    for key, value in report.metadata.items():
        value = value.replace("\n", "\\n")
        lines.append(f"meta    {key} = {value if len(value) < 60 else value[:57] + '...'}")
    if report.scores:
        act = f" (after {report.final_activation})" if report.final_activation else ""
        lines.append(f"scores  {report.scores}{act}")
    lines += [f"pool    {p['op']} '{p['node']}' on {p['input']} {p['shape']}: {p['role']}" for p in report.pools]
    lines += [f"level   {lv['value']} {lv['shape']}: {lv['layout']}" for lv in report.detector_levels]
    lines += [f"map   {'*' if c['name'] == report.target else ' '} {c['name']} {c['shape']}" for c in report.candidates]
    lines.append(_task_line(report))
    lines += [f"algo    {algo}: {verdict}" for algo, verdict in report.algorithms.items()]
    return "\n".join(lines)


def _task_line(report: ModelReport) -> str:
    if report.task == "detection":
        return f"task    detection: {report.reason}; maps sized as the middle level {report.target_shape}"
    if report.task == "transformer":
        return f"task    transformer: target {report.target} {report.target_shape}, {report.reason}"
    if report.target:
        return f"target  {report.target} {report.target_shape}: {report.reason}"
    return f"target  none: {report.reason}"
