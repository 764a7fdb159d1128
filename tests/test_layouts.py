"""Maps that are not NCHW (channels-last, token grids) and class scores that are not [B, K], on small torch models
laid out as timm's and transformers' Swin, BEiT and 1x1-convolution classifiers export them. The real exports
are in the compatibility matrix (tests/test_compat.py); these run in the light environment."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import reference
import xai_graph
from heads import CLASS_WISE
from xai_graph.runtime import open_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from compat import assert_close, cnn_reference  # noqa: E402  (the matrix's references, numpy and onnx only)


class Stem(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        )

    def forward(self, x):
        return self.conv(x)


class ChannelsLast(nn.Module):
    """timm's Swin head: [B, H, W, C], LayerNorm over C, mean over H and W, Linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.norm, self.fc = Stem(), nn.LayerNorm(16), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.norm(self.stem(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class TokensPooled1d(nn.Module):
    """transformers' Swin head: tokens [B, HW, C], LayerNorm, transpose, AdaptiveAvgPool1d, flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.norm, self.pool, self.fc = Stem(), nn.LayerNorm(16), nn.AdaptiveAvgPool1d(1), nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.norm(self.stem(x).flatten(2).transpose(1, 2))
        return self.fc(self.pool(tokens.transpose(1, 2)).flatten(1))


class TokensMean(nn.Module):
    """BEiT's head: the mean of the patch tokens (after a class token), then LayerNorm and Linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.cls, self.norm, self.fc = (
            Stem(),
            nn.Parameter(torch.randn(1, 1, 16)),
            nn.LayerNorm(16),
            nn.Linear(16, 5),
        )

    def forward(self, x):
        patches = self.stem(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1) * 1.5
        return self.fc(self.norm(tokens[:, 1:].mean(1)))


class ConvScores(nn.Module):
    """SqueezeNet-style: a 1x1 convolution to K channels, global pooling, scores [B, K, 1, 1] after a Softmax."""

    def __init__(self):
        super().__init__()
        self.stem, self.classifier = Stem(), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return torch.softmax(nn.functional.adaptive_avg_pool2d(torch.relu(self.classifier(self.stem(x))), 1), 1)


def _randomised(model: nn.Module) -> nn.Module:
    """LayerNorm's default affine part (1, 0) makes the mean over channels 0 everywhere: a map of float noise."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, 1.0, 0.5)
            nn.init.normal_(module.bias, 0.0, 0.5)
    return model


MODELS = {
    "channels-last": (ChannelsLast, "NHWC"),
    "tokens-pool1d": (TokensPooled1d, "NCL"),
    "tokens-mean": (TokensMean, "NLC"),
    "scores-Kx1x1": (ConvScores, "NCHW"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_layout_maps_equal_the_reference(name, tmp_path):
    torch.manual_seed(0)
    cls, layout = MODELS[name]
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        _randomised(cls()).eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
    )
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for algo in ("activationmap", "eigencam", "classwisesaliencymap"):
        raw_model = xai_graph.insert(path, algo, raw=True)
        meta = dict(raw_model.metadata_props)
        assert meta.get("xai_graph.layout", "NCHW") == layout
        raw = xai_graph.save_model(raw_model, tmp_path / "raw.onnx")
        u8 = xai_graph.save_model(xai_graph.insert(path, algo), tmp_path / "u8.onnx")
        expected, caveat = cnn_reference(path, meta["xai_graph.target"], layout, algo, {"image": images}, tmp_path)
        assert caveat is None and expected.shape[-2:] == (8, 8)
        before = open_model(path)({"image": images})
        for runtime in ("onnxruntime", "openvino"):
            assert_close(open_model(raw, runtime)({"image": images})["saliency_map"], expected, f"{name} {algo}")
            got = open_model(u8, runtime)({"image": images})
            reference.assert_within_lsb(
                got["saliency_map"],
                reference.to_uint8(expected, CLASS_WISE[algo]),
                f"{name} {algo} uint8 in {runtime}",
                expected,
            )
            assert np.array_equal(got["scores"], before["scores"]) or runtime == "openvino"
        alone = open_model(u8)({"image": images[1:2]})["saliency_map"][0]  # batch 1 == batch 3
        together = open_model(u8)({"image": images})["saliency_map"][1]
        assert np.abs(alone.astype(int) - together.astype(int)).max() <= 1


class PatchesThenMLP(nn.Module):
    """A patch embedding, then nothing channels-first: an MLP over the flattened patches carries the network."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 4, stride=4)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 1024), nn.ReLU(), nn.Linear(1024, 5))

    def forward(self, x):
        return self.mlp(self.patches(x))


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    """The CLI's answers where no map explains the scores (the only map comes before 95% of the network), for a
    form too costly without --brute-force, and for a --scores that names no output: one `error:` line, exit 1,
    the folder unchanged."""
    from test_cli import xai_graph_cli

    torch.manual_seed(0)
    path = tmp_path / "patches.onnx"
    torch.onnx.export(
        PatchesThenMLP().eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores"],
    )
    cases = {
        ("insert", path): "comes before 9",
        ("insert", path, "--algo", "activationmap"): "its map would not explain the scores",
        ("insert", path, "--scores", "nope"): "--scores 'nope' is not an output of the model",
        ("insert", path, "--target-layer", "nope"): "neither a value nor a node",
    }
    for args, message in cases.items():
        before = sorted(p.name for p in tmp_path.iterdir())
        result = xai_graph_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert message in lines[0], lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    report = xai_graph_cli("inspect", path)
    assert "comes before 9" in report.stdout and "classwisesaliencymap: no: no target map" in report.stdout
