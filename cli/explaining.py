"""The explanation commands: `explain` (images -> maps, overlays, gallery) and `eval` (how good the maps are)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

import xai_graph
from xai_graph.errors import XaiGraphError
from xai_graph.explaining.eval_report import read_boxes, write_evaluation
from xai_graph.explaining.evaluate import EvalSettings, format_table as format_eval_table
from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.engines import ENGINES, OUTPUT_FORMATS, check_engine_options, explain_sources, open_results
from xai_graph.explaining.gallery import DEFAULT_IMAGE_FORMAT, IMAGE_FORMATS
from xai_graph.explaining.images import find_images
from xai_graph.explaining.sources import PATH_COLUMN, gather_sources
from xai_graph.explaining.preprocess import RESIZE_TYPES, parse_triple
from xai_graph.files import files_read_by_model, read_small_text
from xai_graph.metrics import BASELINES
from xai_graph.runtime import RUNTIMES

from xai_graph.cli.options import size_option

MANY_CLASSES = 20  # --classes all above this many classes asks for --yes


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-i", "--input", "inputs", multiple=True, help="Image, folder (recursive) or glob; repeatable.")
@click.option(
    "--list",
    "lists",
    multiple=True,
    help="Path list: a text file (one path or URI per line) or a Parquet "
    "file with a column of paths; a local file or a URI; repeatable.",
)
@click.option("--list-column", default=PATH_COLUMN, show_default=True, help="The column of paths in Parquet lists.")
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: threads in this process; ray: a Ray Data actor pool (pip install 'xai-graph[ray]').",
)
@click.option(
    "--ray-address",
    help="--engine ray: the cluster (HOST:PORT, ray://HOST:PORT or auto); default: a Ray started in this process.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 4096),
    help="--engine ray: actors, each with its own model session (default: one per node).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    default="files",
    show_default=True,
    help="files: maps, overlays, predictions.json, index.html; parquet: one row per image with the "
    "predictions and the maps as uint8 arrays.",
)
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device name.")
@click.option(
    "--precision",
    type=click.Choice(["f32", "bf16", "f16"]),
    default="f32",
    show_default=True,
    help="OpenVINO inference precision (its CPU default would be bf16 on recent CPUs).",
)
@click.option(
    "--algo",
    type=click.Choice(xai_graph.algorithms()),
    help="Used when MODEL has no saliency_map yet (it is then instrumented on the fly).",
)
@click.option(
    "--classes",
    default="predicted",
    show_default=True,
    help="Maps to render: 'predicted' (top-1, or those over 0.5 for multi-label), 'all', or ids/labels "
    "separated by commas.",
)
@click.option("--yes", is_flag=True, help="Go ahead with --classes all on a model with many classes.")
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help="Text file, one class name per line (overrides the labels the model records).",
)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1), help="Predictions listed per image.")
@click.option(
    "--overlay-alpha",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Weight of the map in the overlay: image * (1 - A) + map * A.",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Also write each map as .npy, as the head outputs it (float32 from a --raw "
    "head, uint8 otherwise); instrumenting on the fly, build a float32 head.",
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--size", help="Input size WxH, for models whose input size is dynamic.")
@click.option("--mean", help="Mean per channel (overrides the model's metadata).")
@click.option("--std", help="Scale per channel: input = (pixel - mean) / std.")
@click.option("--bgr/--rgb", default=None, help="Channel order the model takes.")
@click.option("--resize", type=click.Choice(RESIZE_TYPES), help="How images are fitted to the input.")
@click.option(
    "--box-threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Detectors with final detections: the score from which boxes are drawn and their classes rendered.",
)
@click.option(
    "--image-format",
    type=click.Choice(IMAGE_FORMATS),
    default=DEFAULT_IMAGE_FORMAT,
    show_default=True,
    help="Format of the overlays (png: lossless, about 8 times slower to encode); maps are always "
    "8-bit grayscale PNGs at their own resolution.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Explain every image again, replacing the files of an earlier run "
    "(without it, images an earlier run explained, unchanged since, are skipped).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def explain(
    model,
    inputs,
    lists,
    list_column,
    outdir,
    engine,
    ray_address,
    workers,
    output_format,
    runtime,
    device,
    precision,
    algo,
    classes,
    yes,
    labels,
    top_k,
    overlay_alpha,
    raw,
    batch_size,
    size,
    mean,
    std,
    bgr,
    resize,
    box_threshold,
    image_format,
    overwrite,
    quiet,
):
    """Explain images with MODEL (.onnx, or an instrumented OpenVINO .xml): a saliency map and an overlay per
    image and class, predictions.json and index.html in OUTDIR. Exit code 3 when some images failed (they are
    listed in predictions.json)."""
    if not inputs and not lists:
        raise XaiGraphError("name the images with -i (image, folder, glob) or --list (a path list)")
    sources = gather_sources(list(inputs), list(lists), list_column)
    check_engine_options(engine, sources, ray_address, workers)
    model_files = files_read_by_model(model)
    overrides = {
        "mean": parse_triple(mean) if mean else None,
        "scale": parse_triple(std) if std else None,
        "rgb": None if bgr is None else not bgr,
        "resize": resize,
    }
    label_list = [x.strip() for x in read_small_text(labels).splitlines() if x.strip()] if labels else None
    options = {
        "model": model,
        "runtime": runtime,
        "device": device,
        "algo": algo,
        "classes": classes,
        "top_k": top_k,
        "raw": raw,
        "size": size_option(size),
        "box_threshold": box_threshold,
        "precision": precision,
        "labels": label_list,
        **overrides,
    }
    with contextlib.ExitStack() as stack:
        explainer = stack.enter_context(Explainer(**options))
        _check_and_note(explainer, model, classes, yes, len(sources))
        if engine == "ray":  # before the output folder exists: a cluster that cannot be reached leaves nothing
            from xai_graph.explaining.ray_engine import ray_session

            stack.enter_context(ray_session(ray_address))
        writer = stack.enter_context(
            open_results(
                outdir,
                output_format,
                explainer,
                overwrite=overwrite,
                alpha=overlay_alpha,
                raw=raw,
                image_format=image_format,
                protected=[*model_files, *sources],
            )
        )
        todo, skipped = writer.plan(sources)
        if skipped:
            click.echo(
                f"note: skipped {skipped} already explained (unchanged since; --overwrite redoes them)", err=True
            )
        show_bar = not quiet and len(todo) > 3
        bar = click.progressbar(length=len(todo), label="explaining", file=sys.stderr) if show_bar else None
        with bar or contextlib.nullcontext():
            summary = explain_sources(
                engine,
                explainer,
                options,
                todo,
                writer,
                output_format=output_format,
                batch_size=batch_size,
                workers=workers,
                progress=bar.update if bar else None,
            )
    _report(summary, skipped, output_format)


def _report(summary, skipped: int, output_format: str) -> None:
    """The run's last lines; exit 3 when some images failed."""
    where = f"Parquet parts in {summary.index}" if output_format == "parquet" else f"open {summary.index}"
    if summary.images or not skipped:
        click.echo(
            f"{summary.images - summary.failed}/{summary.images} images explained "
            f"({summary.images_per_second:.1f} images/s); {where}"
        )
    else:
        click.echo(f"nothing left to explain; {where}")
    if summary.not_rendered:
        missing = ", ".join(f"{label} ({count} images)" for label, count in summary.not_rendered.items())
        click.echo(
            f"note: no map for {missing}: the model's head keeps maps for each image's best classes only "
            "(not_rendered in predictions.json); insert it with --classes all for every class",
            err=True,
        )
    if summary.failed:
        click.echo(f"{summary.failed} failed: see {summary.predictions}", err=True)
        sys.exit(3)


def _check_and_note(explainer: Explainer, model: Path, classes: str, yes: bool, images: int) -> None:
    """Refuse --classes all on many classes without --yes; say what was instrumented or assumed."""
    many = explainer.num_classes or 0
    if classes == "all" and many > MANY_CLASSES and not yes:
        files = 2 * many * images
        raise XaiGraphError(
            f"--classes all writes {many} maps and {many} overlays per image ({files} files "
            "here); pass --yes to go ahead, or name the classes with --classes"
        )
    if explainer.instrumented_here:
        click.echo(f"{model} has no saliency_map: instrumented on the fly with {explainer.algo}", err=True)
    if explainer.defaulted:
        used = explainer.preprocessing
        click.echo(
            f"note: the model records no {' or '.join(explainer.defaulted)}: using mean {used.mean}, "
            f"scale {used.scale}, {'RGB' if used.rgb else 'BGR'}, {used.resize} resize to "
            f"{used.width}x{used.height}; pass --mean/--std/--bgr if the model expects otherwise "
            "(recorded in predictions.json)",
            err=True,
        )


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-i", "--input", "inputs", multiple=True, required=True, help="Image, folder (recursive) or glob; repeatable."
)
@click.option("-o", "--output", "outdir", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--boxes",
    type=click.Path(exists=True, path_type=Path),
    help="Annotations for the pointing game: COCO JSON, Pascal VOC XML (file or folder) or a YOLO folder "
    "(.txt per image and classes.txt); matched to the images by file name.",
)
@click.option(
    "--algo",
    "algos",
    multiple=True,
    type=click.Choice([*xai_graph.algorithms(), "all"]),
    default=["all"],
    show_default=True,
    help="Methods to compare (repeatable).",
)
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
@click.option(
    "--steps",
    default=32,
    show_default=True,
    type=click.IntRange(2, 1024),
    help="Insertion/deletion: equal steps from the image to the baseline.",
)
@click.option(
    "--baseline",
    type=click.Choice(BASELINES),
    default="blur",
    show_default=True,
    help="What deleted pixels become (and insertion starts from).",
)
@click.option(
    "--tolerance",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Pointing game: pixels around each box that still count as a hit.",
)
@click.option(
    "--sanity-layers",
    default=3,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Sanity check: re-draw the last 1..N weighted layers (0: skip).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def eval_command(model, inputs, outdir, boxes, algos, runtime, steps, baseline, tolerance, sanity_layers, quiet):
    """Measure how good MODEL's saliency maps are: pointing game (with --boxes), insertion/deletion AUC, ADCC and
    a model-randomisation sanity check, per method; ranks the methods. Writes metrics.json, index.html and each
    method's gallery into OUTDIR."""
    paths = find_images(list(inputs))
    if not paths:
        raise XaiGraphError(f"no images found in {', '.join(inputs)}")
    chosen = xai_graph.algorithms() if "all" in algos else list(dict.fromkeys(algos))
    annotations = read_boxes(boxes, paths) if boxes else None
    settings = EvalSettings(
        steps=steps, baseline=baseline, tolerance=tolerance, sanity_layers=sanity_layers, runtime=runtime
    )
    bar = (
        click.progressbar(length=len(paths) * len(chosen), label="evaluating", file=sys.stderr)
        if not quiet and len(paths) * len(chosen) > 3
        else None
    )
    with bar or contextlib.nullcontext():
        rows, index = write_evaluation(
            model, paths, outdir, chosen, settings, annotations, progress=bar.update if bar else None
        )
    click.echo(format_eval_table(rows))
    click.echo(f"open {index}")
