"""The `xai-graph` command: a thin Click layer over the xai_graph library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

import xai_graph
from xai_graph.errors import XaiGraphError
from xai_graph.methods.recipro_cam import MASKS, SCORES
from xai_graph.graph.analysis import shape_text
from xai_graph.report import describe


class _Group(click.Group):
    """Turns library errors into one line and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XaiGraphError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, and say where to report it
            click.echo(f"error: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       "please report it with the model", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(xai_graph.__version__, prog_name="xai-graph")
def main():
    """Add saliency-map outputs to ONNX models, and inspect them."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--algo", type=click.Choice(xai_graph.algorithms()), default="classwisesaliencymap", show_default=True,
              help="Saliency method.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the model [default: MODEL_xai.onnx beside MODEL].")
@click.option("--target-layer", metavar="NAME", help="Value or node whose output is the map to explain.")
@click.option("--mask", type=click.Choice(MASKS), default="gaussian", show_default=True,
              help="Recipro-CAM mask: 3x3 Gaussian neighbourhood or one position.")
@click.option("--score", type=click.Choice(SCORES), default="logits", show_default=True,
              help="Recipro-CAM score read per class.")
@click.option("--raw", is_flag=True, help="Keep the map as float32 instead of uint8 0..255.")
@click.option("--feature-vector", is_flag=True, help="Also output feature_vector [B, C].")
@click.option("--replace", is_flag=True, help="Rebuild the head of a model that already has saliency_map.")
def insert(model, algo, output, target_layer, mask, score, raw, feature_vector, replace):
    """Insert a saliency head into MODEL (.onnx)."""
    output = output or model.with_name(model.stem + "_xai.onnx")
    start = time.perf_counter()
    result = xai_graph.insert(model, algo, target_layer=target_layer, mask=mask, score=score, raw=raw,
                              feature_vector=feature_vector, replace=replace)
    xai_graph.save_model(result, output)
    saliency = next(o for o in result.graph.outputs if o.name == "saliency_map")
    click.echo(f"{output}: {result.metadata_props['xai_graph.method']} on '{result.metadata_props['xai_graph.target']}', "
               f"saliency_map {shape_text(saliency)} {saliency.dtype.name.lower()} "
               f"({time.perf_counter() - start:.2f} s)")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target-layer", metavar="NAME", help="Check this value or node as the target.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(model, target_layer, as_json):
    """Show MODEL's inputs, outputs, candidate target maps and which algorithms apply."""
    report = describe(model, target_layer)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"model   {report.path} (opset {report.opset})")
    for kind, values in (("input ", report.inputs), ("output", report.outputs)):
        for v in values:
            click.echo(f"{kind}  {v['name']} {v['shape']} {v['dtype']}")
    for key, value in report.metadata.items():
        click.echo(f"meta    {key} = {value if len(value) < 60 else value[:57] + '...'}")
    if report.scores:
        act = f" (after {report.final_activation})" if report.final_activation else ""
        click.echo(f"scores  {report.scores}{act}")
    for p in report.pools:
        click.echo(f"pool    {p['op']} '{p['node']}' on {p['input']} {p['shape']}: {p['role']}")
    for c in report.candidates:
        mark = "*" if c["name"] == report.target else " "
        click.echo(f"map   {mark} {c['name']} {c['shape']}")
    if report.target:
        click.echo(f"target  {report.target} {report.target_shape}: {report.reason}")
    else:
        click.echo(f"target  none: {report.reason}")
    for algo, verdict in report.algorithms.items():
        click.echo(f"algo    {algo}: {verdict}")


if __name__ == "__main__":
    main()
