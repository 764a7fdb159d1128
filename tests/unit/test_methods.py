"""Each method on tiny ONNX-text models, against numpy written from the method's definition.

The references below use explicit loops on purpose: they follow the README's definitions
(ActivationMap, EigenCAM, Recipro-CAM, the uint8 scaling), not the graph code's vectorised form.
The map F is read from the original model with its value `feat` added as an output.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

import xai_graph

GAUSSIAN = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]  # / 16: Recipro-CAM's 3x3 neighbourhood weights


def channel_mean(feat: np.ndarray) -> np.ndarray:
    """[N, C, h, w] -> [N, h, w], one position at a time."""
    n, c, h, w = feat.shape
    out = np.zeros((n, h, w))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                out[b, i, j] = sum(float(feat[b, k, i, j]) for k in range(c)) / c
    return out


def position_mask(h: int, w: int, i: int, j: int, kind: str) -> np.ndarray:
    """Keep (i, j) only, or its 3x3 Gaussian neighbourhood clipped at the borders."""
    mask = np.zeros((h, w))
    if kind == "onehot":
        mask[i, j] = 1.0
        return mask
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if 0 <= i + di < h and 0 <= j + dj < w:
                mask[i + di, j + dj] = GAUSSIAN[di + 1][dj + 1] / 16
    return mask


def recipro_reference(
    feat: np.ndarray, fc_w: np.ndarray, fc_b: np.ndarray, kind: str = "gaussian", score: str = "logits"
) -> np.ndarray:
    """[N, K, h, w]: class k's score when the tail (GAP -> Gemm) runs on F masked at each position."""
    n, c, h, w = feat.shape
    out = np.zeros((n, fc_w.shape[0], h, w))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                masked = feat[b].astype(np.float64) * position_mask(h, w, i, j, kind)
                pooled = masked.sum(axis=(1, 2)) / (h * w)
                logits = fc_w.astype(np.float64) @ pooled + fc_b
                if score == "softmax":
                    logits = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
                out[b, :, i, j] = logits
    return out


def eigencam_reference(feat: np.ndarray) -> np.ndarray:
    """Per image: positions x channels, centred over positions, projected on the first right singular vector;
    the sign makes the map correlate positively with the channel mean (as eigencam.py documents)."""
    n, c, h, w = feat.shape
    activation = channel_mean(feat)
    out = np.zeros((n, h, w))
    for b in range(n):
        x = np.array([[feat[b, k, i, j] for k in range(c)] for i in range(h) for j in range(w)], dtype=np.float64)
        x -= x.mean(axis=0)
        _, _, vt = np.linalg.svd(x)
        s = (x @ vt[0]).reshape(h, w)
        out[b] = -s if (s * activation[b]).sum() < 0 else s
    return out


def run_openvino(model, feeds: dict[str, np.ndarray], tmp_path) -> dict[str, np.ndarray]:
    path = xai_graph.save_model(model, tmp_path / "for_openvino.onnx")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    return {port.get_any_name(): result[port] for port in compiled.outputs}


def test_algorithms_are_registered():
    assert {"activationmap", "eigencam", "classwisesaliencymap"} <= set(xai_graph.algorithms())


def test_activation_map_raw_is_the_channel_mean(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    before = run(model, {"image": images}, extra=("feat",))
    after = run(xai_graph.insert(model, "activationmap", raw=True), {"image": images})
    assert list(after) == ["logits", "saliency_map"]
    assert after["saliency_map"].dtype == np.float32 and after["saliency_map"].shape == (2, 8, 8)
    np.testing.assert_allclose(after["saliency_map"], channel_mean(before["feat"]), rtol=1e-5, atol=1e-6)
    assert np.array_equal(after["logits"], run(model, {"image": images})["logits"])  # the original, bit for bit


def test_activation_map_uint8_is_scaled_per_image(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    raw = run(xai_graph.insert(model, "activationmap", raw=True), {"image": images})["saliency_map"]
    scaled = run(xai_graph.insert(model, "activationmap"), {"image": images})["saliency_map"]
    assert scaled.dtype == np.uint8 and scaled.shape == (2, 8, 8)
    for b in range(2):
        low, high = float(raw[b].min()), float(raw[b].max())
        assert high > low
        assert scaled[b].min() == 0 and scaled[b].max() == 255
        checked = 0
        for i in range(8):
            for j in range(8):
                exact = 255 * (float(raw[b, i, j]) - low) / (high - low + 1e-12)
                if abs(exact - np.floor(exact) - 0.5) > 1e-3:  # away from a rounding tie, the value is exact
                    assert scaled[b, i, j] == round(exact), (b, i, j, exact)
                    checked += 1
        assert checked > 60


@pytest.mark.parametrize("algo", ["activationmap", "eigencam", "classwisesaliencymap"])
def test_openvino_agrees_with_onnxruntime(algo, tiny_cnn, images, run, tmp_path):
    model, _ = tiny_cnn()
    head = xai_graph.insert(model, algo, raw=True)
    expected = run(head, {"image": images})
    got = run_openvino(head, {"image": images}, tmp_path)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("channels", [4, 80], ids=["C<hw", "C>hw"])  # the C x C and the hw x hw Gram matrix
def test_eigencam_is_the_first_principal_component(channels, tiny_cnn, images, run):
    model, _ = tiny_cnn(channels)
    feat = run(model, {"image": images}, extra=("feat",))["feat"]
    saliency = run(xai_graph.insert(model, "eigencam", raw=True), {"image": images})["saliency_map"]
    assert saliency.shape == (2, 8, 8)
    expected = eigencam_reference(feat)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(saliency, expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("mask", ["gaussian", "onehot"])
@pytest.mark.parametrize("brute_force", [False, True], ids=["fused", "cloned"])
def test_recipro_cam_matches_the_definition(mask, brute_force, tiny_cnn, images, run):
    model, weights = tiny_cnn()
    feat = run(model, {"image": images}, extra=("feat",))["feat"]
    head = xai_graph.insert(model, "classwisesaliencymap", raw=True, mask=mask, brute_force=brute_force)
    assert head.metadata_props["xai_graph.method"] == f"Recipro-CAM ({'cloned tail' if brute_force else 'fused'})"
    saliency = run(head, {"image": images})["saliency_map"]
    assert saliency.shape == (2, 5, 8, 8)
    expected = recipro_reference(feat, weights["fc_w"], weights["fc_b"], mask)
    np.testing.assert_allclose(saliency, expected, rtol=1e-4, atol=1e-4)


def test_recipro_cam_forms_agree(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    fused = run(xai_graph.insert(model, raw=True), {"image": images})["saliency_map"]
    cloned = run(xai_graph.insert(model, raw=True, brute_force=True), {"image": images})["saliency_map"]
    np.testing.assert_allclose(fused, cloned, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("brute_force", [False, True], ids=["fused", "cloned"])
def test_recipro_cam_top_k(brute_force, tiny_cnn, images, run):
    model, weights = tiny_cnn()
    before = run(model, {"image": images}, extra=("feat",))
    head = xai_graph.insert(model, raw=True, top_k=2, brute_force=brute_force)
    after = run(head, {"image": images})
    assert list(after) == ["logits", "saliency_map", "saliency_classes"]
    expected = recipro_reference(before["feat"], weights["fc_w"], weights["fc_b"])
    for b in range(2):
        ranked = sorted(range(5), key=lambda k: -before["logits"][b, k])
        assert list(after["saliency_classes"][b]) == ranked[:2]
        for row, k in enumerate(ranked[:2]):
            np.testing.assert_allclose(after["saliency_map"][b, row], expected[b, k], rtol=1e-4, atol=1e-4)


def test_recipro_cam_uint8_is_scaled_per_class(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    scaled = run(xai_graph.insert(model), {"image": images})["saliency_map"]
    assert scaled.dtype == np.uint8 and scaled.shape == (2, 5, 8, 8)
    for b in range(2):
        for k in range(5):
            assert (scaled[b, k].min(), scaled[b, k].max()) == (0, 255)


SOFTMAX_CNN = """
<ir_version: {ir_version}, opset_import: ["" : {opset}]>
tiny (float[N, 3, 8, 8] image) => (float[N, 5] probs)
{{
   conv = Conv <pads = [1, 1, 1, 1]> (image, w1, b1)
   feat = Relu (conv)
   pooled = GlobalAveragePool (feat)
   flat = Flatten (pooled)
   logits = Gemm <transB = 1> (flat, fc_w, fc_b)
   probs = Softmax <axis = 1> (logits)
}}
"""


@pytest.mark.parametrize("score", ["logits", "softmax"])
def test_recipro_cam_looks_through_a_final_softmax(score, tiny_cnn, images, run):
    model, weights = tiny_cnn(text=SOFTMAX_CNN)
    feat = run(model, {"image": images}, extra=("feat",))["feat"]
    saliency = run(xai_graph.insert(model, raw=True, score=score), {"image": images})["saliency_map"]
    expected = recipro_reference(feat, weights["fc_w"], weights["fc_b"], score=score)
    np.testing.assert_allclose(saliency, expected, rtol=1e-4, atol=1e-5)


def test_activation_map_on_a_token_grid(token_model, run):
    model, _, tokens = token_model
    feat = run(model, {"x": tokens}, extra=("feat",))["feat"]  # [N, 16, 6]
    head = xai_graph.insert(model, "activationmap", raw=True)
    assert head.metadata_props["xai_graph.layout"] == "NLC"
    saliency = run(head, {"x": tokens})["saliency_map"]
    assert saliency.shape == (2, 4, 4)
    for b in range(2):
        for t in range(16):
            i, j = divmod(t, 4)  # tokens in row-major order
            assert saliency[b, i, j] == pytest.approx(sum(float(v) for v in feat[b, t]) / 6, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("brute_force", [False, True], ids=["fused", "cloned"])
def test_recipro_cam_on_a_token_grid(brute_force, token_model, run):
    model, weights, tokens = token_model
    feat = run(model, {"x": tokens}, extra=("feat",))["feat"]
    grid = feat.transpose(0, 2, 1).reshape(2, 6, 4, 4)  # NLC -> NCHW, by the row-major token order
    saliency = run(xai_graph.insert(model, raw=True, brute_force=brute_force), {"x": tokens})["saliency_map"]
    expected = recipro_reference(grid, weights["fc_w"].T, weights["fc_b"])
    np.testing.assert_allclose(saliency, expected, rtol=1e-4, atol=1e-4)


NO_MAP = """
<ir_version: 8, opset_import: ["" : 17]>
linear (float[N, 4] x) => (float[N, 5] logits)
{
   hidden = Gemm <transB = 1> (x, w1, b1)
   relu = Relu (hidden)
   logits = Gemm <transB = 1> (relu, fc_w, fc_b)
}
"""


@pytest.mark.parametrize("algo", ["activationmap", "eigencam", "classwisesaliencymap"])
def test_a_model_without_a_spatial_map_is_refused_in_one_line(algo, parse):
    rng = np.random.default_rng(3)
    model = parse(
        NO_MAP,
        w1=rng.standard_normal((8, 4)).astype(np.float32),
        b1=np.zeros(8, np.float32),
        fc_w=rng.standard_normal((5, 8)).astype(np.float32),
        fc_b=np.zeros(5, np.float32),
    )
    with pytest.raises(xai_graph.XaiGraphError) as refused:
        xai_graph.insert(model, algo)
    message = str(refused.value)
    assert message and "\n" not in message
    assert "target_layer=NAME" in message  # says how to go on (as a keyword: the CLI words it as a flag)


@pytest.mark.parametrize(
    "algo, options",
    [
        ("nosuchmethod", {}),
        ("classwisesaliencymap", {"mask": "square"}),
        ("classwisesaliencymap", {"score": "tanh"}),
        ("classwisesaliencymap", {"top_k": 6}),
        ("classwisesaliencymap", {"top_k": 0}),
        ("classwisesaliencymap", {"top_k": 2, "score": "softmax"}),
        ("activationmap", {"top_k": 2}),
        ("activationmap", {"target_layer": "no_such_value"}),
        ("activationmap", {"target_layer": "logits"}),
    ],
)
def test_bad_options_are_refused_in_one_line(algo, options, tiny_cnn):
    model, _ = tiny_cnn()
    with pytest.raises(xai_graph.XaiGraphError) as refused:
        xai_graph.insert(model, algo, **options)
    assert str(refused.value) and "\n" not in str(refused.value)
