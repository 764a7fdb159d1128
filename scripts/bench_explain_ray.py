"""The Ray engine's rows of `scripts/bench_explain.py --engine ray`: explain on a Ray Data actor pool with 1 and 2
workers, into files and into Parquet, on the same images and instrumented model as the local rows.

Ray is started once, in this process, with every CPU (as `explain --engine ray` does without --ray-address);
its start is not timed, each job's actor start-up (model loading) is. Each job is run --repeat times and the
median is reported, as for the local rows.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.parquet_output import ParquetResults
from xai_graph.explaining.ray_engine import explain_with_ray, ray_session
from xai_graph.explaining.resume import ResumableWriter


def ray_rows(instrumented: Path, runtime: str, paths: list[Path], batch_size: int, image_format: str, tmp: Path,
             repeat: int, workers: tuple[int, ...] = (1, 2)) -> list[tuple[str, list[tuple[float, float, float]]]]:
    """(label, [(images/s, start-up seconds, images/s after the first result) of each run]) per configuration.
    Start-up = until the first image comes back: the actors' start (Python, imports, the model loaded)."""
    options = {"model": instrumented, "runtime": runtime}
    rows = []
    with ray_session(None, num_cpus=os.cpu_count()), Explainer(**options) as explainer:  # Ray as explain starts it
        jobs = [(f"ray, {n} worker{'s' if n > 1 else ''}, {output}:", n, output) for output in ("files", "parquet")
                for n in workers]
        for label, n, output in jobs:
            rates = []
            for i in range(repeat):
                out = tmp / f"ray-{n}-{output}-{i}"
                writer = (ParquetResults(out, overwrite=True) if output == "parquet" else
                          ResumableWriter(out, overwrite=True, image_format=image_format))
                first: list[float] = []
                with writer:
                    start = time.perf_counter()
                    explain_with_ray(explainer, options, paths, writer, workers=n, batch_size=batch_size,
                                     output=output, progress=lambda _: first or first.append(time.perf_counter()))
                    end = time.perf_counter()
                rates.append((len(paths) / (end - start), first[0] - start, (len(paths) - 1) / (end - first[0])))
            rows.append((label, rates))
    return rows


def print_rows(rows: list, local_rate: float) -> None:
    for label, runs in rows:
        rate, startup, after = (statistics.median(run[i] for run in runs) for i in range(3))
        print(f"{label:42s}{rate:7.1f} images/s  runs: {' '.join(f'{run[0]:.1f}' for run in runs)}  "
              f"({rate / local_rate:.2f}x the local engine; start-up {startup:.1f} s, then {after:.1f} images/s)")
