"""Fixtures of the fast unit tests: tiny models written as ONNX text, and runners for them.

Every model here is a few hundred weights, parsed with `onnx.parser`; initializers come
from numpy with fixed seeds. Nothing is exported from torch and nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

import xai_graph

# The tiny CNN of most tests: Conv 3x3 -> Relu (the map F, "feat") -> GlobalAveragePool -> Flatten -> Gemm.
TINY_CNN = """
<ir_version: {ir_version}, opset_import: ["" : {opset}]>
tiny (float[N, 3, 8, 8] image) => (float[N, 5] logits)
{{
   conv = Conv <pads = [1, 1, 1, 1]> (image, w1, b1)
   feat = Relu (conv)
   pooled = GlobalAveragePool (feat)
   flat = Flatten (pooled)
   logits = Gemm <transB = 1> (flat, fc_w, fc_b)
}}
"""


def parse_model(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    """The model in `text`, with `weights` added as initializers (and as inputs below IR version 4), checked."""
    model = onnx.parser.parse_model(text)
    for name, array in weights.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        if model.ir_version < 4:  # IR 3 wants every initializer listed as a graph input
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(
                    name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype), np.asarray(array).shape
                )
            )
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn_weights(channels: int = 4, classes: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) / 3,
        "b1": rng.standard_normal(channels).astype(np.float32) / 4,
        "fc_w": rng.standard_normal((classes, channels)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32),
    }


@pytest.fixture
def parse():
    """parse(text, **weights) -> checked onnx.ModelProto."""
    return parse_model


@pytest.fixture
def tiny_cnn():
    """tiny_cnn(channels=4, opset=17, ir_version=8, text=TINY_CNN) -> (ModelProto, its weights as numpy).

    `text` may be another template with the same weights and `{opset}`, `{ir_version}` fields.
    """

    def make(channels: int = 4, opset: int = 17, ir_version: int = 8, text: str = TINY_CNN):
        weights = cnn_weights(channels)
        return parse_model(text.format(opset=opset, ir_version=ir_version), **weights), weights

    return make


# Tokens [N, 16, 6] (NLC) averaged over the 16 tokens: a 4 x 4 grid of 6-channel positions.
TOKEN_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
tokens (float[N, 16, 3] x) => (float[N, 5] logits)
{
   proj = MatMul (x, w1)
   feat = Relu (proj)
   pooled = ReduceMean <axes = [1], keepdims = 0> (feat)
   lin = MatMul (pooled, fc_w)
   logits = Add (lin, fc_b)
}
"""


@pytest.fixture
def token_model():
    """(ModelProto, its weights, two token sequences [2, 16, 3]): the token-grid model, its map `feat`."""
    rng = np.random.default_rng(2)
    weights = {
        "w1": rng.standard_normal((3, 6)).astype(np.float32),
        "fc_w": rng.standard_normal((6, 5)).astype(np.float32),
        "fc_b": rng.standard_normal(5).astype(np.float32),
    }
    tokens = rng.standard_normal((2, 16, 3)).astype(np.float32)
    return parse_model(TOKEN_MODEL, **weights), weights, tokens


@pytest.fixture
def images() -> np.ndarray:
    """Two 3 x 8 x 8 images."""
    return np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def run(tmp_path):
    """run(model, feeds, extra=()) -> {output name: array} from onnxruntime on CPU.

    `model` is an onnx.ModelProto (run as given, plus the intermediate values named in `extra`
    as outputs, on a copy) or what `xai_graph.insert` returns (written with `xai_graph.save_model`,
    which checks the file).
    """
    count = iter(range(1_000_000))

    def run_model(model, feeds: dict[str, np.ndarray], extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        path = tmp_path / f"model_{next(count)}.onnx"
        if isinstance(model, ir.Model):
            assert not extra, "extra outputs are for the original model"
            xai_graph.save_model(model, path)
        else:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            copy.graph.output.extend(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in extra
            )
            onnx.save(copy, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    return run_model
