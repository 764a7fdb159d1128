"""Head cost on a ResNet-18-sized CNN (512 channels, 20 classes) and the real EfficientNet-Lite0.

    python scripts/bench_heads.py [--rounds 30]

Runs `xai-graph bench`'s measurement (original and instrumented models interleaved in
one process) for ResNet-18 at 224x224 (7x7 map) and 448x448 (14x14), batch 1 and 8,
in ONNX Runtime and OpenVINO, then the sample EfficientNet-Lite0 (1000 classes) with
Recipro-CAM maps for each image's 5 best classes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from resnet18 import export_resnet18  # noqa: E402
from xai_graph.bench import benchmark, format_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (224, 448):
            model = Path(tmp) / f"resnet18_{size}.onnx"
            export_resnet18(model, size)
            print(f"\nResNet-18, 20 classes, {size}x{size} ({size // 32}x{size // 32} map)")
            rows, _ = benchmark(
                model, ["activationmap", "eigencam", "classwisesaliencymap"], runtimes, [1, 8], rounds=args.rounds
            )
            print(format_table(rows), flush=True)
    print("\nEfficientNet-Lite0, ImageNet (1000 classes), 224x224, Recipro-CAM top-5")
    rows, _ = benchmark(
        ROOT / "samples" / "efficientnet_lite0.onnx",
        ["classwisesaliencymap"],
        runtimes,
        [1, 8],
        rounds=args.rounds,
        top_k=5,
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
