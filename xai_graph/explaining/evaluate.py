"""`xai-graph eval`: how good a model's saliency maps are, measured in the runtime the model deploys to.

For each method and image the explained class is the model's top-1; its map is scored by
- the pointing game on annotated boxes (each annotated class among the model's top-k),
- deletion and insertion AUC (RISE), the perturbed copies run in batches through the model
  without its head (the plain model where it was instrumented here),
- ADCC (average drop, coherency, complexity) with the map-weighted image as the explanation,
- the sanity check: Spearman correlation of the map with the map of a copy of the model whose
  last 1, 2, ... weighted layers were re-drawn (cascading randomisation).
The definitions are in `xai_graph.metrics`; this module only runs the model and collects.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

import xai_graph.metrics as metrics
from xai_graph.explaining.annotations import Box, match_image, match_labels
from xai_graph.errors import XaiGraphError
from xai_graph.explaining.explainer import Explainer, Explanation
from xai_graph.files import TEMP_PREFIX, scratch_folder
from xai_graph.graph.io import load_model, save_model
from xai_graph.graph.randomize import randomize_last_layers
from xai_graph.head import SALIENCY_MAP, insert
from xai_graph.explaining.images import read_image
from xai_graph.explaining.render import map_to_image
from xai_graph.runtime import open_model

__all__ = ["EvalSettings", "ImageScores", "MethodReport", "evaluate", "sanity_flag", "summary_rows"]

POINTING_TOP_K = 5  # an annotated class counts when it is among the model's five best


@dataclass(frozen=True)
class EvalSettings:
    steps: int = 32
    baseline: str = "blur"
    tolerance: float = 0.0  # pixels, for the pointing game
    sanity_layers: int = 3
    runtime: str = "onnxruntime"


@dataclass
class ImageScores:
    """One image under one method."""

    image: str
    class_id: int
    label: str
    score: float
    pointing: dict[str, bool] = field(default_factory=dict)  # annotated label -> hit
    deletion: float = float("nan")
    insertion: float = float("nan")
    average_drop: float = float("nan")
    coherency: float = float("nan")
    complexity: float = float("nan")
    adcc: float = float("nan")
    sanity: list[float] = field(default_factory=list)  # Spearman with the map after 1, 2, ... layers re-drawn
    error: str | None = None


@dataclass
class MethodReport:
    algo: str
    method: str
    images: list[ImageScores]
    skipped: str | None = None  # why the method does not apply to this model

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Prepared:
    path: Path
    image: np.ndarray
    fitted: np.ndarray  # at the model's input size, BGR
    explanation: Explanation


Render = Callable[[str, Path, np.ndarray, Explanation, tuple[int, int]], None]


def evaluate(
    model: str | Path,
    paths: Sequence[Path],
    algos: Sequence[str],
    settings: EvalSettings = EvalSettings(),
    boxes: dict[str, list[Box]] | None = None,
    progress: Callable[[int], None] | None = None,
    render: Render | None = None,
) -> list[MethodReport]:
    """Score every method on every image; a method that does not apply is reported as skipped.

    `render(algo, path, image, explanation, input_size)`, if given, receives each explained image (to write
    its overlay)."""
    reports = []
    for algo in algos:
        try:
            reports.append(_evaluate_method(Path(model), paths, algo, settings, boxes or {}, progress, render))
        except XaiGraphError as exc:
            reports.append(MethodReport(algo, algo, [], skipped=str(exc)))
    return reports


def _evaluate_method(model: Path, paths, algo, settings, boxes, progress, render) -> MethodReport:
    with Explainer(
        model, runtime=settings.runtime, algo=algo, raw=True, full_head=True, top_k=POINTING_TOP_K
    ) as explainer:
        if explainer.task == "detection":
            raise XaiGraphError("eval is for classifiers; detectors are not supported yet")
        plain = open_model(model, settings.runtime) if explainer.instrumented_here else explainer.session
        scores: list[ImageScores] = []
        prepared: list[_Prepared] = []
        for path in paths:
            try:
                item = _prepare(explainer, path)
                scores.append(_score_image(explainer, plain, item, settings, boxes))
                prepared.append(item)
                if render:
                    render(algo, path, item.image, item.explanation, explainer.input_size)
            except XaiGraphError as exc:
                scores.append(ImageScores(str(path), -1, "", 0.0, error=str(exc)))
            if progress:
                progress(1)
        method = explainer.metadata.get("xai_graph.method", algo)
    _sanity(model, algo, settings, prepared, [s for s in scores if s.error is None])
    return MethodReport(algo, method, scores)


def _prepare(explainer: Explainer, path: Path) -> _Prepared:
    image = read_image(path)
    fitted, placement = explainer.preprocessing.fit(image)
    output = explainer.run([explainer.preprocessing.to_tensor(fitted)])[0]
    return _Prepared(path, image, fitted, explainer.describe(output, placement, image.shape))


def _input_map(explainer: Explainer, explanation: Explanation, class_id: int) -> np.ndarray:
    """The class's map at the model's input size (float32), bilinear as the map is rendered."""
    return cv2.resize(
        explanation.map_for(class_id).astype(np.float32), explainer.input_size, interpolation=cv2.INTER_LINEAR
    )


def _score_image(
    explainer: Explainer, plain, item: _Prepared, settings: EvalSettings, boxes: dict[str, list[Box]]
) -> ImageScores:
    explanation = item.explanation
    best = explanation.top[0]
    result = ImageScores(str(item.path), best.id, best.label, best.score)
    result.pointing = _pointing(explainer, item, boxes, settings.tolerance)
    saliency = _input_map(explainer, explanation, best.id)
    result.deletion, result.insertion = _curves(explainer, plain, item, saliency, settings, best)
    _adcc(explainer, item, saliency, result)
    return result


def _curves(
    explainer: Explainer, plain, item: _Prepared, saliency: np.ndarray, settings: EvalSettings, best
) -> tuple[float, float]:
    """Deletion and insertion AUC. The curves share their ends (the image, whose score the explain run gave,
    and the baseline), so 2 * steps - 1 perturbed copies run, not 2 * (steps + 1)."""
    baseline = metrics.baseline_image(item.fitted, settings.baseline)
    deleting = metrics.perturbed_batch(item.fitted, baseline, saliency, settings.steps, "deletion")
    inserting = metrics.perturbed_batch(item.fitted, baseline, saliency, settings.steps, "insertion")
    scores = _class_probabilities(explainer, plain, np.concatenate([deleting[1:], inserting[1:-1]]), best.id)
    deletion = [best.score, *scores[: settings.steps]]  # ends with the baseline's score
    insertion = [deletion[-1], *scores[settings.steps :], best.score]
    return metrics.auc(deletion), metrics.auc(insertion)


def _pointing(explainer: Explainer, item: _Prepared, boxes, tolerance: float) -> dict[str, bool]:
    annotated = match_image(boxes, item.path)
    if not annotated:
        return {}
    ids = match_labels({b.label for b in annotated}, explainer.info.labels)
    top = {c.id for c in item.explanation.top[:POINTING_TOP_K]}
    hits = {}
    height, width = item.image.shape[:2]
    for label, class_id in ids.items():
        if class_id not in top:
            continue  # the model does not see this class here: nothing to point at
        on_image, inside = map_to_image(
            item.explanation.map_for(class_id),
            item.explanation.placement,
            explainer.input_size,
            item.image.shape,
            (width, height),
        )
        on_image[~inside] = on_image.min()  # outside a centre crop the model saw nothing
        label_boxes = [(b.x1, b.y1, b.x2, b.y2) for b in annotated if b.label == label]
        hits[label] = metrics.pointing_game(on_image, label_boxes, tolerance)
    return hits


def _adcc(explainer: Explainer, item: _Prepared, saliency: np.ndarray, result: ImageScores) -> None:
    explanation_image = metrics.explanation_only(item.fitted, saliency)
    output = explainer.run([explainer.preprocessing.to_tensor(explanation_image)])[0]
    again = explainer.describe(output, item.explanation.placement, item.image.shape)
    dropped = float(explainer.probabilities(output.scores)[result.class_id])
    result.average_drop = metrics.average_drop(result.score, dropped)
    result.coherency = metrics.coherency(saliency, _input_map(explainer, again, result.class_id))
    result.complexity = metrics.complexity(saliency)
    result.adcc = metrics.adcc(result.average_drop, result.coherency, result.complexity)


def _class_probabilities(explainer: Explainer, session, images: np.ndarray, class_id: int) -> list[float]:
    """The class's probability on each image, run in batches the model takes (padded for a static batch)."""
    tensors = [explainer.preprocessing.to_tensor(image) for image in images]
    step = explainer.max_batch or 16
    found = []
    for start in range(0, len(tensors), step):
        chunk = tensors[start : start + step]
        batch = np.stack(chunk + [chunk[-1]] * ((explainer.max_batch or len(chunk)) - len(chunk)))
        scores = session({explainer.input_name: batch})[explainer.scores_name]
        scores = scores.reshape(len(scores), -1)[: len(chunk)]
        found += [float(explainer.probabilities(s)[class_id]) for s in scores]
    return found


def _sanity(
    model: Path, algo: str, settings: EvalSettings, prepared: list[_Prepared], scores: list[ImageScores]
) -> None:
    """Spearman between each map and the map of copies with the last 1..N weighted layers re-drawn."""
    if not prepared or settings.sanity_layers < 1:
        return
    with scratch_folder(Path(tempfile.gettempdir()), TEMP_PREFIX) as folder:
        for layers in range(1, settings.sanity_layers + 1):
            copy = _plain_model(model)
            try:
                randomize_last_layers(copy, layers)
            except XaiGraphError:
                return  # fewer weighted layers than asked: the check stops there
            path = save_model(insert(copy, algo, raw=True, check=False), folder / f"random_{layers}.onnx")
            with Explainer(path, runtime=settings.runtime, top_k=POINTING_TOP_K) as randomized:
                for item, result in zip(prepared, scores):
                    tensor = randomized.preprocessing.to_tensor(item.fitted)
                    output = randomized.run([tensor])[0]
                    again = randomized.describe(output, item.explanation.placement, item.image.shape)
                    original = item.explanation.map_for(result.class_id)
                    result.sanity.append(metrics.spearman(original, again.map_for(result.class_id)))


def _plain_model(model: Path):
    """The model without a head (an instrumented model's head removed), as onnx-ir, ready to edit."""
    loaded = load_model(model)
    if any(o.name == SALIENCY_MAP for o in loaded.graph.outputs):
        from xai_graph.head import remove_head

        remove_head(loaded)
    return loaded


def summary_rows(reports: list[MethodReport]) -> list[dict]:
    """Per method: mean and 95% interval of each metric over images, and the rank (mean rank over metrics)."""
    rows = []
    for report in reports:
        if report.skipped:
            continue
        good = [s for s in report.images if s.error is None]
        hits = [float(h) for s in good for h in s.pointing.values()]
        row = {
            "algo": report.algo,
            "method": report.method,
            "images": len(good),
            "pointing_game": _within_unit(metrics.mean_interval(hits)),
            "pointing_cases": len(hits),
        }
        for name in ("deletion", "insertion", "average_drop", "coherency", "complexity", "adcc"):
            row[name] = _within_unit(metrics.mean_interval([getattr(s, name) for s in good]))
        depth = max((len(s.sanity) for s in good), default=0)
        row["sanity"] = [
            metrics.mean_interval([s.sanity[i] for s in good if len(s.sanity) > i])[0] for i in range(depth)
        ]
        rows.append(row)
    _rank(rows)
    return rows


def _within_unit(triple: tuple[float, float, float]) -> tuple[float, float, float]:
    """Every metric here lies in [0, 1]: so does its interval (a t-interval on few images can overshoot)."""
    mean, low, high = triple
    return mean, max(0.0, low), min(1.0, high)


_BETTER_HIGH = {"pointing_game": True, "deletion": False, "insertion": True, "adcc": True}


def _rank(rows: list[dict]) -> None:
    """Rank 1 = best mean rank over pointing game, deletion (lower is better), insertion and ADCC."""
    totals = {id(r): 0.0 for r in rows}
    for name, high in _BETTER_HIGH.items():
        valued = [r for r in rows if not np.isnan(r[name][0])]
        for place, row in enumerate(sorted(valued, key=lambda r: -r[name][0] if high else r[name][0])):
            totals[id(row)] += place
        for row in rows:
            if row not in valued:
                totals[id(row)] += len(rows)  # a metric a method could not be scored on counts as last
    for place, row in enumerate(sorted(rows, key=lambda r: totals[id(r)]), start=1):
        row["rank"] = place


def sanity_flag(row: dict, threshold: float = 0.5) -> str:
    """'' when the maps change with the weights; a warning when even the deepest randomisation leaves them alike."""
    if row["sanity"] and row["sanity"][-1] > threshold:
        return (
            f"maps barely depend on the weights (Spearman {row['sanity'][-1]:.2f} after re-drawing the last "
            f"{len(row['sanity'])} layers)"
        )
    return ""


def format_table(rows: list[dict]) -> str:
    """The console table: mean [95% interval] per metric, best rank first."""

    def cell(triple, digits=3):
        mean, low, high = triple
        return "-" if np.isnan(mean) else f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    width = max([24, *(len(r["method"]) + 2 for r in rows)])
    lines = [
        f"{'rank':<5}{'method':<{width}}{'pointing game':<26}{'deletion (lower better)':<26}"
        f"{'insertion':<26}{'ADCC':<26}sanity (Spearman, 1..N layers re-drawn)"
    ]
    for row in sorted(rows, key=lambda r: r["rank"]):
        pointing = f"{cell(row['pointing_game'], 2)} n={row['pointing_cases']}" if row["pointing_cases"] else "-"
        sanity = " / ".join(f"{v:.2f}" for v in row["sanity"]) or "-"
        flag = sanity_flag(row)
        lines.append(
            f"{row['rank']:<5}{row['method']:<{width}}{pointing:<26}{cell(row['deletion']):<26}"
            f"{cell(row['insertion']):<26}{cell(row['adcc']):<26}{sanity}{'  (!) ' + flag if flag else ''}"
        )
    return "\n".join(lines)
