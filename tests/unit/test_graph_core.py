"""The graph core on tiny ONNX-text models: target detection, shapes, old opsets, layouts, outputs.

What `insert` finds and declares is checked through its public result only (outputs, their
declared shapes, the `xai_graph.*` metadata) and by running it in onnxruntime.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import xai_graph


def declared_shape(model: ir.Model, name: str) -> list:
    output = next(o for o in model.graph.outputs if o.name == name)
    return [d if isinstance(d, int) else None for d in output.shape]


def mean_over(feat: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """np.mean over `axes`, one output element at a time."""
    kept = [a for a in range(feat.ndim) if a not in axes]
    out = np.zeros([feat.shape[a] for a in kept])
    for index in np.ndindex(*out.shape):
        where = [slice(None)] * feat.ndim
        for axis, i in zip(kept, index):
            where[axis] = i
        values = feat[tuple(where)].ravel()
        out[index] = sum(float(v) for v in values) / len(values)
    return out


# The batch of the image is read from the input (Shape -> Gather -> Unsqueeze -> Concat), as torch
# exports `x.view(x.size(0), 3, 8, 8)`; the flattening after the pool reads it again (Gather of [0]).
COMPUTED_RESHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
computed (float[N, 192] pixels) => (float[N, 5] logits)
{
   shape = Shape (pixels)
   zero = Constant <value = int64 {0}> ()
   batch = Gather <axis = 0> (shape, zero)
   axis0 = Constant <value = int64[1] {0}> ()
   batch1 = Unsqueeze (batch, axis0)
   chw = Constant <value = int64[3] {3, 8, 8}> ()
   image_shape = Concat <axis = 0> (batch1, chw)
   image = Reshape (pixels, image_shape)
   conv = Conv <pads = [1, 1, 1, 1]> (image, w1, b1)
   feat = Relu (conv)
   pooled = GlobalAveragePool (feat)
   pooled_shape = Shape (pooled)
   first = Constant <value = int64[1] {0}> ()
   pooled_batch = Gather <axis = 0> (pooled_shape, first)
   rest = Constant <value = int64[1] {-1}> ()
   flat_shape = Concat <axis = 0> (pooled_batch, rest)
   flat = Reshape (pooled, flat_shape)
   logits = Gemm <transB = 1> (flat, fc_w, fc_b)
}
"""


@pytest.mark.parametrize("algo", ["activationmap", "classwisesaliencymap"])
def test_computed_reshapes_keep_static_map_sizes(algo, parse, run):
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b1": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((5, 4)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    model = parse(COMPUTED_RESHAPES, **weights)
    head = xai_graph.insert(model, algo, raw=True)
    assert head.metadata_props["xai_graph.target"] == "feat"
    class_axis = [5] if algo == "classwisesaliencymap" else []
    assert declared_shape(head, "saliency_map") == [None, *class_axis, 8, 8]
    for batch in (1, 3):
        pixels = np.random.default_rng(batch).standard_normal((batch, 192)).astype(np.float32)
        before = run(model, {"pixels": pixels}, extra=("feat",))
        after = run(head, {"pixels": pixels})
        assert after["saliency_map"].shape == (batch, *class_axis, 8, 8)
        assert np.array_equal(after["logits"], run(model, {"pixels": pixels})["logits"])
        if algo == "activationmap":
            np.testing.assert_allclose(after["saliency_map"], mean_over(before["feat"], (1,)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset, ir_version", [(9, 4), (8, 3)])
@pytest.mark.parametrize("algo", ["activationmap", "eigencam", "classwisesaliencymap"])
def test_old_opsets_are_raised_and_outputs_stay_bit_identical(opset, ir_version, algo, tiny_cnn, images, run):
    model, _ = tiny_cnn(opset=opset, ir_version=ir_version)
    with pytest.warns(UserWarning, match=f"opset {opset} raised to 11"):
        head = xai_graph.insert(model, algo)
    assert head.opset_imports[""] == 11
    assert head.ir_version == ir_version
    if ir_version < 4:  # every initializer, the head's too, is listed as a graph input
        inputs = {v.name for v in head.graph.inputs}
        assert set(head.graph.initializers) <= inputs
    before = run(model, {"image": images})
    after = run(head, {"image": images})
    assert np.array_equal(after["logits"], before["logits"])
    assert after["saliency_map"].dtype == np.uint8


def test_recent_opset_is_kept(tiny_cnn):
    model, _ = tiny_cnn(opset=17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conversion note either
        head = xai_graph.insert(model, "activationmap")
    assert head.opset_imports[""] == 17


def test_feature_vector_is_the_pooled_map(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    head = xai_graph.insert(model, "activationmap", feature_vector=True)
    assert [o.name for o in head.graph.outputs] == ["logits", "saliency_map", "feature_vector"]
    assert declared_shape(head, "feature_vector") == [None, 4]
    feat = run(model, {"image": images}, extra=("feat",))["feat"]
    vector = run(head, {"image": images})["feature_vector"]
    assert vector.dtype == np.float32 and vector.shape == (2, 4)
    np.testing.assert_allclose(vector, mean_over(feat, (2, 3)), rtol=1e-5, atol=1e-6)


def test_target_layer_names_the_map(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    head = xai_graph.insert(model, "activationmap", raw=True, target_layer="conv")  # before the Relu
    assert head.metadata_props["xai_graph.target"] == "conv"
    conv = run(model, {"image": images}, extra=("conv",))["conv"]
    assert conv.min() < 0  # so the Relu's map would differ
    saliency = run(head, {"image": images})["saliency_map"]
    np.testing.assert_allclose(saliency, mean_over(conv, (1,)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [17, 9], ids=["opset17", "opset9-converted"])
@pytest.mark.parametrize(
    "algo, options",
    [
        ("activationmap", {"feature_vector": True}),
        ("eigencam", {}),
        ("classwisesaliencymap", {}),
        ("classwisesaliencymap", {"brute_force": True, "top_k": 2}),
    ],
)
def test_the_model_given_is_not_modified(opset, algo, options, tiny_cnn):
    model, _ = tiny_cnn(opset=opset, ir_version=8 if opset == 17 else 4)
    before = model.SerializeToString(deterministic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the opset note
        xai_graph.insert(model, algo, **options)
    assert model.SerializeToString(deterministic=True) == before


def test_an_onnx_ir_model_given_is_not_modified(tiny_cnn):
    # An ir.Model is taken as loaded (shapes known, as `xai_graph.load_model` leaves it): infer them here.
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(tiny_cnn()[0]))
    before = ir.serde.serialize_model(model).SerializeToString(deterministic=True)
    head = xai_graph.insert(model, "classwisesaliencymap", brute_force=True)
    assert head is not model
    assert ir.serde.serialize_model(model).SerializeToString(deterministic=True) == before
    assert [o.name for o in model.graph.outputs] == ["logits"]


def test_inserting_twice_needs_replace(tiny_cnn, images, run):
    model, _ = tiny_cnn()
    saved = ir.serde.serialize_model(xai_graph.insert(model, "activationmap"))
    with pytest.raises(xai_graph.XaiGraphError, match="replace") as refused:
        xai_graph.insert(saved, "eigencam")
    assert "\n" not in str(refused.value)
    again = xai_graph.insert(saved, "eigencam", replace=True, raw=True)
    assert [o.name for o in again.graph.outputs] == ["logits", "saliency_map"]
    assert again.metadata_props["xai_graph.algorithm"] == "eigencam"
    direct = run(xai_graph.insert(model, "eigencam", raw=True), {"image": images})
    np.testing.assert_allclose(run(again, {"image": images})["saliency_map"], direct["saliency_map"], atol=1e-6)


# Channels-last: the map is transposed to [N, 8, 8, C] and averaged over H and W (timm's Swin, tf2onnx).
NHWC_CNN = """
<ir_version: 8, opset_import: ["" : {opset}]>
nhwc (float[N, 3, 8, 8] image) => (float[N, 5] logits)
{{
   conv = Conv <pads = [1, 1, 1, 1]> (image, w1, b1)
   relu = Relu (conv)
   feat = Transpose <perm = [0, 2, 3, 1]> (relu)
   pooled = {reduce}
   logits = Gemm <transB = 1> (pooled, fc_w, fc_b)
}}
"""
REDUCE_BY_OPSET = {
    17: "ReduceMean <axes = [1, 2], keepdims = 0> (feat)",  # axes as attribute
    18: "ReduceMean <keepdims = 0> (feat, axes)",
}  # axes as input (opset 18)


@pytest.mark.parametrize("opset", [17, 18])
def test_channels_last_map_is_found_and_read_by_channel(opset, parse, images, run):
    rng = np.random.default_rng(4)
    weights = {
        "w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "b1": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((5, 4)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    if opset >= 18:
        weights["axes"] = np.array([1, 2], np.int64)
    model = parse(NHWC_CNN.format(opset=opset, reduce=REDUCE_BY_OPSET[opset]), **weights)
    head = xai_graph.insert(model, "activationmap", raw=True)
    assert head.metadata_props["xai_graph.target"] == "feat"
    assert head.metadata_props["xai_graph.layout"] == "NHWC"
    assert declared_shape(head, "saliency_map") == [None, 8, 8]
    before = run(model, {"image": images}, extra=("feat",))
    after = run(head, {"image": images})
    assert before["feat"].shape == (2, 8, 8, 4)
    np.testing.assert_allclose(after["saliency_map"], mean_over(before["feat"], (3,)), rtol=1e-5, atol=1e-6)
    # (against the model as given: with `feat` as an extra output, onnxruntime optimises the Transpose differently)
    assert np.array_equal(after["logits"], run(model, {"image": images})["logits"])


def test_squeeze_excitation_pool_is_not_the_target(parse, images, run):
    """A pool whose output gates the map it came from is no head pool: with a Flatten + Gemm head the target
    is the last map the scores are a function of (the gated one), not the squeeze-excitation pool's input."""
    rng = np.random.default_rng(5)
    model = parse(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        se (float[N, 3, 8, 8] image) => (float[N, 5] logits)
        {
           conv = Conv <pads = [1, 1, 1, 1]> (image, w1)
           relu = Relu (conv)
           squeezed = GlobalAveragePool (relu)
           gate = Sigmoid (squeezed)
           feat = Mul (relu, gate)
           flat = Flatten (feat)
           logits = Gemm <transB = 1> (flat, fc_w, fc_b)
        }
        """,
        w1=rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        fc_w=rng.standard_normal((5, 256)).astype(np.float32),
        fc_b=np.zeros(5, np.float32),
    )
    head = xai_graph.insert(model, "activationmap", raw=True)
    assert head.metadata_props["xai_graph.target"] == "feat"
    feat = run(model, {"image": images}, extra=("feat",))["feat"]
    np.testing.assert_allclose(
        run(head, {"image": images})["saliency_map"], mean_over(feat, (1,)), rtol=1e-5, atol=1e-6
    )
