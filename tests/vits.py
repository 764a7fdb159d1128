"""ViT / DeiT-style classifiers written in plain torch, their exports, and ViT Recipro-CAM's definition in torch.

Attention comes in three forms: torch's nn.MultiheadAttention ("mha"), and written by hand
with one fused QKV projection ("fused") or three separate ones ("separate").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from xai_graph.methods.vit_recipro_cam import token_masks

ATTENTIONS = ("mha", "fused", "separate")
# torch's dynamo exporter writes opset 18 at least (asked for 14 it keeps 18), so opset 14 is legacy-only.
EXPORTS = ("legacy17", "legacy14", "dynamo18")


class HandAttention(nn.Module):
    def __init__(self, d, heads, fused):
        super().__init__()
        self.heads, self.fused, self.proj = heads, fused, nn.Linear(d, d)
        if fused:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        split = (b, t, self.heads, d // self.heads)
        if self.fused:
            q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        else:  # scaled on the query side, as timm's older ViTs do
            q = self.q(x).reshape(split).transpose(1, 2) * (d // self.heads) ** -0.5
            k, v = (f(x).reshape(split).transpose(1, 2) for f in (self.k, self.v))
        attn = q @ k.transpose(-2, -1)
        attn = (attn / (d // self.heads) ** 0.5 if self.fused else attn).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads, attention):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mha = attention == "mha"
        self.attn = (
            nn.MultiheadAttention(d, heads, batch_first=True)
            if self.mha
            else HandAttention(d, heads, fused=attention == "fused")
        )
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def attend(self, y):
        return self.attn(y, y, y, need_weights=False)[0] if self.mha else self.attn(y)

    def forward(self, x, normalised=None):
        y = self.norm1(x) if normalised is None else normalised
        x = x + self.attend(y)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT; with `distilled`, DeiT: a distillation token after the class token and the two heads averaged.
    `pool="mean"`: the head reads the mean of all tokens instead of the class token."""

    def __init__(
        self, attention="mha", distilled=False, d=32, depth=3, heads=4, patch=8, size=32, classes=5, pool="token"
    ):
        super().__init__()
        torch.manual_seed(0)
        self.extra, self.pool = 2 if distilled else 1, pool
        self.embed = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, self.extra, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, self.extra + (size // patch) ** 2, d) * 0.5)
        self.blocks = nn.ModuleList([Block(d, heads, attention) for _ in range(depth)])
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
        if self.pool == "mean":
            return self.head(y.mean(1))
        return self.head(y[:, 0]) if self.head_dist is None else (self.head(y[:, 0]) + self.head_dist(y[:, 1])) / 2

    def forward(self, x):
        return self.classify(self.blocks[-1](self.tokens(x)))


def vit_tiny(attention="fused", distilled=False) -> TinyViT:
    """ViT-Tiny-sized: 12 blocks, D 192, 3 heads, 16x16 patches of a 224x224 image (14x14), 1000 classes."""
    return TinyViT(attention, distilled, d=192, depth=12, heads=3, patch=16, size=224, classes=1000).eval()


def export(model: TinyViT, path: Path, how: str = "legacy17", size: int = 32) -> Path:
    """Export with a dynamic batch: `how` is legacy17, legacy14 (LayerNorm decomposed) or dynamo18."""
    x = torch.randn(2, 3, size, size)
    model.eval()
    if how.startswith("dynamo"):
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            opset_version=int(how[6:]),
            input_names=["image"],
            output_names=["scores"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    else:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=int(how[6:]),
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": {0: "b"}},
        )
    return path


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
