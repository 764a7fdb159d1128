"""`xai-graph bench`: what a saliency head costs, measured beside the original model.

All variants (the original, each algorithm, and the brute-force form of
Recipro-CAM and ViT Recipro-CAM (cloned tail or block) beside the cheap one) are loaded in one
process and run interleaved, one call
each per round in a rotating order, so that machine noise hits them alike; the
ratios compare medians from the same rounds.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xai_graph.errors import XaiGraphError
from xai_graph.files import TEMP_PREFIX, scratch_folder
from xai_graph.graph.io import save_model
from xai_graph.graph.model_file import ModelFile
from xai_graph.head import head_summary, insert
from xai_graph.runtime import open_model
from xai_graph.formats import companion_files, is_ir


@dataclass
class Variant:
    name: str
    path: Path
    insert_seconds: float | None = None
    size_growth_bytes: int = 0


@dataclass
class Measurement:
    runtime: str
    batch: int
    variant: str
    median_ms: float
    p90_ms: float
    images_per_second: float
    ratio: float  # median latency / the original's median latency, same rounds
    peak_memory_mb: float  # peak resident memory of a process that loads and runs only this variant
    size_growth_bytes: int
    insert_seconds: float | None
    spread: float = 0.0  # interquartile range / median of this variant's latencies: the noise it saw

    def to_dict(self) -> dict:
        return asdict(self)


def _file_size(path: Path) -> int:
    return sum(file.stat().st_size for file in [path, *companion_files(path)] if file.exists())


def prepare_variants(
    model: Path, algos: list[str], folder: Path, top_k: int | None = None, brute_force_too: bool = True
) -> tuple[list[Variant], dict[str, str]]:
    """The original model and one instrumented copy per algorithm (and Recipro-CAM form), with insertion
    time and growth; and the algorithms that do not apply to this model, with the reason."""
    variants = [Variant("original", model)]
    skipped: dict[str, str] = {}
    base_size = _file_size(model)
    for algo in algos:
        forms = []
        for brute_force in [False, True] if brute_force_too else [False]:
            start = time.perf_counter()
            try:
                result = insert(
                    model,
                    algo,
                    top_k=top_k if algo == "classwisesaliencymap" else None,
                    brute_force=brute_force,
                    check=False,
                )  # as `xai-graph insert` does
            except XaiGraphError as exc:
                if not forms:
                    skipped[algo] = str(exc)
                break
            form = head_summary(result)["method"].partition("(")[2].rstrip(")")
            if form in forms:
                break  # the method has no cheaper form here: brute force built the same head
            forms.append(form)
            path = save_model(result, folder / f"{algo}{'_cloned' if brute_force else ''}{model.suffix}")
            seconds = time.perf_counter() - start
            variants.append(Variant(f"{algo} ({form})" if form else algo, path, seconds, _file_size(path) - base_size))
    return variants, skipped


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec,
# so a child of a big benchmark process would report the parent's size.
_PEAK_MEMORY_PROBE = """
import resource, sys
import numpy as np
from xai_graph.runtime import open_model
path, runtime, name, shape = sys.argv[1], sys.argv[2], sys.argv[3], [int(d) for d in sys.argv[4].split(",")]
session = open_model(path, runtime)
for _ in range(3):
    session({name: np.zeros(shape, np.float32)})
try:
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    print(int(status.split()[0]))
except (OSError, IndexError):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory_mb(path: Path, runtime: str, name: str, shape: tuple[int, ...]) -> float:
    """Peak resident memory of a fresh process that loads the model and runs it three times.

    A process of its own per variant: resident-size differences inside one process
    are blurred by the allocators' caching.
    """
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_PROBE, str(path), runtime, name, ",".join(map(str, shape))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise XaiGraphError(f"memory probe failed for {path.name}: {result.stderr.strip().splitlines()[-1:]}")
    return int(result.stdout.split()[-1]) / 1024


def input_shape(model: Path, batch: int, size: tuple[int, int] | None) -> tuple[str, tuple[int, ...]]:
    name, dims = ModelFile(model).first_input()
    if len(dims) == 4 and size:
        if dims[1] in (1, 3):
            dims[2], dims[3] = size[1], size[0]
        else:
            dims[1], dims[2] = size[1], size[0]
    dims[0] = batch
    if any(d is None for d in dims):
        raise XaiGraphError(f"input '{name}' has dynamic dims {dims}; pass --size WxH")
    return name, tuple(dims)


def measure(
    variants: list[Variant],
    runtime: str,
    batch: int,
    size: tuple[int, int] | None = None,
    threads: int | None = None,
    rounds: int = 30,
    warmup: int = 3,
) -> list[Measurement]:
    name, shape = input_shape(variants[0].path, batch, size)
    feeds = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    memory = [peak_memory_mb(v.path, runtime, name, shape) for v in variants]
    sessions = []
    for variant in variants:
        session = open_model(variant.path, runtime, **({"threads": threads} if threads else {}))
        for _ in range(warmup):
            session(feeds)
        sessions.append(session)
    times: list[list[float]] = [[] for _ in variants]
    for r in range(rounds):
        for i in [(r + j) % len(variants) for j in range(len(variants))]:  # rotate the order every round
            start = time.perf_counter()
            sessions[i](feeds)
            times[i].append(time.perf_counter() - start)
    base = statistics.median(times[0])
    rows = []
    for variant, samples, mb in zip(variants, times, memory):
        median = statistics.median(samples)
        ordered = sorted(samples)
        p90 = ordered[min(len(samples) - 1, int(0.9 * len(samples)))]
        spread = (ordered[(3 * len(samples)) // 4] - ordered[len(samples) // 4]) / median
        rows.append(
            Measurement(
                runtime,
                batch,
                variant.name,
                median * 1e3,
                p90 * 1e3,
                batch / median,
                median / base,
                mb,
                variant.size_growth_bytes,
                variant.insert_seconds,
                spread,
            )
        )
    return rows


NOISY_SPREAD = 0.10  # latencies whose quartiles lie more than 10% of the median apart


def rounds_advice(rows: list[Measurement], rounds: int) -> str | None:
    """A warning when the noise seen makes `rounds` too few for ratios good to about 2%, else None.

    The median's standard error shrinks as 1/sqrt(rounds): rounds * (spread / 0.10)^2 rounds bring the
    noisiest variant's to what 10% quartile spread gives at the current count."""
    noisiest = max((r.spread for r in rows), default=0.0)
    if noisiest <= NOISY_SPREAD:
        return None
    needed = math.ceil(rounds * (noisiest / NOISY_SPREAD) ** 2)
    return (
        f"latencies varied by {100 * noisiest:.0f}% (quartile spread / median) over {rounds} rounds: the ratios "
        f"are rough; try --rounds {needed} on a quieter machine"
    )


def benchmark(
    model: str | os.PathLike,
    algos: list[str],
    runtimes: list[str],
    batches: list[int],
    size: tuple[int, int] | None = None,
    threads: int | None = None,
    rounds: int = 30,
    top_k: int | None = None,
    on_rows=None,
    on_skipped=None,
) -> tuple[list[Measurement], dict[str, str]]:
    """Measurements for every variant, runtime and batch; and the algorithms skipped, with why.
    An OpenVINO IR runs in OpenVINO only. `on_skipped(skipped)` is called once the variants are built and
    `on_rows(rows)` as each runtime and batch finishes, so a caller can show progress."""
    if is_ir(model):
        runtimes = ["openvino"]
    with scratch_folder(Path(tempfile.gettempdir()), TEMP_PREFIX) as folder:  # removed after a kill -9 too
        variants, skipped = prepare_variants(Path(model), algos, folder, top_k=top_k)
        if on_skipped:
            on_skipped(skipped)
        rows = []
        for runtime in runtimes:
            for batch in batches:
                rows += measure(variants, runtime, batch, size, threads, rounds)
                if on_rows:
                    on_rows(rows[-len(variants) :])
        return rows, skipped


def format_table(rows: list[Measurement], header: bool = True, width: int = 36) -> str:
    width = max([width, *(len(r.variant) + 2 for r in rows)])
    lines = (
        [
            f"{'runtime':<12}{'batch':>6}  {'variant':<{width}}{'median ms':>10}{'p90 ms':>9}{'img/s':>9}"
            f"{'ratio':>8}{'peak MB':>9}{'growth KB':>10}{'insert s':>9}"
        ]
        if header
        else []
    )
    for r in rows:
        insert_s = f"{r.insert_seconds:.2f}" if r.insert_seconds is not None else "-"
        lines.append(
            f"{r.runtime:<12}{r.batch:>6}  {r.variant:<{width}}{r.median_ms:>10.2f}{r.p90_ms:>9.2f}"
            f"{r.images_per_second:>9.1f}{r.ratio:>8.3f}{r.peak_memory_mb:>9.0f}"
            f"{r.size_growth_bytes / 1024:>10.1f}{insert_s:>9}"
        )
    return "\n".join(lines)
