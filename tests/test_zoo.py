"""Every head on every small CNN family, both exporters, opsets 11-21, static and dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import zoo
from heads import check_head, instrument
from xai_graph.runtime import open_model

ALGOS = ["activationmap", "eigencam", "classwisesaliencymap"]


def _images(spec, size, batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _reference(algo, model, f, **options):
    if algo == "activationmap":
        return reference.activation_map(f)
    if algo == "eigencam":
        return reference.eigencam(f)

    def tail(batch):
        with torch.no_grad():
            return model.tail(torch.from_numpy(batch)).numpy()

    return reference.recipro_cam(f, tail, **options)


@pytest.mark.parametrize("spec", zoo.EXPORTS, ids=lambda s: s.id)
def test_heads_match_reference(spec, exported, tmp_path):
    path, model, size = exported(spec)
    batch = 3 if spec.dynamic_batch else spec.static_batch
    x = _images(spec, size, batch)
    with torch.no_grad():
        f = model.features(torch.from_numpy(x)).numpy()
    for algo in ALGOS:
        u8, raw, target = instrument(path, tmp_path, algo)
        # The head sits on the map the torch model calls its features.
        probe = reference.with_outputs(path, [target], tmp_path / "probe.onnx")
        reference.assert_close_raw(open_model(probe)({"image": x})[target], f, "target map vs torch features")
        check_head(path, u8, raw, {"image": x}, _reference(algo, model, f), algo, features=f)


@pytest.mark.parametrize("spec", [s for s in zoo.EXPORTS if s.dynamic_batch][:4], ids=lambda s: s.id)
def test_batch_of_one_equals_batch_of_three(spec, exported, tmp_path):
    path, _, size = exported(spec)
    x = _images(spec, size, 3, seed=2)
    for algo in ALGOS:
        u8, raw, _ = instrument(path, tmp_path, algo)
        for model_path in (u8, raw):
            session = open_model(model_path)
            together = session({"image": x})["saliency_map"]
            for i in range(3):
                alone = session({"image": x[i:i + 1]})["saliency_map"][0]
                np.testing.assert_allclose(alone.astype(np.float64), together[i].astype(np.float64),
                                           atol=1 if together.dtype == np.uint8 else 1e-5, rtol=0)


@pytest.mark.parametrize("mask", ["onehot", "gaussian"])
@pytest.mark.parametrize("score", ["logits", "softmax", "sigmoid"])
def test_recipro_cam_options(mask, score, exported, tmp_path):
    spec = zoo.Export("mobilenetv3", dynamo=False, opset=17, dynamic_batch=True, softmax=False)
    path, model, size = exported(spec)
    x = _images(spec, size, 2)
    with torch.no_grad():
        f = model.features(torch.from_numpy(x)).numpy()
    u8, raw, _ = instrument(path, tmp_path, "classwisesaliencymap", mask=mask, score=score)
    expected = _reference("classwisesaliencymap", model, f, mask=mask, score=score)
    check_head(path, u8, raw, {"image": x}, expected, "classwisesaliencymap")
