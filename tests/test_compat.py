"""The compatibility matrix (scripts/compat.py) on real exports of timm, transformers, Ultralytics, yolov5 and
effdet models: every method is equal to its reference in both runtimes, or refused in one line.

The models come from `scripts/compat_env.sh`, which builds the export environment and prints the folder
holding them; the README's test command sets XAI_GRAPH_COMPAT_DIR to it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import compat  # noqa: E402

CACHE = Path(os.environ["XAI_GRAPH_COMPAT_DIR"]) if os.environ.get("XAI_GRAPH_COMPAT_DIR") else None
MANIFEST = json.loads((CACHE / "manifest.json").read_text()) if CACHE else []
RESULTS: dict[str, list] = {}  # model -> its rows, for the size check after the models ran
pytestmark = pytest.mark.skipif(
    CACHE is None, reason="XAI_GRAPH_COMPAT_DIR is not set (XAI_GRAPH_COMPAT_DIR=$(bash scripts/compat_env.sh))"
)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_model(entry, tmp_path):
    assert "export_error" not in entry, entry.get("export_error")
    rows = compat.check_entry(entry, CACHE, tmp_path)
    RESULTS[entry["name"]] = rows
    bad = [f"{r['method']}: {r['status']} {r['detail']}" for r in rows if r["status"] not in ("equal", "refused")]
    assert not bad, "; ".join(bad)
    assert any(r["status"] == "equal" for r in rows), "no method applies: " + "; ".join(r["detail"] for r in rows)


def test_matrix_size():
    """The matrix the README reports: every source, at least 50 model x method rows equal to their references
    (the table is written beside the models, as compat.md)."""
    if len(RESULTS) < len(MANIFEST):
        pytest.skip("only part of the matrix ran")
    assert {"ultralytics", "yolov5", "effdet", "timm", "transformers"} <= {e["source"] for e in MANIFEST}
    rows = [row for rows in RESULTS.values() for row in rows]
    (CACHE / "compat.md").write_text(compat.markdown(rows))
    assert sum(row["status"] == "equal" for row in rows) >= 50


# One export per layout the IR path must see the same way as the ONNX path.
IR_PARITY = [
    "timm/swin_tiny_patch4_window7_224",
    "transformers/SwinForImageClassification (eager)",
    "transformers/BeitForImageClassification (eager)",
    "transformers/ViTForImageClassification (sdpa)",
    "ultralytics/yolov8n (dynamic)",
    "yolov5/yolov5n (nc=3, opset 12)",
    "effdet/efficientdet_d0",
]


@pytest.mark.parametrize("name", IR_PARITY)
def test_ir_path_equals_onnx_path(name, tmp_path):
    """The model converted to an f32 IR and instrumented natively gives the ONNX head's maps (OpenVINO f32), at a
    batch of 3 and, for free input sizes, at a size other than the export's."""
    import numpy as np
    import openvino as ov

    import xai_graph
    from xai_graph.runtime import open_model

    entry = next(e for e in MANIFEST if e["name"] == name)
    path = CACHE / entry["file"]
    xml = tmp_path / "model.xml"
    ov.save_model(ov.convert_model(str(path)), str(xml), compress_to_fp16=False)
    input_name, shape = next(iter(entry["inputs"].items()))
    size = [256, 384] if "dynamic" in name else shape[2:]
    images = np.random.default_rng(0).standard_normal((3 if entry["batch_dynamic"] else 1, 3, *size))
    feeds = {input_name: images.astype(np.float32)}
    maps = []
    for source, out in ((path, tmp_path / "onnx_head.onnx"), (xml, tmp_path / "ir_head.xml")):
        head = xai_graph.save_model(xai_graph.insert(source, "classwisesaliencymap", raw=True), out)
        maps.append(open_model(head, "openvino")(feeds)["saliency_map"])
    scale = float(np.abs(maps[0]).max())
    assert maps[0].shape == maps[1].shape and float(np.abs(maps[0] - maps[1]).max()) <= 1e-5 * scale
