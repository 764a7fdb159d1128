"""Insertion time and model-size growth on a ResNet-18-sized model (512 channels, 20 classes).

    python scripts/bench_insert.py [--size 224] [--repeat 5]

Times what `xai-graph insert MODEL` does: load + check + insert + save + check of the
written file (median of --repeat runs, after one warm-up), for each algorithm and
Recipro-CAM form, and prints the file-size growth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import xai_graph  # noqa: E402
from resnet18 import export_resnet18  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input size (224 -> 7x7 map, 448 -> 14x14)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "resnet18.onnx"
        export_resnet18(source, args.size)
        original = source.stat().st_size
        print(f"ResNet-18, 20 classes, {args.size}x{args.size} input: {original / 1e6:.2f} MB")
        print(f"{'head':<36}{'load+insert+save (s)':>22}{'growth (bytes)':>16}")
        for algo, options in [
            ("activationmap", {}),
            ("eigencam", {}),
            ("classwisesaliencymap", {}),
            ("classwisesaliencymap", {"brute_force": True}),
        ]:
            out = Path(tmp) / f"{algo}.onnx"
            times = []
            for _ in range(args.repeat + 1):
                start = time.perf_counter()
                model = xai_graph.insert(source, algo, check=False, **options)
                xai_graph.save_model(model, out)
                times.append(time.perf_counter() - start)
            name = (
                f"{algo} ({model.metadata_props['xai_graph.method'].partition('(')[2].rstrip(')')})"
                if "(" in model.metadata_props["xai_graph.method"]
                else algo
            )
            growth = out.stat().st_size - original
            print(f"{name:<36}{statistics.median(times[1:]):>22.3f}{growth:>16,}")


if __name__ == "__main__":
    main()
