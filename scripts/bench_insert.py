"""Insertion time and model-size growth on a ResNet-18-sized model (512 channels, 20 classes).

    python scripts/bench_insert.py [--size 224] [--repeat 5]

Times `xai_graph.insert` + `save_model` (median of --repeat runs, after one warm-up)
for each algorithm, and prints the file size before and after.
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
        print(f"{'algorithm':<22}{'insert+save (s)':>16}{'load+insert+save (s)':>22}{'growth (bytes)':>16}")
        for algo in xai_graph.algorithms():
            out = Path(tmp) / f"{algo}.onnx"
            in_memory, end_to_end = [], []
            for _ in range(args.repeat + 1):
                start = time.perf_counter()
                model = xai_graph.load_model(source)
                loaded = time.perf_counter()
                xai_graph.save_model(xai_graph.insert(model, algo), out)
                done = time.perf_counter()
                in_memory.append(done - loaded)
                end_to_end.append(done - start)
            growth = out.stat().st_size - original
            print(f"{algo:<22}{statistics.median(in_memory[1:]):>16.3f}{statistics.median(end_to_end[1:]):>22.3f}"
                  f"{growth:>16,}")


if __name__ == "__main__":
    main()
