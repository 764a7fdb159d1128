"""`explain --engine ray`: the local engine's results, computed by a Ray Data actor pool.

    image paths -> actor pool (one instrumented-model session per actor, loaded once):
                   decode + preprocess + run + render + encode
                -> driver: write through the output folder's writer (lock, journal, atomic names, index)

Actors return encoded files and records, never decoded images, so little crosses the object store; the
driver writes with the same ResultWriter as the local engine, so names, predictions.json and index.html are
the local engine's. Ray Data restarts a killed actor and retries its batch (max_restarts / max_task_retries
default to -1 for actor pools), so a lost worker costs time, not images.

Ray is imported here only (and lazily): `import xai_graph` and the local engine never load it.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlparse

from xai_graph.errors import XaiGraphError
from xai_graph.explaining.encoded import ResultEncoder
from xai_graph.explaining.explainer import Explainer
from xai_graph.explaining.gallery import display_image
from xai_graph.explaining.images import ImageError, read_image
from xai_graph.explaining.parquet_output import explanation_row
from xai_graph.explaining.pipeline import RunInterrupted, RunSummary, signals_held, run_settings, summarise
from xai_graph.explaining.sources import SourceUri, read_source
from xai_graph.files import TEMP_PREFIX, scratch_folder

CONNECT_TIMEOUT_S = 5.0
CALLS_PER_ACTOR = 2  # batches in progress in one actor at once (see ExplainWorker)


def ray_missing() -> XaiGraphError:
    return XaiGraphError("--engine ray needs Ray: pip install 'xai-graph[ray]'")


def _check_reachable(address: str) -> None:
    """Fail in seconds, in one line, where ray.init would retry for a minute: the address's port must accept."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise XaiGraphError(f"--ray-address {address}: not HOST:PORT ({exc})") from exc
    if not host or not port:
        raise XaiGraphError(f"--ray-address {address}: not HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise XaiGraphError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc})") from exc


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Ray for one run: connected to the cluster at `address`, or started in this process (and stopped after).
    A Ray this process had already started (a notebook, the tests) is used as it is and left running."""
    try:
        import ray
    except ImportError as exc:
        raise ray_missing() from exc
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own convention: ray.init reads it too
    if address:
        _check_reachable(address)
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    with _native_stderr_to_file():
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise XaiGraphError(f"cannot start Ray{f' at {address}' if address else ''} ({reason})") from exc
        try:
            yield ray
        finally:
            ray.shutdown()


@contextmanager
def _native_stderr_to_file():
    """Send what Ray's C++ core writes to file descriptor 2 (warnings about actor restarts, object store
    notes) to a log file, while Python's sys.stderr (progress bar, one-line errors) still reaches the terminal."""
    try:
        sys.stderr.flush()
        terminal = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr (an embedding that replaced it): leave it
        yield
        return
    log = open(Path(tempfile.gettempdir()) / "ray-xai-graph-driver.log", "ab")  # noqa: SIM115
    previous, fd2 = sys.stderr, os.dup(2)
    sys.stderr = open(terminal, "w", buffering=1, closefd=True)  # noqa: SIM115 (closed below)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(fd2, 2)
        os.close(fd2)
        sys.stderr.close()
        sys.stderr = previous
        log.close()
        if not os.path.getsize(log.name):
            os.unlink(log.name)


class ExplainWorker:
    """One actor: the model loaded once; each call decodes, runs, renders and encodes a batch of images."""

    def __init__(
        self,
        explainer_options: dict,
        output: str,
        alpha: float,
        raw: bool,
        image_format: str,
        threads: int,
        batch_size: int,
    ):
        self.explainer = Explainer(threads=threads, **explainer_options)
        self.output, self.batch_size = output, batch_size
        # Ray kills pool actors at the end of a job: their scratch folder is removed by the next run's set-up.
        self._cleanup = ExitStack()
        self.scratch = self._cleanup.enter_context(scratch_folder(Path(tempfile.gettempdir()), TEMP_PREFIX))
        (self.scratch / "encoder").mkdir()
        self.encoder = (
            ResultEncoder(self.scratch / "encoder", alpha=alpha, raw=raw, image_format=image_format)
            if output == "files"
            else None
        )
        self.pool = ThreadPoolExecutor(max(2, threads))  # OpenCV releases the GIL: decode and render overlap
        # Two batches run at once (the pool's max_concurrent_calls_per_actor): one decodes or renders while the
        # other's runs the model. One inference at a time: an OpenVINO infer request is not thread-safe.
        self._inference = threading.Lock()

    def __call__(self, batch: dict) -> dict:
        names = [str(x) for x in batch["path"]]
        uris = [bool(x) for x in batch["uri"]]
        sources = [SourceUri(n) if uri else Path(n) for n, uri in zip(names, uris)]
        loaded = list(self.pool.map(self._load, sources))
        ready = [item for item in loaded if not isinstance(item, str)]
        results = {str(s): ("failed", item) for s, item in zip(sources, loaded) if isinstance(item, str)}
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start : start + self.batch_size]
            try:
                with self._inference:
                    outputs = self.explainer.run([tensor for _, _, tensor, _, _ in chunk])
            except Exception as exc:  # noqa: BLE001 (a batch the runtime refuses fails its images, not the job)
                results.update(
                    {str(s): ("failed", f"inference failed ({type(exc).__name__}: {exc})") for s, *_ in chunk}
                )
                continue
            done = self.pool.map(self._render, chunk, outputs)
            results.update(zip((str(s) for s, *_ in chunk), done))
        return {"path": names, "result": [pickle.dumps(results[name]) for name in names]}

    def _load(self, source):
        """(source, display image, tensor, placement, decoded shape), or the reason it could not be loaded."""
        try:
            image = read_image(source) if isinstance(source, Path) else self._read_uri(source)
            tensor, placement = self.explainer.preprocessing(image)
            return source, display_image(image), tensor, placement, image.shape
        except ImageError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 (as the local engine: an odd file must not stop the run)
            return f"cannot prepare the image ({type(exc).__name__}: {exc})"

    def _read_uri(self, uri: SourceUri):
        data = read_source(uri)
        fd, local = tempfile.mkstemp(dir=self.scratch, suffix=os.path.splitext(uri.name)[1])
        try:  # read_image's checks (size, header, decode limits) apply to a URI's bytes as to a file's
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            return read_image(local)
        finally:
            os.unlink(local)

    def _render(self, item, output):
        source, shown, _, placement, shape = item
        try:
            explanation = self.explainer.describe(output, placement, shape)
            if self.encoder is None:
                return "row", explanation_row(str(source), explanation)
            return "files", self.encoder.encode(source, shown, explanation, self.explainer.input_size)
        except Exception as exc:  # noqa: BLE001 (one image's rendering failure is recorded, the job goes on)
            return "failed", f"cannot render the results ({type(exc).__name__}: {exc})"


def _threads_per_worker(ray, workers: int) -> int:
    """Inference threads per actor: the smallest node's CPUs shared by the actors a node gets (at least 1), so
    that actors on one machine do not oversubscribe it."""
    nodes = [n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")] or [1]
    per_node = -(-max(1, workers) // len(nodes))
    return max(1, int(min(nodes)) // per_node)


def default_workers(ray) -> int:
    """One actor per node (each then runs its model on the node's CPUs)."""
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive")))


def _store(writer, source, kind: str, payload) -> None:
    """Hand one actor result to the folder's writer; a write that fails is that image's failure."""
    if kind == "failed":
        writer.fail(source, payload)
    elif kind == "row":
        writer.add_row(payload)
    else:
        try:
            writer.add_encoded(*payload)
        except Exception as exc:  # noqa: BLE001 (a full disk for one image is recorded, the run goes on)
            writer.fail(source, f"cannot write the results ({type(exc).__name__}: {exc})")


def explain_with_ray(
    explainer: Explainer,
    explainer_options: dict,
    sources: list,
    writer,
    *,
    workers: int = 1,
    batch_size: int = 8,
    output: str = "files",
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Explain `sources` on the actor pool and write through `writer` (ResumableWriter, or ParquetResults for
    output="parquet"). `explainer` is the driver's (its settings go into the records); the actors build theirs
    from `explainer_options`. A failed image is recorded and the job goes on; KeyboardInterrupt writes what is
    done and raises RunInterrupted, as the local engine. Ray must be running (`ray_session`)."""
    start = time.perf_counter()
    interrupted = False
    try:
        if sources:  # all done by an earlier run: no job at all
            _run_job(explainer_options, sources, writer, workers, batch_size, output, progress)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):  # the cluster went away, a worker could not start...
            raise XaiGraphError(
                f"the Ray job failed ({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]})"
            ) from exc
        raise
    finally:
        with signals_held():  # a second Ctrl-C must not cut the index short
            settings = run_settings(explainer, writer.alpha)
            if interrupted:
                settings["interrupted"] = True
            predictions, index = writer.finish(settings)
    summary = summarise(sources, writer.records, time.perf_counter() - start, predictions, index)
    if interrupted:
        written = sum(1 for s in sources if (r := writer.records.get(str(s))) and not r.get("error"))
        raise RunInterrupted(summary, written)
    return summary


def _run_job(explainer_options, sources, writer, workers, batch_size, output, progress) -> None:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the CLI shows one bar of its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    items = [{"path": str(s), "uri": isinstance(s, SourceUri)} for s in sources]
    # Small blocks, so that batches stream to the actors (and results back) from the start.
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 10_000)))
    dataset = dataset.map_batches(
        ExplainWorker,
        batch_size=batch_size,
        num_cpus=1,
        compute=ActorPoolStrategy(
            size=workers, max_concurrent_calls_per_actor=CALLS_PER_ACTOR, enable_true_multi_threading=True
        ),
        fn_constructor_kwargs={
            "explainer_options": explainer_options,
            "output": output,
            "alpha": writer.alpha,
            "raw": getattr(writer, "raw", False),
            "image_format": getattr(writer, "ext", "png"),
            "threads": _threads_per_worker(ray, workers),
            "batch_size": batch_size,
        },
    )
    by_name = {str(s): s for s in sources}
    seen: set[str] = set()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for name, blob in zip(batch["path"], batch["result"]):
            name = str(name)
            if name in seen:  # a retried batch whose first try had already returned
                continue
            seen.add(name)
            _store(writer, by_name[name], *pickle.loads(blob))
            if progress:
                progress(1)
