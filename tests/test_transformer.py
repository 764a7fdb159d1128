"""ViT Recipro-CAM on ViT-style classifiers, against a torch reference of the same definition."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import reference
import xai_graph
from heads import check_head
from xai_graph.graph.io import load_model
from xai_graph.graph.transformer import find_transformer
from xai_graph.runtime import open_model
from vits import ATTENTIONS, EXPORTS, TinyViT, export, vit_recipro_cam


CASES = [(attention, distilled, how) for attention in ATTENTIONS for distilled in (False, True) for how in EXPORTS]


@pytest.mark.parametrize(
    ("attention", "distilled", "how"), CASES, ids=[f"{a}-{'deit' if d else 'vit'}-{h}" for a, d, h in CASES]
)
def test_vit_recipro_cam_matches_the_definition(attention, distilled, how, tmp_path):
    model = TinyViT(attention, distilled=distilled).eval()
    path = export(model, tmp_path / "vit.onnx", how)
    block = find_transformer(load_model(path))
    assert block is not None and block.grid == (4, 4) and block.extra_tokens == model.extra, "not the patch conv"
    assert block.attention is not None, block.why_cloned
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        tokens = model.tokens(torch.from_numpy(images)).numpy()
    for algo, expected in [
        ("classwisesaliencymap", vit_recipro_cam(model, torch.from_numpy(images))),
        ("activationmap", tokens[:, model.extra :].mean(-1).reshape(3, 4, 4)),
        ("maxactivation", tokens[:, model.extra :].max(-1).reshape(3, 4, 4)),
    ]:
        u8 = xai_graph.save_model(xai_graph.insert(path, algo), tmp_path / f"{algo}_u8.onnx")
        raw_model = xai_graph.insert(path, algo, raw=True)
        raw = xai_graph.save_model(raw_model, tmp_path / f"{algo}_raw.onnx")
        check_head(path, u8, raw, {"image": images}, expected.astype(np.float64), algo)
        # Batch 1 and batch 3 agree per image.
        alone = open_model(raw)({"image": images[1:2]})["saliency_map"][0]
        together = open_model(raw)({"image": images})["saliency_map"][1]
        reference.assert_close_raw(alone, together.astype(np.float64), "batch 1 vs 3", rel=1e-5)
    assert raw_model.metadata_props["xai_graph.method"] == "MaxActivation"
    # The class-token form equals the brute-force cloned block (which cannot run dynamo's MultiheadAttention).
    if (attention, how) != ("mha", "dynamo18"):
        cheap = xai_graph.insert(path, raw=True)
        cloned = xai_graph.insert(path, raw=True, brute_force=True)
        assert cheap.metadata_props["xai_graph.method"] == "ViT Recipro-CAM (class-token attention)"
        assert cloned.metadata_props["xai_graph.method"] == "ViT Recipro-CAM (cloned block)"
        maps = [
            open_model(xai_graph.save_model(m, tmp_path / f"{i}.onnx"))({"image": images})["saliency_map"]
            for i, m in enumerate((cheap, cloned))
        ]
        reference.assert_close_raw(maps[0], maps[1].astype(np.float64), "class-token vs cloned block", rel=1e-5)


@pytest.mark.parametrize("mask, score", [("onehot", "softmax"), ("gaussian", "sigmoid")])
def test_masks_and_scores(mask, score, tmp_path):
    """One-hot masks and softmax/sigmoid scores, class-token form against the definition."""
    model = TinyViT("fused", distilled=True).eval()
    path = export(model, tmp_path / "vit.onnx")
    images = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    logits = vit_recipro_cam(model, torch.from_numpy(images), mask)
    expected = torch.from_numpy(logits).softmax(1).numpy() if score == "softmax" else 1 / (1 + np.exp(-logits))
    raw = xai_graph.save_model(xai_graph.insert(path, mask=mask, score=score, raw=True), tmp_path / "raw.onnx")
    for rt in ("onnxruntime", "openvino"):
        got = open_model(raw, rt)({"image": images})["saliency_map"]
        reference.assert_close_raw(got, expected.astype(np.float64), f"{mask}/{score} in {rt}")


def test_head_reading_every_token_gets_the_cloned_block(tmp_path):
    """A ViT whose head averages all tokens is not class-token-only: the cloned block is the only form; it
    costs more than 3x the model, so `insert` says so and asks for --brute-force, and then equals the
    definition."""
    model = TinyViT("fused", pool="mean").eval()
    path = export(model, tmp_path / "vit.onnx")
    block = find_transformer(load_model(path))
    assert block.attention is None and "classifier reads more than the class" in block.why_cloned
    with pytest.raises(
        xai_graph.XaiGraphError,
        match=r"re-run \d+% of the graph per position .* about [\d.]+x "
        r"the model's cost: the classifier reads more .* "
        r"brute_force=True",
    ):
        xai_graph.insert(path)
    images = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    raw_model = xai_graph.insert(path, raw=True, brute_force=True)
    assert raw_model.metadata_props["xai_graph.method"] == "ViT Recipro-CAM (cloned block)"
    got = open_model(xai_graph.save_model(raw_model, tmp_path / "raw.onnx"))({"image": images})["saliency_map"]
    reference.assert_close_raw(got, vit_recipro_cam(model, torch.from_numpy(images)).astype(np.float64), "mean pool")


def test_brute_force_refuses_a_sequence_first_block(tmp_path):
    """torch's MultiheadAttention through the dynamo exporter reshapes to a sequence-first layout with shapes
    fixed at export: the class-token form keeps those shapes and works (tested above), but the cloned block
    cannot run it at another batch, and `--brute-force` says so instead of writing a model that fails."""
    path = export(TinyViT("mha"), tmp_path / "vit.onnx", "dynamo18")
    with pytest.raises(xai_graph.XaiGraphError, match="first axis is not the batch"):
        xai_graph.insert(path, brute_force=True)


def test_inspect_names_the_block_not_the_patch_embedding(tmp_path):
    from test_cli import xai_graph_cli

    path = export(TinyViT("mha"), tmp_path / "vit.onnx", "legacy14")
    result = xai_graph_cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "task    transformer" in result.stdout and "4x4 patches" in result.stdout
    assert re.search(
        r"classwisesaliencymap: yes \(ViT Recipro-CAM, class-token attention; re-run [\d.]+% of the "
        r"graph per position \(16 positions\), about 1\.\dx the model's cost\)",
        result.stdout,
    )


def test_model_neither_cnn_nor_transformer_is_named_so(tmp_path):
    """An MLP on image pixels: no spatial map, no transformer block; one line saying what was looked for."""
    from test_cli import xai_graph_cli

    mlp = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    ).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(
        mlp,
        (torch.randn(1, 3, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores"],
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    result = xai_graph_cli("insert", path, "-o", tmp_path / "out.onnx")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "transformer" in message and "spatial" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_explain_a_vit_instrumented_on_the_fly(tmp_path):
    import json

    import cv2

    from test_cli import xai_graph_cli

    path = export(TinyViT("fused"), tmp_path / "vit.onnx")
    cv2.imwrite(str(tmp_path / "photo.png"), (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    result = xai_graph_cli("explain", path, "-i", tmp_path / "photo.png", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "instrumented on the fly" in result.stderr
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]
    assert len(record["explained"]) == 1 and any(f.endswith("_overlay.jpg") for f in record["files"])
