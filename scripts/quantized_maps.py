"""How close INT8 saliency maps are to float ones: EfficientNet-Lite0 (bundled) as ONNX QDQ and INT8 IRs.

    python scripts/quantized_maps.py

Prints, per quantized form, the method used and the Pearson correlation of each sample photo's top-1 map with
the float model's (README table).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from quantized import LITE0, map_correlations, quantize  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        qdq, int8, nncf_ir = quantize(Path(folder))
        print("| model | runtime | head | Pearson per photo | top-1 same |")
        print("|---|---|---|---|---|")
        for label, path, runtime in (
            ("ONNX QDQ (onnxruntime.quantization)", qdq, "onnxruntime"),
            ("INT8 IR (OpenVINO from the QDQ model)", int8, "openvino"),
            ("INT8 IR (NNCF post-training quantization of the f32 IR)", nncf_ir, "openvino"),
        ):
            r = map_correlations(LITE0, path, Path(folder), runtime)
            print(
                f"| {label} | {runtime} | {r['method']} | {', '.join(f'{p:.3f}' for p in r['pearson'])} | "
                f"{'yes' if r['same_top1'] else 'no'} |"
            )


if __name__ == "__main__":
    main()
