"""The `xai-graph` command: a thin Click layer over the xai_graph library."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import click

import xai_graph
from xai_graph.errors import XaiGraphError
from xai_graph.bench import benchmark, format_table, rounds_advice
from xai_graph.bundled import bundled_samples
from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.gallery import ResultWriter
from xai_graph.explaining.images import find_images
from xai_graph.explaining.pipeline import RunInterrupted, explain_files
from xai_graph.explaining.preprocess import RESIZE_TYPES, model_info_metadata
from xai_graph.formats import IR, companion_files, output_for
from xai_graph.files import check_writes_spare_reads, files_read_by_model, read_small_text, root_cause
from xai_graph.report import describe, format_report
from xai_graph.runtime import RUNTIMES, verify_loads

from xai_graph.cli.explaining import eval_command, explain
from xai_graph.cli.options import ints_option, method_option_flags, size_option, top_k_option


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"note: {message}", err=True)  # library warnings as one line, without source lines


class _Group(click.Group):
    """Turns errors into one line and a non-zero exit, never a traceback (unless --debug asks for it).

    Exit codes: 1 an error the user can fix (bad input, permissions, a full disk), 2 an internal
    error, 3 some images failed (explain), 130 interrupted (SIGINT or SIGTERM).
    """

    def invoke(self, ctx):
        warnings.showwarning = _note
        for signum, handler in (
            (signal.SIGINT, signal.default_int_handler),
            (signal.SIGTERM, _interrupt),
            (signal.SIGHUP, _interrupt),
        ):  # all clean up as Ctrl-C does (see cli/__init__.py)
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, handler)
        debug = ctx.params.get("debug") or os.environ.get("XAI_GRAPH_DEBUG", "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            click.echo(str(exc), err=True)
            sys.exit(130)
        except XaiGraphError as exc:
            click.echo(f"error: {exc.worded(_flags_of(self, ctx.invoked_subcommand))}", err=True)
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; no output was left half-written", err=True)
            sys.exit(130)
        except BrokenPipeError:  # the reader went away (`| head`): nothing to report
            sys.exit(0)
        except OSError as exc:  # permissions, a read-only file system, a full disk: the user's to fix
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or root_cause(exc)}", err=True)
            sys.exit(1)
        except Exception as exc:  # a bug: still one line, and say where to report it
            if debug:
                traceback.print_exc()
            click.echo(
                f"error: internal error ({type(exc).__name__}: {root_cause(exc)}); please report it with the "
                "model (run with --debug or XAI_GRAPH_DEBUG=1 for the traceback)",
                err=True,
            )
            sys.exit(2)


def _flags_of(group: click.Group, command_name: str | None):
    """Words options in the library's messages as this command's flags (`target_layer` -> `--target-layer`):
    the running command's own first, then any command's, so one keyword always reads as the flag typed."""
    running = group.commands.get(command_name or "")
    flags: dict[str, str] = {}
    for command in [running, *group.commands.values()]:
        for param in command.params if command else []:
            long = [opt for opt in param.opts if opt.startswith("--")]
            if long:
                flags.setdefault(param.name, long[0])

    def flag(name: str, value: str | None) -> str:
        text = flags.get(name, "--" + name.replace("_", "-"))
        return text if value is None else f"{text} {value}"

    return flag


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(xai_graph.__version__, prog_name="xai-graph")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (also XAI_GRAPH_DEBUG=1).")
def main(debug):
    """Saliency-map heads inside ONNX and OpenVINO IR models: insert them, inspect models, explain images,
    benchmark the cost."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--algo",
    type=click.Choice(xai_graph.algorithms()),
    default="classwisesaliencymap",
    show_default=True,
    help="Saliency method.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Where to write the model [default: MODEL_xai.onnx beside MODEL].",
)
@click.option("--target-layer", metavar="NAME", help="Value or node whose output is the map to explain.")
@click.option(
    "--scores",
    metavar="OUTPUT",
    help="Classifiers: the class-score output to explain [default: chosen by its role in the graph].",
)
@click.option(
    "--class-map",
    "--head",
    "class_maps",
    multiple=True,
    metavar="VALUE",
    help="Detectors: a per-level class-score map [B, A*K, h, w] (repeatable); found automatically otherwise.",
)
@click.option("--num-anchors", metavar="A[,A...]", help="Detectors: anchors per level (one value for all levels).")
@click.option("--num-classes", type=int, help="Detectors: number of classes K.")
@click.option("--raw", is_flag=True, help="Keep the map as float32 instead of uint8 0..255.")
@click.option("--feature-vector", is_flag=True, help="Also output feature_vector [B, C].")
@click.option("--replace", is_flag=True, help="Rebuild the head of a model that already has saliency_map.")
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["onnx", "ir"]),
    help="Output format [default: from the output's suffix; .xml is OpenVINO IR].",
)
@click.option("--compress-fp16", is_flag=True, help="IR output: store weights as fp16 (f32 by default).")
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Text file, one class name per line: recorded in the model's metadata (Model API form).",
)
@click.option("--mean", help="Preprocessing to record: mean per channel, e.g. '123.675,116.28,103.53'.")
@click.option("--std", help="Preprocessing to record: scale per channel, input = (pixel - mean) / std.")
@click.option("--bgr/--rgb", default=None, help="Record that the model takes BGR (or RGB) input.")
@click.option("--resize", type=click.Choice(RESIZE_TYPES), help="Record the resize the model expects.")
@method_option_flags
def insert(
    model,
    algo,
    output,
    target_layer,
    scores,
    class_maps,
    num_anchors,
    num_classes,
    raw,
    feature_vector,
    replace,
    out_format,
    compress_fp16,
    labels,
    mean,
    std,
    bgr,
    resize,
    **method_options,
):
    """Insert a saliency head into MODEL (.onnx or OpenVINO .xml); write ONNX, or OpenVINO IR with --format ir /
    -o OUT.xml (always IR for an IR input)."""
    output, out_format = output_for(model, output, out_format)
    writes = [output, *companion_files(output)]
    check_writes_spare_reads(writes, files_read_by_model(model) + ([labels] if labels else []))
    start = time.perf_counter()
    label_list = read_small_text(labels).splitlines() if labels else None
    preprocessing = model_info_metadata(
        labels=[x for x in label_list if x.strip()] if label_list else None, mean=mean, std=std, bgr=bgr, resize=resize
    )
    result = xai_graph.insert(
        model,
        algo,
        target_layer=target_layer,
        raw=raw,
        feature_vector=feature_vector,
        replace=replace,
        metadata=preprocessing if len(preprocessing) > 1 else None,
        class_maps=list(class_maps) or None,
        num_anchors=ints_option(num_anchors, "--num-anchors"),
        num_classes=num_classes,
        scores=scores,
        check=False,  # save_model checks the written file
        **method_options,
    )  # only those given: each method refuses what it does not take
    if out_format == IR:  # written only once its runtime has loaded it
        xai_graph.save_ir(result, output, compress_fp16=compress_fp16, verify=verify_loads)
    else:
        xai_graph.save_model(result, output, verify=verify_loads)
    summary = xai_graph.head_summary(result)
    cost = f"; {summary['cost']}" if summary["cost"] else ""
    click.echo(
        f"{output}: {summary['method']} on '{summary['target']}', saliency_map {summary['shape']} "
        f"{summary['dtype']} ({time.perf_counter() - start:.2f} s{cost})"
    )


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target-layer", metavar="NAME", help="Check this value or node as the target.")
@click.option(
    "--class-map",
    "--head",
    "class_maps",
    multiple=True,
    metavar="VALUE",
    help="Detectors: class maps, or the class-score output they reach, as for insert (repeatable).",
)
@click.option("--scores", metavar="OUTPUT", help="Classifiers: the class-score output, as for insert.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model, target_layer, class_maps, scores, as_json):
    """Show MODEL's inputs, outputs, candidate target maps and which algorithms apply."""
    report = describe(model, target_layer, list(class_maps) or None, scores)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--algo",
    "algos",
    multiple=True,
    type=click.Choice(xai_graph.algorithms()),
    help="Algorithms to measure (repeatable) [default: all].",
)
@click.option("--runtime", type=click.Choice([*RUNTIMES, "both"]), default="both", show_default=True)
@click.option("--batch", "batches", default="1,8", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", type=click.IntRange(1), help="Inference threads (default: the runtime's own choice).")
@click.option(
    "--rounds",
    default=30,
    show_default=True,
    type=click.IntRange(1),
    help="Interleaved rounds: one call per variant each.",
)
@click.option("--size", help="Input size WxH, for models whose input size is dynamic.")
@click.option(
    "--classes",
    "class_maps",
    default="all",
    show_default=True,
    metavar="all|topk:N",
    help="Recipro-CAM maps for all classes or each image's N best.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
def bench(model, algos, runtime, batches, threads, rounds, size, class_maps, as_json):
    """Latency of MODEL with and without saliency heads, side by side in one process.

    Reports median and p90 latency, throughput, the instrumented/original ratio, memory added,
    model-size growth and insertion time; the brute-force form of (ViT) Recipro-CAM (cloned tail
    or block) is measured beside the cheap one."""
    try:
        batch_sizes = [int(b) for b in batches.split(",")]
    except ValueError:
        raise click.BadParameter(f"{batches!r}: expected comma-separated integers", param_hint="--batch") from None
    if min(batch_sizes) < 1:
        raise click.BadParameter(f"{batches!r}: batch sizes start at 1", param_hint="--batch")
    runtimes = list(RUNTIMES) if runtime == "both" else [runtime]
    printed = []

    def show_skipped(skipped):
        for algo, reason in skipped.items():
            click.echo(f"skipped {algo}: {reason}", err=True)

    def show(rows):  # each runtime and batch as soon as its interleaved rounds are done
        if not as_json:
            click.echo(format_table(rows, header=not printed, width=44))
        printed.extend(rows)

    rows, _ = benchmark(
        model,
        list(algos) or xai_graph.algorithms(),
        runtimes,
        batch_sizes,
        size=size_option(size),
        threads=threads,
        rounds=rounds,
        top_k=top_k_option(class_maps),
        on_rows=show,
        on_skipped=show_skipped,
    )
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    advice = rounds_advice(rows, rounds)
    if advice:
        click.echo(f"note: {advice}", err=True)


@main.command()
@click.argument("outdir", type=click.Path(path_type=Path), default="xai-demo")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True)
def demo(outdir, runtime):
    """Instrument the bundled ImageNet EfficientNet-Lite0 and explain the sample photos into OUTDIR."""
    samples = bundled_samples()
    model = samples / "efficientnet_lite0.onnx"
    outdir.mkdir(parents=True, exist_ok=True)
    instrumented = outdir / "efficientnet_lite0_xai.onnx"
    xai_graph.save_model(xai_graph.insert(model, "classwisesaliencymap", top_k=5, check=False), instrumented)
    click.echo(f"instrumented {model.name} with Recipro-CAM (maps for each image's 5 best classes) -> {instrumented}")
    with Explainer(instrumented, runtime=runtime) as explainer, ResultWriter(outdir, overwrite=True) as writer:
        summary = explain_files(explainer, find_images([str(samples / "images")]), writer)
    for record in sorted(writer.records.values(), key=lambda r: r["image"]):
        if record["top"]:
            verdict = f"{record['top'][0]['label']} ({record['top'][0]['score']:.2f})"
        else:
            verdict = f"failed: {record['error']}"
        click.echo(f"  {Path(record['image']).name:<16} {verdict}")
    click.echo(f"open {summary.index} (red = where the model looked)")


main.add_command(explain)
main.add_command(eval_command)

if __name__ == "__main__":
    main()
