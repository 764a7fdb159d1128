"""MaxActivation, the one-file example method: the maximum over channels, against numpy loops."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

import xai_graph


def channel_max(feat: np.ndarray) -> np.ndarray:
    """[N, C, h, w] -> [N, h, w], one position at a time."""
    n, c, h, w = feat.shape
    out = np.zeros((n, h, w), np.float32)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                out[b, i, j] = max(float(feat[b, k, i, j]) for k in range(c))
    return out


def test_max_activation_is_registered_and_class_agnostic():
    assert "maxactivation" in xai_graph.algorithms()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_raw_map_is_the_channel_maximum(runtime, tiny_cnn, images, run, tmp_path):
    model, _ = tiny_cnn()
    feat = run(model, {"image": images}, extra=("feat",))["feat"]
    head = xai_graph.insert(model, "maxactivation", raw=True)
    assert head.metadata_props["xai_graph.method"] == "MaxActivation"
    if runtime == "onnxruntime":
        got = run(head, {"image": images})
    else:
        compiled = ov.Core().compile_model(
            str(xai_graph.save_model(head, tmp_path / "m.onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        result = compiled({"image": images})
        got = {port.get_any_name(): result[port] for port in compiled.outputs}
    assert got["saliency_map"].shape == (2, 8, 8)
    np.testing.assert_allclose(got["saliency_map"], channel_max(feat), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["logits"], run(model, {"image": images})["logits"], rtol=1e-5, atol=1e-6)


def test_uint8_map_spans_0_to_255_per_image(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    scaled = run(xai_graph.insert(model, "maxactivation"), {"image": images})["saliency_map"]
    assert scaled.dtype == np.uint8 and scaled.shape == (2, 8, 8)
    assert all(scaled[b].min() == 0 and scaled[b].max() == 255 for b in range(2))


def test_token_grid(token_model, run):
    model, _, tokens = token_model
    feat = run(model, {"x": tokens}, extra=("feat",))["feat"]  # [N, 16, 6]
    saliency = run(xai_graph.insert(model, "maxactivation", raw=True), {"x": tokens})["saliency_map"]
    grid = feat.transpose(0, 2, 1).reshape(2, 6, 4, 4)  # tokens in row-major order
    np.testing.assert_allclose(saliency, channel_max(grid), rtol=1e-6)


def test_top_k_is_refused_in_one_line(tiny_cnn):
    model, _ = tiny_cnn()
    with pytest.raises(xai_graph.XaiGraphError, match="class-agnostic"):
        xai_graph.insert(model, "maxactivation", top_k=2)
