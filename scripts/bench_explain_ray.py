"""The Ray engine's rows of `scripts/bench_explain.py --engine ray`: explain on a Ray Data actor pool with 1 and 2
workers, into files and into Parquet, on the same images and instrumented model as the local rows.

Ray is started once, in this process, with every CPU (as `explain --engine ray` does without --ray-address);
its start is not timed, each job's actor start-up (Python, imports, the model loaded) is, and is also shown
apart. The local engine is run again between the Ray jobs (each repeat runs every configuration once), so that
the ratios compare runs made under the same load; medians of --repeat runs are reported.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.gallery import ResultWriter
from xai_graph.explaining.parquet_output import ParquetResults
from xai_graph.explaining.pipeline import explain_files
from xai_graph.explaining.ray_engine import explain_with_ray, ray_session
from xai_graph.explaining.resume import ResumableWriter


def ray_rows(
    instrumented: Path,
    runtime: str,
    paths: list[Path],
    batch_size: int,
    image_format: str,
    tmp: Path,
    repeat: int,
    workers: tuple[int, ...] = (1, 2),
) -> dict[str, list[tuple[float, float, float]]]:
    """label -> [(images/s, start-up seconds, images/s after the first result) of each run]; the label "local"
    is the local engine, run between the Ray jobs. Start-up = until the first image comes back."""
    options = {"model": instrumented, "runtime": runtime}
    jobs = [
        (f"ray, {n} worker{'s' if n > 1 else ''}, {output}", n, output)
        for output in ("files", "parquet")
        for n in workers
    ]
    runs: dict[str, list] = {"local": [], **{label: [] for label, _, _ in jobs}}
    with ray_session(None, num_cpus=os.cpu_count()), Explainer(**options) as explainer:  # Ray as explain starts it
        for i in range(repeat):
            runs["local"].append(
                _timed(
                    lambda progress: explain_files(
                        explainer,
                        paths,
                        ResultWriter(tmp / f"local-{i}", overwrite=True, image_format=image_format),
                        batch_size=batch_size,
                        progress=progress,
                    ),
                    len(paths),
                )
            )
            for label, n, output in jobs:
                out = tmp / f"ray-{n}-{output}-{i}"
                writer = (
                    ParquetResults(out, overwrite=True)
                    if output == "parquet"
                    else ResumableWriter(out, overwrite=True, image_format=image_format)
                )
                with writer:
                    runs[label].append(
                        _timed(
                            lambda progress: explain_with_ray(
                                explainer,
                                options,
                                paths,
                                writer,
                                workers=n,
                                batch_size=batch_size,
                                output=output,
                                progress=progress,
                            ),
                            len(paths),
                        )
                    )
    return runs


def _timed(job, images: int) -> tuple[float, float, float]:
    first: list[float] = []
    start = time.perf_counter()
    job(lambda _: first or first.append(time.perf_counter()))
    end = time.perf_counter()
    return images / (end - start), first[0] - start, (images - 1) / (end - first[0])


def print_rows(runs: dict[str, list[tuple[float, float, float]]], _local_rate: float | None = None) -> None:
    local = statistics.median(run[0] for run in runs["local"])
    for label, measured in runs.items():
        rate, startup, after = (statistics.median(run[i] for run in measured) for i in range(3))
        name = "local engine, between the Ray jobs" if label == "local" else label
        print(
            f"{name + ':':42s}{rate:7.1f} images/s  runs: {' '.join(f'{run[0]:.1f}' for run in measured)}  "
            f"({rate / local:.2f}x local; first result after {startup:.1f} s, then {after:.1f} images/s)"
        )
