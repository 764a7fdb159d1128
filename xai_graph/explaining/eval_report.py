"""What `xai-graph eval` writes: each method's explain gallery, metrics.json, and a report page.

The page ranks the methods, then shows every image with each method's overlay and scores;
it is self-contained (relative links into the per-method galleries beside it), like `gallery.gallery_html`.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from xai_graph.explaining.annotations import Box, read_annotations
from xai_graph.errors import XaiGraphError
from xai_graph.explaining.evaluate import EvalSettings, MethodReport, evaluate, sanity_flag, summary_rows
from xai_graph.files import FolderLock, check_writes_spare_reads, files_read_by_model, write_atomically
from xai_graph.explaining.gallery import INDEX, JET_CSS, JET_LEGEND, ResultWriter, safe_name
from xai_graph.explaining.images import read_image

METRICS = "metrics.json"


def _cell(triple, digits: int = 3) -> str:
    mean, low, high = triple
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} <small>[{low:.{digits}f}, {high:.{digits}f}]</small>"


def _number(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _summary(rows: list[dict]) -> str:
    head = (
        "<tr><th>rank</th><th>method</th><th>pointing game</th><th>deletion AUC (lower is better)</th>"
        "<th>insertion AUC</th><th>ADCC</th><th>sanity: Spearman after 1..N layers re-drawn</th></tr>"
    )
    body = []
    for row in sorted(rows, key=lambda r: r["rank"]):
        pointing = f"{_cell(row['pointing_game'], 2)} (n={row['pointing_cases']})" if row["pointing_cases"] else "-"
        flag = sanity_flag(row)
        sanity = " / ".join(f"{v:.2f}" for v in row["sanity"]) or "-"
        body.append(
            f"<tr><td>{row['rank']}</td><td>{html.escape(row['method'])}</td><td>{pointing}</td>"
            f"<td>{_cell(row['deletion'])}</td><td>{_cell(row['insertion'])}</td><td>{_cell(row['adcc'])}</td>"
            f"<td>{sanity}{' <b>(!) ' + html.escape(flag) + '</b>' if flag else ''}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _scores_text(scores) -> str:
    if scores.error:
        return f"failed: {html.escape(scores.error)}"
    hits = ", ".join(f"{html.escape(k)}: {'hit' if v else 'miss'}" for k, v in scores.pointing.items())
    parts = [
        f"{html.escape(scores.label)} {scores.score:.2f}",
        f"deletion {_number(scores.deletion)}",
        f"insertion {_number(scores.insertion)}",
        f"ADCC {_number(scores.adcc)}",
    ]
    if hits:
        parts.append(f"pointing: {hits}")
    if scores.sanity:
        parts.append("sanity " + " / ".join(f"{v:.2f}" for v in scores.sanity))
    return "<br>".join(parts)


def eval_html(title: str, rows: list[dict], reports: list[MethodReport], overlays: dict[str, dict[str, str]]) -> str:
    """`overlays[algo][image path]`: the overlay's path relative to the page."""
    evaluated = [r for r in reports if not r.skipped]
    skipped = "".join(f"<li>{html.escape(r.algo)}: {html.escape(r.skipped)}</li>" for r in reports if r.skipped)
    images = [s.image for s in evaluated[0].images] if evaluated else []
    sections = []
    for index, image in enumerate(images):
        figures = []
        for report in evaluated:
            scores = report.images[index]
            src = overlays.get(report.algo, {}).get(image)
            picture = f'<img src="{html.escape(src)}" alt="{html.escape(src)}" loading="lazy">' if src else ""
            figures.append(
                f"<figure>{picture}<figcaption><b>{html.escape(report.method)}</b><br>"
                f"{_scores_text(scores)}</figcaption></figure>"
            )
        name = html.escape(image.rsplit("/", 1)[-1])
        sections.append(f"<section><h2>{name}</h2><div class=figs>{''.join(figures)}</div></section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
table {{ border-collapse: collapse; background: white; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; font-size: 0.9em; }}
section {{ background: white; border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin-bottom: 1em; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
figure {{ margin: 0; }} img {{ max-width: 300px; max-height: 300px; display: block; }}
figcaption {{ font-size: 0.75em; color: #444; }}
{JET_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each method explains the model's top-1 class. Pointing game: the map's maximum inside an annotated box.
Deletion / insertion: the class probability as the most salient pixels are removed / restored (area under the
curve). ADCC: harmonic mean of coherency, 1 - complexity and 1 - average drop. Sanity: a method whose maps stay
alike when the model's last layers are re-drawn (Spearman close to 1) does not explain the model.
Intervals: 95% for the mean over images.</p>
{_summary(rows)}
{f"<p>Not evaluated:</p><ul>{skipped}</ul>" if skipped else ""}
{JET_LEGEND}
{"".join(sections)}
</body></html>
"""


def write_evaluation(
    model: Path,
    paths: list[Path],
    outdir: Path,
    algos: list[str],
    settings: EvalSettings,
    boxes: dict[str, list[Box]] | None = None,
    progress=None,
) -> tuple[list[dict], Path]:
    """Evaluate, write each method's explain gallery into OUTDIR/<algo>/, then metrics.json and index.html.

    Returns the summary rows and the report page."""
    protected = [*files_read_by_model(model), *paths]
    outdir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, ResultWriter] = {}

    def render(algo, path, image, explanation, input_size):
        if algo not in writers:
            writers[algo] = ResultWriter(outdir / safe_name(algo), overwrite=True, protected=protected)
        writers[algo].add(path, image, explanation, input_size)

    with FolderLock(outdir):
        try:
            reports = evaluate(model, paths, algos, settings, boxes, progress, render)
        finally:
            for algo, writer in writers.items():
                writer.finish({"model": str(model), "algorithm": algo, "runtime": settings.runtime})
                writer.close()
        overlays = {
            algo: {
                image: f"{safe_name(algo)}/{name}"
                for image, record in writer.records.items()
                for name in record["files"]
                if "_overlay." in name
            }
            for algo, writer in writers.items()
        }
        rows = summary_rows(reports)
        metrics_json = {
            "model": str(model),
            "settings": asdict(settings),
            "summary": rows,
            "methods": [r.to_dict() for r in reports],
        }
        check_writes_spare_reads([outdir / METRICS, outdir / INDEX], protected)
        write_atomically(outdir / METRICS, json.dumps(metrics_json, indent=2, default=_json_number).encode())
        title = f"xai-graph eval: {model.name}"
        index = write_atomically(outdir / INDEX, eval_html(title, rows, reports, overlays).encode())
    return rows, index


def _json_number(value):
    return float(value) if isinstance(value, np.floating) else str(value)


def read_boxes(path: Path, images: list[Path]) -> dict[str, list[Box]]:
    """Annotations for `images`; YOLO files give boxes relative to the image size, read from the images."""
    by_name = {p.name: p for p in images} | {p.stem: p for p in images}

    def size(key: str) -> tuple[int, int]:
        image = by_name.get(key) or by_name.get(Path(key).stem)
        if image is None:
            raise XaiGraphError(f"{path}: annotations for {key!r}, which is not among the images")
        height, width = read_image(image).shape[:2]
        return width, height

    return read_annotations(path, image_sizes=size)
