"""Export real architectures (random seeded weights) to ONNX the way their own projects do, plus a manifest.

    python scripts/compat_export.py --out DIR [--only SUBSTRING]

Needs the pinned environment of scripts/compat-requirements.txt, then scripts/compat-requirements-nodeps.txt
installed with --no-deps. Nothing is downloaded: every model is built from its code or yaml with seeded
weights. A model whose file and manifest entry already exist is skipped (cache); one that fails to export
gets {"name", "source", "family", "exporter", "export_error"} and the run goes on.

DIR/manifest.json is a JSON list, one entry per model: name, source, family, exporter, file (relative to
DIR), inputs {name: [1, C, H, W]}, batch_dynamic, task, export_seconds, and
- classification: scores (output name), grid [h, w] of the last map / token grid, layout (NCHW | NHWC |
  tokens), extra_tokens (class/distillation/register tokens before the grid), head_reads (cls | cls+dist |
  mean | cls+mean); Ultralytics -cls also scores_activation "softmax" and logits (the Gemm output name);
- detection: num_classes, activation "sigmoid", levels (finest first) of {value, size, anchors,
  channels_per_anchor, class_offset}: the class logits of a level are
  value.reshape(B, anchors, channels_per_anchor, h, w)[:, :, class_offset:class_offset + num_classes].

Every written model is checked before it enters the manifest: onnx checker, onnxruntime on a random input
(and batch 2 where the batch is dynamic), the score output's shape, and for detectors that each level value
is a node output with the recorded channels and size and that sigmoid(reconstructed class logits) equals
the class scores of the decoded output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

# Before any hub-aware import: a stray download attempt must fail fast instead of hanging.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

NUM_LABELS = 10  # transformers / ultralytics-cls heads
DET_SIZE = 320  # ultralytics / yolov5 input


@dataclass(frozen=True)
class Spec:
    name: str  # "source/model (variant)"
    source: str
    family: str
    exporter: str
    build: Callable[[Path], dict]  # writes the .onnx at the path, returns the model-specific manifest keys
    # detectors: (onnx outputs by name, num_classes) -> class scores [B, N, K] of the decoded output
    decoded_scores: Callable[[dict, int], np.ndarray] | None = None

    @property
    def file(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9]+", "_", self.name.split("/", 1)[1]).strip("_")
        return f"{self.source}/{stem}.onnx"


# ----------------------------------------------------------------------------------------------- helpers


def torch_export(
    module: nn.Module,
    x: torch.Tensor,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    opset: int,
    dynamo: bool = False,
    batch_dynamic: bool = True,
) -> None:
    """torch.onnx.export as a project script would call it; dynamo files are kept self-contained."""
    if dynamo:
        shapes = ({0: "batch"},) if batch_dynamic else None
        # torch.export specializes size-1 dims: trace with batch 2 to keep the batch dynamic (timm does too)
        xb = torch.cat([x, x]) if batch_dynamic else x
        torch.onnx.export(
            module,
            (xb,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            external_data=False,
        )
    else:
        axes = {n: {0: "batch"} for n in inputs + outputs} if batch_dynamic else None
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    inline_external_data(path)


def inline_external_data(path: Path) -> None:
    """Re-save a model whose weights went to a side file (.onnx.data) with the weights inline (< 2 GB)."""
    sides = [p for p in path.parent.glob(path.name + "*") if p != path]
    if not sides:
        return
    model = onnx.load(str(path), load_external_data=True)
    for side in sides:
        side.unlink()
    onnx.save(model, str(path), save_as_external_data=False)


def node_output(graph: onnx.GraphProto, node_name: str) -> str:
    """The first output of the node called node_name (legacy export names nodes after module scopes)."""
    for node in graph.node:
        if node.name == node_name:
            return node.output[0]
    near = [n.name for n in graph.node if n.op_type == "Conv" and node_name.rsplit("/", 2)[0] in n.name]
    raise LookupError(f"no node {node_name!r}; Conv nodes nearby: {near[:6]}")


def liven(model: nn.Module) -> nn.Module:
    """Redraw what random init leaves constant, so that no branch is dead and no map is trivial.

    Reference inits zero the last BN of ResNet blocks, set 1e-6 layer scales, zero some heads, relative
    position tables and register tokens, and put a class prior in detector biases; exported as is, the
    legacy exporter even merges the identical all-zero tensors. Biases get N(0, 0.1), constant norm and
    scale vectors U(0.5, 1.5), constant matrices N(0, 1/fan_in), BN statistics random.
    """
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.numel() < 2:
                continue
            if p.ndim == 1 and name.endswith(("bias", "beta")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif bool((p == p.flatten()[0]).all()):
                if p.ndim == 1:
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * (p.numel() / p.shape[0]) ** -0.5)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model


def tokens_grid(num_tokens: int, extra: int) -> list[int]:
    n = num_tokens - extra
    side = math.isqrt(n)
    assert side * side == n, f"{num_tokens} tokens - {extra} extra is not a square grid"
    return [side, side]


def map_description(feats: torch.Tensor, layout: str, extra: int = 0) -> dict:
    """grid / layout / extra_tokens keys from the last feature map or token sequence of the torch model."""
    if layout == "tokens":
        grid = tokens_grid(feats.shape[1], extra)
    elif layout == "NHWC":
        grid = list(feats.shape[1:3])
    else:
        grid = list(feats.shape[2:4])
    return {"grid": [int(v) for v in grid], "layout": layout, "extra_tokens": extra}


@contextlib.contextmanager
def in_dir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# ---------------------------------------------------------------------------------------------------- timm


def timm_spec(model: str, family: str, dynamo: bool = False, head_reads: str = "mean", reparam: bool = False) -> Spec:
    suffix = " (dynamo)" if dynamo else ""
    exporter = "timm onnx_export, dynamo opset 18" if dynamo else "timm onnx_export, legacy opset 17"
    return Spec(
        f"timm/{model}{suffix}",
        "timm",
        family,
        exporter,
        lambda path: export_timm(model, path, dynamo, head_reads, reparam),
    )


def export_timm(model_name: str, path: Path, dynamo: bool, head_reads: str, reparam: bool) -> dict:
    import timm
    from timm.utils.model import reparameterize_model
    from timm.utils.onnx import onnx_export

    torch.manual_seed(0)
    # exportable=True is what timm's onnx_export.py script passes (export-friendly layer variants)
    model = liven(timm.create_model(model_name, pretrained=False, exportable=True)).eval()
    if reparam:  # deploy form of RepVGG/MobileOne-style models (onnx_export.py --reparam)
        model = reparameterize_model(model)
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(1, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
    if feats.ndim == 3:
        desc = map_description(feats, "tokens", getattr(model, "num_prefix_tokens", 0))
    else:  # timm Swin (and other NHWC-native nets) say so in output_fmt
        desc = map_description(feats, "NHWC" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "NCHW")
    onnx_export(model, str(path), example_input=x, opset=18 if dynamo else 17, use_dynamo=dynamo, check=True)
    inline_external_data(path)
    return {
        "inputs": {"input0": list(x.shape)},
        "batch_dynamic": True,
        "task": "classification",
        "scores": "output0",
        **desc,
        "head_reads": head_reads,
    }


TIMM = [
    timm_spec("resnet18", "ResNet"),
    timm_spec("resnet18", "ResNet", dynamo=True),
    timm_spec("efficientnet_b0", "EfficientNet"),
    timm_spec("efficientnet_lite0", "EfficientNet-Lite"),
    timm_spec("mixnet_s", "MixNet"),
    timm_spec("mobilenetv2_100", "MobileNetV2"),
    timm_spec("mobilenetv3_small_100", "MobileNetV3"),
    timm_spec("ghostnet_100", "GhostNet"),
    timm_spec("regnetx_002", "RegNet"),
    timm_spec("seresnext26d_32x4d", "SE-ResNeXt"),
    timm_spec("densenet121", "DenseNet"),
    timm_spec("inception_v3", "Inception"),
    timm_spec("mobileone_s0", "MobileOne", reparam=True),
    timm_spec("convnext_atto", "ConvNeXt"),
    timm_spec("convnext_atto", "ConvNeXt", dynamo=True),
    timm_spec("mobilevit_xxs", "MobileViT"),
    timm_spec("vit_tiny_patch16_224", "ViT", head_reads="cls"),
    timm_spec("vit_tiny_patch16_224", "ViT", dynamo=True, head_reads="cls"),
    timm_spec("deit_tiny_distilled_patch16_224", "DeiT", head_reads="cls+dist"),
    timm_spec("swin_tiny_patch4_window7_224", "Swin"),
    timm_spec("swin_tiny_patch4_window7_224", "Swin", dynamo=True),
    timm_spec("levit_128s", "LeViT"),
    timm_spec("efficientformer_l1", "EfficientFormer"),
]


# -------------------------------------------------------------------------------------------- transformers


class LogitsOnly(nn.Module):
    """The ONNX graph returns the logits tensor alone, not the ModelOutput."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


VIT_CONFIG = dict(
    hidden_size=192,
    num_hidden_layers=4,
    num_attention_heads=3,
    intermediate_size=768,
    image_size=224,
    patch_size=16,
    num_labels=NUM_LABELS,
)
DINO_CONFIG = {k: v for k, v in VIT_CONFIG.items() if k != "intermediate_size"}  # Dinov2 sizes its MLP by ratio
# class -> (family, config class, config kwargs, layout, extra tokens, head_reads)
HF_MODELS = {
    "ViTForImageClassification": ("ViT", "ViTConfig", VIT_CONFIG, "tokens", 1, "cls"),
    "DeiTForImageClassificationWithTeacher": ("DeiT", "DeiTConfig", VIT_CONFIG, "tokens", 2, "cls+dist"),
    # use_mean_pooling: BeitPooler layer-norms the mean of the patch tokens (class token left out)
    "BeitForImageClassification": (
        "BEiT",
        "BeitConfig",
        {**VIT_CONFIG, "use_mean_pooling": True, "use_relative_position_bias": True},
        "tokens",
        1,
        "mean",
    ),
    # the classifier reads concat(class token, mean of patch tokens)
    "Dinov2ForImageClassification": ("DINOv2", "Dinov2Config", DINO_CONFIG, "tokens", 1, "cls+mean"),
    # 1 class token + 4 registers in front of the patches; the mean leaves the registers out
    "Dinov2WithRegistersForImageClassification": (
        "DINOv2",
        "Dinov2WithRegistersConfig",
        {**DINO_CONFIG, "num_register_tokens": 4},
        "tokens",
        5,
        "cls+mean",
    ),
    # last_hidden_state is [B, 7*7, C] tokens; the pooler averages them
    "SwinForImageClassification": (
        "Swin",
        "SwinConfig",
        dict(
            image_size=224,
            patch_size=4,
            embed_dim=48,
            depths=[1, 1, 2, 1],
            num_heads=[2, 4, 8, 16],
            window_size=7,
            num_labels=NUM_LABELS,
        ),
        "tokens",
        0,
        "mean",
    ),
    "ConvNextForImageClassification": (
        "ConvNeXt",
        "ConvNextConfig",
        dict(hidden_sizes=[24, 48, 96, 192], depths=[1, 1, 2, 1], num_labels=NUM_LABELS),
        "NCHW",
        0,
        "mean",
    ),
    "ResNetForImageClassification": (
        "ResNet",
        "ResNetConfig",
        dict(
            embedding_size=16,
            hidden_sizes=[32, 64, 128, 256],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            num_labels=NUM_LABELS,
        ),
        "NCHW",
        0,
        "mean",
    ),
}


def hf_spec(cls_name: str, attn: str | None, dynamo: bool = False) -> Spec:
    family = HF_MODELS[cls_name][0]
    variant = ", ".join(v for v in (attn, "dynamo" if dynamo else None) if v)
    name = f"transformers/{cls_name}" + (f" ({variant})" if variant else "")
    exporter = "dynamo opset 18" if dynamo else "legacy opset 17"
    return Spec(name, "transformers", family, exporter, lambda path: export_hf(cls_name, attn, dynamo, path))


def export_hf(cls_name: str, attn: str | None, dynamo: bool, path: Path) -> dict:
    import transformers

    _, config_name, kwargs, layout, extra, head_reads = HF_MODELS[cls_name]
    config = getattr(transformers, config_name)(**kwargs)
    cls = getattr(transformers, cls_name)
    torch.manual_seed(0)
    model = liven(cls._from_config(config, attn_implementation=attn) if attn else cls(config)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # [B, T, D] tokens (Swin: [B, HW, C]) or [B, C, H, W] for the CNNs
        last = model.base_model(pixel_values=x).last_hidden_state
    torch_export(LogitsOnly(model), x, path, ["pixel_values"], ["logits"], 18 if dynamo else 17, dynamo)
    return {
        "inputs": {"pixel_values": list(x.shape)},
        "batch_dynamic": True,
        "task": "classification",
        "scores": "logits",
        **map_description(last, layout, extra),
        "head_reads": head_reads,
    }


TRANSFORMERS = [
    *(
        hf_spec(c, a)
        for c in HF_MODELS
        if c
        not in (
            "Dinov2WithRegistersForImageClassification",
            "ConvNextForImageClassification",
            "ResNetForImageClassification",
        )
        for a in ("eager", "sdpa")
    ),
    # its position-embedding resize is bicubic with antialias, which the legacy exporter has no symbolic for
    # (aten::_upsample_bicubic2d_aa); dynamo maps it to Resize(antialias=1) of opset 18
    hf_spec("Dinov2WithRegistersForImageClassification", "eager", dynamo=True),
    hf_spec("Dinov2WithRegistersForImageClassification", "sdpa", dynamo=True),
    hf_spec("ConvNextForImageClassification", None),
    hf_spec("ResNetForImageClassification", None),
    hf_spec("ViTForImageClassification", "eager", dynamo=True),
    hf_spec("ViTForImageClassification", "sdpa", dynamo=True),
]


# --------------------------------------------------------------------------------------------- ultralytics


def ultralytics_spec(cfg: str, family: str, dynamic: bool, opset: int = 17) -> Spec:
    kind = "dynamic" if dynamic else "static"
    name = f"ultralytics/{cfg.removesuffix('.yaml')} ({kind})"
    exporter = f"ultralytics {version('ultralytics')} export, {kind}, opset {opset}"
    decoded = None if "-cls" in cfg else ultralytics_scores
    return Spec(
        name, "ultralytics", family, exporter, lambda path: export_ultralytics(cfg, dynamic, opset, path), decoded
    )


def export_ultralytics(cfg: str, dynamic: bool, opset: int, path: Path) -> dict:
    from ultralytics import YOLO

    is_cls = "-cls" in cfg
    nc = NUM_LABELS if is_cls else 3
    size = 224 if is_cls else DET_SIZE
    yolo = YOLO(cfg)  # the yaml ships inside the package: no download
    torch.manual_seed(0)
    model = liven(type(yolo.model)(cfg, nc=nc, verbose=False))  # same yaml with nc classes
    model.args, model.task = yolo.model.args, yolo.model.task
    yolo.model = model
    with tempfile.TemporaryDirectory() as tmp, in_dir(Path(tmp)):
        # Ultralytics' own exporter (fuses, sets the head's export mode, names images / output0 ...)
        written = yolo.export(format="onnx", imgsz=size, dynamic=dynamic, simplify=False, opset=opset, device="cpu")
        shutil.move(Path(tmp) / written, path)
    entry = {"inputs": {"images": [1, 3, size, size]}, "batch_dynamic": dynamic}
    graph = onnx.load(str(path)).graph
    head = len(model.model) - 1  # Detect / Segment / Classify is the last layer
    if is_cls:
        # Classify: conv 1x1 -> pool -> linear -> softmax; the map is the backbone's last one
        with torch.no_grad():
            x = torch.randn(1, 3, size, size)
            for layer in model.model[:-1]:
                x = layer(x)
        logits = node_output(graph, f"/model.{head}/linear/Gemm")
        return {
            **entry,
            "task": "classification",
            "scores": "output0",
            "scores_activation": "softmax",
            "logits": logits,
            **map_description(x, "NCHW"),
            "head_reads": "mean",
        }
    detect = model.model[-1]
    levels = []
    for i, stride in enumerate(detect.stride.tolist()):
        value = node_output(graph, f"/model.{head}/cv3.{i}/cv3.{i}.2/Conv")  # last Conv of the class branch
        side = size // int(stride)
        levels.append(
            {"value": value, "size": [side, side], "anchors": 1, "channels_per_anchor": nc, "class_offset": 0}
        )
    return {**entry, "task": "detection", "num_classes": nc, "activation": "sigmoid", "levels": levels}


def ultralytics_scores(outputs: dict, nc: int) -> np.ndarray:
    return outputs["output0"][:, 4 : 4 + nc, :].transpose(0, 2, 1)  # [B, 4 + nc (+ masks), N]


ULTRALYTICS = [
    ultralytics_spec("yolov8n.yaml", "YOLOv8", dynamic=False),
    ultralytics_spec("yolov8n.yaml", "YOLOv8", dynamic=True),
    ultralytics_spec("yolo11n.yaml", "YOLO11", dynamic=False),
    ultralytics_spec("yolo11n.yaml", "YOLO11", dynamic=True),
    ultralytics_spec("yolov8n-seg.yaml", "YOLOv8", dynamic=False),
    ultralytics_spec("yolo11n-seg.yaml", "YOLO11", dynamic=True),
    ultralytics_spec("yolo11n-cls.yaml", "YOLO11", dynamic=False),
    ultralytics_spec("yolov8n-cls.yaml", "YOLOv8", dynamic=True),
]


# -------------------------------------------------------------------------------------------------- yolov5


def yolov5_spec(nc: int, opset: int) -> Spec:
    return Spec(
        f"yolov5/yolov5n (nc={nc}, opset {opset})",
        "yolov5",
        "YOLOv5",
        f"yolov5 export.py, legacy opset {opset}",
        lambda path: export_yolov5(nc, opset, path),
        yolov5_scores,
    )


def export_yolov5(nc: int, opset: int, path: Path) -> dict:
    import yolov5
    from yolov5.models.yolo import Detect, Model

    torch.manual_seed(0)
    model = liven(Model(Path(yolov5.__file__).parent / "models" / "yolov5n.yaml", ch=3, nc=nc)).eval()
    model = model.fuse()  # attempt_load fuses before export.py sees the model
    detect = model.model[-1]
    assert isinstance(detect, Detect)
    # export.py: Detect.inplace/dynamic/export, two dry runs, then a plain legacy export named images/output0
    detect.inplace, detect.dynamic, detect.export = True, False, True
    im = torch.zeros(1, 3, DET_SIZE, DET_SIZE)
    with torch.no_grad():
        for _ in range(2):
            model(im)
    torch.onnx.export(
        model,
        im,
        str(path),
        dynamo=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes=None,
    )
    graph = onnx.load(str(path)).graph
    head = len(model.model) - 1
    levels = []
    for i, stride in enumerate(detect.stride.tolist()):
        side = DET_SIZE // int(stride)
        levels.append(
            {
                "value": node_output(graph, f"/model.{head}/m.{i}/Conv"),
                "size": [side, side],
                "anchors": detect.na,
                "channels_per_anchor": detect.no,
                "class_offset": 5,
            }
        )
    return {
        "inputs": {"images": list(im.shape)},
        "batch_dynamic": False,
        "task": "detection",
        "num_classes": nc,
        "activation": "sigmoid",
        "levels": levels,
    }


def yolov5_scores(outputs: dict, nc: int) -> np.ndarray:
    return outputs["output0"][:, :, 5 : 5 + nc]  # [B, N, xywh + obj + nc], all through one Sigmoid


YOLOV5 = [yolov5_spec(3, 12), yolov5_spec(1, 17)]


# -------------------------------------------------------------------------------------------------- effdet

EFFDET_SIZE = 256
EFFDET_CLASSES = 5


class EffDetMaps(nn.Module):
    """The raw EfficientDet: 5 class maps [B, 9K, h, w] then 5 box maps [B, 36, h, w], finest first."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        classes, boxes = self.net(x)
        return (*classes, *boxes)


def effdet_spec(model: str, batch_dynamic: bool) -> Spec:
    kind = "dynamic batch" if batch_dynamic else "static"
    return Spec(
        f"effdet/{model}",
        "effdet",
        "EfficientDet",
        f"legacy opset 17, {kind}",
        lambda path: export_effdet(model, batch_dynamic, path),
    )


def export_effdet(model_name: str, batch_dynamic: bool, path: Path) -> dict:
    from effdet import create_model

    torch.manual_seed(0)
    net = create_model(
        model_name,
        bench_task="",
        pretrained=False,
        pretrained_backbone=False,
        num_classes=EFFDET_CLASSES,
        image_size=(EFFDET_SIZE, EFFDET_SIZE),
    )
    net = liven(net).eval()
    x = torch.randn(1, 3, EFFDET_SIZE, EFFDET_SIZE)
    with torch.no_grad():
        classes, _ = net(x)
    names = [f"class_{i}" for i in range(5)] + [f"box_{i}" for i in range(5)]
    torch_export(EffDetMaps(net), x, path, ["images"], names, 17, batch_dynamic=batch_dynamic)
    anchors = net.config.num_scales * len(net.config.aspect_ratios)
    levels = [
        {
            "value": f"class_{i}",
            "size": list(c.shape[2:]),
            "anchors": anchors,
            "channels_per_anchor": EFFDET_CLASSES,
            "class_offset": 0,
        }
        for i, c in enumerate(classes)
    ]
    return {
        "inputs": {"images": list(x.shape)},
        "batch_dynamic": batch_dynamic,
        "task": "detection",
        "num_classes": EFFDET_CLASSES,
        "activation": "sigmoid",
        "levels": levels,
    }


EFFDET = [effdet_spec("efficientdet_d0", True), effdet_spec("tf_efficientdet_d0", False)]

SPECS = TIMM + TRANSFORMERS + ULTRALYTICS + YOLOV5 + EFFDET


# ------------------------------------------------------------------------------------------------- checks


def check(path: Path, entry: dict, spec: Spec) -> None:
    """Raise if the file does not run, or if what the entry says about it is not what the graph holds."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    produced = {o for n in model.graph.node for o in n.output}
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    probes = []  # intermediate values to expose as outputs, so that onnxruntime shows them
    if entry["task"] == "detection":
        for level in entry["levels"]:
            name = level["value"]
            assert name in produced, f"level value {name!r} is no node output"
            want = [level["anchors"] * level["channels_per_anchor"], *level["size"]]
            dims = inferred_dims(infos.get(name))
            assert dims is None or all(d in (None, w) for d, w in zip(dims[1:], want, strict=True)), (
                f"{name}: inferred {dims}, recorded {want}"
            )
            probes.append(name)
    elif "logits" in entry:
        assert entry["logits"] in produced, f"logits value {entry['logits']!r} is no node output"
        probes.append(entry["logits"])
    outputs = {o.name for o in model.graph.output}
    for name in probes:
        if name not in outputs:
            model.graph.output.append(infos.get(name) or onnx.helper.make_tensor_value_info(name, 1, None))
    for batch in (1, 2) if entry["batch_dynamic"] else (1,):
        check_outputs(run(model, entry, batch), entry, spec, batch)


def inferred_dims(info: onnx.ValueInfoProto | None) -> list[int | None] | None:
    """The inferred shape (None for a symbolic dim), or None when shape inference found no rank."""
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value or None for d in info.type.tensor_type.shape.dim]


def run(model: onnx.ModelProto, entry: dict, batch: int) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal([batch, *s[1:]]).astype(np.float32) for n, s in entry["inputs"].items()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def check_outputs(outputs: dict, entry: dict, spec: Spec, batch: int) -> None:
    if entry["task"] == "classification":
        scores = outputs[entry["scores"]]
        assert scores.ndim == 2 and scores.shape[0] == batch, f"scores shape {scores.shape}"
        return
    k = entry["num_classes"]
    logits = []
    for level in entry["levels"]:
        x = outputs[level["value"]]
        a, p, o = level["anchors"], level["channels_per_anchor"], level["class_offset"]
        assert list(x.shape) == [batch, a * p, *level["size"]], f"{level['value']}: {x.shape}"
        cls = x.reshape(batch, a, p, *level["size"])[:, :, o : o + k]  # [B, A, K, h, w]
        logits.append(cls.transpose(0, 1, 3, 4, 2).reshape(batch, -1, k))  # anchors-major, then row-major cells
    if spec.decoded_scores is not None:
        mine = 1 / (1 + np.exp(-np.concatenate(logits, axis=1)))
        theirs = spec.decoded_scores(outputs, k)
        assert mine.shape == theirs.shape, f"reconstructed {mine.shape} vs decoded {theirs.shape}"
        np.testing.assert_allclose(mine, theirs, atol=1e-4)


# --------------------------------------------------------------------------------------------------- main


def load_manifest(path: Path) -> dict[str, dict]:
    return {e["name"]: e for e in json.loads(path.read_text())} if path.exists() else {}


def save_manifest(path: Path, entries: dict[str, dict]) -> None:
    order = {s.name: i for i, s in enumerate(SPECS)}
    ordered = sorted(entries.values(), key=lambda e: order.get(e["name"], len(order)))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ordered, indent=1) + "\n")
    tmp.replace(path)


def export_one(spec: Spec, out: Path) -> dict:
    head = {"name": spec.name, "source": spec.source, "family": spec.family, "exporter": spec.exporter}
    path = out / spec.file
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        entry = {**head, "file": spec.file, **spec.build(path)}
        check(path, entry, spec)
    except Exception as exc:  # one broken exporter must not stop the others
        traceback.print_exc()
        path.unlink(missing_ok=True)
        line = " ".join(f"{type(exc).__name__}: {exc}".split())
        return {**head, "export_error": line[:400]}
    entry["export_seconds"] = round(time.monotonic() - start, 1)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="export only the models whose name contains this")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    entries = load_manifest(manifest_path)
    torch.set_num_threads(os.cpu_count() or 1)
    for spec in SPECS:
        if args.only not in spec.name:
            continue
        old = entries.get(spec.name)
        if old and "export_error" not in old and (args.out / spec.file).exists():
            print(f"cached  {spec.name}")
            continue
        entry = export_one(spec, args.out)
        entries[spec.name] = entry
        save_manifest(manifest_path, entries)
        status = f"FAILED  {entry['export_error']}" if "export_error" in entry else f"{entry['export_seconds']}s"
        print(f"{spec.name}: {status}", flush=True)
    failed = [e["name"] for e in entries.values() if "export_error" in e]
    print(f"{len(entries) - len(failed)} exported, {len(failed)} failed: {failed}")


if __name__ == "__main__":
    main()
