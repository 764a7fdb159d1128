"""INT8 models get the same heads: EfficientNet-Lite0 as ONNX QDQ (run in ONNX Runtime), as the INT8 IR converted
from it and as an NNCF-quantized IR (both inserted natively, run in OpenVINO); their maps correlate with the float
model's (goal: Pearson >= 0.9)."""

from __future__ import annotations

import pytest

from quantized import LITE0, map_correlations, quantize


@pytest.fixture(scope="module")
def quantized_models(tmp_path_factory):
    return quantize(tmp_path_factory.mktemp("int8"))


@pytest.mark.parametrize(
    "which, runtime", [(0, "onnxruntime"), (1, "openvino"), (2, "openvino")], ids=["onnx-qdq", "int8-ir", "nncf-ir"]
)
def test_quantized_maps_follow_the_float_maps(which, runtime, quantized_models, tmp_path):
    result = map_correlations(LITE0, quantized_models[which], tmp_path, runtime)
    assert result["scores_unchanged"], "the quantized model's own scores changed"
    assert result["same_top1"], "quantization changed a sample's top-1 class"
    assert min(result["pearson"]) >= 0.9, result
