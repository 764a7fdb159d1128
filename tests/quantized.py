"""INT8 versions of the bundled EfficientNet-Lite0, all calibrated on the sample photos and their mirror images:
ONNX QDQ from onnxruntime.quantization (static), the INT8 IR OpenVINO converts that to (FakeQuantize on
activations, INT8 weights), and NNCF's post-training quantization of the f32 IR; with how close their saliency
maps are to the float model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import xai_graph
from xai_graph.graph.io import load_model
from xai_graph.explaining.images import find_images, read_image
from xai_graph.explaining.preprocess import Preprocessing, read_model_info
from xai_graph.runtime import open_model

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
LITE0 = SAMPLES / "efficientnet_lite0.onnx"


def sample_batch() -> np.ndarray:
    """The sample photos, preprocessed as the model's metadata says: [N, 3, 224, 224]."""
    info = read_model_info(dict(load_model(LITE0).metadata_props))
    preprocess = Preprocessing(width=224, height=224, layout="NCHW").with_overrides(**info.preprocessing)
    return np.stack(
        [preprocess(read_image(p))[0].reshape(3, 224, 224) for p in find_images([str(SAMPLES / "images")])]
    ).astype(np.float32)


def calibration_images() -> list[np.ndarray]:
    batch = sample_batch()
    return [x[None] for x in np.concatenate([batch, batch[..., ::-1]])]


def quantize(folder: Path) -> tuple[Path, Path, Path]:
    """(ONNX QDQ model, INT8 IR converted from it, NNCF INT8 IR) of EfficientNet-Lite0."""
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import nncf

    name = load_model(LITE0).graph.inputs[0].name
    calibration = iter([{name: x} for x in calibration_images()])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(calibration, None)

    prepared, qdq, int8 = folder / "lite0_prepared.onnx", folder / "lite0_qdq.onnx", folder / "lite0_int8.xml"
    quant_pre_process(str(LITE0), str(prepared))
    quantize_static(
        str(prepared),
        str(qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    ov.save_model(ov.convert_model(str(qdq)), str(int8), compress_to_fp16=False)
    f32 = xai_graph.save_ir(load_model(LITE0), folder / "lite0_f32.xml")
    images = calibration_images()
    quantized = nncf.quantize(ov.Core().read_model(str(f32)), nncf.Dataset(images), subset_size=len(images))
    ov.save_model(quantized, str(folder / "lite0_nncf.xml"), compress_to_fp16=False)
    return qdq, int8, folder / "lite0_nncf.xml"


def map_correlations(float_model: Path, quantized: Path, folder: Path, runtime: str) -> dict:
    """Per sample photo: Pearson correlation of the quantized model's Recipro-CAM map of the float model's top-1
    class with the float model's; and whether the top-1 classes agree."""
    batch = sample_batch()
    name = load_model(LITE0).graph.inputs[0].name
    suffix = quantized.suffix
    float_run = open_model(
        xai_graph.save_model(xai_graph.insert(float_model, raw=True), folder / "float_xai.onnx"), runtime
    )({name: batch})
    head = xai_graph.insert(quantized, raw=True)
    quant_run = open_model(xai_graph.save_model(head, folder / f"quant_xai{suffix}"), runtime)({name: batch})
    scores = next(k for k in float_run if k != "saliency_map")
    top = float_run[scores].argmax(1)
    pearson = [
        float(
            np.corrcoef(float_run["saliency_map"][b, top[b]].ravel(), quant_run["saliency_map"][b, top[b]].ravel())[
                0, 1
            ]
        )
        for b in range(len(batch))
    ]
    method = (
        head.metadata_props["xai_graph.method"]
        if suffix == ".onnx"
        else head.get_rt_info(["xai_graph", "xai_graph.method"]).astype(str)
    )
    return {
        "pearson": pearson,
        "same_top1": bool((quant_run[scores].argmax(1) == top).all()),
        "method": method,
        "scores_unchanged": bool(
            np.array_equal(quant_run[scores], open_model(quantized, runtime)({name: batch})[scores])
        ),
    }
