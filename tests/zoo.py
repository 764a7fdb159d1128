"""Small CNNs of the main families, written for the tests, and their ONNX exports.

Every model is `tail(features(x))`: the tests compute their references in torch
from these two halves, independently of how xai-graph reads the exported graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 6


def _randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, cout, stride=stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class ResNetLike(nn.Module):
    """GlobalAveragePool -> Flatten -> Gemm head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, stride=2), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 2)
        )
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, NUM_CLASSES)

    def tail(self, f, bs=None):
        return self.fc(torch.flatten(self.pool(f), 1))

    def forward(self, x):
        return self.tail(self.features(x))


class SqueezeExcite(nn.Module):
    def __init__(self, c, gate=nn.Hardsigmoid, act=nn.ReLU):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce, self.act, self.expand, self.gate = nn.Conv2d(c, c // 4, 1), act(), nn.Conv2d(c // 4, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand=4, act=nn.ReLU6, se=False):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1, act=act), conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act)]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Like(nn.Module):
    """ReduceMean over (2, 3) -> Dropout -> Linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, stride=2, act=nn.ReLU6),
            InvertedResidual(16, 16, 1),
            InvertedResidual(16, 24, 2),
            InvertedResidual(24, 24, 1),
            InvertedResidual(24, 32, 2),
            conv_bn(32, 64, 1, act=nn.ReLU6),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, NUM_CLASSES))

    def tail(self, f, bs=None):
        return self.classifier(f.mean([2, 3]))

    def forward(self, x):
        return self.tail(self.features(x))


class MobileNetV3Like(nn.Module):
    """Squeeze-excitation pools inside, hard-swish, and a non-linear MLP after the head's pool."""

    def __init__(self):
        super().__init__()
        hs = nn.Hardswish
        self.features = nn.Sequential(
            conv_bn(3, 16, stride=2, act=hs),
            InvertedResidual(16, 16, 1, act=nn.ReLU, se=True),
            InvertedResidual(16, 24, 2, act=hs),
            InvertedResidual(24, 24, 1, act=hs, se=True),
            InvertedResidual(24, 40, 2, act=hs, se=True),
            conv_bn(40, 96, 1, act=hs),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, NUM_CLASSES)
        )

    def tail(self, f, bs=None):
        return self.classifier(torch.flatten(self.pool(f), 1))

    def forward(self, x):
        return self.tail(self.features(x))


class Conv2dSamePadding(nn.Conv2d):
    """TensorFlow "SAME" padding: asymmetric, computed from the input size (as EfficientNet ports do)."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class MBConv(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        hidden = cin * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            Swish(),
            Conv2dSamePadding(hidden, hidden, 3, stride, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            Swish(),
            SqueezeExcite(hidden, gate=nn.Sigmoid, act=Swish),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class EfficientNetLike(nn.Module):
    """TF-"same" padding, swish, SE; reshapes with the batch read from the graph input."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dSamePadding(3, 16, 3, 2, bias=False),
            nn.BatchNorm2d(16),
            Swish(),
            MBConv(16, 16, 1),
            MBConv(16, 24, 2),
            MBConv(24, 40, 2),
            nn.Conv2d(40, 80, 1, bias=False),
            nn.BatchNorm2d(80),
            Swish(),
        )
        self.pool, self.dropout, self.fc = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2), nn.Linear(80, NUM_CLASSES)

    def tail(self, f, bs=None):
        bs = f.size(0) if bs is None else bs
        return self.fc(self.dropout(self.pool(f).view(bs, -1)))

    def forward(self, x):
        return self.tail(self.features(x), x.size(0))


class VGGLike(nn.Module):
    """No global pooling: Flatten -> Linear -> ReLU -> Linear over the last 4x4 map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16), nn.MaxPool2d(2), conv_bn(16, 32), nn.MaxPool2d(2), conv_bn(32, 32), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, NUM_CLASSES)
        )

    def tail(self, f, bs=None):
        return self.classifier(torch.flatten(f, 1))

    def forward(self, x):
        return self.tail(self.features(x))


class WithSoftmax(nn.Module):
    """The same network with a final Softmax, as many deployed classifiers end."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.features = net.features

    def tail(self, f, bs=None):
        return self.net.tail(f, bs)

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


FAMILIES = {
    "resnet": (ResNetLike, 64),
    "mobilenetv2": (MobileNetV2Like, 64),
    "mobilenetv3": (MobileNetV3Like, 64),
    "efficientnet": (EfficientNetLike, 64),
    "vgg": (VGGLike, 32),
}


@dataclass(frozen=True)
class Export:
    family: str
    dynamo: bool
    opset: int
    dynamic_batch: bool
    softmax: bool

    @property
    def id(self) -> str:
        return (
            f"{self.family}-{'dynamo' if self.dynamo else 'legacy'}-op{self.opset}-"
            f"{'dynbatch' if self.dynamic_batch else 'static'}{'-softmax' if self.softmax else ''}"
        )

    @property
    def static_batch(self) -> int:
        return 2  # static exports use batch 2, so per-image scaling is tested there too


# Both exporters, opsets 11 to 21, static and dynamic batch, with and without a final Softmax.
EXPORTS = [
    Export(family, *config)
    for family in FAMILIES
    for config in ((False, 17, True, False), (False, 11, False, True), (True, 18, True, True), (True, 21, False, False))
]


def build(family: str, softmax: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cls, _ = FAMILIES[family]
    net = _randomise_batchnorm(cls(), seed)
    return WithSoftmax(net).eval() if softmax else net


def export(spec: Export, folder: Path) -> tuple[Path, nn.Module, int]:
    """Export `spec` to `folder`; returns the path, the torch model and the input size."""
    model = build(spec.family, spec.softmax)
    size = FAMILIES[spec.family][1]
    batch = 2 if spec.dynamic_batch else spec.static_batch
    x = torch.randn(batch, 3, size, size)
    path = folder / f"{spec.id}.onnx"
    if spec.dynamo:
        shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if spec.dynamic_batch else None
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            opset_version=spec.opset,
            input_names=["image"],
            output_names=["scores"],
            dynamic_shapes=shapes,
            verbose=False,
        )
    else:
        axes = {"image": {0: "batch"}, "scores": {0: "batch"}} if spec.dynamic_batch else None
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=spec.opset,
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes=axes,
        )
    return path, model, size
