"""Explain throughput next to bare inference throughput, on the same 200 images.

    python scripts/bench_explain.py [--images 200] [--runtime onnxruntime] [--algo classwisesaliencymap]

bare:    decode + preprocess + the original model (no head), batches of --batch-size
explain: `xai-graph explain`'s pipeline on the instrumented model: decode + preprocess +
         inference + rendering the predicted class's map and overlay + writing PNGs,
         predictions.json and index.html
Both use the sample EfficientNet-Lite0 (ImageNet, 224x224) and the same threads; each is
run --repeat times, interleaved, and the best run of each is reported.
"""

from __future__ import annotations

import argparse
import os
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
from xai_graph.explaining.gallery import ResultWriter  # noqa: E402
from xai_graph.explaining.images import read_image  # noqa: E402
from xai_graph.explaining.pipeline import _prefetch, explain_files  # noqa: E402
from xai_graph.runtime import open_model  # noqa: E402

MODEL = ROOT / "samples" / "efficientnet_lite0.onnx"


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` JPEGs cut from the sample photos (random crops, flips and sizes between 300 and 800 px)."""
    rng = np.random.default_rng(0)
    photos = [cv2.imread(str(p)) for p in sorted((ROOT / "samples" / "images").iterdir())]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        side = rng.uniform(300, 800)
        scale = side / max(ch, cw)
        crop = cv2.resize(crop, (int(cw * scale), int(ch * scale)), interpolation=cv2.INTER_AREA)
        paths.append(folder / f"img_{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def bare(explainer: Explainer, original, paths: list[Path], batch_size: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
        batch = []
        for tensor in _prefetch(pool, lambda p: explainer.preprocessing(read_image(p))[0], paths, 2 * batch_size):
            batch.append(tensor)
            if len(batch) == batch_size:
                original({explainer.input_name: np.stack(batch)})
                batch = []
        if batch:
            original({explainer.input_name: np.stack(batch)})
    return len(paths) / (time.perf_counter() - start)


def explain(explainer: Explainer, paths: list[Path], batch_size: int, outdir: Path, image_format: str) -> float:
    writer = ResultWriter(outdir, overwrite=True, image_format=image_format)
    summary = explain_files(explainer, paths, writer, batch_size=batch_size)
    return summary.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--algo", default="classwisesaliencymap", choices=xai_graph.algorithms())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-format", default="png", choices=["png", "jpg"])
    parser.add_argument("--top-k", type=int, default=5, help="class-wise heads: maps for the k best classes (0: all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="ray: also the Ray engine with 1 and 2 workers, into files and into Parquet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_images(tmp / "images", args.images)
        instrumented = tmp / "instrumented.onnx"
        class_wise = args.algo == "classwisesaliencymap"
        top_k = args.top_k if class_wise and args.top_k else None
        xai_graph.save_model(xai_graph.insert(MODEL, args.algo, top_k=top_k), instrumented)
        with Explainer(instrumented, runtime=args.runtime) as explainer:
            original = open_model(MODEL, args.runtime)
            bare_runs, explain_runs = [], []
            for _ in range(args.repeat):
                bare_runs.append(bare(explainer, original, paths, args.batch_size))
                explain_runs.append(explain(explainer, paths, args.batch_size, tmp / "out", args.image_format))
        b, e = max(bare_runs), max(explain_runs)
        print(f"EfficientNet-Lite0 224x224, {args.images} images, {args.runtime}, {args.algo}"
              f"{f' top-{top_k}' if top_k else ''}, {args.image_format}, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs, best of {args.repeat}")
        print(f"bare inference (decode+preprocess+model): {b:7.1f} images/s")
        print(f"explain (+ head, render, write):          {e:7.1f} images/s")
        print(f"explain / bare:                           {e / b:7.2f}")
        if args.engine == "ray":  # the Ray engine's rows, on the same images (scripts/bench_explain_ray.py)
            from bench_explain_ray import print_rows, ray_rows

            print_rows(ray_rows(instrumented, args.runtime, paths, args.batch_size, args.image_format, tmp,
                                args.repeat), e)


if __name__ == "__main__":
    main()
