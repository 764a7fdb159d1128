"""ONNX Model Zoo classics (IR version 3, opset 9, initializers as graph inputs, scores [B, K] or
[B, K, 1, 1] after a Softmax), rebuilt from the `light_*` graphs in the onnx wheel with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_zoo
import reference
from heads import check_head, instrument
from test_real_models import ALGOS, _image
from xai_graph.graph.io import load_model
from xai_graph.graph.targets import find_target
from xai_graph.runtime import open_model

# model -> (the map its head pools, the class-score output's shape)
CLASSICS = {
    "squeezenet": (13, [1, 1000, 1, 1]),
    "densenet121": (7, [1, 1000, 1, 1]),
    "shufflenet": (7, [1, 1000]),
    "inception_v1": (6, [1, 1000]),
    "resnet50": (7, [1, 1000]),
}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_zoo")


@pytest.mark.parametrize("name", list(CLASSICS))
def test_zoo_classic(name, zoo_dir, tmp_path):
    path = onnx_zoo.rebuild(name, zoo_dir / f"{name}.onnx")
    side, score_shape = CLASSICS[name]
    target = find_target(load_model(path))
    assert [d for d in target.scores.shape] == score_shape
    assert target.value.shape[2:] == (side, side) or list(target.value.shape)[2:] == [side, side], target.reason
    input_name = open_model(path).input_names[0]
    x = _image(1, 224, 224)
    probe = reference.with_outputs(path, [target.value.name], tmp_path / "probe.onnx")
    f = open_model(probe)({input_name: x})[target.value.name]
    tail = reference.onnx_tail(path, target.value.name, target.logits.name, tmp_path / "tail.onnx")
    expected = {
        "activationmap": reference.activation_map(f),
        "eigencam": reference.eigencam(f),
        "classwisesaliencymap": reference.recipro_cam(f, tail),
    }
    for algo in ALGOS:
        with pytest.warns(UserWarning, match="opset 9 raised to 11"):
            u8, raw, chosen = instrument(path, tmp_path, algo)
        assert chosen == target.value.name
        for written in (u8, raw):
            proto = onnx.load(str(written))
            assert proto.ir_version == 3
            listed = {i.name for i in proto.graph.input}
            assert all(t.name in listed for t in proto.graph.initializer), "IR 3: initializers are graph inputs"
        check_head(path, u8, raw, {input_name: x}, expected[algo], algo, features=f)
    assert np.isfinite(f).all()


def test_explain_a_zoo_classic_with_scores_kx1x1(zoo_dir, tmp_path):
    """`explain` instruments an opset-9 SqueezeNet on the fly and reads its [B, K, 1, 1] scores."""
    from test_cli import xai_graph_cli

    path = onnx_zoo.rebuild("squeezenet", zoo_dir / "squeezenet_explain.onnx")
    samples = Path(__file__).resolve().parent.parent / "samples" / "images"
    result = xai_graph_cli("explain", path, "-i", samples, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "note: opset 9 raised to 11" in result.stderr
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(record["images"]) == 4
    assert all(len(image["top"]) == 5 and image["top"][0]["score"] > 0 for image in record["images"])
