"""The two ways `explain` runs: the local engine (threads in this process) and the Ray engine (an actor pool),
into PNG files + predictions.json + index.html or into Parquet parts. Ray is imported only for --engine ray."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.parquet_output import ParquetResults
from xai_graph.explaining.pipeline import RunSummary, explain_files, run_settings
from xai_graph.explaining.resume import ResumableWriter
from xai_graph.explaining.sources import SourceUri

ENGINES = ("local", "ray")
OUTPUT_FORMATS = ("files", "parquet")


def check_engine_options(engine: str, sources: list, ray_address: str | None, workers: int | None) -> None:
    """Refuse, before anything is written, what the chosen engine cannot do."""
    if engine == "local":
        if ray_address or workers:
            raise XaiGraphError("--ray-address and --workers are for --engine ray")
        uri = next((s for s in sources if isinstance(s, SourceUri)), None)
        if uri is not None:
            raise XaiGraphError(f"{uri}: images named by URIs are read by --engine ray only")


def open_results(
    outdir: Path,
    output_format: str,
    explainer: Explainer,
    *,
    overwrite: bool,
    alpha: float,
    raw: bool,
    image_format: str,
    protected: Iterable[Path],
):
    """The writer of the output folder: ResumableWriter (files) or ParquetResults."""
    if output_format == "parquet":
        return ParquetResults(outdir, overwrite=overwrite, settings=run_settings(explainer, None))
    return ResumableWriter(
        outdir,
        overwrite=overwrite,
        alpha=alpha,
        raw=raw,
        image_format=image_format,
        protected=[p for p in protected if isinstance(p, Path)],
    )


def explain_sources(
    engine: str,
    explainer: Explainer,
    explainer_options: dict,
    sources: list,
    writer,
    *,
    output_format: str = "files",
    batch_size: int = 8,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Explain `sources` (what `writer.plan` left to do) with the chosen engine. Ray must be running for
    --engine ray (`ray_engine.ray_session`)."""
    if engine == "ray":
        import ray

        from xai_graph.explaining.ray_engine import default_workers, explain_with_ray

        return explain_with_ray(
            explainer,
            explainer_options,
            sources,
            writer,
            workers=workers or default_workers(ray),
            batch_size=batch_size,
            output="parquet" if output_format == "parquet" else "files",
            progress=progress,
        )
    return explain_files(explainer, sources, writer, batch_size=batch_size, progress=progress)
