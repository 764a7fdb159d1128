"""The Ray engine's rows of `scripts/bench_explain.py --engine ray`: explain on a Ray Data actor pool with 1 and 2
workers, into files and into Parquet, on the same images and instrumented model as the local rows.

Ray is started once, in this process, with every CPU (as `explain --engine ray` does without --ray-address);
its start is not timed, each job's actor start-up (model loading) is. Each job is run --repeat times and the
median is reported, as for the local rows.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path

from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.parquet_output import ParquetResults
from xai_graph.explaining.ray_engine import explain_with_ray
from xai_graph.explaining.resume import ResumableWriter


def ray_rows(instrumented: Path, runtime: str, paths: list[Path], batch_size: int, image_format: str, tmp: Path,
             repeat: int, workers: tuple[int, ...] = (1, 2)) -> list[tuple[str, list[float]]]:
    """(label, images/s of each run) per Ray configuration."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    options = {"model": instrumented, "runtime": runtime}
    rows = []
    try:
        with Explainer(**options) as explainer:
            jobs = [(f"ray, {n} worker{'s' if n > 1 else ''}, files:", n, "files") for n in workers]
            jobs.append((f"ray, {workers[-1]} workers, parquet:", workers[-1], "parquet"))
            for label, n, output in jobs:
                rates = []
                for i in range(repeat):
                    out = tmp / f"ray-{n}-{output}-{i}"
                    writer = (ParquetResults(out, overwrite=True) if output == "parquet" else
                              ResumableWriter(out, overwrite=True, image_format=image_format))
                    with writer:
                        start = time.perf_counter()
                        explain_with_ray(explainer, options, paths, writer, workers=n, batch_size=batch_size,
                                         output=output)
                        rates.append(len(paths) / (time.perf_counter() - start))
                rows.append((label, rates))
    finally:
        ray.shutdown()
    return rows


def print_rows(rows: list[tuple[str, list[float]]], local_rate: float) -> None:
    for label, rates in rows:
        rate = statistics.median(rates)
        print(f"{label:42s}{rate:7.1f} images/s  runs: {' '.join(f'{r:.1f}' for r in rates)}  "
              f"({rate / local_rate:.2f}x the local engine)")
