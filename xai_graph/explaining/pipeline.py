"""Explain many images fast: decoding, inference and rendering overlap.

Decoding + preprocessing and rendering + writing run in a thread pool (OpenCV
releases the GIL) while the main thread runs the model batch after batch. At
most a few batches are in flight, so memory stays bounded whatever the folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.explainer import Explainer
from xai_graph.files import root_cause
from xai_graph.explaining.gallery import ResultWriter, display_image
from xai_graph.explaining.images import ImageError, read_image
from xai_graph.explaining.preprocess import Placement


class Loaded(NamedTuple):
    """One file, decoded and preprocessed, or the reason it could not be."""

    path: Path
    image: np.ndarray | None = None
    tensor: np.ndarray | None = None
    placement: Placement | None = None
    error: str | None = None
    shape: tuple[int, ...] | None = None  # of the image as decoded


@dataclass
class RunSummary:
    images: int
    failed: int
    seconds: float
    predictions: Path
    index: Path
    not_rendered: dict[str, int] | None = None  # class -> images where it was asked for but the head has no map

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def run_settings(explainer: Explainer, alpha: float | None) -> dict:
    """What predictions.json (and each Parquet part) records of the run, whichever engine ran it."""
    return {
        "model": str(explainer.source),
        "algorithm": explainer.algo,
        "runtime": explainer.runtime,
        "input_size": list(explainer.input_size),
        "overlay_alpha": alpha,
        "preprocessing": explainer.preprocessing_record(),
    }


def summarise(sources: list, records: dict[str, dict], seconds: float, predictions: Path, index: Path) -> RunSummary:
    """The run's summary from the records its writer kept for `sources`."""
    kept = [records.get(str(s)) or {} for s in sources]
    not_rendered = Counter(c["label"] for r in kept for c in r.get("not_rendered") or [])
    failed = sum(1 for r in kept if r.get("error"))
    return RunSummary(len(sources), failed, seconds, predictions, index, dict(not_rendered))


def _prefetch(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, depth: int) -> Iterator:
    """fn(item) for each item, in order, computed up to `depth` items ahead."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class RunInterrupted(XaiGraphError):
    """SIGINT or SIGTERM stopped the run; what was done is written and indexed."""

    def __init__(self, summary: RunSummary, written: int):
        super().__init__(
            f"interrupted: {written} of {summary.images} images written to {summary.index.parent}; "
            f"{summary.predictions.name} and {summary.index.name} list them"
        )
        self.summary, self.written = summary, written


def explain_files(
    explainer: Explainer,
    paths: list[Path],
    writer: ResultWriter,
    batch_size: int = 8,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Explain every file; a file that fails is recorded in the writer and the run goes on.

    On KeyboardInterrupt (SIGINT, or SIGTERM where the caller turns it into one) the images in
    flight are finished, the rest dropped, predictions.json and index.html written for what is
    done, and `RunInterrupted` raised.
    """
    batch_size = explainer.max_batch or max(1, batch_size)
    workers = workers or min(8, (os.cpu_count() or 2))
    start = time.perf_counter()
    written = [0]

    def load(path: Path) -> Loaded:
        try:
            image = read_image(path)
            tensor, placement = explainer.preprocessing(image)
            # Held until rendered: at display size (at most MAX_RENDER_SIDE), not as decoded (up to 4096).
            return Loaded(path, display_image(image), tensor, placement, shape=image.shape)
        except ImageError as exc:
            return Loaded(path, error=str(exc))
        except Exception as exc:  # an odd file must not stop the run
            return Loaded(path, error=f"cannot prepare the image ({type(exc).__name__}: {exc})")

    def render(path, image, explanation):
        try:
            writer.add(path, image, explanation, explainer.input_size)
            written[0] += 1
        except Exception as exc:  # a full disk for one image is recorded, the run goes on
            writer.fail(path, f"cannot write the results ({root_cause(exc)})")

    pool = ThreadPoolExecutor(workers)
    interrupted = False
    try:
        _run(explainer, paths, writer, pool, load, render, batch_size, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        with signals_held():  # a second Ctrl-C must not cut the index short
            pool.shutdown(wait=True, cancel_futures=True)
            elapsed = time.perf_counter() - start
            summary = run_settings(explainer, writer.alpha)
            if interrupted:
                summary["interrupted"] = True
            predictions, index = writer.finish(summary)
    result = summarise(paths, writer.records, elapsed, predictions, index)
    if interrupted:
        raise RunInterrupted(result, written[0])
    return result


def _run(explainer, paths, writer, pool, load, render, batch_size, progress) -> None:
    renders: deque[Future] = deque()
    batch: list[Loaded] = []

    def flush():
        outputs = explainer.run([item.tensor for item in batch])
        for item, output in zip(batch, outputs):
            explanation = explainer.describe(output, item.placement, item.shape)
            renders.append(pool.submit(render, item.path, item.image, explanation))
        batch.clear()
        while len(renders) > 2 * batch_size:  # bound the images held for rendering
            _finish(renders.popleft(), progress)

    for item in _prefetch(pool, load, paths, depth=2 * batch_size):
        if item.error is not None:
            writer.fail(item.path, item.error)
            if progress:
                progress(1)
            continue
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    while renders:
        _finish(renders.popleft(), progress)


@contextlib.contextmanager
def signals_held():
    """Defer SIGINT and SIGTERM (main thread only) while the run's records are written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _finish(future: Future, progress) -> None:
    future.result()
    if progress:
        progress(1)
