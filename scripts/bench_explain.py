"""Explain throughput next to bare inference throughput, on the same 200 images.

    python scripts/bench_explain.py [--images 200] [--runtime onnxruntime] [--algo classwisesaliencymap]
    python scripts/bench_explain.py --photo-size 1920x1080 --images 100   # camera-sized photos

bare:    decode + preprocess + the original model (no head), batches of --batch-size
explain: `xai-graph explain`'s pipeline on the instrumented model: decode + preprocess +
         inference + rendering the predicted class's map and overlay + writing them (the
         default output: a grayscale PNG map and a JPEG overlay; --image-format png for PNG
         overlays), the image for the gallery, predictions.json and index.html
Both use the sample EfficientNet-Lite0 (ImageNet, 224x224) and the same threads; each is
run --repeat times, interleaved (bare, explain, bare, ...), and the medians are reported:
the ratio is the median of each pair's ratio, so that a noisy neighbour slowing one pair
down moves it less than it moves either throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import xai_graph  # noqa: E402
from xai_graph.explaining.explainer import Explainer  # noqa: E402
from xai_graph.explaining.gallery import DEFAULT_IMAGE_FORMAT, IMAGE_FORMATS, ResultWriter  # noqa: E402
from xai_graph.explaining.images import read_image  # noqa: E402
from xai_graph.explaining.pipeline import _prefetch, explain_files  # noqa: E402
from xai_graph.runtime import open_model  # noqa: E402

MODEL = ROOT / "samples" / "efficientnet_lite0.onnx"


def make_images(folder: Path, count: int, size: tuple[int, int] | None = None) -> list[Path]:
    """`count` JPEGs cut from the sample photos (random crops and flips), sized between 300 and 800 px on the
    longer side, or all resized to `size` (width, height), as camera photos are."""
    rng = np.random.default_rng(0)
    photos = [cv2.imread(str(p)) for p in sorted((ROOT / "samples" / "images").iterdir())]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if size:
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
        else:
            scale = rng.uniform(300, 800) / max(ch, cw)
            crop = cv2.resize(crop, (int(cw * scale), int(ch * scale)), interpolation=cv2.INTER_AREA)
        paths.append(folder / f"img_{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


class Run:
    """Images per second and CPU time per image (all threads) of one run."""

    def __init__(self, images: int):
        self.images = images

    def __enter__(self) -> Run:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.rate = self.images / (time.perf_counter() - self.wall)
        self.cpu_ms = 1000 * (time.process_time() - self.cpu) / self.images


def bare(explainer: Explainer, original, paths: list[Path], batch_size: int) -> None:
    with ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
        batch = []
        for tensor in _prefetch(pool, lambda p: explainer.preprocessing(read_image(p))[0], paths, 2 * batch_size):
            batch.append(tensor)
            if len(batch) == batch_size:
                original({explainer.input_name: np.stack(batch)})
                batch = []
        if batch:
            original({explainer.input_name: np.stack(batch)})


def explain(
    explainer: Explainer,
    paths: list[Path],
    batch_size: int,
    outdir: Path,
    image_format: str,
    workers: int | None = None,
) -> None:
    with ResultWriter(outdir, overwrite=True, image_format=image_format) as writer:
        explain_files(explainer, paths, writer, batch_size=batch_size, workers=workers)


def photo_size(text: str) -> tuple[int, int] | None:
    if text == "mixed":
        return None
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--algo", default="classwisesaliencymap", choices=xai_graph.algorithms())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--image-format",
        default=DEFAULT_IMAGE_FORMAT,
        choices=IMAGE_FORMATS,
        help="of the overlays (maps are grayscale PNGs)",
    )
    parser.add_argument(
        "--photo-size",
        type=photo_size,
        default=None,
        help="WxH: every photo at this size (default: mixed, 300 to 800 px)",
    )
    parser.add_argument("--workers", type=int, help="explain's render threads (default: as explain picks)")
    parser.add_argument("--top-k", type=int, default=5, help="class-wise heads: maps for the k best classes (0: all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: also the Ray engine with 1 and 2 workers, into files and into Parquet",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images, args.photo_size)
        instrumented = tmp / "instrumented.onnx"
        class_wise = args.algo == "classwisesaliencymap"
        top_k = args.top_k if class_wise and args.top_k else None
        xai_graph.save_model(xai_graph.insert(MODEL, args.algo, top_k=top_k), instrumented)
        with Explainer(instrumented, runtime=args.runtime) as explainer:
            original = open_model(MODEL, args.runtime)
            bare_runs, explain_runs = [], []
            for _ in range(args.repeat):
                with Run(len(paths)) as run:
                    bare(explainer, original, paths, args.batch_size)
                bare_runs.append(run)
                with Run(len(paths)) as run:
                    explain(explainer, paths, args.batch_size, tmp / "out", args.image_format, args.workers)
                explain_runs.append(run)
        b, e = (statistics.median(r.rate for r in runs) for runs in (bare_runs, explain_runs))
        ratio = statistics.median(x.rate / y.rate for x, y in zip(explain_runs, bare_runs))
        cpu_b, cpu_e = (statistics.median(r.cpu_ms for r in runs) for runs in (bare_runs, explain_runs))
        sizes = f"{args.photo_size[0]}x{args.photo_size[1]}" if args.photo_size else "300-800 px"
        print(
            f"EfficientNet-Lite0 224x224, {args.images} images ({sizes}), {args.runtime}, {args.algo}"
            f"{f' top-{top_k}' if top_k else ''}, overlays {args.image_format}, "
            f"batch {args.batch_size}, {os.cpu_count()} CPUs, median of {args.repeat}"
        )
        print(f"bare inference (decode+preprocess+model): {b:7.1f} images/s  runs: {_runs(bare_runs)}")
        print(f"explain (+ head, render, write):          {e:7.1f} images/s  runs: {_runs(explain_runs)}")
        print(f"explain / bare:                           {ratio:7.2f}")
        # CPU time moves less than throughput when other processes share the cores: a second view of the cost.
        print(
            f"CPU time per image, bare / explain:       {cpu_b:7.1f} / {cpu_e:.1f} ms (all threads); "
            f"ratio {cpu_b / cpu_e:.2f}"
        )
        if args.engine == "ray":  # the Ray engine's rows, on the same images (scripts/bench_explain_ray.py)
            from bench_explain_ray import print_rows, ray_rows

            print_rows(
                ray_rows(instrumented, args.runtime, paths, args.batch_size, args.image_format, tmp, args.repeat), e
            )


def _runs(runs: list[Run]) -> str:
    return " ".join(f"{r.rate:.1f}" for r in runs)


if __name__ == "__main__":
    main()
