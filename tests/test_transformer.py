"""ViT Recipro-CAM on ViT-style classifiers, against a torch reference of the same definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reference
import xai_graph
from heads import check_head
from xai_graph.graph.io import load_model
from xai_graph.graph.transformer import find_transformer
from xai_graph.methods.vit_recipro_cam import token_masks
from xai_graph.runtime import open_model


class HandAttention(nn.Module):
    """Attention written by hand with one fused QKV projection."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads, hand):
        super().__init__()
        self.hand = hand
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = HandAttention(d, heads) if hand else nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def attend(self, y):
        return self.attn(y) if self.hand else self.attn(y, y, y, need_weights=False)[0]

    def forward(self, x, normalised=None):
        y = self.norm1(x) if normalised is None else normalised
        x = x + self.attend(y)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT; with `distilled`, DeiT: a distillation token after the class token and the two heads averaged."""

    def __init__(self, hand=False, distilled=False, d=32, depth=3, heads=4, patch=8, size=32, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.extra = 2 if distilled else 1
        self.embed = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, self.extra, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, self.extra + (size // patch) ** 2, d) * 0.5)
        self.blocks = nn.ModuleList([Block(d, heads, hand) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)
        self.head_dist = nn.Linear(d, classes) if distilled else None

    def tokens(self, x):  # the sequence entering the last block
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for block in self.blocks[:-1]:
            x = block(x)
        return x

    def classify(self, y):
        y = self.norm(y)
        return self.head(y[:, 0]) if self.head_dist is None else (self.head(y[:, 0]) + self.head_dist(y[:, 1])) / 2

    def forward(self, x):
        return self.classify(self.blocks[-1](self.tokens(x)))


def vit_recipro_cam(model: TinyViT, x: torch.Tensor, mask: str = "gaussian") -> np.ndarray:
    """The definition, in torch: masks scale the last block's input and LN1 of it; block + head per patch."""
    with torch.no_grad():
        tokens = model.tokens(x)
        normalised = model.blocks[-1].norm1(tokens)
        grid = int(round((tokens.shape[1] - model.extra) ** 0.5))
        masks = torch.from_numpy(token_masks((grid, grid), model.extra, mask))  # [hw, T]
        maps = []
        for b in range(tokens.shape[0]):
            m = masks[:, :, None]
            out = model.blocks[-1](tokens[b] * m, normalised=normalised[b] * m)
            scores = model.classify(out)  # [hw, K]
            maps.append(scores.T.reshape(-1, grid, grid).numpy())
        return np.stack(maps)


CASES = [(False, False, False), (True, False, False), (True, True, False), (False, False, True), (True, True, True)]


@pytest.mark.parametrize(("hand", "dynamo", "distilled"), CASES,
                         ids=["multihead-legacy", "hand-legacy", "hand-dynamo", "deit-multihead-legacy",
                              "deit-hand-dynamo"])
def test_vit_recipro_cam_matches_the_definition(hand, dynamo, distilled, tmp_path):
    model = TinyViT(hand=hand, distilled=distilled).eval()
    path = tmp_path / "vit.onnx"
    x = torch.randn(2, 3, 32, 32)
    if dynamo:
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, input_names=["image"],
                          output_names=["scores"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["scores"], dynamic_axes={"image": {0: "b"}})
    block = find_transformer(load_model(path))
    assert block is not None and block.grid == (4, 4) and block.extra_tokens == model.extra, "not the patch conv"
    images = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        tokens = model.tokens(torch.from_numpy(images)).numpy()
    for algo, expected in [("classwisesaliencymap", vit_recipro_cam(model, torch.from_numpy(images))),
                           ("activationmap", tokens[:, model.extra:].mean(-1).reshape(3, 4, 4))]:
        u8 = xai_graph.save_model(xai_graph.insert(path, algo), tmp_path / f"{algo}_u8.onnx")
        raw = xai_graph.save_model(xai_graph.insert(path, algo, raw=True), tmp_path / f"{algo}_raw.onnx")
        check_head(path, u8, raw, {"image": images}, expected.astype(np.float64), algo, fused_tolerance=1e-6)
        # Batch 1 and batch 3 agree per image.
        alone = open_model(raw)({"image": images[1:2]})["saliency_map"][0]
        together = open_model(raw)({"image": images})["saliency_map"][1]
        reference.assert_close_raw(alone, together.astype(np.float64), "batch 1 vs 3", rel=1e-5)


def test_unclonable_block_is_refused_at_insertion(tmp_path):
    """torch's MultiheadAttention through the dynamo exporter reshapes to a sequence-first layout with a shape
    computed from the graph input: the block cannot be cloned at another batch yet, and insert says so
    instead of writing a model that fails when run."""
    path = tmp_path / "vit.onnx"
    torch.onnx.export(TinyViT().eval(), (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, opset_version=18,
                      input_names=["image"], output_names=["scores"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    with pytest.raises(xai_graph.XaiGraphError, match="first axis is not the batch"):
        xai_graph.insert(path)
    am = xai_graph.save_model(xai_graph.insert(path, "activationmap"), tmp_path / "am.onnx")
    assert open_model(am)({"image": np.zeros((2, 3, 32, 32), np.float32)})["saliency_map"].shape == (2, 4, 4)


def test_inspect_names_the_block_not_the_patch_embedding(tmp_path):
    from test_cli import xai_graph_cli

    path = tmp_path / "vit.onnx"
    torch.onnx.export(TinyViT().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"])
    result = xai_graph_cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "task    transformer" in result.stdout and "4x4 patches" in result.stdout
    assert "classwisesaliencymap: yes (ViT Recipro-CAM)" in result.stdout


def test_explain_a_vit_instrumented_on_the_fly(tmp_path):
    import json

    import cv2

    from test_cli import xai_graph_cli

    path = tmp_path / "vit.onnx"
    torch.onnx.export(TinyViT(hand=True).eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "b"}})
    cv2.imwrite(str(tmp_path / "photo.png"), (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    result = xai_graph_cli("explain", path, "-i", tmp_path / "photo.png", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "instrumented on the fly" in result.stderr
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]
    assert len(record["explained"]) == 1 and any(f.endswith("_overlay.png") for f in record["files"])
