"""`insert --format ir`: OpenVINO IR written beside ONNX gives the same maps, keeps the metadata, f32 weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import zoo
from test_cli import xai_graph_cli
from test_detection import RetinaNetLike
from xai_graph.runtime import open_model

RESNET = zoo.Export("resnet", dynamo=False, opset=17, dynamic_batch=True, softmax=False)


@pytest.mark.parametrize(
    "options",
    [["--algo", "activationmap"], ["--algo", "eigencam"], [], ["--classes", "topk:3"]],
    ids=["activationmap", "eigencam", "recipro", "top3"],
)
def test_ir_maps_equal_onnx_maps(options, exported, tmp_path):
    path, _, _ = exported(RESNET)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(6)))
    onnx_out, ir_out = tmp_path / "m.onnx", tmp_path / "m.xml"
    for out in (onnx_out, ir_out):
        result = xai_graph_cli("insert", path, "-o", out, "--labels", labels, *options)
        assert result.returncode == 0, result.stderr
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    ort = open_model(onnx_out)({"image": x})
    ov = open_model(ir_out, "openvino")({"image": x})
    np.testing.assert_allclose(ov["scores"], ort["scores"], rtol=1e-4, atol=1e-4)
    raw = xai_graph_cli("insert", path, "-o", tmp_path / "raw.onnx", "--raw", *options)
    assert raw.returncode == 0
    float_maps = open_model(tmp_path / "raw.onnx")({"image": x})["saliency_map"].astype(np.float64)
    reference.assert_within_lsb(ov["saliency_map"], ort["saliency_map"], "IR vs ONNX", float_maps)
    if "--classes" in options:
        np.testing.assert_array_equal(ov["saliency_classes"], ort["saliency_classes"])
    single = open_model(ir_out, "openvino")({"image": x[1:2]})["saliency_map"][0]  # the batch stays dynamic
    assert np.abs(single.astype(int) - ov["saliency_map"][1].astype(int)).max() <= 1
    import openvino

    model = openvino.Core().read_model(str(ir_out))
    assert model.get_rt_info(["model_info", "labels"]).astype(str) == " ".join(f"class_{i}" for i in range(6))
    assert model.get_rt_info(["framework", "xai_graph.algorithm"]).astype(str) == (
        options[1] if options and options[0] == "--algo" else "classwisesaliencymap"
    )


def test_ir_weights_are_f32_unless_compressed(exported, tmp_path):
    path, _, _ = exported(RESNET)
    assert xai_graph_cli("insert", path, "-o", tmp_path / "f32.xml").returncode == 0
    result = xai_graph_cli("insert", path, "--format", "ir", "-o", tmp_path / "f16.xml", "--compress-fp16")
    assert result.returncode == 0
    f32, f16 = (tmp_path / "f32.bin").stat().st_size, (tmp_path / "f16.bin").stat().st_size
    assert 0.45 < f16 / f32 < 0.6
    bad = xai_graph_cli("insert", path, "--format", "ir", "-o", tmp_path / "model.onnx")
    assert bad.returncode == 1 and ".xml" in bad.stderr and not (tmp_path / "model.onnx").exists()


def test_detector_ir(tmp_path):
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
    for out in ("d.onnx", "d.xml"):
        assert xai_graph_cli("insert", path, "-o", tmp_path / out).returncode == 0
    x = np.random.default_rng(1).standard_normal((2, 3, 128, 128)).astype(np.float32)
    ort = open_model(tmp_path / "d.onnx")({"image": x})
    ov = open_model(tmp_path / "d.xml", "openvino")({"image": x})
    assert np.abs(ov["saliency_map"].astype(int) - ort["saliency_map"].astype(int)).max() <= 1
    np.testing.assert_allclose(ov["detection_class_scores"], ort["detection_class_scores"], atol=1e-5)


def test_explain_runs_an_instrumented_ir_like_its_onnx(tmp_path):
    import json
    from pathlib import Path

    samples = Path(__file__).resolve().parent.parent / "samples"
    model = samples / "efficientnet_lite0.onnx"
    for out in ("lite.onnx", "lite.xml"):
        assert xai_graph_cli("insert", model, "-o", tmp_path / out, "--classes", "topk:5").returncode == 0
    runs = {}
    for name, extra in (("onnx", ["--runtime", "openvino"]), ("xml", [])):  # IR runs in OpenVINO by itself
        result = xai_graph_cli(
            "explain", tmp_path / f"lite.{name}", "-i", samples / "images", "-o", tmp_path / f"out_{name}", *extra
        )
        assert result.returncode == 0, result.stderr
        runs[name] = json.loads((tmp_path / f"out_{name}" / "predictions.json").read_text())
    assert runs["xml"]["runtime"] == "openvino"
    for a, b in zip(runs["onnx"]["images"], runs["xml"]["images"]):  # labels and preprocessing came from rt_info
        assert [c["label"] for c in a["top"]] == [c["label"] for c in b["top"]]
        assert a["top"][0]["score"] == pytest.approx(b["top"][0]["score"], abs=1e-4)
    (tmp_path / "lite.bin").unlink()
    broken = xai_graph_cli("explain", tmp_path / "lite.xml", "-i", samples / "images", "-o", tmp_path / "x")
    assert broken.returncode == 1 and "lite.bin is missing" in broken.stderr and not (tmp_path / "x").exists()
