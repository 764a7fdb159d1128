"""Every head on every small CNN family, both exporters, opsets 11-21, static and dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import reference
import xai_graph
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
                alone = session({"image": x[i : i + 1]})["saliency_map"][0]
                np.testing.assert_allclose(
                    alone.astype(np.float64),
                    together[i].astype(np.float64),
                    atol=1 if together.dtype == np.uint8 else 1e-5,
                    rtol=0,
                )


OPTION_SPECS = [
    zoo.Export("mobilenetv3", dynamo=False, opset=17, dynamic_batch=True, softmax=False),  # MLP head
    zoo.Export("resnet", dynamo=False, opset=11, dynamic_batch=False, softmax=True),
]  # linear head, opset 11


@pytest.mark.parametrize("spec", OPTION_SPECS, ids=lambda s: s.id)
@pytest.mark.parametrize("mask", ["onehot", "gaussian"])
@pytest.mark.parametrize("score", ["logits", "softmax", "sigmoid"])
def test_recipro_cam_options(spec, mask, score, exported, tmp_path):
    path, model, size = exported(spec)
    x = _images(spec, size, 2)
    with torch.no_grad():
        f = model.features(torch.from_numpy(x)).numpy()
    u8, raw, _ = instrument(path, tmp_path, "classwisesaliencymap", mask=mask, score=score)
    expected = _reference("classwisesaliencymap", model, f, mask=mask, score=score)
    check_head(path, u8, raw, {"image": x}, expected, "classwisesaliencymap")


@pytest.mark.parametrize("mask", ["gaussian", "onehot"])
@pytest.mark.parametrize("spec", zoo.EXPORTS, ids=lambda s: s.id)
def test_fused_recipro_cam_equals_cloned_tail(spec, mask, exported, tmp_path):
    path, _, size = exported(spec)
    x = _images(spec, size, 3 if spec.dynamic_batch else spec.static_batch, seed=3)
    fused = xai_graph.insert(path, raw=True, mask=mask)
    cloned = xai_graph.insert(path, raw=True, mask=mask, brute_force=True)
    expected_form = "cloned tail" if spec.family == "vgg" else "fused"  # VGG has no pooling to fuse
    assert fused.metadata_props["xai_graph.method"] == f"Recipro-CAM ({expected_form})"
    assert cloned.metadata_props["xai_graph.method"] == "Recipro-CAM (cloned tail)"
    maps = [
        open_model(xai_graph.save_model(m, tmp_path / f"{i}.onnx"))({"image": x})["saliency_map"]
        for i, m in enumerate((fused, cloned))
    ]
    reference.assert_close_raw(maps[0], maps[1].astype(np.float64), "fused vs cloned", rel=1e-5)


def _with_scaled_logits(path, out):
    """The same model with `scores * 2` at the end: a tail whose last op is not a linear layer."""
    model = onnx.load(str(path))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["scores", "two"], ["scaled"]))
    model.graph.output[0].name = "scaled"
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("family", ["resnet", "mobilenetv3", "vgg", "resnet-scaled"])
def test_top_k_maps_are_the_rows_of_the_full_maps(family, exported, tmp_path):
    spec = zoo.Export(family.split("-")[0], dynamo=False, opset=17, dynamic_batch=True, softmax=False)
    path, _, size = exported(spec)
    if family.endswith("scaled"):
        path = _with_scaled_logits(path, tmp_path / "scaled.onnx")
    x = _images(spec, size, 3, seed=4)
    full = xai_graph.save_model(xai_graph.insert(path, raw=True), tmp_path / "full.onnx")
    top = xai_graph.save_model(xai_graph.insert(path, raw=True, top_k=3, score="sigmoid"), tmp_path / "top.onnx")
    full_u8 = xai_graph.save_model(xai_graph.insert(path, top_k=3), tmp_path / "top_u8.onnx")
    ref = open_model(full)({"image": x})
    scores_name = onnx.load(str(path)).graph.output[0].name
    for runtime in ("onnxruntime", "openvino"):
        out = open_model(top, runtime)({"image": x})
        classes = out["saliency_classes"]
        assert classes.dtype == np.int64 and classes.shape == (3, 3)
        np.testing.assert_array_equal(classes, np.argsort(-ref[scores_name], axis=1, kind="stable")[:, :3])
        picked = np.take_along_axis(ref["saliency_map"], classes[:, :, None, None], axis=1)
        reference.assert_close_raw(
            out["saliency_map"], 1 / (1 + np.exp(-picked.astype(np.float64))), f"top-3 sigmoid maps in {runtime}"
        )
        u8 = open_model(full_u8, runtime)({"image": x})["saliency_map"]
        reference.assert_within_lsb(u8, reference.to_uint8(picked.astype(np.float64), True), "top-3 uint8", picked)


def test_top_k_rejects_softmax_and_class_agnostic_methods(exported):
    path, _, _ = exported(zoo.Export("resnet", dynamo=False, opset=17, dynamic_batch=True, softmax=False))
    with pytest.raises(xai_graph.XaiGraphError, match="softmax"):
        xai_graph.insert(path, top_k=2, score="softmax")
    with pytest.raises(xai_graph.XaiGraphError, match="class-agnostic"):
        xai_graph.insert(path, "eigencam", top_k=2)
    with pytest.raises(xai_graph.XaiGraphError, match="between 1 and"):
        xai_graph.insert(path, top_k=99)
