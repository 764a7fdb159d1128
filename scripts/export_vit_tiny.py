"""Export the ViT-Tiny-sized classifier the transformer benchmark uses (random weights, dynamic batch).

    python scripts/export_vit_tiny.py vit_tiny.onnx [--attention fused|separate|mha] [--distilled] [--export legacy17]
    xai-graph bench vit_tiny.onnx --algo classwisesaliencymap --algo activationmap

12 pre-norm blocks, D 192, 3 heads, 16x16 patches of a 224x224 image (14x14 grid), 1000 classes:
the model definition is tests/vits.py (plain torch: timm is not a dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from vits import ATTENTIONS, EXPORTS, export, vit_tiny  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--attention", choices=ATTENTIONS, default="fused")
    parser.add_argument("--distilled", action="store_true", help="DeiT: add a distillation token and head")
    parser.add_argument("--export", choices=EXPORTS, default="legacy17")
    args = parser.parse_args()
    export(vit_tiny(args.attention, args.distilled), args.output, args.export, size=224)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
