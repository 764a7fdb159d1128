"""`xai-graph eval` throughput per method next to bare inference throughput, on the same images.

    python scripts/bench_eval.py [--images 24] [--steps 32] [--runtime onnxruntime]

bare: decode + preprocess + the original model (no head), batches of 8 (as bench_explain.py)
eval: `xai_graph.explaining.evaluate.evaluate` for one method: instrumenting, explaining, deletion and insertion
      (2 x (steps + 1) perturbed copies through the plain model, batched), ADCC (one more run), and the
      sanity check (the model re-drawn and re-instrumented --sanity-layers times, each run on every image).
Both on the sample EfficientNet-Lite0 (ImageNet, 224x224); the target is eval >= bare / 40 per method.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import xai_graph  # noqa: E402
from bench_explain import MODEL, bare, make_images  # noqa: E402
from xai_graph.explaining.evaluate import EvalSettings, evaluate  # noqa: E402
from xai_graph.explaining.explainer import Explainer  # noqa: E402
from xai_graph.runtime import open_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--sanity-layers", type=int, default=3)
    parser.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "images").mkdir()
        paths = make_images(Path(tmp) / "images", args.images)
        with Explainer(MODEL, runtime=args.runtime, algo="activationmap") as explainer:
            bare_rate = max(bare(explainer, open_model(MODEL, args.runtime), paths, 8) for _ in range(3))
        print(
            f"EfficientNet-Lite0 224x224, {args.images} images, {args.runtime}, {args.steps} steps, "
            f"sanity {args.sanity_layers} layers, {os.cpu_count()} CPUs"
        )
        print(f"bare inference: {bare_rate:.1f} images/s; target per method: >= {bare_rate / 40:.2f} images/s")
        print(f"{'method':<24}{'eval images/s':>15}{'bare / eval':>13}{'without sanity':>16}{'bare / eval':>13}")
        for algo in xai_graph.algorithms():
            rates = []
            for sanity in (args.sanity_layers, 0):
                settings = EvalSettings(steps=args.steps, sanity_layers=sanity, runtime=args.runtime)
                start = time.perf_counter()
                evaluate(MODEL, paths, [algo], settings)
                rates.append(len(paths) / (time.perf_counter() - start))
            print(
                f"{algo:<24}{rates[0]:>15.2f}{bare_rate / rates[0]:>13.1f}{rates[1]:>16.2f}"
                f"{bare_rate / rates[1]:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
